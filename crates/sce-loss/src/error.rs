use thiserror::Error;

/// Why a loss or queue operation was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LossError {
    /// A hyperparameter outside its valid range.
    #[error("invalid {name} = {value}: must be {allowed}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        allowed: &'static str,
    },
    /// Tensors whose shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A queue whose size is not a multiple of the number of keys enqueued per step.
    #[error(
        "queue size {queue_size} is not a multiple of the {enqueued} keys enqueued per step \
         (the ring has no wrap-around split)"
    )]
    QueueNotMultiple { queue_size: usize, enqueued: usize },
}
