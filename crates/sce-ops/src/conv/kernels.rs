//! Convolution forward and both gradients as three well-shaped GEMMs over chunks of images
//! (3×3 stride-1 convolutions go on to [`winograd`]).
//!
//! For a chunk of `nb` images, `col` is the `[patch_len, nb · positions]` matrix of input patches
//! (im2col, one column per output position). Then
//! - forward: `y = W · col` (`[c_out, patch_len] × [patch_len, nb·P]`),
//! - weight gradient: `dW += dY · colᵀ` (`[c_out, nb·P] × [nb·P, patch_len]`),
//! - input gradient: `dcol = Wᵀ · dY`, scattered back onto the input (col2im).
//!
//! Every GEMM has `c_out`, `patch_len` or `nb · P` as its long sides, so the SIMD micro-kernels run
//! full. Burn's `flex` backend instead computes the weight gradient as a convolution with the
//! 3×3 output as its "spatial" side (a 9-wide GEMM) and the input gradient as a transposed
//! convolution that multiplies the zeros it inserts for stride 2; see docs/benchmarks.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::gemm_common::{Matrix, Operand, Scratch, gemm, resize, with_scratch};
use super::geometry::ConvGeometry;
use super::winograd;

/// `y[batch, c_out, out_h, out_w]` of input `x[batch, c_in, h, w]` and weight `[c_out, patch_len]`.
pub fn forward(g: &ConvGeometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let _timer = Timer::start(Kernel::Forward);
    assert_lengths(g, x.len(), weight.len(), None);
    if winograd::applies(g) {
        return winograd::forward(g, x, weight);
    }
    let (k, p) = (g.patch_len(), g.positions());
    let mut y: Vec<f32> = Vec::with_capacity(g.output_len());
    with_scratch(|Scratch { col, product, .. }| {
        for chunk in g.chunks() {
            let columns = chunk.len() * p;
            im2col(g, x, chunk.clone(), col);
            resize(product, g.c_out * columns);
            // product[c_out, nb·P] = W[c_out, K] · col[K, nb·P]
            gemm(
                Matrix::row_major(product, g.c_out, columns),
                Operand::row_major(weight, k),
                Operand::row_major(col, columns),
                k,
                false,
            );
            // Every output element of the chunk is written exactly once, straight from the
            // product (no zeroing pass over the output first).
            let out =
                &mut y.spare_capacity_mut()[chunk.start * g.c_out * p..chunk.end * g.c_out * p];
            out.par_chunks_mut(p).enumerate().for_each(|(plane, dst)| {
                let (image, channel) = (plane / g.c_out, plane % g.c_out);
                let src = &product[channel * columns + image * p..][..p];
                for (d, s) in dst.iter_mut().zip(src) {
                    d.write(*s);
                }
            });
        }
    });
    // SAFETY: the chunks cover the batch, so the loop above initialised every element.
    unsafe { y.set_len(g.output_len()) };
    y
}

/// `dW[c_out, patch_len]` of a convolution of `x` whose output gradient is `dy`.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let _timer = Timer::start(Kernel::WeightGrad);
    assert_lengths(g, x.len(), g.weight_len(), Some(dy.len()));
    if winograd::applies(g) {
        return winograd::weight_grad(g, x, dy);
    }
    let k = g.patch_len();
    let mut dw = vec![0.0; g.weight_len()];
    with_scratch(
        |Scratch {
             col, output_grad, ..
         }| {
            for (i, chunk) in g.chunks().enumerate() {
                let columns = chunk.len() * g.positions();
                im2col(g, x, chunk.clone(), col);
                gather_output_grad(g, dy, chunk, output_grad);
                // dW[c_out, K] (+)= dY[c_out, nb·P] · col[K, nb·P]ᵀ
                gemm(
                    Matrix::row_major(&mut dw, g.c_out, k),
                    Operand::row_major(output_grad, columns),
                    Operand::transposed(col, columns),
                    columns,
                    i > 0,
                );
            }
        },
    );
    dw
}

/// `dx[batch, c_in, h, w]` of a convolution with `weight` whose output gradient is `dy`.
pub fn input_grad(g: &ConvGeometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let _timer = Timer::start(Kernel::InputGrad);
    assert_lengths(g, g.input_len(), weight.len(), Some(dy.len()));
    if winograd::applies(g) {
        return winograd::input_grad(g, weight, dy);
    }
    let k = g.patch_len();
    let mut dx = vec![0.0; g.input_len()];
    with_scratch(
        |Scratch {
             product: dcol,
             output_grad,
             ..
         }| {
            for chunk in g.chunks() {
                let columns = chunk.len() * g.positions();
                gather_output_grad(g, dy, chunk.clone(), output_grad);
                resize(dcol, k * columns);
                // dcol[K, nb·P] = W[c_out, K]ᵀ · dY[c_out, nb·P]
                gemm(
                    Matrix::row_major(dcol, k, columns),
                    Operand::transposed(weight, k),
                    Operand::row_major(output_grad, columns),
                    g.c_out,
                    false,
                );
                col2im(g, dcol, chunk, &mut dx);
            }
        },
    );
    dx
}

