use thiserror::Error;

/// Why a model could not be built, run or loaded.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("batch of {batch} cannot be split into {splits} equal batch-norm groups")]
    BatchNotDivisible { batch: usize, splits: usize },
    #[error("cannot read weights from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("cannot write weights to {path}: {reason}")]
    Save { path: String, reason: String },
}
