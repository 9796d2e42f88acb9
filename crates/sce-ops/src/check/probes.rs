//! Probes of how a device reduces long rows: not checks, but what decides how training
//! reduces on it ([`crate::rows::set_long_rows`], [`crate::norm::set_statistics_reduction`]).

use burn::tensor::Device;

use super::harness::{CheckOutcome, row_reduction};

const RAW_LONG_ROW: &str = "one-pass sum over one long row (1 × 300,000)";
const RAW_LONG_ROWS: &str = "one-pass mean over long rows (4 × 100,352)";

/// Burn's one-pass reductions over rows longer than 2^16 elements: wrong on a device whose
/// shader invocations may only loop so many times (Mesa's llvmpipe: 65,535 iterations). Not
/// checks: what they find decides how training reduces on the device (`sce-train`'s start-up).
/// The second is the shape of batch-norm statistics, and the one that decides.
pub fn one_pass_reductions(device: &Device) -> [CheckOutcome; 2] {
    [
        row_reduction(RAW_LONG_ROW, [1, 300_000], false, |x| x.sum_dim(1), device),
        row_reduction(RAW_LONG_ROWS, [4, 100_352], true, |x| x.mean_dim(1), device),
    ]
}
