//! A training batch norm of `[N, C, H, W]` with the batch's own statistics, then what follows
//! it in a ResNet (`relu(bn(x) + residual)`).
//!
//! - `switches`: the process-wide choices (statistics reduction, kernels on `flex`).
//! - `batch_norm`: the operation, composed from Burn's operations or fused.
//! - `kernels`, `flex`: the fused CPU kernels and their Burn backend extension, with their own
//!   backward step.
//! - `synced`: SyncBatchNorm's operation, with the statistics of every rank's batch.

mod batch_norm;
#[cfg(feature = "flex")]
mod flex;
#[cfg(any(test, feature = "flex"))]
mod kernels;
mod switches;
mod synced;

pub use batch_norm::{
    AfterNorm, batch_norm_with_statistics, composed_batch_norm, fused_kernels_apply,
};
#[cfg(feature = "flex")]
pub use batch_norm::{fused_batch_norm, fused_batch_norm_inference};
pub use switches::{
    NormKernels, StatisticsReduction, norm_kernels, set_norm_kernels, set_statistics_reduction,
    statistics_reduction,
};
pub use synced::rank_synced_batch_norm;
