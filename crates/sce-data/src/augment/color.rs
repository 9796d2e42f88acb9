//! Colour operations on float images, following torchvision's tensor implementations
//! (`torchvision.transforms.functional`): results are clamped to [0, 1].

use super::Planes;

/// ITU-R 601 luma, as PIL's `convert("L")` and the spec.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

fn luma(r: f32, g: f32, b: f32) -> f32 {
    LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
}

/// `img * factor`, clamped (blend with black).
pub fn adjust_brightness(img: &mut Planes, factor: f32) {
    img.data
        .iter_mut()
        .for_each(|v| *v = (*v * factor).clamp(0.0, 1.0));
}

/// Blend with the mean luma of the whole image (the mean value for grayscale images).
pub fn adjust_contrast(img: &mut Planes, factor: f32) {
    let n = img.plane_len() as f32;
    let mean = if img.channels == 3 {
        let (r, g, b) = img.rgb_mut();
        r.iter()
            .zip(g.iter())
            .zip(b.iter())
            .map(|((&r, &g), &b)| luma(r, g, b))
            .sum::<f32>()
            / n
    } else {
        img.data.iter().sum::<f32>() / img.data.len() as f32
    };
    let offset = (1.0 - factor) * mean;
    img.data
        .iter_mut()
        .for_each(|v| *v = (factor * *v + offset).clamp(0.0, 1.0));
}

/// Blend with the grayscale image; grayscale inputs are returned unchanged.
pub fn adjust_saturation(img: &mut Planes, factor: f32) {
    if img.channels != 3 {
        return;
    }
    let (r, g, b) = img.rgb_mut();
    for i in 0..r.len() {
        let gray = (1.0 - factor) * luma(r[i], g[i], b[i]);
        r[i] = (factor * r[i] + gray).clamp(0.0, 1.0);
        g[i] = (factor * g[i] + gray).clamp(0.0, 1.0);
        b[i] = (factor * b[i] + gray).clamp(0.0, 1.0);
    }
}

/// Rotates the hue by `shift` turns (in [-0.5, 0.5]) through HSV, as torchvision's
/// `_rgb2hsv` / `_hsv2rgb`; grayscale inputs are returned unchanged.
pub fn adjust_hue(img: &mut Planes, shift: f32) {
    if img.channels != 3 {
        return;
    }
    let (r, g, b) = img.rgb_mut();
    for i in 0..r.len() {
        let (h, s, v) = rgb_to_hsv(r[i], g[i], b[i]);
        let h = (h + shift).rem_euclid(1.0);
        let (nr, ng, nb) = hsv_to_rgb(h, s, v);
        r[i] = nr;
        g[i] = ng;
        b[i] = nb;
    }
}

