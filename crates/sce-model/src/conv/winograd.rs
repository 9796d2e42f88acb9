//! Winograd F(2×2, 3×3) for 3×3, stride-1, padding-1 convolutions: each 2×2 output tile from a
//! 4×4 input tile with 16 multiplications per channel pair instead of 36, 2.25× fewer than
//! im2col's GEMM (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Per chunk of images: the input tiles are transformed (`V = Bᵀ d B`), the weights once
//! (`U = G g Gᵀ`), then 16 GEMMs, one per position ξ of the 4×4 transformed tile,
//! `M_ξ[c_out, tiles] = U_ξ[c_out, c_in] · V_ξ[c_in, tiles]`, and each 4×4 `M` tile is
//! transformed back to a 2×2 output tile (`Y = Aᵀ M A`). Such convolutions hold most of a
//! ResNet's arithmetic; the input gradient of one is another (see [`input_grad`]), and the
//! weight gradient is the forward map's adjoint in the same transformed space ([`weight_grad`]).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::geometry::ConvGeometry;
use super::kernels::{Matrix, Operand, Scratch, gemm_serial, with_scratch};

thread_local! {
    /// The per-plane transforms' row buffers, kept per thread. A training step transforms over
    /// a million planes; allocating their few short rows at each one cost about as much as
    /// transforming the smallest planes (4×4 and 8×8).
    static PLANE_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's row buffer, `len` long; `f` must write before it reads.
fn with_plane_rows<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    PLANE_ROWS.with_borrow_mut(|buffer| {
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
        f(&mut buffer[..len])
    })
}

/// Whether `g` is a convolution these kernels compute.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.padding == [1, 1]
}

/// Elements of the transformed input one chunk of images may fill (4 MiB of f32).
const TRANSFORM_BUDGET: usize = 1 << 20;

/// `y[batch, c_out, h, w]` of `x[batch, c_in, h, w]` convolved with `weight[c_out, c_in, 3, 3]`.
pub fn forward(g: &ConvGeometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    debug_assert!(applies(g));
    let (tiles_per_image, images) = tiling(g);
    let u = transform_weights(weight, g.c_out, g.c_in);
    let mut y: Vec<f32> = Vec::with_capacity(g.output_len());
    let plane_out = g.positions();
    with_scratch(
        |Scratch {
             col: v, product: m, ..
         }| {
            for start in (0..g.batch).step_by(images) {
                let end = (start + images).min(g.batch);
                let tiles = (end - start) * tiles_per_image;
                transform_planes(g, x, g.c_in, start..end, v, transform_input_tiles);
                // M[ξ][c_out][tiles] = U_ξ · V_ξ: the 16 products in parallel, each on one thread.
                m.resize(16 * g.c_out * tiles, 0.0);
                m.par_chunks_mut(g.c_out * tiles)
                    .enumerate()
                    .for_each(|(xi, m_xi)| {
                        gemm_serial(
                            Matrix::row_major(m_xi, g.c_out, tiles),
                            Operand::row_major(
                                &u[xi * g.c_out * g.c_in..][..g.c_out * g.c_in],
                                g.c_in,
                            ),
                            Operand::row_major(&v[xi * tiles..], 16 * tiles),
                            g.c_in,
                            false,
                        );
                    });
                // Every output element is written once by the output transform (no zeroing
                // pass over the output first).
                let out = &mut y.spare_capacity_mut()
                    [start * g.c_out * plane_out..end * g.c_out * plane_out];
                out.par_chunks_mut(plane_out)
                    .enumerate()
                    .for_each(|(plane, dst)| {
                        let (j, channel) = (plane / g.c_out, plane % g.c_out);
                        let rows = &m[channel * tiles..];
                        transform_output_tiles(
                            rows,
                            g.c_out * tiles,
                            j * tiles_per_image,
                            dst,
                            g.h,
                            g.w,
                        );
                    });
            }
        },
    );
    // SAFETY: the chunks cover the batch and the output transform writes every element of each
    // plane, so every element was initialised above.
    unsafe { y.set_len(g.output_len()) };
    y
}

