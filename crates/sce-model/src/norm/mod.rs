//! Training batch norm: split into groups for the target trunk (MoCo's SplitBatchNorm), with
//! statistics reduced the way the device gets right, and on `flex` fused with what follows it in
//! a ResNet (`relu(bn(x) + residual)`) into one operation with its own backward step
//! (`kernels.rs`, `flex.rs`).

#[cfg(feature = "flex")]
mod flex;
#[cfg(any(test, feature = "flex"))]
mod kernels;

use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::module::batch_norm_train;

use crate::ModelError;
use crate::switch::Switch;

/// How training batch norms reduce a batch to its per-channel statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatisticsReduction {
    /// One reduction over rows of batch × height × width: Burn's `batch_norm_train`, or on
    /// `flex` the fused kernels.
    Fused,
    /// Means over width, then height, then batch: rows no longer than one of those sides, for
    /// devices that get long reductions wrong (Mesa's llvmpipe leaves a shader's loops after
    /// 65,535 iterations; docs/backends.md). Per-channel values are spread over height and
    /// width before they meet the batch, so their gradients too reduce one short side at a
    /// time.
    Short,
}

static REDUCTION: Switch<StatisticsReduction> =
    Switch::new(StatisticsReduction::Fused, StatisticsReduction::Short);

/// Chooses, for the whole process, how training batch norms compute their statistics (the
/// binary decides once at start-up from what the device computes; see `sce-train check`).
pub fn set_statistics_reduction(reduction: StatisticsReduction) {
    REDUCTION.set(reduction);
}

pub fn statistics_reduction() -> StatisticsReduction {
    REDUCTION.get()
}

/// Which implementation training batch norms use on the `flex` backend (other backends always
/// use Burn's operations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKernels {
    /// sce-model's fused kernels, with their own backward step (the default).
    Fused,
    /// Burn's `batch_norm_train`, ReLU and add, for comparison.
    Burn,
}

static NORM_KERNELS: Switch<NormKernels> = Switch::new(NormKernels::Fused, NormKernels::Burn);

/// Chooses the batch-norm implementation on `flex` for the whole process.
pub fn set_norm_kernels(kernels: NormKernels) {
    NORM_KERNELS.set(kernels);
}

/// The implementation training batch norms use on `flex`.
pub fn norm_kernels() -> NormKernels {
    NORM_KERNELS.get()
}

/// What a ResNet applies right after a batch norm, `relu(bn(x) + residual)`: one operation with
/// the batch norm on `flex`, separate ones elsewhere.
#[derive(Clone, Debug, Default)]
pub struct AfterNorm {
    /// Added to the normalised output (the block's shortcut).
    pub residual: Option<Tensor<4>>,
    /// A ReLU on the sum.
    pub relu: bool,
}

impl AfterNorm {
    /// Nothing: the batch norm alone.
    pub fn none() -> Self {
        Self::default()
    }

    /// `relu(bn(x))`.
    pub fn relu() -> Self {
        Self {
            residual: None,
            relu: true,
        }
    }

    /// `relu(bn(x) + residual)`, the end of a residual block.
    pub fn residual_relu(residual: Tensor<4>) -> Self {
        Self {
            residual: Some(residual),
            relu: true,
        }
    }

    /// Applies it to a batch norm's output, as separate operations.
    fn apply(self, normalised: Tensor<4>) -> Tensor<4> {
        let sum = match self.residual {
            Some(residual) => normalised + residual,
            None => normalised,
        };
        if self.relu { relu(sum) } else { sum }
    }
}

/// Batch norm of `x` (`[N, C, H, W]`) with the batch's own statistics, followed by `after`: the
/// output, and the per-channel mean and biased variance (`[C]`), as Burn's `batch_norm_train`
/// returns them.
pub fn batch_norm_with_statistics(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    reduction: StatisticsReduction,
    after: AfterNorm,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    #[cfg(feature = "flex")]
    if reduction == StatisticsReduction::Fused && fused_kernels_apply(&x) {
        return fused_batch_norm(x, gamma, beta, epsilon, after);
    }
    composed_batch_norm(x, gamma, beta, epsilon, reduction, after)
}

