//! Options and value rules shared by every command (kept apart from `cli`, which imports the
//! commands, so that no command imports `cli` back).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::console::Console;

/// A count that must be at least 1 (`--k`, `--epochs`, limits, batch sizes): the same rule as
/// the configuration's, applied where clap parses the option.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be >= 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number >= 1")),
    }
}

/// A finite number above zero (temperatures, learning rates).
pub fn positive_number(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} must be a finite number > 0")),
        Err(_) => Err(format!("`{text}` is not a number")),
    }
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Device: auto, cpu, cuda[:N], wgpu[:N], vulkan[:N], metal[:N] (what is compiled in).
    #[arg(long, default_value = "auto", global = true)]
    pub device: String,
    /// Where datasets are (the folder itself or its parent); else $SCE_DATA_DIR, the user cache.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print the result as one JSON line on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Common {
    pub fn console(&self) -> Console {
        Console { quiet: self.quiet }
    }
}

/// Prints `value` as one JSON line on stdout when `--json` asked for it.
pub fn print_json<T: Serialize>(common: &Common, value: &T) -> anyhow::Result<()> {
    if common.json {
        println!("{}", serde_json::to_string(value)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_positive_numbers_are_checked_when_parsed() {
        assert_eq!(at_least_one("3"), Ok(3));
        for bad in ["0", "-1", "x", ""] {
            assert!(at_least_one(bad).is_err(), "{bad}");
        }
        assert_eq!(positive_number("0.07"), Ok(0.07));
        for bad in ["0", "-0.1", "nan", "inf", "x"] {
            assert!(positive_number(bad).is_err(), "{bad}");
        }
    }
}