pub(crate) fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let cr = maxc - minc;
    if cr == 0.0 {
        return (0.0, 0.0, maxc);
    }
    let s = cr / maxc;
    let (rc, gc, bc) = ((maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    ((h / 6.0 + 1.0) % 1.0, s, maxc)
}

pub(crate) fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Replaces each RGB pixel by its luma in all channels; grayscale inputs are unchanged.
pub fn grayscale(img: &mut Planes) {
    if img.channels != 3 {
        return;
    }
    let (r, g, b) = img.rgb_mut();
    for i in 0..r.len() {
        let l = luma(r[i], g[i], b[i]);
        r[i] = l;
        g[i] = l;
        b[i] = l;
    }
}

/// `x → 1 − x` where `x ≥ threshold` (torchvision's `solarize` on float images).
pub fn solarize(img: &mut Planes, threshold: f32) {
    img.data.iter_mut().for_each(|v| {
        if *v >= threshold {
            *v = 1.0 - *v;
        }
    });
}

/// `(x − mean[c]) / std[c]` per channel.
pub fn normalize(img: &mut Planes, mean: &[f32], std: &[f32]) {
    let n = img.plane_len();
    for c in 0..img.channels {
        let (m, inv) = (mean[c], 1.0 / std[c]);
        img.data[c * n..(c + 1) * n]
            .iter_mut()
            .for_each(|v| *v = (*v - m) * inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(pixels: &[[f32; 3]]) -> Planes {
        let n = pixels.len();
        let mut data = vec![0.0; 3 * n];
        for (i, p) in pixels.iter().enumerate() {
            for c in 0..3 {
                data[c * n + i] = p[c];
            }
        }
        Planes {
            width: n,
            height: 1,
            channels: 3,
            data,
        }
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    /// Hand-worked: a 2-pixel image (0.2, 0.4, 0.6) and (1, 0.5, 0).
    #[test]
    fn brightness_contrast_saturation_by_hand() {
        let base = rgb(&[[0.2, 0.4, 0.6], [1.0, 0.5, 0.0]]);
        let mut img = base.clone();
        adjust_brightness(&mut img, 1.5);
        close(&img.data, &[0.3, 1.0, 0.6, 0.75, 0.9, 0.0]);

        // luma: 0.299·0.2 + 0.587·0.4 + 0.114·0.6 = 0.3630; 0.299 + 0.2935 = 0.5925; mean 0.47775.
        let mut img = base.clone();
        adjust_contrast(&mut img, 0.5);
        let m = 0.47775 * 0.5;
        close(
            &img.data,
            &[0.1 + m, 0.5 + m, 0.2 + m, 0.25 + m, 0.3 + m, m],
        );

        let mut img = base.clone();
        adjust_saturation(&mut img, 0.0);
        close(&img.data, &[0.3630, 0.5925, 0.3630, 0.5925, 0.3630, 0.5925]);

        let mut img = base;
        grayscale(&mut img);
        close(&img.data, &[0.3630, 0.5925, 0.3630, 0.5925, 0.3630, 0.5925]);
    }

    /// Hue of pure red is 0, of pure green 1/3; a +1/3 turn takes red to green, green to blue.
    #[test]
    fn hue_rotation_by_hand() {
        assert_eq!(rgb_to_hsv(1.0, 0.0, 0.0), (0.0, 1.0, 1.0));
        let (h, s, v) = rgb_to_hsv(0.0, 0.5, 0.0);
        assert!((h - 1.0 / 3.0).abs() < 1e-6 && s == 1.0 && v == 0.5);
        // (0.2, 0.4, 0.6): max b → h = (4 + gc − rc)/6 with rc = 1, gc = 0.5 → 3.5/6.
        let (h, s, v) = rgb_to_hsv(0.2, 0.4, 0.6);
        assert!((h - 3.5 / 6.0).abs() < 1e-6 && (s - 2.0 / 3.0).abs() < 1e-6 && v == 0.6);

        let mut img = rgb(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.4, 0.6]]);
        adjust_hue(&mut img, 1.0 / 3.0);
        // red → green, green → blue; (0.2,0.4,0.6) at h=0.5833+0.3333=0.9167 → (0.6, 0.2, 0.4).
        close(&img.data, &[0.0, 0.0, 0.6, 1.0, 0.0, 0.2, 0.0, 1.0, 0.4]);

        // Round trip without shift is the identity.
        let base = rgb(&[[0.9, 0.1, 0.35], [0.5, 0.5, 0.5]]);
        let mut img = base.clone();
        adjust_hue(&mut img, 0.0);
        close(&img.data, &base.data);
    }

    #[test]
    fn grayscale_images_ignore_colour_ops_and_solarize_normalize() {
        let mut gray = Planes {
            width: 2,
            height: 1,
            channels: 1,
            data: vec![0.25, 0.75],
        };
        adjust_saturation(&mut gray, 0.0);
        adjust_hue(&mut gray, 0.3);
        grayscale(&mut gray);
        close(&gray.data, &[0.25, 0.75]);
        adjust_contrast(&mut gray, 0.0);
        close(&gray.data, &[0.5, 0.5]);

        let mut img = rgb(&[[0.2, 0.5, 0.9]]);
        solarize(&mut img, 0.5);
        close(&img.data, &[0.2, 0.5, 0.1]);
        normalize(&mut img, &[0.1, 0.5, 0.0], &[0.5, 0.25, 2.0]);
        close(&img.data, &[0.2, 0.0, 0.05]);
    }
}