/// The three kernels, as the timers count them.
#[derive(Clone, Copy)]
enum Kernel {
    Forward,
    InputGrad,
    WeightGrad,
}

/// Nanoseconds spent in each kernel since the process started.
static NANOS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Adds the time until it is dropped to its kernel's total.
struct Timer(Kernel, Instant);

impl Timer {
    fn start(kernel: Kernel) -> Self {
        Self(kernel, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.1.elapsed().as_nanos()).unwrap_or(u64::MAX);
        NANOS[self.0 as usize].fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Wall-clock time spent so far in the forward, input-gradient and weight-gradient kernels.
pub fn kernel_times() -> [Duration; 3] {
    let read = |k: Kernel| Duration::from_nanos(NANOS[k as usize].load(Ordering::Relaxed));
    [
        read(Kernel::Forward),
        read(Kernel::InputGrad),
        read(Kernel::WeightGrad),
    ]
}

fn assert_lengths(g: &ConvGeometry, x: usize, weight: usize, dy: Option<usize>) {
    assert_eq!(x, g.input_len(), "convolution input length");
    assert_eq!(weight, g.weight_len(), "convolution weight length");
    if let Some(dy) = dy {
        assert_eq!(dy, g.output_len(), "convolution output-gradient length");
    }
}

/// Fills `col[K, nb·P]` with the input patches of images `chunk` (zeros where they overhang).
fn im2col(g: &ConvGeometry, x: &[f32], chunk: std::ops::Range<usize>, col: &mut Vec<f32>) {
    let [kh, kw] = g.kernel;
    let (p, plane) = (g.positions(), g.h * g.w);
    let columns = chunk.len() * p;
    resize(col, g.patch_len() * columns);
    // One input channel's kh·kw rows at a time: each task owns its rows.
    col.par_chunks_mut(kh * kw * columns)
        .enumerate()
        .for_each(|(channel, rows)| {
            for (image_in_chunk, image) in chunk.clone().enumerate() {
                let src = &x[(image * g.c_in + channel) * plane..][..plane];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let row = &mut rows[(ky * kw + kx) * columns + image_in_chunk * p..][..p];
                        copy_patch_row(g, src, row, ky, kx);
                    }
                }
            }
        });
}

/// One row of `col` for one image: input plane `src` shifted by kernel offset (ky, kx), zero
/// where the kernel overhangs the input (the row may hold an earlier call's values).
fn copy_patch_row(g: &ConvGeometry, src: &[f32], row: &mut [f32], ky: usize, kx: usize) {
    let [sy, sx] = g.stride;
    let [py, px] = g.padding;
    let (y_lo, y_hi) = ConvGeometry::valid_outputs(g.h, g.out_h, ky, sy, py);
    let (x_lo, x_hi) = ConvGeometry::valid_outputs(g.w, g.out_w, kx, sx, px);
    row[..y_lo * g.out_w].fill(0.0);
    row[y_hi * g.out_w..].fill(0.0);
    for oy in y_lo..y_hi {
        let iy = oy * sy + ky - py;
        let dst = &mut row[oy * g.out_w..][..g.out_w];
        let src_row = &src[iy * g.w..][..g.w];
        let ix0 = x_lo * sx + kx - px;
        dst[..x_lo].fill(0.0);
        dst[x_hi..].fill(0.0);
        if sx == 1 {
            dst[x_lo..x_hi].copy_from_slice(&src_row[ix0..ix0 + (x_hi - x_lo)]);
        } else {
            for (o, d) in dst[x_lo..x_hi].iter_mut().enumerate() {
                *d = src_row[ix0 + o * sx];
            }
        }
    }
}

