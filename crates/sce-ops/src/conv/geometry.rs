//! The shape of one 2-D convolution and how the GEMM kernels cut its batch into chunks.

/// A bias-free, ungrouped, undilated 2-D convolution over `[batch, c_in, h, w]` with a
/// `[c_out, c_in, kernel_h, kernel_w]` weight: all that ResNet trunks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub out_h: usize,
    pub out_w: usize,
}

/// Elements of the column buffer one chunk of images may fill (4 MiB of f32): large enough that
/// every GEMM of a ResNet layer has a long dimension, small enough to stay out of the step's peak.
const COLUMN_BUDGET: usize = 1 << 20;

impl ConvGeometry {
    /// The geometry of `x` (dims) convolved with `weight` (dims); `None` when the shapes do not
    /// fit together or the output would be empty.
    pub fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Option<Self> {
        let [batch, c_in, h, w] = x;
        let [c_out, weight_c_in, kh, kw] = weight;
        if weight_c_in != c_in || stride.contains(&0) || kh == 0 || kw == 0 {
            return None;
        }
        let out = |size: usize, k: usize, s: usize, p: usize| {
            (size + 2 * p).checked_sub(k).map(|span| span / s + 1)
        };
        let out_h = out(h, kh, stride[0], padding[0])?;
        let out_w = out(w, kw, stride[1], padding[1])?;
        (batch > 0 && c_in > 0 && c_out > 0).then_some(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            kernel: [kh, kw],
            stride,
            padding,
            out_h,
            out_w,
        })
    }

    /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
    pub fn patch_len(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// Output positions of one image.
    pub fn positions(&self) -> usize {
        self.out_h * self.out_w
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.c_in * self.h * self.w
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.c_out * self.positions()
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.patch_len()
    }

    /// Images per chunk: as many as fit `COLUMN_BUDGET`, at least one.
    pub fn images_per_chunk(&self) -> usize {
        (COLUMN_BUDGET / (self.patch_len() * self.positions()).max(1)).clamp(1, self.batch)
    }

    /// The image ranges the kernels walk, in order.
    pub fn chunks(&self) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let step = self.images_per_chunk();
        let batch = self.batch;
        (0..batch)
            .step_by(step)
            .map(move |start| start..(start + step).min(batch))
    }

    /// Output columns `lo..hi` whose input column `o * stride + k - padding` lies in `0..size`.
    pub fn valid_outputs(
        size: usize,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> (usize, usize) {
        // o * stride + k >= pad  and  o * stride + k < pad + size
        let lo = pad.saturating_sub(k).div_ceil(stride);
        let hi = if pad + size > k {
            ((pad + size - k - 1) / stride + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_matches_the_convolution_formula() {
        let g = ConvGeometry::new([2, 3, 32, 32], [8, 3, 3, 3], [2, 2], [1, 1]).unwrap();
        assert_eq!((g.out_h, g.out_w), (16, 16));
        let g = ConvGeometry::new([1, 3, 7, 5], [4, 3, 7, 7], [2, 2], [3, 3]).unwrap();
        assert_eq!((g.out_h, g.out_w), (4, 3));
        assert!(ConvGeometry::new([1, 3, 2, 2], [4, 3, 5, 5], [1, 1], [0, 0]).is_none());
        assert!(ConvGeometry::new([1, 2, 8, 8], [4, 3, 3, 3], [1, 1], [1, 1]).is_none());
    }

    #[test]
    fn valid_outputs_agree_with_a_direct_scan() {
        for size in 1usize..9 {
            for k in 0..4 {
                for stride in 1..4 {
                    for pad in 0..3 {
                        let Some(out) = (size + 2 * pad).checked_sub(k + 1).map(|s| s / stride + 1)
                        else {
                            continue;
                        };
                        let inside = |o: usize| {
                            let i = (o * stride + k) as isize - pad as isize;
                            (0..size as isize).contains(&i)
                        };
                        let expected: Vec<usize> = (0..out).filter(|&o| inside(o)).collect();
                        let (lo, hi) = ConvGeometry::valid_outputs(size, out, k, stride, pad);
                        assert_eq!(
                            (lo..hi).collect::<Vec<_>>(),
                            expected,
                            "{size} {k} {stride} {pad}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn chunks_cover_the_batch_once() {
        let g = ConvGeometry::new([64, 64, 32, 32], [64, 64, 3, 3], [1, 1], [1, 1]).unwrap();
        let chunks: Vec<_> = g.chunks().collect();
        assert!(chunks.len() > 1);
        assert_eq!(chunks.first().unwrap().start, 0);
        assert_eq!(chunks.last().unwrap().end, 64);
        assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
    }
}
