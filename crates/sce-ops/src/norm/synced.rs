//! SyncBatchNorm's operation: a training batch norm whose statistics are those of every rank's
//! batch together (the reference's ImageNet recipes, spec §2.5), built from Burn's operations
//! and the differentiable sum over ranks.

use burn::tensor::Tensor;

use super::batch_norm::{AfterNorm, normalise_in_short_passes};
use crate::ranks::{host_sum, rank_sum};

/// Batch norm of `x` (`[N, C, H, W]`) with the mean and biased variance of all ranks' batches,
/// then `after`: the output and those statistics (`[C]`), as Burn's `batch_norm_train`
/// returns them. Two sums over the ranks per call (the mean, then the centred squares: the
/// variance never suffers the cancellation of E[x²] − E[x]²), and two more in backward. With one
/// rank it is batch norm with the batch's statistics.
pub fn rank_synced_batch_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    after: AfterNorm,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let [n, c, h, w] = x.dims();
    let mut count = [(n * h * w) as f32];
    host_sum(&mut count);
    let count = f64::from(count[0]);
    let channel_mean =
        |t: Tensor<4>| rank_sum(t.sum_dim(3).sum_dim(2).sum_dim(0).reshape([c])) / count;
    let (output, mean, variance) = normalise_in_short_passes(x, gamma, beta, epsilon, channel_mean);
    (after.apply(output), mean, variance)
}