/// Adds `dcol[K, nb·P]` back onto the input positions it was copied from (the adjoint of
/// [`im2col`]), for images `chunk` of `dx`.
fn col2im(g: &ConvGeometry, dcol: &[f32], chunk: std::ops::Range<usize>, dx: &mut [f32]) {
    let [kh, kw] = g.kernel;
    let [sy, sx] = g.stride;
    let [py, px] = g.padding;
    let (p, plane) = (g.positions(), g.h * g.w);
    let columns = chunk.len() * p;
    let planes = &mut dx[chunk.start * g.c_in * plane..chunk.end * g.c_in * plane];
    // One (image, input channel) plane per task: each task owns what it writes.
    planes
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(index, dst)| {
            let (image_in_chunk, channel) = (index / g.c_in, index % g.c_in);
            for ky in 0..kh {
                let (y_lo, y_hi) = ConvGeometry::valid_outputs(g.h, g.out_h, ky, sy, py);
                for kx in 0..kw {
                    let (x_lo, x_hi) = ConvGeometry::valid_outputs(g.w, g.out_w, kx, sx, px);
                    let row = ((channel * kh + ky) * kw + kx) * columns + image_in_chunk * p;
                    let src = &dcol[row..row + p];
                    for oy in y_lo..y_hi {
                        let iy = oy * sy + ky - py;
                        let ix0 = x_lo * sx + kx - px;
                        let src_row = &src[oy * g.out_w + x_lo..oy * g.out_w + x_hi];
                        let dst_row = &mut dst[iy * g.w..][..g.w];
                        if sx == 1 {
                            for (d, s) in dst_row[ix0..ix0 + src_row.len()].iter_mut().zip(src_row)
                            {
                                *d += s;
                            }
                        } else {
                            for (o, s) in src_row.iter().enumerate() {
                                dst_row[ix0 + o * sx] += s;
                            }
                        }
                    }
                }
            }
        });
}

