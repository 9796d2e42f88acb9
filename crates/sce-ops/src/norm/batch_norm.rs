//! One training batch norm with the batch's own statistics, then what follows it in a ResNet
//! (`relu(bn(x) + residual)`): the fused kernels on `flex`, Burn's operations elsewhere, with
//! the statistics reduced in one pass or in short passes.

#[cfg(feature = "flex")]
use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::module::batch_norm_train;

use super::switches::StatisticsReduction;
#[cfg(feature = "flex")]
use super::switches::{NormKernels, norm_kernels};

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
    pub fn apply(self, normalised: Tensor<4>) -> Tensor<4> {
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
pub fn composed_batch_norm(
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
            let c = x.dims()[1];
            let channel_mean = |t: Tensor<4>| t.mean_dim(3).mean_dim(2).mean_dim(0).reshape([c]);
            normalise_in_short_passes(x, gamma, beta, epsilon, channel_mean)
        }
    };
    (after.apply(output), mean, variance)
}

/// Batch norm of `x` out of Burn's operations, each reduction short: `channel_mean` reduces a
/// `[N, C, H, W]` tensor to its per-channel mean (`[C]`), one axis at a time (over this batch,
/// or over every rank's). Returns the normalised output and the mean and biased variance.
pub(super) fn normalise_in_short_passes(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    channel_mean: impl Fn(Tensor<4>) -> Tensor<1>,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let [_, c, h, w] = x.dims();
    // A `[1, C, 1, 1]` operand broadcast over the batch would have its gradient reduced over
    // batch × height × width at once; spread over height and width first, each gradient
    // reduction stays short (the batch, then one side).
    let spread = |t: Tensor<1>| t.reshape([1, c, 1, 1]).repeat_dim(2, h).repeat_dim(3, w);
    let mean = channel_mean(x.clone());
    let centered = x - spread(mean.clone());
    let variance = channel_mean(centered.clone().square());
    let output =
        centered / spread((variance.clone() + epsilon).sqrt()) * spread(gamma) + spread(beta);
    (output, mean, variance)
}

/// Whether the fused kernels run this batch norm: f32 on `flex`, unless `Burn` was chosen.
pub fn fused_kernels_apply(x: &Tensor<4>) -> bool {
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
pub fn fused_batch_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    after: AfterNorm,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    use super::flex::FusedBatchNorm;
    use burn::backend::Dispatch;
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
pub fn fused_batch_norm_inference(bn: &BatchNorm, x: Tensor<4>, after: AfterNorm) -> Tensor<4> {
    use super::flex::FusedBatchNormInference;
    use burn::backend::Dispatch;
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
