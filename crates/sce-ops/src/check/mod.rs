//! Numerical checks of a device against float64 computed on the host: the pieces every check
//! is made of, and the probes of Burn's one-pass reductions whose outcome decides how training
//! reduces on the device, and of its one-pass top-k. `sce-train check` builds its cases from them.

mod harness;
mod probes;

pub use harness::{
    Case, CheckOutcome, GEMM, GEMM_BF16, GEMM_F16, TIGHT, download, gemm_error, gemm_tolerance,
    host_values, relative_error, row_reduction, upload,
};
pub use probes::{TopKProbe, describe_top_k, one_pass_reductions, one_pass_top_k};
