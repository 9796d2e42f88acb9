//! Probes of what a device gets wrong in Burn's one-pass kernels: not checks, but what decides
//! how training reduces long rows on it ([`crate::rows::set_long_rows`],
//! [`crate::norm::set_statistics_reduction`]) and what its top-k costs.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::Device;
use serde::Serialize;

use super::harness::{CheckOutcome, host_values, row_reduction, upload};
use crate::topk::top_k_rows;

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

/// The row lengths and `k`s [`one_pass_top_k`] tries: kNN ranks rows as long as the bank with
/// k = 200; the small `k`s bracket where lavapipe's answer turns wrong (docs/backends.md).
pub(crate) const TOP_K_ROW_LENGTHS: [usize; 2] = [500, 2_000];
pub(crate) const TOP_K_KS: [usize; 12] = [1, 5, 16, 32, 33, 48, 63, 64, 100, 127, 128, 200];

/// Whether the device's one-pass top-k of 64 random rows of one length passed
/// [`top_k_rows`]'s proof at one `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TopKProbe {
    pub row_length: usize,
    pub k: usize,
    pub device_right: bool,
}

/// Where Burn's one-pass top-k is right on the device. Decides nothing — every call of
/// [`top_k_rows`] proves its own answer and ranks on the host when it fails — but says what a
/// device costs: each failed `k` is a read-back and a host sort per call. A `k` whose kernel
/// panics counts as wrong, so one bad kernel does not end the probe (nor `sce-train check`).
pub fn one_pass_top_k(device: &Device) -> Vec<TopKProbe> {
    const ROWS: usize = 64;
    TOP_K_ROW_LENGTHS
        .iter()
        .flat_map(|&row_length| {
            let values = host_values(ROWS * row_length, 41);
            TOP_K_KS.iter().map(move |&k| {
                let ranked = catch_unwind(AssertUnwindSafe(|| {
                    top_k_rows(upload(&values, [ROWS, row_length], device), k)
                }));
                TopKProbe {
                    row_length,
                    k,
                    device_right: ranked.is_ok_and(|top| !top.recomputed_on_host),
                }
            })
        })
        .collect()
}

/// One line per row length: the `k`s the device got right and those ranked on the host.
pub fn describe_top_k(probes: &[TopKProbe]) -> Vec<String> {
    TOP_K_ROW_LENGTHS
        .iter()
        .map(|&row_length| {
            let of_length = probes.iter().filter(|p| p.row_length == row_length);
            let ks = |right: bool| {
                let ks: Vec<String> = of_length
                    .clone()
                    .filter(|p| p.device_right == right)
                    .map(|p| p.k.to_string())
                    .collect();
                ks.join(", ")
            };
            let (right, wrong) = (ks(true), ks(false));
            let rows = format!(
                "device: one-pass top-k of rows of {}",
                with_thousands(row_length)
            );
            match (right.is_empty(), wrong.is_empty()) {
                (_, true) => format!("{rows} is right for every k tried ({right})"),
                (true, false) => {
                    format!("{rows} is WRONG for every k tried ({wrong}); ranked on the host")
                }
                (false, false) => format!(
                    "{rows} is right for k = {right}; WRONG for k = {wrong} (ranked on the host)"
                ),
            }
        })
        .collect()
}

/// `2000` as `2,000`, as the check names write row lengths.
fn with_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_lines_name_the_wrong_ks() {
        let probes: Vec<TopKProbe> = [(500, 5, true), (500, 64, false), (2_000, 5, true)]
            .into_iter()
            .map(|(row_length, k, device_right)| TopKProbe {
                row_length,
                k,
                device_right,
            })
            .collect();
        let lines = describe_top_k(&probes);
        assert_eq!(
            lines[0],
            "device: one-pass top-k of rows of 500 is right for k = 5; WRONG for k = 64 \
             (ranked on the host)"
        );
        assert_eq!(
            lines[1],
            "device: one-pass top-k of rows of 2,000 is right for every k tried (5)"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        let grouped: Vec<String> = [7, 500, 2_000, 100_352, 1_234_567]
            .map(with_thousands)
            .into();
        assert_eq!(grouped, ["7", "500", "2,000", "100,352", "1,234,567"]);
    }

    #[test]
    fn the_cpu_top_k_is_right_everywhere() {
        let probes = one_pass_top_k(&Device::default());
        assert_eq!(probes.len(), TOP_K_ROW_LENGTHS.len() * TOP_K_KS.len());
        assert!(probes.iter().all(|p| p.device_right), "{probes:?}");
    }
}