/// Output tiles of one image, and the images per chunk: as many as keep the larger transformed
/// tensor within [`TRANSFORM_BUDGET`], at least one.
fn tiling(g: &ConvGeometry) -> (usize, usize) {
    let tiles_per_image = g.h.div_ceil(2) * g.w.div_ceil(2);
    let per_image = 16 * g.c_in.max(g.c_out) * tiles_per_image;
    (
        tiles_per_image,
        (TRANSFORM_BUDGET / per_image).clamp(1, g.batch),
    )
}

/// The per-plane tile transforms below: `(plane, h, w, rows, row length, first tile)`.
type PlaneTransform = fn(&[f32], usize, usize, &mut [f32], usize, usize);

/// Fills `out[channel][ξ][tiles]` with `transform` of every `h × w` plane of images `chunk` of
/// `t` (`[batch, channels, h, w]`); each channel's 16 rows are one task's.
fn transform_planes(
    g: &ConvGeometry,
    t: &[f32],
    channels: usize,
    chunk: std::ops::Range<usize>,
    out: &mut Vec<f32>,
    transform: PlaneTransform,
) {
    let (tiles_per_image, _) = tiling(g);
    let tiles = chunk.len() * tiles_per_image;
    let plane = g.h * g.w;
    out.resize(channels * 16 * tiles, 0.0);
    out.par_chunks_mut(16 * tiles)
        .enumerate()
        .for_each(|(channel, rows)| {
            for (j, image) in chunk.clone().enumerate() {
                let src = &t[(image * channels + channel) * plane..][..plane];
                transform(src, g.h, g.w, rows, tiles, j * tiles_per_image);
            }
        });
}

/// `dx` of a 3×3, stride-1, padding-1 convolution: the convolution of `dy` with the weights
/// turned 180° and their channel axes swapped, itself 3×3, stride 1, padding 1.
pub fn input_grad(g: &ConvGeometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    debug_assert!(applies(g));
    let mut flipped = vec![0.0f32; weight.len()];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            for k in 0..9 {
                flipped[(ci * g.c_out + co) * 9 + 8 - k] = weight[(co * g.c_in + ci) * 9 + k];
            }
        }
    }
    let adjoint = ConvGeometry {
        c_in: g.c_out,
        c_out: g.c_in,
        ..*g
    };
    forward(&adjoint, dy, &flipped)
}

/// `dW[c_out, c_in, 3, 3]` of a 3×3, stride-1, padding-1 convolution of `x` whose output
/// gradient is `dy`: the forward map's adjoint, `dU_ξ = Σ_tiles (A dY Aᵀ)_ξ · (Bᵀ d B)_ξ`
/// (16 products whose depth is the number of tiles), then `dW = Gᵀ dU G`.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    debug_assert!(applies(g));
    let (tiles_per_image, images) = tiling(g);
    // dU[ξ][c_out][c_in], summed over chunks.
    let mut du = vec![0.0f32; 16 * g.c_out * g.c_in];
    with_scratch(
        |Scratch {
             col: v,
             product: dm,
             ..
         }| {
            for (chunk, start) in (0..g.batch).step_by(images).enumerate() {
                let end = (start + images).min(g.batch);
                let tiles = (end - start) * tiles_per_image;
                transform_planes(g, x, g.c_in, start..end, v, transform_input_tiles);
                transform_planes(g, dy, g.c_out, start..end, dm, transform_output_grad_tiles);
                du.par_chunks_mut(g.c_out * g.c_in)
                    .enumerate()
                    .for_each(|(xi, du_xi)| {
                        gemm_serial(
                            Matrix::row_major(du_xi, g.c_out, g.c_in),
                            Operand::row_major(&dm[xi * tiles..], 16 * tiles),
                            Operand::transposed(&v[xi * tiles..], 16 * tiles),
                            tiles,
                            chunk > 0,
                        );
                    });
            }
        },
    );
    untransform_weight_grad(&du, g.c_out, g.c_in)
}

