//! `sce-train check`: a numerical self-test of a device before trusting it with a long run.
//!
//! GPU backends can compute wrong numbers without failing: on Mesa's lavapipe (a software
//! Vulkan device) a reduction over long rows stops part way, because llvmpipe leaves a
//! shader's loops after 65,535 iterations, so Burn's fused batch-norm statistics are wrong and
//! training silently learns nothing (docs/backends.md). Each case compares an operation
//! training depends on with a float64 reference computed on the host, computed the way
//! training computes it on this device: Burn's one-pass reductions over long rows are probed
//! first, and where they are wrong training reduces in short passes ([`adapt_to_device`]).

mod cases;

use std::panic::{AssertUnwindSafe, catch_unwind};

use clap::Args;
use sce_loss::{LongRows, set_long_rows};
use sce_model::conv::{ConvKernels, set_conv_kernels};
use sce_model::{NormKernels, StatisticsReduction, set_norm_kernels, set_statistics_reduction};
use serde::Serialize;

pub use cases::{CASES, CheckOutcome};

use crate::backend::parse_device;
use crate::options::Common;

#[derive(Args, Debug)]
pub struct CheckCmd {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Serialize)]
struct CheckReport {
    device: String,
    passed: bool,
    /// Burn's one-pass reductions over long rows: what decided how training reduces here.
    one_pass_reductions: Vec<CheckOutcome>,
    checks: Vec<CheckOutcome>,
}

/// How training reduces long rows on a device, and what decided it.
pub struct Adaptation {
    /// Short reductions: batch-norm statistics over width, height and batch in turn, the
    /// losses' softmax rows in blocks.
    pub short: bool,
    /// Burn's one-pass reductions on the device; empty when `SCE_REDUCTIONS` chose.
    pub probes: Vec<CheckOutcome>,
}

/// Chooses, for the whole process, how training reduces long rows on `device`: in one pass,
/// Burn's way, where that comes out right, in short passes where it does not (the device is
/// told apart by what it computes, not by its name). `SCE_REDUCTIONS=short` or `=fused`
/// overrides the choice, `SCE_CONV=burn` runs Burn's own convolutions on `flex` in place of
/// the GEMM kernels (`=gemm`, the default), and `SCE_NORM=burn` Burn's batch norm, ReLU and
/// residual add in place of the fused kernels (`=fused`, the default), to measure either path.
/// Any other value of these variables is an error.
pub fn adapt_to_device(device: &burn::tensor::Device) -> anyhow::Result<Adaptation> {
    let (short, probes) = match env_choice("SCE_REDUCTIONS", &["short", "fused"])? {
        Some("short") => (true, Vec::new()),
        Some(_) => (false, Vec::new()),
        None => {
            let probes = catch_unwind(AssertUnwindSafe(|| cases::one_pass_reductions(device)))
                .map(Vec::from)
                .unwrap_or_default();
            (
                probes.is_empty() || probes.iter().any(|p| !p.passed),
                probes,
            )
        }
    };
    set_conv_kernels(match env_choice("SCE_CONV", &["gemm", "burn"])? {
        Some("burn") => ConvKernels::Burn,
        _ => ConvKernels::Gemm,
    });
    set_norm_kernels(match env_choice("SCE_NORM", &["fused", "burn"])? {
        Some("burn") => NormKernels::Burn,
        _ => NormKernels::Fused,
    });
    set_statistics_reduction(if short {
        StatisticsReduction::Short
    } else {
        StatisticsReduction::Fused
    });
    set_long_rows(if short {
        LongRows::Blocked
    } else {
        LongRows::Fused
    });
    Ok(Adaptation { short, probes })
}

/// The value of the switch `name` when set, one of `accepted`; anything else is an error that
/// names the variable and its values (a typo must not silently measure the other path).
fn env_choice(name: &str, accepted: &[&'static str]) -> anyhow::Result<Option<&'static str>> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => accepted
            .iter()
            .find(|a| **a == value)
            .map(|a| Some(*a))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{name}={value:?} is not a known value; use one of: {} (or unset it)",
                    accepted.join(", ")
                )
            }),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!(
                "{name} is not valid UTF-8; use one of: {}",
                accepted.join(", ")
            )
        }
    }
}

/// The one line said when a device needs short reductions.
pub fn short_reductions_note(device: &burn::tensor::Device) -> String {
    format!(
        "note: long rows are reduced in short passes on {device:?} (batch-norm statistics over \
         width, height and batch; softmax rows in blocks): it sums long rows wrongly in one pass \
         (see `sce-train check`), or SCE_REDUCTIONS=short asks for it"
    )
}

/// Runs every case on `device`, reporting each as it finishes. A panic inside the backend
/// fails that case instead of ending the program.
pub fn run_checks(
    device: &burn::tensor::Device,
    mut report: impl FnMut(&CheckOutcome),
) -> Vec<CheckOutcome> {
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcomes = CASES
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
        .collect();
    std::panic::set_hook(previous_hook);
    outcomes
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
        console.line(format!(
            "checking {device:?} against float64 references ({} checks)…",
            CASES.len()
        ));
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
        let checks = run_checks(&device, |outcome| console.line(describe(outcome)));
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        if self.common.json {
            let report = CheckReport {
                device: format!("{device:?}"),
                passed: failed.is_empty(),
                one_pass_reductions: adaptation.probes.clone(),
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
