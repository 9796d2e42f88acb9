//! How training runs on the device it was given: the reduction paths, convolution and
//! batch-norm kernels chosen for the whole process, from what the device computes (probed)
//! or what the `SCE_REDUCTIONS`, `SCE_CONV` and `SCE_NORM` variables ask.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::Device;
use sce_ops::conv::{ConvKernels, set_conv_kernels};
use sce_ops::norm::{NormKernels, StatisticsReduction, set_norm_kernels, set_statistics_reduction};
use sce_ops::precision::{Precision, set_precision};
use sce_ops::rows::{LongRows, set_long_rows};

use sce_ops::check::{CheckOutcome, one_pass_reductions};

use crate::console::with_panic_messages_silenced;

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
            // A probe that panics counts as wrong: training reduces in short passes, and
            // the panic's message is muted so that start-up does not print a backtrace.
            let probes = with_panic_messages_silenced(|| {
                catch_unwind(AssertUnwindSafe(|| one_pass_reductions(device)))
            })
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

/// Sets the compute precision of convolutions and linear layers for the whole process, once
/// every training device is known to compute in it: a device without the type's arithmetic
/// would compute garbage, so it is refused, named with the type. Returns a note to print where
/// the type is computed without hardware for it (the CPU).
pub fn use_precision(devices: &[Device], precision: Precision) -> anyhow::Result<Option<String>> {
    if let Some(device) = devices
        .iter()
        .find(|d| precision != Precision::F32 && !d.supports_dtype(precision.dtype()))
    {
        return Err(crate::error::usage(format!(
            "{device:?} cannot compute in {name}: its backend reports no {name} arithmetic. \
             Use run.precision = \"f32\"{other}",
            name = precision.name(),
            other = match precision {
                Precision::BF16 => " or \"f16\" where the device has it",
                _ => "",
            }
        )));
    }
    set_precision(precision);
    let slow = devices.iter().find(|d| sce_ops::precision::emulated(d));
    Ok(slow.filter(|_| precision != Precision::F32).map(|device| {
        format!(
            "note: {device:?} has no {} hardware: it converts through f32, several times slower \
             than training in f32 (mixed precision is for GPUs; here it checks a recipe)",
            precision.name()
        )
    }))
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
