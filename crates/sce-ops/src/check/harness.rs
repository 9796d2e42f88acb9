//! What every numerical check of a device is made of: its verdict, deterministic inputs,
//! moving values to and from the device, and the error measure against a float64 reference.

use burn::tensor::{Device, Tensor, TensorData};

use crate::precision::{Precision, precision};
use serde::Serialize;

/// One check's verdict: the largest error seen against the reference, and the tolerance.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub name: &'static str,
    pub max_error: f64,
    pub tolerance: f64,
    pub passed: bool,
    /// Why the check could not run (a panic inside the backend), if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CheckOutcome {
    pub fn new(name: &'static str, max_error: f64, tolerance: f64) -> Self {
        Self {
            name,
            max_error,
            tolerance,
            passed: max_error <= tolerance,
            error: None,
        }
    }

    /// A check that did not finish.
    pub fn aborted(name: &'static str, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(name, f64::INFINITY, 0.0)
        }
    }
}

/// A check: its name and what runs it.
pub type Case = (&'static str, fn(&Device) -> CheckOutcome);

/// Reductions and normalisation are exact up to f32 rounding.
pub const TIGHT: f64 = 1e-4;
/// Matrix products and convolutions may accumulate in reduced precision on GPUs (TF32).
pub const GEMM: f64 = 2e-3;
/// Convolutions and linear layers computed in f16 or bf16, measured by [`gemm_error`]: every
/// input, weight and output is rounded (f16: 4.9e-4, bf16: 3.9e-3 each) and a backend may
/// accumulate in the half type — on Mesa's lavapipe a weight gradient summed over 100,352
/// positions in f16 is off by 4.1e-2 of its largest value (docs/backends.md). A reduction
/// that stops early or a wrong index is off by order 1, which is what these cases catch.
pub const GEMM_F16: f64 = 1e-1;
/// The same in bf16 (an 8-bit significand; 4.7e-3 measured on `flex`, which accumulates in
/// f32; no bf16 GPU was available to this project).
pub const GEMM_BF16: f64 = 1e-1;

/// The tolerance of a convolution or linear layer under the process's compute precision.
pub fn gemm_tolerance() -> f64 {
    match precision() {
        Precision::F32 => GEMM,
        Precision::F16 => GEMM_F16,
        Precision::BF16 => GEMM_BF16,
    }
}

/// The error of a convolution's or linear layer's output or gradient under the process's
/// compute precision: [`relative_error`] in f32; in f16 and bf16 the largest error relative to
/// the largest expected value, since half-precision rounding scales with the operands, not with
/// each output (an output near zero is a sum of large terms that cancel).
pub fn gemm_error(got: &[f64], expected: &[f64]) -> f64 {
    match precision() {
        Precision::F32 => relative_error(got, expected),
        // A floor of the largest value itself: every error is taken relative to it.
        Precision::F16 | Precision::BF16 => error_above_floor(got, expected, 1.0),
    }
}

/// Deterministic values in [-1, 1) (SplitMix64), the same for the host and the device.
pub fn host_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn upload<const D: usize>(values: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

pub fn download<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap_or_default()
}

/// Largest `|got − expected| / max(|expected|, 1% of the largest |expected|)`: relative error,
/// with a floor so that elements near zero are judged at the scale of the whole result.
/// Non-finite values and a wrong length count as an infinite error.
pub fn relative_error(got: &[f64], expected: &[f64]) -> f64 {
    error_above_floor(got, expected, 1e-2)
}

/// Largest `|got − expected| / max(|expected|, floor · the largest |expected|)`; non-finite
/// values and a wrong length count as an infinite error.
fn error_above_floor(got: &[f64], expected: &[f64], floor: f64) -> f64 {
    if got.len() != expected.len() {
        return f64::INFINITY;
    }
    let largest = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (floor * largest).max(f64::MIN_POSITIVE);
    got.iter()
        .zip(expected)
        .map(|(g, e)| {
            if g.is_finite() {
                (g - e).abs() / e.abs().max(floor)
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max)
}

/// Row sums (or means) of `rows × len` values, row `r` offset by `r` so rows differ, against
/// float64; `reduce` is the reduction under test.
pub fn row_reduction(
    name: &'static str,
    [rows, len]: [usize; 2],
    mean: bool,
    reduce: fn(Tensor<2>) -> Tensor<2>,
    device: &Device,
) -> CheckOutcome {
    let mut x = host_values(rows * len, 1);
    for (i, v) in x.iter_mut().enumerate() {
        *v += (i / len) as f32;
    }
    let scale = if mean { len as f64 } else { 1.0 };
    let expected: Vec<f64> = x
        .chunks(len)
        .map(|row| row.iter().map(|&v| v as f64).sum::<f64>() / scale)
        .collect();
    let got = download(reduce(upload(&x, [rows, len], device)));
    CheckOutcome::new(name, relative_error(&got, &expected), TIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_f64(values: &[f32]) -> Vec<f64> {
        values.iter().map(|&v| v as f64).collect()
    }

    #[test]
    fn relative_error_catches_what_a_broken_kernel_produces() {
        let expected = as_f64(&[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(relative_error(&expected, &expected), 0.0);
        // lavapipe's truncated sums: rows 2 and 3 partly or not at all.
        let truncated = as_f64(&[0.0, 1.0, 1.22, 0.0]);
        assert!(relative_error(&truncated, &expected) > 0.3);
        assert_eq!(relative_error(&[f64::NAN; 4], &expected), f64::INFINITY);
        assert_eq!(relative_error(&expected[..3], &expected), f64::INFINITY);
        // Near-zero elements are judged at 1% of the largest, not relative to themselves.
        assert!(relative_error(&as_f64(&[1e-6, 1.0, 2.0, 3.0]), &expected) < 1e-4);
    }

    #[test]
    fn host_values_are_deterministic_and_spread_over_minus_one_to_one() {
        let a = host_values(10_000, 1);
        assert_eq!(a, host_values(10_000, 1));
        assert_ne!(a, host_values(10_000, 2));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05, "{mean}");
    }

    #[test]
    fn the_default_device_reduces_long_rows_in_one_pass() {
        let device = Device::default();
        for outcome in super::super::one_pass_reductions(&device) {
            assert!(outcome.passed, "{outcome:?}");
        }
    }
}
