//! The process-wide choices of how training batch norms run: how statistics are reduced, and
//! which implementation runs on `flex`.

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
    /// sce-ops' fused kernels, with their own backward step (the default).
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
