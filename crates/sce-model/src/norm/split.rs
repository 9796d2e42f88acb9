//! MoCo's SplitBatchNorm: one device normalising the batch as several would (spec §2.5).

use burn::nn::BatchNorm;
use burn::tensor::Tensor;

#[cfg(feature = "flex")]
use sce_ops::norm::fused_batch_norm_inference;
use sce_ops::norm::{
    AfterNorm, StatisticsReduction, batch_norm_with_statistics, fused_kernels_apply,
    rank_synced_batch_norm, statistics_reduction,
};
use sce_ops::ranks::sums_over_ranks;

use crate::ModelError;

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
    if sums_over_ranks() {
        if splits > 1 {
            return Err(ModelError::Config(format!(
                "batch norm synchronised across ranks cannot also split the batch into {splits} \
                 groups"
            )));
        }
        return Ok(synced_batch_norm(bn, x, after));
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
    update_running_statistics(bn, group_mean(mean.detach()), group_mean(variance.detach()));
    Ok(output.reshape([n, c, h, w]))
}

/// SyncBatchNorm: training batch norm of `x` with the statistics of every rank's batch
/// together (`sce_ops::ranks`), then `after`; the running statistics follow the global ones,
/// so they are the same on every rank.
pub fn synced_batch_norm(bn: &BatchNorm, x: Tensor<4>, after: AfterNorm) -> Tensor<4> {
    let (output, mean, variance) =
        rank_synced_batch_norm(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, after);
    update_running_statistics(bn, mean, variance);
    output
}

/// Moves the running statistics towards a training batch's (`[C]`), as Burn's batch norm does.
fn update_running_statistics(bn: &BatchNorm, mean: Tensor<1>, variance: Tensor<1>) {
    let device = mean.device();
    let momentum = bn.momentum;
    let update = |old: Tensor<1>, batch: Tensor<1>| {
        (old.to_device(&device) * (1.0 - momentum) + batch.detach() * momentum).detach()
    };
    bn.running_mean
        .update(update(bn.running_mean.value_sync(), mean));
    bn.running_var
        .update(update(bn.running_var.value_sync(), variance));
}