/// [`batch_norm_with_statistics`] out of Burn's operations.
fn composed_batch_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    reduction: StatisticsReduction,
    after: AfterNorm,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let (output, mean, variance) = match reduction {
        StatisticsReduction::Fused => {
            let result = batch_norm_train(x, gamma, beta, epsilon);
            (result.output, result.mean, result.variance)
        }
        StatisticsReduction::Short => {
            let [_, c, h, w] = x.dims();
            let per_channel = |t: Tensor<4>| t.mean_dim(3).mean_dim(2).mean_dim(0);
            // A `[1, C, 1, 1]` operand broadcast over the batch would have its gradient reduced
            // over batch × height × width at once; spread over height and width first, each
            // gradient reduction stays short (the batch, then one side).
            let spread = |t: Tensor<4>| t.repeat_dim(2, h).repeat_dim(3, w);
            let mean = per_channel(x.clone());
            let centered = x - spread(mean.clone());
            let variance = per_channel(centered.clone().square());
            let output = centered / spread((variance.clone() + epsilon).sqrt())
                * spread(gamma.reshape([1, c, 1, 1]))
                + spread(beta.reshape([1, c, 1, 1]));
            (output, mean.reshape([c]), variance.reshape([c]))
        }
    };
    (after.apply(output), mean, variance)
}

/// Whether the fused kernels run this batch norm: f32 on `flex`, unless `Burn` was chosen.
fn fused_kernels_apply(x: &Tensor<4>) -> bool {
    #[cfg(feature = "flex")]
    {
        use burn::tensor::{DType, Device};
        norm_kernels() == NormKernels::Fused
            && x.device().without_autodiff() == Device::flex()
            && x.dtype() == DType::F32
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = x;
        false
    }
}

#[cfg(feature = "flex")]
fn fused_batch_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    after: AfterNorm,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    use burn::backend::Dispatch;
    use flex::FusedBatchNorm;
    if let AfterNorm {
        residual: Some(residual),
        relu: false,
    } = after
    {
        // No fused operation adds without a ReLU (no ResNet does): normalise, then add.
        let (output, mean, variance) = fused_batch_norm(x, gamma, beta, epsilon, AfterNorm::none());
        return (output + residual, mean, variance);
    }
    let (x, gamma, beta) = (
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
    );
    let (output, mean, variance) = match after.residual {
        Some(residual) => <Dispatch as FusedBatchNorm>::fused_batch_norm_add_relu(
            x,
            gamma,
            beta,
            residual.into_dispatch(),
            epsilon,
        ),
        None => <Dispatch as FusedBatchNorm>::fused_batch_norm(x, gamma, beta, epsilon, after.relu),
    };
    (
        Tensor::from_dispatch(output),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(variance),
    )
}

/// `after` applied to `bn(x)` with the running statistics (evaluation on a device without
/// autodiff, as `BatchNorm::forward` there), by the fused kernels.
#[cfg(feature = "flex")]
fn fused_batch_norm_inference(bn: &BatchNorm, x: Tensor<4>, after: AfterNorm) -> Tensor<4> {
    use burn::backend::Dispatch;
    use flex::FusedBatchNormInference;
    if let AfterNorm {
        residual: Some(residual),
        relu: false,
    } = after
    {
        // As in training: normalise, then add.
        return fused_batch_norm_inference(bn, x, AfterNorm::none()) + residual;
    }
    let device = x.device();
    let statistics = |t: Tensor<1>| t.to_device(&device).into_dispatch();
    let (x, gamma, beta, mean, variance) = (
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        statistics(bn.running_mean.value()),
        statistics(bn.running_var.value()),
    );
    let epsilon = bn.epsilon;
    Tensor::from_dispatch(match after.residual {
        Some(residual) => {
            <Dispatch as FusedBatchNormInference>::fused_batch_norm_inference_add_relu(
                x,
                gamma,
                beta,
                mean,
                variance,
                residual.into_dispatch(),
                epsilon,
            )
        }
        None => <Dispatch as FusedBatchNormInference>::fused_batch_norm_inference(
            x, gamma, beta, mean, variance, epsilon, after.relu,
        ),
    })
}

