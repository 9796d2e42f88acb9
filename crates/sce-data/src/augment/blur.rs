//! Separable Gaussian blur with reflect padding (torchvision's `gaussian_blur`).

use super::Planes;

/// torchvision's 1-D kernel: `exp(−x²/2σ²)` at `linspace(−(k−1)/2, (k−1)/2, k)`, normalised.
pub fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    let half = (size as f32 - 1.0) * 0.5;
    let pdf: Vec<f32> = (0..size)
        .map(|i| {
            let x = (i as f32 - half) / sigma;
            (-0.5 * x * x).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.into_iter().map(|v| v / sum).collect()
}

/// Kernel size covering ±3σ, the odd size a true Gaussian of that σ needs (used when no fixed
/// size is configured, e.g. the small-image recipe, whose reference blurs with PIL by radius σ).
pub fn auto_kernel_size(sigma: f32) -> usize {
    2 * (3.0 * sigma).ceil() as usize + 1
}

/// Index reflected into `0..len` without repeating the edge (numpy/torch "reflect").
fn reflect(i: isize, len: usize) -> usize {
    let len = len as isize;
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let mut i = i.rem_euclid(period);
    if i >= len {
        i = period - i;
    }
    i as usize
}

/// Blurs every channel with a `size`×`size` Gaussian of standard deviation `sigma`.
pub fn gaussian_blur(img: &mut Planes, size: usize, sigma: f32) {
    let kernel = gaussian_kernel(size, sigma);
    let half = (size / 2) as isize;
    let (w, h) = (img.width, img.height);
    let n = w * h;
    let mut row = vec![0.0f32; w + 2 * half as usize];
    let mut tmp = vec![0.0f32; n];
    let x_index: Vec<usize> = (-half..w as isize + half).map(|i| reflect(i, w)).collect();
    let y_index: Vec<usize> = (-half..h as isize + half).map(|i| reflect(i, h)).collect();
    for plane in img.data.chunks_exact_mut(n) {
        // Horizontal pass into `tmp`.
        for y in 0..h {
            let src = &plane[y * w..(y + 1) * w];
            for (dst, &sx) in row.iter_mut().zip(&x_index) {
                *dst = src[sx];
            }
            let out = &mut tmp[y * w..(y + 1) * w];
            out.fill(0.0);
            for (k, &kv) in kernel.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&row[k..k + w]) {
                    *o += kv * v;
                }
            }
        }
        // Vertical pass back into the plane, whole rows at a time.
        for y in 0..h {
            let out = &mut plane[y * w..(y + 1) * w];
            out.fill(0.0);
            for (k, &kv) in kernel.iter().enumerate() {
                let sy = y_index[y + k];
                for (o, &v) in out.iter_mut().zip(&tmp[sy * w..(sy + 1) * w]) {
                    *o += kv * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_values_and_reflection() {
        // k = 3, σ = 1: weights ∝ (e^-0.5, 1, e^-0.5).
        let k = gaussian_kernel(3, 1.0);
        let e = (-0.5f32).exp();
        let s = 1.0 + 2.0 * e;
        for (got, want) in k.iter().zip([e / s, 1.0 / s, e / s]) {
            assert!((got - want).abs() < 1e-7);
        }
        assert_eq!(auto_kernel_size(0.1), 3);
        assert_eq!(auto_kernel_size(2.0), 13);
        let reflected: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(reflected, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    /// 1×3 row [0, 1, 0] (height 1, so the vertical pass is the identity after reflection):
    /// with reflect padding the ends see [1, 0, 1] → 2e/s, the middle sees [0, 1, 0] → 1/s.
    #[test]
    fn blur_by_hand() {
        let mut img = Planes {
            width: 3,
            height: 1,
            channels: 1,
            data: vec![0.0, 1.0, 0.0],
        };
        gaussian_blur(&mut img, 3, 1.0);
        let e = (-0.5f32).exp();
        let s = 1.0 + 2.0 * e;
        let want = [2.0 * e / s, 1.0 / s, 2.0 * e / s];
        for (got, want) in img.data.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{:?}", img.data);
        }
        // A constant image stays constant.
        let mut flat = Planes {
            width: 5,
            height: 4,
            channels: 3,
            data: vec![0.3; 60],
        };
        gaussian_blur(&mut flat, 23, 2.0);
        assert!(flat.data.iter().all(|v| (v - 0.3).abs() < 1e-6));
    }
}