/// `dW = Gᵀ dU G` for every channel pair, with `Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]]`.
fn untransform_weight_grad(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let pairs = c_out * c_in;
    let mut dw = vec![0.0f32; 9 * pairs];
    for (pair, out) in dw.chunks_exact_mut(9).enumerate() {
        let u = |r: usize, c: usize| du[(r * 4 + c) * pairs + pair];
        // s = Gᵀ dU (3×4), then s G (3×3).
        let s: [[f32; 4]; 3] = [
            std::array::from_fn(|c| u(0, c) + 0.5 * (u(1, c) + u(2, c))),
            std::array::from_fn(|c| 0.5 * (u(1, c) - u(2, c))),
            std::array::from_fn(|c| 0.5 * (u(1, c) + u(2, c)) + u(3, c)),
        ];
        for (r, [a, b, c, d]) in s.into_iter().enumerate() {
            out[r * 3] = a + 0.5 * (b + c);
            out[r * 3 + 1] = 0.5 * (b - c);
            out[r * 3 + 2] = 0.5 * (b + c) + d;
        }
    }
    dw
}

/// Fills `buffer`, rows of `padded` values, with the `h × w` plane's rows from
/// `first_row − pad` on, each shifted right by `pad`; zero wherever that falls outside the plane.
fn load_padded_rows(
    src: &[f32],
    h: usize,
    w: usize,
    first_row: usize,
    pad: usize,
    padded: usize,
    buffer: &mut [f32],
) {
    for (r, row) in buffer.chunks_exact_mut(padded).enumerate() {
        row.fill(0.0);
        let y = (first_row + r).wrapping_sub(pad);
        if y < h {
            row[pad..pad + w].copy_from_slice(&src[y * w..][..w]);
        }
    }
}

/// Writes `A e Aᵀ` of every 2×2 tile `e` of one `h × w` output-gradient plane (zero outside
/// it) into `rows[ξ][offset + tile]`, with `A = [[1, 0], [1, 1], [1, −1], [0, −1]]`.
fn transform_output_grad_tiles(
    src: &[f32],
    h: usize,
    w: usize,
    rows: &mut [f32],
    stride: usize,
    offset: usize,
) {
    let tw = w.div_ceil(2);
    let padded = 2 * tw;
    with_plane_rows(2 * padded, |e| {
        for ty in 0..h.div_ceil(2) {
            load_padded_rows(src, h, w, 2 * ty, 0, padded, e);
            let (e0, e1) = e.split_at(padded);
            let first = offset + ty * tw;
            // t = A e: rows e0, e0 + e1, e0 − e1, −e1; then · Aᵀ per tile: a, a + b, a − b, −b.
            for r in 0..4 {
                let t = |i: usize| match r {
                    0 => e0[i],
                    1 => e0[i] + e1[i],
                    2 => e0[i] - e1[i],
                    _ => -e1[i],
                };
                for c in 0..4 {
                    let out = &mut rows[(r * 4 + c) * stride + first..][..tw];
                    for (tx, o) in out.iter_mut().enumerate() {
                        let (a, b) = (t(2 * tx), t(2 * tx + 1));
                        *o = match c {
                            0 => a,
                            1 => a + b,
                            2 => a - b,
                            _ => -b,
                        };
                    }
                }
            }
        }
    });
}

/// `U[ξ][c_out][c_in] = G g Gᵀ` for every 3×3 filter `g`, with
/// `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transform_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 16 * c_out * c_in];
    for (pair, g) in weight.chunks_exact(9).enumerate() {
        // t = G g (4×3), then t Gᵀ (4×4).
        let mut t = [[0.0f32; 3]; 4];
        for c in 0..3 {
            let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
            t[0][c] = g0;
            t[1][c] = 0.5 * (g0 + g1 + g2);
            t[2][c] = 0.5 * (g0 - g1 + g2);
            t[3][c] = g2;
        }
        for (r, row) in t.iter().enumerate() {
            let [a, b, c] = *row;
            let out = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
            for (col, value) in out.into_iter().enumerate() {
                u[(r * 4 + col) * c_out * c_in + pair] = value;
            }
        }
    }
    u
}

