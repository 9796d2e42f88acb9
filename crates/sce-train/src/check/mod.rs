//! `sce-train check`: a numerical self-test of a device before trusting it with a long run.
//!
//! GPU backends can compute wrong numbers without failing: on Mesa's lavapipe (a software
//! Vulkan device) a reduction over long rows stops part way, because llvmpipe leaves a
//! shader's loops after 65,535 iterations, so Burn's fused batch-norm statistics are wrong and
//! training silently learns nothing (docs/backends.md). Each case compares an operation
//! training depends on with a float64 reference computed on the host, computed the way
//! training computes it on this device: Burn's one-pass reductions over long rows are probed
//! first, and where they are wrong training reduces in short passes
//! ([`crate::device::adapt_to_device`]).

mod cases;

use std::panic::{AssertUnwindSafe, catch_unwind};

use clap::Args;
use serde::Serialize;

pub use cases::CASES;
pub use sce_ops::check::CheckOutcome;
use sce_ops::check::{TopKProbe, describe_top_k, one_pass_top_k};

use crate::backend::parse_device;
use crate::config::PrecisionName;
use crate::console::with_panic_messages_silenced;
use crate::device::{adapt_to_device, short_reductions_note, use_precision};
use crate::options::Common;

#[derive(Args, Debug)]
pub struct CheckCmd {
    #[command(flatten)]
    pub common: Common,
    /// Compute precision of the convolution and linear cases (what `run.precision` trains
    /// them in): f32, f16 or bf16, each with its own tolerance.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionName,
}

#[derive(Serialize)]
struct CheckReport {
    device: String,
    precision: &'static str,
    passed: bool,
    /// Burn's one-pass reductions over long rows: what decided how training reduces here.
    one_pass_reductions: Vec<CheckOutcome>,
    /// Where Burn's one-pass top-k is right here (kNN ranks with it, proven at each call).
    one_pass_top_k: Vec<TopKProbe>,
    checks: Vec<CheckOutcome>,
}

/// Runs every case on `device`, reporting each as it finishes. A panic inside the backend
/// fails that case instead of ending the program.
pub fn run_checks(
    device: &burn::tensor::Device,
    mut report: impl FnMut(&CheckOutcome),
) -> Vec<CheckOutcome> {
    with_panic_messages_silenced(|| {
        CASES
            .iter()
            .map(|(name, case)| {
                let outcome = catch_unwind(AssertUnwindSafe(|| case(device))).unwrap_or_else(|p| {
                    let message = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "the backend panicked".into());
                    CheckOutcome::aborted(name, message)
                });
                report(&outcome);
                outcome
            })
            .collect()
    })
}

/// One line per check: verdict, name, error against the tolerance.
pub fn describe(outcome: &CheckOutcome) -> String {
    let verdict = if outcome.passed { "ok  " } else { "FAIL" };
    match &outcome.error {
        Some(error) => format!("{verdict}  {}: did not run: {error}", outcome.name),
        None => format!(
            "{verdict}  {} (max relative error {:.1e}, tolerance {:.0e})",
            outcome.name, outcome.max_error, outcome.tolerance
        ),
    }
}

impl CheckCmd {
    pub fn run(&self) -> anyhow::Result<()> {
        let device = parse_device(&self.common.device)?;
        let console = self.common.console();
        let precision = self.precision.precision();
        let note = use_precision(std::slice::from_ref(&device), precision)?;
        console.line(format!(
            "checking {device:?} against float64 references ({} checks; convolutions and \
             linear layers in {})…",
            CASES.len(),
            precision.name()
        ));
        if let Some(note) = note {
            console.line(note);
        }
        let adaptation = adapt_to_device(&device)?;
        for probe in &adaptation.probes {
            let verdict = if probe.passed { "exact" } else { "WRONG" };
            console.line(format!(
                "device: {} is {verdict} here (max relative error {:.1e})",
                probe.name, probe.max_error
            ));
        }
        if adaptation.short {
            console.line(short_reductions_note(&device));
        }
        let top_k = with_panic_messages_silenced(|| one_pass_top_k(&device));
        for line in describe_top_k(&top_k) {
            console.line(line);
        }
        let checks = run_checks(&device, |outcome| console.line(describe(outcome)));
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        if self.common.json {
            let report = CheckReport {
                device: format!("{device:?}"),
                precision: precision.name(),
                passed: failed.is_empty(),
                one_pass_reductions: adaptation.probes.clone(),
                one_pass_top_k: top_k,
                checks: checks.clone(),
            };
            println!("{}", serde_json::to_string(&report)?);
        }
        if !failed.is_empty() {
            anyhow::bail!(
                "{} of {} numerical checks failed on {device:?}: {}. Training on this device would \
                 give wrong results; see \"Checking a device\" in docs/backends.md",
                failed.len(),
                checks.len(),
                failed.join("; ")
            );
        }
        console.line(format!("all {} checks passed", checks.len()));
        Ok(())
    }
}