/// Copies the output gradient of images `chunk` into `[c_out, nb·P]` (channel-major), the layout
/// the GEMMs take it in.
fn gather_output_grad(
    g: &ConvGeometry,
    dy: &[f32],
    chunk: std::ops::Range<usize>,
    out: &mut Vec<f32>,
) {
    let p = g.positions();
    let columns = chunk.len() * p;
    resize(out, g.c_out * columns);
    out.par_chunks_mut(columns)
        .enumerate()
        .for_each(|(channel, row)| {
            for (image_in_chunk, image) in chunk.clone().enumerate() {
                let src = &dy[(image * g.c_out + channel) * p..][..p];
                row[image_in_chunk * p..][..p].copy_from_slice(src);
            }
        });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    pub(in crate::conv) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The convolution by its definition, in float64.
    pub(in crate::conv) fn reference_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        super::super::reference::conv2d_f64(g, x, w, None).y
    }

    fn dot(a: &[f64], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| a * *b as f64).sum()
    }

    fn assert_close(got: &[f32], expected: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}: length");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (*g as f64 - e).abs() <= tol * (1.0 + e.abs()),
                "{what}[{i}]: {g} vs {e}"
            );
        }
    }

    /// Every element within `tol` of the largest `|expected|`: Winograd's rounding error grows
    /// with the output's scale, not with each element's own magnitude.
    pub(in crate::conv) fn assert_close_at_scale(
        got: &[f32],
        expected: &[f64],
        tol: f64,
        what: &str,
    ) {
        assert_eq!(got.len(), expected.len(), "{what}: length");
        let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (*g as f64 - e).abs() <= tol * scale,
                "{what}[{i}]: {g} vs {e} (scale {scale})"
            );
        }
    }

    /// Awkward shapes: stride 2, padding 0 and 1, channel counts off the SIMD width, batch 1,
    /// non-square inputs and kernels, 1×1 and 7×7 kernels, and 3×3 stride-1 planes that do not
    /// fill Winograd's 4×4 output tiles.
    fn geometries() -> Vec<ConvGeometry> {
        [
            ([1, 3, 7, 6], [5, 3, 3, 3], [1, 1], [1, 1]),
            ([2, 5, 9, 9], [7, 5, 3, 3], [2, 2], [1, 1]),
            ([3, 4, 8, 10], [6, 4, 3, 3], [1, 1], [0, 0]),
            ([2, 6, 8, 8], [17, 6, 1, 1], [2, 2], [0, 0]),
            ([2, 17, 5, 5], [3, 17, 1, 1], [1, 1], [0, 0]),
            ([1, 3, 15, 13], [4, 3, 7, 7], [2, 2], [3, 3]),
            ([2, 3, 6, 7], [2, 3, 2, 3], [2, 1], [0, 1]),
            // Winograd planes narrower than a tile, and with partial tiles on both axes.
            ([2, 4, 1, 5], [3, 4, 3, 3], [1, 1], [1, 1]),
            ([1, 9, 5, 9], [4, 9, 3, 3], [1, 1], [1, 1]),
        ]
        .into_iter()
        .map(|(x, w, s, p)| ConvGeometry::new(x, w, s, p).unwrap())
        .collect()
    }

    #[test]
    fn forward_matches_the_definition_in_float64() {
        for (i, g) in geometries().iter().enumerate() {
            let x = values(g.input_len(), 1 + i as u64);
            let w = values(g.weight_len(), 100 + i as u64);
            assert_close_at_scale(
                &forward(g, &x, &w),
                &reference_forward(g, &x, &w),
                1e-5,
                "y",
            );
        }
    }

    /// Both gradients against the float64 adjoint: for a random output weighting `r`,
    /// `d(r·y)/dx` and `d(r·y)/dW`, each element read off the exact bilinear form
    /// (y is linear in x and in W, so a unit perturbation gives the derivative exactly).
    #[test]
    fn gradients_match_the_float64_adjoint() {
        for (i, g) in geometries().iter().enumerate() {
            let x = values(g.input_len(), 10 + i as u64);
            let w = values(g.weight_len(), 200 + i as u64);
            let r = values(g.output_len(), 300 + i as u64);
            let r64: Vec<f64> = r.iter().map(|&v| v as f64).collect();
            let dx = input_grad(g, &w, &r);
            let dw = weight_grad(g, &x, &r);
            let expected_dx: Vec<f64> = (0..x.len())
                .map(|j| {
                    let mut e = vec![0.0; x.len()];
                    e[j] = 1.0;
                    reference_forward(g, &e, &w)
                        .iter()
                        .zip(&r64)
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            let expected_dw: Vec<f64> = (0..w.len())
                .map(|j| {
                    let mut e = vec![0.0; w.len()];
                    e[j] = 1.0;
                    dot(&reference_forward(g, &x, &e), &r)
                })
                .collect();
            assert_close(&dx, &expected_dx, 1e-5, "dx");
            assert_close(&dw, &expected_dw, 1e-5, "dW");
        }
    }

    /// Finite differences of `L = Σ r·y` through the f32 kernels themselves: a stride-2
    /// convolution (im2col) and a 3×3 stride-1 one (Winograd).
    #[test]
    fn gradients_match_finite_differences() {
        for g in [geometries()[1], geometries()[0]] {
            let x = values(g.input_len(), 7);
            let w = values(g.weight_len(), 8);
            let r = values(g.output_len(), 9);
            let loss = |x: &[f32], w: &[f32]| -> f64 {
                forward(&g, x, w)
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum()
            };
            let (dx, dw) = (input_grad(&g, &w, &r), weight_grad(&g, &x, &r));
            let h = 1e-2f32;
            for j in (0..x.len()).step_by(13) {
                let (mut up, mut down) = (x.clone(), x.clone());
                up[j] += h;
                down[j] -= h;
                let fd = (loss(&up, &w) - loss(&down, &w)) / (2.0 * h as f64);
                assert!(
                    (fd - dx[j] as f64).abs() < 1e-3,
                    "dx[{j}]: {} vs {fd}",
                    dx[j]
                );
            }
            for j in (0..w.len()).step_by(7) {
                let (mut up, mut down) = (w.clone(), w.clone());
                up[j] += h;
                down[j] -= h;
                let fd = (loss(&x, &up) - loss(&x, &down)) / (2.0 * h as f64);
                assert!(
                    (fd - dw[j] as f64).abs() < 1e-3,
                    "dW[{j}]: {} vs {fd}",
                    dw[j]
                );
            }
        }
    }

    /// Many chunks (a batch larger than one chunk holds) give the same sums as one.
    #[test]
    fn chunked_batches_match_the_definition() {
        let g = ConvGeometry::new([40, 64, 16, 16], [8, 64, 3, 3], [1, 1], [1, 1]).unwrap();
        assert!(g.images_per_chunk() < g.batch);
        let x = values(g.input_len(), 21);
        let w = values(g.weight_len(), 22);
        let r = values(g.output_len(), 23);
        let y = forward(&g, &x, &w);
        let expected = reference_forward(&g, &x, &w);
        assert_close_at_scale(&y, &expected, 2e-5, "y");
        // dW by the bilinear identity: Σ_j dW_j · W_j = Σ r · y (y is linear in W).
        let dw = weight_grad(&g, &x, &r);
        let lhs: f64 = dw.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
        let rhs: f64 = expected.iter().zip(&r).map(|(a, b)| a * *b as f64).sum();
        assert!(
            (lhs - rhs).abs() < 1e-3 * rhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        let dx = input_grad(&g, &w, &r);
        let lhs: f64 = dx.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!(
            (lhs - rhs).abs() < 1e-3 * rhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
