//! Training batch norm with what follows it in a ResNet (`relu(bn(x) + residual)`) as two passes
//! over memory each way, on plain `NCHW` f32 slices.
//!
//! Why: Burn's default `batch_norm_train` on `flex` is built from generic tensor operations:
//! a transposed copy and a mean for each statistic, then subtract, divide, scale and shift, each
//! its own pass; its backward another dozen; the ReLU and the residual add after it more passes
//! forward and backward. Here the statistics are one read of each channel (its planes stay in
//! cache for the second), the output one read and one write, and the backward two reads and one
//! write. Sums are taken per channel in a fixed order (f32 vector lanes over blocks of 1,024
//! values, the blocks added in float64), so results do not depend on the thread count (a seed
//! still gives bit-identical runs).

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A batch norm's input seen as `[batch, channels, plane]` (plane = height × width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    pub plane: usize,
}

impl NormShape {
    fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }

    /// Values each channel's statistics are taken over.
    fn count(&self) -> f64 {
        (self.batch * self.plane) as f64
    }

    /// The planes of channel `channel`, one per sample.
    fn planes<'a>(&self, values: &'a [f32], channel: usize) -> impl Iterator<Item = &'a [f32]> {
        let (c, p) = (self.channels, self.plane);
        (0..self.batch).map(move |n| &values[(n * c + channel) * p..][..p])
    }

    /// Smallest number of planes one parallel task takes: tasks of at least 16 Ki values.
    fn planes_per_task(&self) -> usize {
        (16 * 1024 / self.plane.max(1)).max(1)
    }
}

/// The forward pass: the output and the batch's per-channel mean and biased variance.
pub struct NormForward {
    pub output: Vec<f32>,
    pub mean: Vec<f32>,
    pub variance: Vec<f32>,
}

/// `relu(γ · (x − mean) / sqrt(var + ε) + β + residual)` with the batch's statistics.
pub fn forward(
    shape: NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    residual: Option<&[f32]>,
    epsilon: f64,
    relu: bool,
) -> NormForward {
    check_lengths(shape, &[x], &[gamma, beta]);
    if let Some(r) = residual {
        check_lengths(shape, &[r], &[]);
    }
    let (mean, variance): (Vec<f64>, Vec<f64>) = (0..shape.channels)
        .into_par_iter()
        .map(|ch| {
            let mean = shape.planes(x, ch).map(sum).sum::<f64>() / shape.count();
            let squares = shape.planes(x, ch).map(|p| squared_deviations(p, mean));
            (mean, squares.sum::<f64>() / shape.count())
        })
        .unzip();
    let statistics = Statistics {
        mean: &mean,
        variance: &variance,
    };
    let output = normalise(shape, x, gamma, beta, &statistics, residual, epsilon, relu);
    NormForward {
        output,
        mean: mean.iter().map(|&m| m as f32).collect(),
        variance: variance.iter().map(|&v| v as f32).collect(),
    }
}

/// `relu(γ · (x − mean) / sqrt(var + ε) + β + residual)` with given statistics (the running
/// ones, in evaluation): one read and one write.
#[allow(clippy::too_many_arguments)]
pub fn inference(
    shape: NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    variance: &[f32],
    residual: Option<&[f32]>,
    epsilon: f64,
    relu: bool,
) -> Vec<f32> {
    check_lengths(shape, &[x], &[gamma, beta, mean, variance]);
    if let Some(r) = residual {
        check_lengths(shape, &[r], &[]);
    }
    let widen = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let (mean, variance) = (widen(mean), widen(variance));
    let statistics = Statistics {
        mean: &mean,
        variance: &variance,
    };
    normalise(shape, x, gamma, beta, &statistics, residual, epsilon, relu)
}

/// Per-channel mean and variance.
struct Statistics<'a> {
    mean: &'a [f64],
    variance: &'a [f64],
}

