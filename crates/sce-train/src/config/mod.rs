//! The training configuration: one typed section per concern, read from TOML with unknown keys
//! refused, overridable from the command line, validated before anything runs.

mod load;
mod sections;

pub use load::{ConfigSource, fit_warmup_to_epochs, load_config, parse_override};
pub use sections::*;

/// Default configuration when none is given: the Fashion-MNIST quick start.
pub const QUICKSTART: &str = "configs/quickstart.toml";
