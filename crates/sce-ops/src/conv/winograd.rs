//! Winograd F(4×4, 3×3) for 3×3, stride-1, padding-1 convolutions: each 4×4 output tile from a
//! 6×6 input tile with 36 multiplications per channel pair instead of 144, 4× fewer than
//! im2col's GEMM (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016,
//! with their interpolation points 0, ±1, ±2).
//!
//! Per chunk of images: the input tiles are transformed (`V = Bᵀ d B`), the weights once
//! (`U = G g Gᵀ`), then 36 GEMMs, one per position ξ of the 6×6 transformed tile,
//! `M_ξ[c_out, tiles] = U_ξ[c_out, c_in] · V_ξ[c_in, tiles]`, and each 6×6 `M` tile is
//! transformed back to a 4×4 output tile (`Y = Aᵀ M A`). Such convolutions hold most of a
//! ResNet's arithmetic; the input gradient of one is another (see [`input_grad`]), and the
//! weight gradient is the forward map's adjoint in the same transformed space ([`weight_grad`]).
//!
//! F(4×4) rather than F(2×2, 3×3) (16 multiplications per 2×2 tile): 2.25 transformed values
//! per input value instead of 4, so the transforms move less memory too; its larger rounding
//! error (the points ±2 scale some terms by 8) is checked against the float64 definition.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm_common::{Matrix, Operand, Scratch, gemm_serial, resize, with_scratch};
use super::geometry::ConvGeometry;

/// Side of an output tile.
const TILE: usize = 4;
/// Side of an input (and transformed) tile.
const ALPHA: usize = 6;
/// Positions ξ of a transformed tile: one GEMM each.
const POSITIONS: usize = ALPHA * ALPHA;

thread_local! {
    /// The per-plane transforms' row buffers, kept per thread. A training step transforms
    /// hundreds of thousands of planes; allocating their few short rows at each one cost about
    /// as much as transforming the smallest planes (4×4 and 8×8).
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
    convolve(g, x, weight, false)
}

/// [`forward`]; or, when `flipped`, the convolution with `weight`'s filters turned 180° and its
/// channel axes swapped (`weight` is then `[g.c_in, g.c_out, 3, 3]`): [`input_grad`].
fn convolve(g: &ConvGeometry, x: &[f32], weight: &[f32], flipped: bool) -> Vec<f32> {
    let (tiles_per_image, images) = tiling(g);
    let mut y: Vec<f32> = Vec::with_capacity(g.output_len());
    let plane_out = g.positions();
    with_scratch(
        |Scratch {
             col: v,
             product: m,
             weights: u,
             ..
         }| {
            transform_weights(weight, g.c_out * g.c_in, flipped, u);
            for start in (0..g.batch).step_by(images) {
                let end = (start + images).min(g.batch);
                let tiles = (end - start) * tiles_per_image;
                transform_planes(g, x, g.c_in, start..end, v, transform_input_tiles);
                // M[ξ][c_out][tiles] = U_ξ · V_ξ: the 36 products in parallel, each on one thread.
                m.resize(POSITIONS * g.c_out * tiles, 0.0);
                m.par_chunks_mut(g.c_out * tiles)
                    .enumerate()
                    .for_each(|(xi, m_xi)| {
                        // U_ξ is `[c_out, c_in]`, or, flipped, U_ξᵀ stored as `[c_in, c_out]`.
                        let u_xi = &u[xi * g.c_out * g.c_in..][..g.c_out * g.c_in];
                        let u_xi = if flipped {
                            Operand::transposed(u_xi, g.c_out)
                        } else {
                            Operand::row_major(u_xi, g.c_in)
                        };
                        gemm_serial(
                            Matrix::row_major(m_xi, g.c_out, tiles),
                            u_xi,
                            Operand::row_major(&v[xi * tiles..], POSITIONS * tiles),
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
    let tiles_per_image = g.h.div_ceil(TILE) * g.w.div_ceil(TILE);
    let per_image = POSITIONS * g.c_in.max(g.c_out) * tiles_per_image;
    (
        tiles_per_image,
        (TRANSFORM_BUDGET / per_image).clamp(1, g.batch),
    )
}

/// The per-plane tile transforms below: `(plane, h, w, rows, row length, first tile)`.
type PlaneTransform = fn(&[f32], usize, usize, &mut [f32], usize, usize);

/// Fills `out[channel][ξ][tiles]` with `transform` of every `h × w` plane of images `chunk` of
/// `t` (`[batch, channels, h, w]`); each channel's 36 rows are one task's.
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
    out.resize(channels * POSITIONS * tiles, 0.0);
    out.par_chunks_mut(POSITIONS * tiles)
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
    let adjoint = ConvGeometry {
        c_in: g.c_out,
        c_out: g.c_in,
        ..*g
    };
    convolve(&adjoint, dy, weight, true)
}

/// `dW[c_out, c_in, 3, 3]` of a 3×3, stride-1, padding-1 convolution of `x` whose output
/// gradient is `dy`: the forward map's adjoint, `dU_ξ = Σ_tiles (A dY Aᵀ)_ξ · (Bᵀ d B)_ξ`
/// (36 products whose depth is the number of tiles), then `dW = Gᵀ dU G`.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    debug_assert!(applies(g));
    let (tiles_per_image, images) = tiling(g);
    with_scratch(
        |Scratch {
             col: v,
             product: dm,
             weights: du,
             ..
         }| {
            // dU[ξ][c_out][c_in], summed over chunks (the first overwrites).
            resize(du, POSITIONS * g.c_out * g.c_in);
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
                            Operand::row_major(&dm[xi * tiles..], POSITIONS * tiles),
                            Operand::transposed(&v[xi * tiles..], POSITIONS * tiles),
                            tiles,
                            chunk > 0,
                        );
                    });
            }
            untransform_weight_grad(du, g.c_out, g.c_in)
        },
    )
}