/// The output pass, shared by training and inference.
#[allow(clippy::too_many_arguments)]
fn normalise(
    shape: NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    statistics: &Statistics,
    residual: Option<&[f32]>,
    epsilon: f64,
    relu: bool,
) -> Vec<f32> {
    // y = (x − mean)·scale + shift, with the per-channel constants in f32 so that the inner
    // loop is one subtract and one fused multiply-add.
    let constants: Vec<(f32, f32, f32)> = (0..shape.channels)
        .map(|ch| {
            let scale = gamma[ch] as f64 / (statistics.variance[ch] + epsilon).sqrt();
            (statistics.mean[ch] as f32, scale as f32, beta[ch])
        })
        .collect();
    let mut output: Vec<f32> = Vec::with_capacity(shape.len());
    output.spare_capacity_mut()[..shape.len()]
        .par_chunks_mut(shape.plane)
        .with_min_len(shape.planes_per_task())
        .enumerate()
        .for_each(|(index, out)| {
            let (mean, scale, shift) = constants[index % shape.channels];
            let range = index * shape.plane..(index + 1) * shape.plane;
            let src = &x[range.clone()];
            // One loop per case, so that none tests a flag per value.
            match (residual, relu) {
                (Some(r), true) => {
                    for ((o, &v), &add) in out.iter_mut().zip(src).zip(&r[range]) {
                        o.write(((v - mean) * scale + shift + add).max(0.0));
                    }
                }
                (Some(r), false) => {
                    for ((o, &v), &add) in out.iter_mut().zip(src).zip(&r[range]) {
                        o.write((v - mean) * scale + shift + add);
                    }
                }
                (None, true) => {
                    for (o, &v) in out.iter_mut().zip(src) {
                        o.write(((v - mean) * scale + shift).max(0.0));
                    }
                }
                (None, false) => {
                    for (o, &v) in out.iter_mut().zip(src) {
                        o.write((v - mean) * scale + shift);
                    }
                }
            }
        });
    // SAFETY: the planes cover the output and each is written whole above (no zeroing pass).
    unsafe { output.set_len(shape.len()) };
    output
}

/// The backward pass's gradients; `residual` only when asked for.
pub struct NormBackward {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub residual: Option<Vec<f32>>,
}

/// What the backward pass reads: the forward's input, its statistics, and its output where a
/// ReLU followed (the ReLU passed the gradient where the output is positive).
pub struct SavedForward<'a> {
    pub x: &'a [f32],
    pub gamma: &'a [f32],
    pub mean: &'a [f32],
    pub variance: &'a [f32],
    pub relu_output: Option<&'a [f32]>,
    pub epsilon: f64,
}

/// Gradients of `Σ dy · forward(…)` with respect to x, γ, β and (when `residual_grad`) the
/// residual. With `dz` the gradient past the ReLU and `x̂` the normalised input:
/// `dx = γ/σ · (dz − mean(dz) − x̂ · mean(dz · x̂))`, `dγ = Σ dz · x̂`, `dβ = Σ dz`,
/// `dresidual = dz`.
pub fn backward(
    shape: NormShape,
    saved: &SavedForward,
    dy: &[f32],
    residual_grad: bool,
) -> NormBackward {
    check_lengths(
        shape,
        &[saved.x, dy],
        &[saved.gamma, saved.mean, saved.variance],
    );
    if let Some(y) = saved.relu_output {
        check_lengths(shape, &[y], &[]);
    }
    let mask = saved.relu_output;
    // Per channel: Σ dz and Σ dz · (x − mean).
    let sums: Vec<(f64, f64)> = (0..shape.channels)
        .into_par_iter()
        .map(|ch| {
            let mean = saved.mean[ch];
            let mut totals = (0.0, 0.0);
            for (n, x) in shape.planes(saved.x, ch).enumerate() {
                let start = (n * shape.channels + ch) * shape.plane;
                let dy = &dy[start..][..shape.plane];
                let (s, sx) = match mask {
                    Some(y) => masked_sums(x, dy, &y[start..][..shape.plane], mean),
                    None => gradient_sums(x, dy, mean),
                };
                totals.0 += s;
                totals.1 += sx;
            }
            totals
        })
        .collect();
    let mut gamma_grad = Vec::with_capacity(shape.channels);
    let mut beta_grad = Vec::with_capacity(shape.channels);
    // dx = k·dz + p·(x − mean) + q per channel.
    let mut constants = Vec::with_capacity(shape.channels);
    for (ch, &(sum_dz, sum_dz_centered)) in sums.iter().enumerate() {
        let inv_std = 1.0 / (saved.variance[ch] as f64 + saved.epsilon).sqrt();
        let k = saved.gamma[ch] as f64 * inv_std;
        let mean_dz = sum_dz / shape.count();
        let mean_dz_xhat = sum_dz_centered * inv_std / shape.count();
        gamma_grad.push((sum_dz_centered * inv_std) as f32);
        beta_grad.push(sum_dz as f32);
        constants.push((
            saved.mean[ch],
            k as f32,
            (-k * inv_std * mean_dz_xhat) as f32,
            (-k * mean_dz) as f32,
        ));
    }
    // dx (and the residual's gradient) are written whole, plane by plane, with no zeroing pass.
    let mut dx: Vec<f32> = Vec::with_capacity(shape.len());
    let mut dresidual: Option<Vec<f32>> = residual_grad.then(|| Vec::with_capacity(shape.len()));
    let plane = shape.plane;
    let dx_planes = dx.spare_capacity_mut()[..shape.len()]
        .par_chunks_mut(plane)
        .with_min_len(shape.planes_per_task());
    let input_gradient = |index: usize, out: &mut [MaybeUninit<f32>]| {
        let (mean, k, p, q) = constants[index % shape.channels];
        let range = index * plane..(index + 1) * plane;
        let (x, dy) = (&saved.x[range.clone()], &dy[range.clone()]);
        match mask {
            Some(y) => {
                for (((o, &x), &dy), &y) in out.iter_mut().zip(x).zip(dy).zip(&y[range]) {
                    let dz = if y > 0.0 { dy } else { 0.0 };
                    o.write(k * dz + p * (x - mean) + q);
                }
            }
            None => {
                for ((o, &x), &dy) in out.iter_mut().zip(x).zip(dy) {
                    o.write(k * dy + p * (x - mean) + q);
                }
            }
        }
    };
    match dresidual.as_mut() {
        Some(dr) => dx_planes
            .zip(dr.spare_capacity_mut()[..shape.len()].par_chunks_mut(plane))
            .enumerate()
            .for_each(|(index, (out, dr))| {
                input_gradient(index, out);
                let range = index * plane..(index + 1) * plane;
                let dy = &dy[range.clone()];
                match mask {
                    Some(y) => {
                        for ((d, &dy), &y) in dr.iter_mut().zip(dy).zip(&y[range]) {
                            d.write(if y > 0.0 { dy } else { 0.0 });
                        }
                    }
                    None => {
                        for (d, &dy) in dr.iter_mut().zip(dy) {
                            d.write(dy);
                        }
                    }
                }
            }),
        None => dx_planes
            .enumerate()
            .for_each(|(index, out)| input_gradient(index, out)),
    }
    // SAFETY: the planes cover both buffers and each plane is written whole above.
    unsafe {
        dx.set_len(shape.len());
        if let Some(dr) = dresidual.as_mut() {
            dr.set_len(shape.len());
        }
    }
    NormBackward {
        x: dx,
        gamma: gamma_grad,
        beta: beta_grad,
        residual: dresidual,
    }
}