/// Batch norm that normalises `splits` equal groups of the batch separately, as `splits`
/// devices would (MoCo's SplitBatchNorm, spec §2.5). Without it the target's batch statistics
/// would equal the online branch's on one device, a shortcut the contrastive task can exploit.
///
/// Group `s` holds samples `s, s + splits, s + 2·splits, …` (MoCo's layout, a free reshape;
/// the caller shuffles the batch first, so any equal partition is equivalent). In training the
/// running statistics move towards the mean of the per-group statistics, which is what averaging
/// per-group running statistics gives. In evaluation, or with `splits <= 1`, this is plain
/// batch norm.
pub fn split_batch_norm(
    bn: &BatchNorm,
    x: Tensor<4>,
    splits: usize,
) -> Result<Tensor<4>, ModelError> {
    split_batch_norm_then(bn, x, AfterNorm::none(), splits)
}

/// [`split_batch_norm`] followed by `after` (`relu(bn(x) + residual)`), fused on `flex`.
pub fn split_batch_norm_then(
    bn: &BatchNorm,
    x: Tensor<4>,
    after: AfterNorm,
    splits: usize,
) -> Result<Tensor<4>, ModelError> {
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    let reduction = statistics_reduction();
    let splits = splits.max(1);
    let fused = reduction == StatisticsReduction::Fused && fused_kernels_apply(&x);
    if !training {
        #[cfg(feature = "flex")]
        if fused && !x.device().is_autodiff() {
            return Ok(fused_batch_norm_inference(bn, x, after));
        }
        return Ok(after.apply(bn.forward(x)));
    }
    if splits == 1 && reduction == StatisticsReduction::Fused && !fused {
        return Ok(after.apply(bn.forward(x)));
    }
    let [n, c, h, w] = x.dims();
    if !n.is_multiple_of(splits) {
        return Err(ModelError::BatchNotDivisible { batch: n, splits });
    }
    let grouped = |t: Tensor<4>| t.reshape([n / splits, splits * c, h, w]);
    let after = AfterNorm {
        residual: after.residual.map(grouped),
        relu: after.relu,
    };
    let (output, mean, variance) = batch_norm_with_statistics(
        grouped(x),
        bn.gamma.val().repeat_dim(0, splits),
        bn.beta.val().repeat_dim(0, splits),
        bn.epsilon,
        reduction,
        after,
    );
    let group_mean = |t: Tensor<1>| t.reshape([splits, c]).mean_dim(0).reshape([c]);
    let device = output.device();
    let momentum = bn.momentum;
    let update = |old: Tensor<1>, batch: Tensor<1>| {
        (old.to_device(&device) * (1.0 - momentum) + group_mean(batch.detach()) * momentum).detach()
    };
    bn.running_mean
        .update(update(bn.running_mean.value_sync(), mean));
    bn.running_var
        .update(update(bn.running_var.value_sync(), variance));
    Ok(output.reshape([n, c, h, w]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::module::Module;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    /// Each group's output must equal a plain batch norm run on that group alone, and the running
    /// mean must be the average of the per-group updates.
    #[test]
    fn matches_per_group_batch_norm() {
        let ad = device().autodiff();
        let (n, c, splits) = (8, 3, 4);
        let x = Tensor::<4>::random([n, c, 2, 2], Distribution::Normal(1.0, 2.0), &ad);
        let make_bn = || {
            let mut bn = BatchNormConfig::new(c).init(&ad);
            bn.gamma = bn.gamma.map(|g| g * 1.5);
            bn.beta = bn.beta.map(|b| b + 0.25);
            bn
        };
        let split_bn = make_bn();
        let out = split_batch_norm(&split_bn, x.clone(), splits).unwrap();

        let mut running = vec![0.0f64; c];
        for s in 0..splits {
            let idx: Vec<i64> = (0..n / splits).map(|r| (r * splits + s) as i64).collect();
            let idx = Tensor::<1, burn::tensor::Int>::from_data(idx.as_slice(), &ad);
            let group = x.clone().select(0, idx.clone());
            let bn = make_bn();
            let expected = bn.forward(group);
            assert_tensors_close(out.clone().select(0, idx), expected, 1e-5);
            let mean = flat(bn.valid().running_mean.value().reshape([c, 1]));
            for (r, m) in running.iter_mut().zip(mean) {
                *r += m / splits as f64;
            }
        }
        let got = flat(split_bn.valid().running_mean.value().reshape([c, 1]));
        for (g, e) in got.iter().zip(&running) {
            assert!((g - e).abs() < 1e-5, "running mean {g} vs {e}");
        }
    }

    /// The short-reduction statistics give Burn's fused batch norm: output, statistics and the
    /// gradients of input, γ and β.
    #[test]
    fn short_reductions_match_the_fused_operation() {
        let ad = device().autodiff();
        let x =
            Tensor::<4>::random([6, 3, 5, 4], Distribution::Normal(1.0, 2.0), &ad).require_grad();
        let gamma = Tensor::<1>::from_data([1.5f32, 0.5, -1.0], &ad).require_grad();
        let beta = Tensor::<1>::from_data([0.25f32, -0.5, 0.0], &ad).require_grad();
        let g = Tensor::<4>::random([6, 3, 5, 4], Distribution::Normal(0.0, 1.0), &ad);
        let run = |reduction| {
            let (out, mean, var) = batch_norm_with_statistics(
                x.clone(),
                gamma.clone(),
                beta.clone(),
                1e-5,
                reduction,
                AfterNorm::none(),
            );
            let grads = (out.clone() * g.clone()).sum().backward();
            let grad = |t: &Tensor<1>| t.grad(&grads).unwrap();
            (
                out.without_autodiff(),
                mean.without_autodiff(),
                var.without_autodiff(),
                x.grad(&grads).unwrap(),
                grad(&gamma),
                grad(&beta),
            )
        };
        let fused = run(StatisticsReduction::Fused);
        let short = run(StatisticsReduction::Short);
        assert_tensors_close(short.0, fused.0, 1e-5);
        assert_tensors_close(short.3, fused.3, 1e-4);
        for (a, b) in [
            (short.1, fused.1),
            (short.2, fused.2),
            (short.4, fused.4),
            (short.5, fused.5),
        ] {
            assert_tensors_close(a, b, 1e-4);
        }
    }

    /// Through Burn's autodiff, the fused kernels give what Burn's operations give: output,
    /// statistics and the gradients of x, γ, β and the residual, for each epilogue, on planes
    /// of 1, 9 and 30 values, batch 1 and odd channel counts.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_kernels_match_burns_operations_through_autodiff() {
        let ad = burn::tensor::Device::flex().autodiff();
        for dims in [[1, 3, 5, 6], [4, 5, 3, 3], [6, 7, 1, 1]] {
            let c = dims[1];
            let random =
                |mean, std| Tensor::<4>::random(dims, Distribution::Normal(mean, std), &ad);
            let x = random(1.0, 2.0).require_grad();
            let residual = random(0.0, 1.0).require_grad();
            let g = random(0.0, 1.0);
            let gamma =
                Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &ad).require_grad();
            let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &ad).require_grad();
            let afters = [
                AfterNorm::none(),
                AfterNorm::relu(),
                AfterNorm::residual_relu(residual.clone()),
                AfterNorm {
                    residual: Some(residual.clone()),
                    relu: false,
                },
            ];
            for after in afters {
                let what = format!(
                    "{dims:?} residual {} relu {}",
                    after.residual.is_some(),
                    after.relu
                );
                let run = |fused: bool| {
                    let inputs = (x.clone(), gamma.clone(), beta.clone());
                    let (out, mean, var) = if fused {
                        fused_batch_norm(inputs.0, inputs.1, inputs.2, 1e-5, after.clone())
                    } else {
                        composed_batch_norm(
                            inputs.0,
                            inputs.1,
                            inputs.2,
                            1e-5,
                            StatisticsReduction::Fused,
                            after.clone(),
                        )
                    };
                    let grads = (out.clone() * g.clone()).sum().backward();
                    let grad4 = |t: &Tensor<4>| t.grad(&grads).map(|t| flat(t.reshape([-1, 1])));
                    let grad1 = |t: &Tensor<1>| flat(t.grad(&grads).unwrap().reshape([-1, 1]));
                    [
                        flat(out.without_autodiff().reshape([-1, 1])),
                        flat(mean.without_autodiff().reshape([-1, 1])),
                        flat(var.without_autodiff().reshape([-1, 1])),
                        grad4(&x).unwrap(),
                        grad1(&gamma),
                        grad1(&beta),
                        grad4(&residual).unwrap_or_default(),
                    ]
                };
                let (fused, burn) = (run(true), run(false));
                let names = ["y", "mean", "var", "dx", "dγ", "dβ", "dresidual"];
                for ((name, a), b) in names.iter().zip(&fused).zip(&burn) {
                    assert_eq!(a.len(), b.len(), "{what}: {name}");
                    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    for (p, q) in a.iter().zip(b) {
                        assert!((p - q).abs() <= 1e-5 * scale, "{what}: {name} {p} vs {q}");
                    }
                }
            }
        }
    }

    /// In evaluation on a device without autodiff, the fused kernels give what Burn's
    /// `BatchNorm::forward` (running statistics) followed by the add and the ReLU gives.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_inference_matches_burns_batch_norm() {
        let device = burn::tensor::Device::flex();
        let c = 5;
        let mut bn = BatchNormConfig::new(c).init(&device);
        let stats = |m| Tensor::<1>::random([c], Distribution::Normal(m, 0.3), &device);
        bn.gamma = bn.gamma.map(|_| stats(1.0));
        bn.beta = bn.beta.map(|_| stats(0.0));
        bn.running_mean.update(stats(0.5));
        bn.running_var.update(stats(1.0).abs());
        let x = Tensor::<4>::random([3, c, 4, 7], Distribution::Normal(0.5, 1.0), &device);
        let r = Tensor::<4>::random([3, c, 4, 7], Distribution::Normal(0.0, 1.0), &device);
        assert!(
            fused_kernels_apply(&x),
            "the fused kernels must take this case"
        );
        for after in [
            AfterNorm::none(),
            AfterNorm::relu(),
            AfterNorm::residual_relu(r.clone()),
        ] {
            let fused = split_batch_norm_then(&bn, x.clone(), after.clone(), 1).unwrap();
            let burn = after.apply(bn.forward(x.clone()));
            assert_tensors_close(fused, burn, 1e-5);
        }
    }

    #[test]
    fn indivisible_batch_is_an_error() {
        let ad = device().autodiff();
        let bn = BatchNormConfig::new(2).init(&ad);
        let x = Tensor::<4>::zeros([6, 2, 1, 1], &ad);
        let err = split_batch_norm(&bn, x, 4).unwrap_err();
        assert!(err.to_string().contains("batch of 6"), "{err}");
    }

    #[test]
    fn evaluation_mode_is_plain_batch_norm() {
        let device = device();
        let bn = BatchNormConfig::new(2).init(&device);
        let x = Tensor::<4>::random([6, 2, 2, 2], Distribution::Default, &device);
        let out = split_batch_norm(&bn, x.clone(), 4).unwrap();
        assert_tensors_close(out, bn.forward(x), 1e-6);
    }
}
