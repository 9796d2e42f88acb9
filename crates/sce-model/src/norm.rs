use std::sync::atomic::{AtomicBool, Ordering};

use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use burn::tensor::module::batch_norm_train;

use crate::ModelError;

/// How training batch norms reduce a batch to its per-channel statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatisticsReduction {
    /// Burn's fused `batch_norm_train`: one reduction over rows of batch × height × width.
    Fused,
    /// Means over width, then height, then batch: rows no longer than one of those sides, for
    /// devices that get long reductions wrong (Mesa's llvmpipe leaves a shader's loops after
    /// 65,535 iterations; docs/backends.md). Per-channel values are spread over height and
    /// width before they meet the batch, so their gradients too reduce one short side at a
    /// time.
    Short,
}

static SHORT_REDUCTIONS: AtomicBool = AtomicBool::new(false);

/// Chooses, for the whole process, how training batch norms compute their statistics (the
/// binary decides once at start-up from what the device computes; see `sce-train check`).
pub fn set_statistics_reduction(reduction: StatisticsReduction) {
    SHORT_REDUCTIONS.store(reduction == StatisticsReduction::Short, Ordering::SeqCst);
}

pub fn statistics_reduction() -> StatisticsReduction {
    if SHORT_REDUCTIONS.load(Ordering::SeqCst) {
        StatisticsReduction::Short
    } else {
        StatisticsReduction::Fused
    }
}

/// Batch norm of `x` (`[N, C, H, W]`) with the batch's own statistics: the output, and the
/// per-channel mean and biased variance (`[C]`), as Burn's `batch_norm_train` returns them.
pub fn batch_norm_with_statistics(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    reduction: StatisticsReduction,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    match reduction {
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
    }
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
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    let reduction = statistics_reduction();
    let splits = splits.max(1);
    if !training || (splits == 1 && reduction == StatisticsReduction::Fused) {
        return Ok(bn.forward(x));
    }
    let [n, c, h, w] = x.dims();
    if !n.is_multiple_of(splits) {
        return Err(ModelError::BatchNotDivisible { batch: n, splits });
    }
    let grouped = x.reshape([n / splits, splits * c, h, w]);
    let (output, mean, variance) = batch_norm_with_statistics(
        grouped,
        bn.gamma.val().repeat_dim(0, splits),
        bn.beta.val().repeat_dim(0, splits),
        bn.epsilon,
        reduction,
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
            let (out, mean, var) =
                batch_norm_with_statistics(x.clone(), gamma.clone(), beta.clone(), 1e-5, reduction);
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