fn check_lengths(shape: NormShape, full: &[&[f32]], per_channel: &[&[f32]]) {
    for values in full {
        assert_eq!(values.len(), shape.len(), "batch norm input of {shape:?}");
    }
    for values in per_channel {
        assert_eq!(
            values.len(),
            shape.channels,
            "per-channel values of {shape:?}"
        );
    }
}

/// Sums are taken in blocks of this many values, in [`LANES`] independent f32 accumulators
/// that the compiler turns into vector registers; the blocks' totals are added in float64.
/// (Float64 lanes with a conversion per value stayed scalar and were 6% of a training step.)
const BLOCK: usize = 1024;
const LANES: usize = 16;

/// Σ of `f(lane values)` over `values` in blocks: the generic shape of the sums below. `terms`
/// adds one chunk of [`LANES`] values (or the shorter remainder) into the accumulators.
fn blocked<const N: usize>(
    len: usize,
    mut terms: impl FnMut(std::ops::Range<usize>, &mut [[f32; LANES]; N]),
) -> [f64; N] {
    let mut total = [0.0f64; N];
    for start in (0..len).step_by(BLOCK) {
        let end = (start + BLOCK).min(len);
        let mut lanes = [[0.0f32; LANES]; N];
        terms(start..end, &mut lanes);
        for (t, l) in total.iter_mut().zip(&lanes) {
            *t += l.iter().sum::<f32>() as f64;
        }
    }
    total
}

/// Σ v.
fn sum(values: &[f32]) -> f64 {
    let [total] = blocked(values.len(), |range, [lanes]| {
        let block = &values[range];
        let chunks = block.chunks_exact(LANES);
        lanes[0] += chunks.remainder().iter().sum::<f32>();
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += v;
            }
        }
    });
    total
}

/// Σ (v − mean)².
fn squared_deviations(values: &[f32], mean: f64) -> f64 {
    let mean = mean as f32;
    let [total] = blocked(values.len(), |range, [lanes]| {
        let block = &values[range];
        let chunks = block.chunks_exact(LANES);
        lanes[0] += chunks
            .remainder()
            .iter()
            .map(|&v| (v - mean) * (v - mean))
            .sum::<f32>();
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += (v - mean) * (v - mean);
            }
        }
    });
    total
}