/// Channel pairs per task of the weight transforms.
const PAIR_BLOCK: usize = 1024;

/// `G` applied to a filter's three values along one axis, with `G = [[¼, 0, 0], [−⅙, −⅙, −⅙],
/// [−⅙, ⅙, −⅙], [1/24, 1/12, ⅙], [1/24, −1/12, ⅙], [0, 0, 1]]`.
#[inline(always)]
fn weight_points([g0, g1, g2]: [f32; 3]) -> [f32; 6] {
    let (outer, middle) = (g0 + g2, g1);
    let (near, far) = (g0 + 4.0 * g2, 2.0 * g1);
    [
        0.25 * g0,
        -(outer + middle) / 6.0,
        -(outer - middle) / 6.0,
        (near + far) / 24.0,
        (near - far) / 24.0,
        g2,
    ]
}

/// `Gᵀ` applied to six values: the adjoint of [`weight_points`].
#[inline(always)]
fn weight_grad_points([v0, v1, v2, v3, v4, v5]: [f32; 6]) -> [f32; 3] {
    [
        0.25 * v0 - (v1 + v2) / 6.0 + (v3 + v4) / 24.0,
        (v2 - v1) / 6.0 + (v3 - v4) / 12.0,
        (v3 + v4 - v1 - v2) / 6.0 + v5,
    ]
}

/// `Bᵀ` applied to six values (a row or a column of an input tile), with `Bᵀ =
/// [[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0], [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0],
/// [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0, 1]]`.
#[inline(always)]
fn input_points([e0, e1, e2, e3, e4, e5]: [f32; 6]) -> [f32; 6] {
    let (a, b) = (e4 - 4.0 * e2, e3 - 4.0 * e1);
    let (c, d) = (e4 - e2, 2.0 * (e3 - e1));
    [
        4.0 * e0 - 5.0 * e2 + e4,
        a + b,
        a - b,
        c + d,
        c - d,
        4.0 * e1 - 5.0 * e3 + e5,
    ]
}