/// Writes `Bᵀ d B` of every 4×4 input tile of one `h × w` plane (zero outside it) into
/// `rows[ξ][offset + tile]`, rows being `stride` long, with `Bᵀ = [[1, 0, −1, 0],
/// [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`. One row of tiles at a time: `Bᵀ d` over the
/// four input rows as whole-row vector operations, then `· B` tile by tile, each ξ's values
/// of the tile row written contiguously.
fn transform_input_tiles(
    src: &[f32],
    h: usize,
    w: usize,
    rows: &mut [f32],
    stride: usize,
    offset: usize,
) {
    let tw = w.div_ceil(2);
    // Padded columns: index i holds input column i − 1.
    let padded = 2 * tw + 2;
    with_plane_rows(8 * padded + 2 * (tw + 1), |buffer| {
        let (d, rest) = buffer.split_at_mut(4 * padded);
        let (t, rest) = rest.split_at_mut(4 * padded);
        let (even, odd) = rest.split_at_mut(tw + 1);
        for ty in 0..h.div_ceil(2) {
            load_padded_rows(src, h, w, 2 * ty, 1, padded, d);
            let (d0, rest) = d.split_at(padded);
            let (d1, rest) = rest.split_at(padded);
            let (d2, d3) = rest.split_at(padded);
            let (t0, rest) = t.split_at_mut(padded);
            let (t1, rest) = rest.split_at_mut(padded);
            let (t2, t3) = rest.split_at_mut(padded);
            for i in 0..padded {
                t0[i] = d0[i] - d2[i];
                t1[i] = d1[i] + d2[i];
                t2[i] = d2[i] - d1[i];
                t3[i] = d1[i] - d3[i];
            }
            let first = offset + ty * tw;
            for (r, t) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                // Even and odd columns apart, so that every loop below reads unit-stride.
                for (k, pair) in t.chunks_exact(2).enumerate() {
                    even[k] = pair[0];
                    odd[k] = pair[1];
                }
                // Tile tx reads padded columns 2tx … 2tx+3: even[tx], odd[tx], even[tx+1], odd[tx+1].
                let (e0, e1, o0, o1) = (&even[..tw], &even[1..=tw], &odd[..tw], &odd[1..=tw]);
                let base = r * 4 * stride + first;
                let block = &mut rows[base..base + 3 * stride + tw];
                let (out0, rest) = block.split_at_mut(stride);
                let (out1, rest) = rest.split_at_mut(stride);
                let (out2, out3) = rest.split_at_mut(stride);
                let (out0, out1, out2, out3) = (
                    &mut out0[..tw],
                    &mut out1[..tw],
                    &mut out2[..tw],
                    &mut out3[..tw],
                );
                for tx in 0..tw {
                    out0[tx] = e0[tx] - e1[tx];
                    out1[tx] = o0[tx] + e1[tx];
                    out2[tx] = e1[tx] - o0[tx];
                    out3[tx] = o0[tx] - o1[tx];
                }
            }
        }
    });
}

/// Writes `Aᵀ M A` of every 4×4 tile `rows[ξ][offset + tile]` into one `h × w` output plane
/// (dropping what falls outside it), with `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`, a row of
/// tiles at a time as for the input. Writes every element of `dst`.
fn transform_output_tiles(
    rows: &[f32],
    stride: usize,
    offset: usize,
    dst: &mut [MaybeUninit<f32>],
    h: usize,
    w: usize,
) {
    let tw = w.div_ceil(2);
    // t[r][c][tx] = (Aᵀ M)[r][c] of tile tx.
    with_plane_rows(8 * tw, |t| {
        for ty in 0..h.div_ceil(2) {
            let first = offset + ty * tw;
            let m = |r: usize, c: usize| &rows[(r * 4 + c) * stride + first..][..tw];
            for c in 0..4 {
                let (m0, m1, m2, m3) = (m(0, c), m(1, c), m(2, c), m(3, c));
                let (top, bottom) = t.split_at_mut(4 * tw);
                let top = &mut top[c * tw..][..tw];
                let bottom = &mut bottom[c * tw..][..tw];
                for tx in 0..tw {
                    top[tx] = m0[tx] + m1[tx] + m2[tx];
                    bottom[tx] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            for r in 0..2 {
                let y = 2 * ty + r;
                if y >= h {
                    break;
                }
                let t = &t[r * 4 * tw..][..4 * tw];
                let (t0, t1, t2, t3) = (&t[..tw], &t[tw..2 * tw], &t[2 * tw..3 * tw], &t[3 * tw..]);
                let out = &mut dst[y * w..][..w];
                for tx in 0..tw {
                    out[2 * tx].write(t0[tx] + t1[tx] + t2[tx]);
                    if 2 * tx + 1 < w {
                        out[2 * tx + 1].write(t1[tx] - t2[tx] - t3[tx]);
                    }
                }
            }
        }
    });
}