/// `(Σ dy, Σ dy · (x − mean))`.
fn gradient_sums(x: &[f32], dy: &[f32], mean: f32) -> (f64, f64) {
    let [s, sx] = blocked(x.len(), |range, [s, sx]| {
        let (x, dy) = (&x[range.clone()], &dy[range]);
        let (xc, dc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
        for (&x, &dy) in xc.remainder().iter().zip(dc.remainder()) {
            s[0] += dy;
            sx[0] += dy * (x - mean);
        }
        for (x, dy) in xc.zip(dc) {
            for lane in 0..LANES {
                s[lane] += dy[lane];
                sx[lane] += dy[lane] * (x[lane] - mean);
            }
        }
    });
    (s, sx)
}

/// As [`gradient_sums`], with `dy` zeroed where the ReLU's output `y` is not positive.
fn masked_sums(x: &[f32], dy: &[f32], y: &[f32], mean: f32) -> (f64, f64) {
    let [s, sx] = blocked(x.len(), |range, [s, sx]| {
        let (x, dy, y) = (&x[range.clone()], &dy[range.clone()], &y[range]);
        let (xc, dc, yc) = (
            x.chunks_exact(LANES),
            dy.chunks_exact(LANES),
            y.chunks_exact(LANES),
        );
        for ((&x, &dy), &y) in xc
            .remainder()
            .iter()
            .zip(dc.remainder())
            .zip(yc.remainder())
        {
            let dz = if y > 0.0 { dy } else { 0.0 };
            s[0] += dz;
            sx[0] += dz * (x - mean);
        }
        for ((x, dy), y) in xc.zip(dc).zip(yc) {
            for lane in 0..LANES {
                let dz = if y[lane] > 0.0 { dy[lane] } else { 0.0 };
                s[lane] += dz;
                sx[lane] += dz * (x[lane] - mean);
            }
        }
    });
    (s, sx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What follows the batch norm in a case: `relu(bn(x) + residual)`, each part optional.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Epilogue {
        residual: bool,
        relu: bool,
    }

    /// Deterministic values in [-1, 1) with a per-channel offset, so that means are not zero.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    struct Case {
        shape: NormShape,
        x: Vec<f32>,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        residual: Vec<f32>,
        weighting: Vec<f32>,
    }

    impl Case {
        fn new(batch: usize, channels: usize, plane: usize) -> Self {
            let shape = NormShape {
                batch,
                channels,
                plane,
            };
            let n = shape.len();
            let x: Vec<f32> = values(n, 1)
                .iter()
                .enumerate()
                .map(|(i, v)| 2.0 * v + ((i / plane) % channels) as f32 * 0.75)
                .collect();
            Self {
                shape,
                x,
                gamma: values(channels, 2).iter().map(|v| v + 0.5).collect(),
                beta: values(channels, 3),
                residual: values(n, 4),
                weighting: values(n, 5),
            }
        }

        fn channel(&self, i: usize) -> usize {
            (i / self.shape.plane) % self.shape.channels
        }

        /// The loss `Σ weighting · relu(bn(x) + residual)` in float64, from scratch.
        fn loss(
            &self,
            x: &[f64],
            gamma: &[f64],
            beta: &[f64],
            residual: &[f64],
            e: Epilogue,
        ) -> f64 {
            let c = self.shape.channels;
            let count = self.shape.count();
            let mut mean = vec![0.0; c];
            for (i, v) in x.iter().enumerate() {
                mean[self.channel(i)] += v / count;
            }
            let mut var = vec![0.0; c];
            for (i, v) in x.iter().enumerate() {
                var[self.channel(i)] += (v - mean[self.channel(i)]).powi(2) / count;
            }
            x.iter()
                .enumerate()
                .map(|(i, v)| {
                    let ch = self.channel(i);
                    let mut y = (v - mean[ch]) / (var[ch] + EPS).sqrt() * gamma[ch] + beta[ch];
                    if e.residual {
                        y += residual[i];
                    }
                    if e.relu {
                        y = y.max(0.0);
                    }
                    self.weighting[i] as f64 * y
                })
                .sum()
        }

        fn run(&self, e: Epilogue) -> (NormForward, NormBackward) {
            let residual = e.residual.then_some(self.residual.as_slice());
            let fwd = forward(
                self.shape,
                &self.x,
                &self.gamma,
                &self.beta,
                residual,
                EPS,
                e.relu,
            );
            let saved = SavedForward {
                x: &self.x,
                gamma: &self.gamma,
                mean: &fwd.mean,
                variance: &fwd.variance,
                relu_output: e.relu.then_some(fwd.output.as_slice()),
                epsilon: EPS,
            };
            let bwd = backward(self.shape, &saved, &self.weighting, e.residual);
            (fwd, bwd)
        }
    }

    const EPS: f64 = 1e-5;

    fn widen(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&v| v as f64).collect()
    }

    /// Central difference of the float64 loss along coordinate `i` of argument `which`.
    fn finite_difference(case: &Case, e: Epilogue, which: usize, i: usize) -> f64 {
        let mut args = [
            widen(&case.x),
            widen(&case.gamma),
            widen(&case.beta),
            widen(&case.residual),
        ];
        let h = 1e-6;
        args[which][i] += h;
        let up = case.loss(&args[0], &args[1], &args[2], &args[3], e);
        args[which][i] -= 2.0 * h;
        let down = case.loss(&args[0], &args[1], &args[2], &args[3], e);
        (up - down) / (2.0 * h)
    }

    /// Forward against the float64 definition; every gradient against finite differences of
    /// the float64 loss, with and without the residual and the ReLU, on planes off the SIMD
    /// width (1×1, 3×3, 5×5), batch 1 and odd channel counts.
    #[test]
    fn matches_float64_definition_and_finite_differences() {
        for (batch, channels, plane) in [(1, 3, 25), (4, 5, 9), (3, 2, 1), (2, 7, 16)] {
            let case = Case::new(batch, channels, plane);
            for e in [
                Epilogue::default(),
                Epilogue {
                    residual: false,
                    relu: true,
                },
                Epilogue {
                    residual: true,
                    relu: true,
                },
                Epilogue {
                    residual: true,
                    relu: false,
                },
            ] {
                let (fwd, bwd) = case.run(e);
                let what = format!("{:?} {e:?}", case.shape);
                // Output against the float64 forward, through the loss with unit weights on
                // one element at a time is costly; compare the weighted sum instead, and each
                // output element against its own float64 value.
                let loss = case.loss(
                    &widen(&case.x),
                    &widen(&case.gamma),
                    &widen(&case.beta),
                    &widen(&case.residual),
                    e,
                );
                let got: f64 = fwd
                    .output
                    .iter()
                    .zip(&case.weighting)
                    .map(|(&y, &w)| y as f64 * w as f64)
                    .sum();
                assert!(
                    (got - loss).abs() <= 1e-4 * (1.0 + loss.abs()),
                    "{what}: {got} vs {loss}"
                );
                let grads: [(usize, &[f32]); 4] = [
                    (0, &bwd.x),
                    (1, &bwd.gamma),
                    (2, &bwd.beta),
                    (3, bwd.residual.as_deref().unwrap_or(&[])),
                ];
                for (which, grad) in grads {
                    for (i, &g) in grad.iter().enumerate() {
                        let fd = finite_difference(&case, e, which, i);
                        assert!(
                            (g as f64 - fd).abs() <= 2e-3 * (1.0 + fd.abs()),
                            "{what}: gradient {which}[{i}] {g} vs finite difference {fd}"
                        );
                    }
                }
                assert_eq!(bwd.residual.is_some(), e.residual);
            }
        }
    }

    /// The statistics equal float64 ones to f32 rounding, and the variance is the biased one.
    #[test]
    fn statistics_are_the_batch_mean_and_biased_variance() {
        let case = Case::new(3, 4, 10);
        let fwd = forward(
            case.shape,
            &case.x,
            &case.gamma,
            &case.beta,
            None,
            EPS,
            false,
        );
        for ch in 0..4 {
            let vals: Vec<f64> = (0..case.x.len())
                .filter(|&i| case.channel(i) == ch)
                .map(|i| case.x[i] as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!((fwd.mean[ch] as f64 - mean).abs() < 1e-6);
            assert!((fwd.variance[ch] as f64 - var).abs() < 1e-6);
        }
    }

    /// The same input gives the same bits whatever the number of threads.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let case = Case::new(8, 6, 4096);
        let e = Epilogue {
            residual: true,
            relu: true,
        };
        let bits = |(f, b): (NormForward, NormBackward)| {
            let all = [
                f.output,
                f.mean,
                f.variance,
                b.x,
                b.gamma,
                b.beta,
                b.residual.unwrap(),
            ];
            all.concat().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(
            bits(one.install(|| case.run(e))),
            bits(three.install(|| case.run(e)))
        );
    }
}