/// `Aᵀ` applied to six values (a row or a column of a product tile), with `Aᵀ =
/// [[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0], [0, 1, 1, 4, 4, 0], [0, 1, −1, 8, −8, 1]]`.
#[inline(always)]
fn output_points([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
    let (s, d) = (m1 + m2, m1 - m2);
    let (s34, d34) = (m3 + m4, m3 - m4);
    [
        m0 + s + s34,
        d + 2.0 * d34,
        s + 4.0 * s34,
        d + 8.0 * d34 + m5,
    ]
}

/// `A` applied to four values (a row or a column of an output-gradient tile): the adjoint of
/// [`output_points`].
#[inline(always)]
fn output_grad_points([e0, e1, e2, e3]: [f32; 4]) -> [f32; 6] {
    let (even, odd) = (e0 + e2, e1 + e3);
    let (even4, odd4) = (e0 + 4.0 * e2, 2.0 * (e1 + 4.0 * e3));
    [e0, even + odd, even - odd, even4 + odd4, even4 - odd4, e3]
}

/// `u[ξ][pair] = (G g Gᵀ)_ξ` for the 3×3 filter `g` of each channel pair of `weight`
/// (`[pairs, 3, 3]`), turned 180° first when `flipped`; in parallel over blocks of pairs.
fn transform_weights(weight: &[f32], pairs: usize, flipped: bool, u: &mut Vec<f32>) {
    resize(u, POSITIONS * pairs);
    // Each task writes its block of pairs in all 36 rows.
    let mut rows: Vec<_> = u
        .chunks_mut(pairs)
        .map(|row| row.chunks_mut(PAIR_BLOCK))
        .collect();
    let blocks: Vec<Vec<&mut [f32]>> = (0..pairs.div_ceil(PAIR_BLOCK))
        .map(|_| {
            rows.iter_mut()
                .map(|row| row.next().expect("every row has every block"))
                .collect()
        })
        .collect();
    blocks.into_par_iter().enumerate().for_each(|(block, out)| {
        let filters = &weight[9 * block * PAIR_BLOCK..][..9 * out[0].len()];
        // The block's transforms pair by pair (`[pair][ξ]`), then each ξ's row written out
        // contiguously.
        with_plane_rows(POSITIONS * PAIR_BLOCK, |transformed| {
            for (taps, u) in filters
                .chunks_exact(9)
                .zip(transformed.chunks_exact_mut(POSITIONS))
            {
                let g: [f32; 9] =
                    std::array::from_fn(|k| if flipped { taps[8 - k] } else { taps[k] });
                // t = G g (6×3), then t Gᵀ (6×6).
                let columns: [[f32; 6]; 3] =
                    std::array::from_fn(|c| weight_points([g[c], g[3 + c], g[6 + c]]));
                for (r, row) in u.chunks_exact_mut(ALPHA).enumerate() {
                    row.copy_from_slice(&weight_points([
                        columns[0][r],
                        columns[1][r],
                        columns[2][r],
                    ]));
                }
            }
            for (xi, row) in out.into_iter().enumerate() {
                for (p, value) in row.iter_mut().enumerate() {
                    *value = transformed[p * POSITIONS + xi];
                }
            }
        });
    });
}

/// `dW = Gᵀ dU G` for every channel pair of `du[ξ][c_out][c_in]`.
fn untransform_weight_grad(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let pairs = c_out * c_in;
    let mut dw = vec![0.0f32; 9 * pairs];
    dw.par_chunks_mut(9 * PAIR_BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            for (p, out) in out.chunks_exact_mut(9).enumerate() {
                let pair = block * PAIR_BLOCK + p;
                let v = |r: usize, c: usize| du[(r * ALPHA + c) * pairs + pair];
                // s = Gᵀ dU (3×6), then s G (3×3).
                let columns: [[f32; 3]; ALPHA] =
                    std::array::from_fn(|c| weight_grad_points(std::array::from_fn(|r| v(r, c))));
                for (i, row) in out.chunks_exact_mut(3).enumerate() {
                    row.copy_from_slice(&weight_grad_points(std::array::from_fn(|c| {
                        columns[c][i]
                    })));
                }
            }
        });
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

/// `N` rows of `len` values, `stride` apart from `base` on: one tile row's values of `N`
/// consecutive positions ξ.
fn strided_rows<const N: usize>(
    rows: &mut [f32],
    base: usize,
    stride: usize,
    len: usize,
) -> [&mut [f32]; N] {
    let mut rest = &mut rows[base..];
    std::array::from_fn(|i| {
        let taken = std::mem::take(&mut rest);
        let (row, tail) = if i + 1 < N {
            taken.split_at_mut(stride)
        } else {
            (taken, Default::default())
        };
        rest = tail;
        &mut row[..len]
    })
}

/// Splits `t` into its `phases` columns modulo `phases`: `out[j][k] = t[phases·k + j]`, so that
/// the per-tile loops read unit-stride.
fn deinterleave(t: &[f32], phases: usize, out: &mut [f32]) {
    let len = t.len() / phases;
    for (k, group) in t.chunks_exact(phases).enumerate() {
        for (j, value) in group.iter().enumerate() {
            out[j * len + k] = *value;
        }
    }
}

/// `t` (six rows) `= points` applied to every column of `rows` (`N` rows of the same length as
/// `t`'s): the left factor of a tile row's transform, as whole-row vector operations.
#[inline(always)]
fn transform_columns<const N: usize>(
    rows: &[f32],
    t: &mut [f32],
    points: impl Fn([f32; N]) -> [f32; ALPHA],
) {
    let len = rows.len() / N;
    let rows: [&[f32]; N] = std::array::from_fn(|k| &rows[k * len..][..len]);
    let [t0, t1, t2, t3, t4, t5] = strided_rows::<ALPHA>(t, 0, len, len);
    for i in 0..len {
        let [o0, o1, o2, o3, o4, o5] = points(std::array::from_fn(|k| rows[k][i]));
        (t0[i], t1[i], t2[i], t3[i], t4[i], t5[i]) = (o0, o1, o2, o3, o4, o5);
    }
}

/// Writes `Bᵀ d B` of every 6×6 input tile of one `h × w` plane (zero outside it) into
/// `rows[ξ][offset + tile]`, rows being `stride` long. One row of tiles at a time: `Bᵀ d` over
/// the six input rows as whole-row vector operations, then `· B` tile by tile, each ξ's values
/// of the tile row written contiguously.
fn transform_input_tiles(
    src: &[f32],
    h: usize,
    w: usize,
    rows: &mut [f32],
    stride: usize,
    offset: usize,
) {
    let tw = w.div_ceil(TILE);
    // Padded columns: index i holds input column i − 1; tile tx reads 4tx … 4tx + 5.
    let padded = TILE * (tw + 1);
    with_plane_rows(2 * ALPHA * padded + padded, |buffer| {
        let (d, rest) = buffer.split_at_mut(ALPHA * padded);
        let (t, phases) = rest.split_at_mut(ALPHA * padded);
        for ty in 0..h.div_ceil(TILE) {
            load_padded_rows(src, h, w, TILE * ty, 1, padded, d);
            transform_columns(d, t, input_points);
            let first = offset + ty * tw;
            for (r, t_r) in t.chunks_exact(padded).enumerate() {
                deinterleave(t_r, TILE, phases);
                let p: [&[f32]; TILE] = std::array::from_fn(|j| &phases[j * (tw + 1)..][..tw + 1]);
                let [o0, o1, o2, o3, o4, o5] =
                    strided_rows::<ALPHA>(rows, r * ALPHA * stride + first, stride, tw);
                for tx in 0..tw {
                    let e = [
                        p[0][tx],
                        p[1][tx],
                        p[2][tx],
                        p[3][tx],
                        p[0][tx + 1],
                        p[1][tx + 1],
                    ];
                    let [v0, v1, v2, v3, v4, v5] = input_points(e);
                    (o0[tx], o1[tx], o2[tx], o3[tx], o4[tx], o5[tx]) = (v0, v1, v2, v3, v4, v5);
                }
            }
        }
    });
}

/// Writes `A e Aᵀ` of every 4×4 tile `e` of one `h × w` output-gradient plane (zero outside
/// it) into `rows[ξ][offset + tile]`: the adjoint of [`transform_output_tiles`].
fn transform_output_grad_tiles(
    src: &[f32],
    h: usize,
    w: usize,
    rows: &mut [f32],
    stride: usize,
    offset: usize,
) {
    let tw = w.div_ceil(TILE);
    let padded = TILE * tw;
    with_plane_rows(TILE * padded + ALPHA * padded + padded, |buffer| {
        let (e, rest) = buffer.split_at_mut(TILE * padded);
        let (t, phases) = rest.split_at_mut(ALPHA * padded);
        for ty in 0..h.div_ceil(TILE) {
            load_padded_rows(src, h, w, TILE * ty, 0, padded, e);
            transform_columns::<TILE>(e, t, output_grad_points);
            let first = offset + ty * tw;
            for (r, t_r) in t.chunks_exact(padded).enumerate() {
                deinterleave(t_r, TILE, phases);
                let p: [&[f32]; TILE] = std::array::from_fn(|j| &phases[j * tw..][..tw]);
                let [o0, o1, o2, o3, o4, o5] =
                    strided_rows::<ALPHA>(rows, r * ALPHA * stride + first, stride, tw);
                for tx in 0..tw {
                    let [v0, v1, v2, v3, v4, v5] =
                        output_grad_points([p[0][tx], p[1][tx], p[2][tx], p[3][tx]]);
                    (o0[tx], o1[tx], o2[tx], o3[tx], o4[tx], o5[tx]) = (v0, v1, v2, v3, v4, v5);
                }
            }
        }
    });
}

/// Writes `Aᵀ M A` of every 6×6 tile `rows[ξ][offset + tile]` into one `h × w` output plane
/// (dropping what falls outside it), a row of tiles at a time as for the input. Writes every
/// element of `dst`.
fn transform_output_tiles(
    rows: &[f32],
    stride: usize,
    offset: usize,
    dst: &mut [MaybeUninit<f32>],
    h: usize,
    w: usize,
) {
    let tw = w.div_ceil(TILE);
    // Tiles wholly inside the plane's width, and the columns of the last one that are.
    let (whole, tail) = (w / TILE, w % TILE);
    // t[i][c][tx] = (Aᵀ M)[i][c] of tile tx.
    with_plane_rows(TILE * ALPHA * tw, |t| {
        for ty in 0..h.div_ceil(TILE) {
            let first = offset + ty * tw;
            let m = |r: usize, c: usize| &rows[(r * ALPHA + c) * stride + first..][..tw];
            for c in 0..ALPHA {
                let m: [&[f32]; ALPHA] = std::array::from_fn(|r| m(r, c));
                let [t0, t1, t2, t3] = strided_rows::<TILE>(t, c * tw, ALPHA * tw, tw);
                for tx in 0..tw {
                    let [a, b, c, d] = output_points(std::array::from_fn(|r| m[r][tx]));
                    (t0[tx], t1[tx], t2[tx], t3[tx]) = (a, b, c, d);
                }
            }
            for i in 0..TILE {
                let y = TILE * ty + i;
                if y >= h {
                    break;
                }
                let t_i: [&[f32]; ALPHA] =
                    std::array::from_fn(|c| &t[(i * ALPHA + c) * tw..][..tw]);
                let out = &mut dst[y * w..][..w];
                let tile = |tx: usize| output_points(std::array::from_fn(|c| t_i[c][tx]));
                for (tx, out) in out[..whole * TILE].chunks_exact_mut(TILE).enumerate() {
                    for (o, v) in out.iter_mut().zip(tile(tx)) {
                        o.write(v);
                    }
                }
                if tail > 0 {
                    for (o, v) in out[whole * TILE..].iter_mut().zip(tile(whole)) {
                        o.write(v);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::kernels::tests::{assert_close_at_scale, reference_forward, values};

    /// F(4×4, 3×3)'s rounding at a ResNet stage's width (128 channels, 8×8 planes: two tiles
    /// a side), forward and input gradient, stays within 2·10⁻⁵ of the output's largest
    /// magnitude (measured at other widths: 5·10⁻⁶ at 64 channels on 16×16 planes, 1.1·10⁻⁵ at 256 on
    /// 8×8; F(2×2, 3×3) 3–5·10⁻⁷).
    #[test]
    fn rounding_at_a_resnet_width_stays_small() {
        let g = ConvGeometry::new([2, 128, 8, 8], [128, 128, 3, 3], [1, 1], [1, 1]).unwrap();
        let x = values(g.input_len(), 31);
        let w = values(g.weight_len(), 32);
        assert_close_at_scale(
            &forward(&g, &x, &w),
            &reference_forward(&g, &x, &w),
            2e-5,
            "y",
        );
        // The input gradient is the forward pass of the flipped, transposed kernel.
        let mut flipped = vec![0.0f32; w.len()];
        for co in 0..g.c_out {
            for ci in 0..g.c_in {
                for k in 0..9 {
                    flipped[(ci * g.c_out + co) * 9 + 8 - k] = w[(co * g.c_in + ci) * 9 + k];
                }
            }
        }
        assert_close_at_scale(
            &input_grad(&g, &w, &x),
            &reference_forward(&g, &x, &flipped),
            2e-5,
            "dx",
        );
    }
}
