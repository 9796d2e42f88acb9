//! The SCE objective and everything it needs besides the networks.
//!
//! SCE (Similarity Contrastive Estimation, Denize et al., WACV 2023, arXiv 2111.14585) trains the
//! online branch to match a soft target: the one-hot positive mixed (weight `lambda`) with the
//! momentum encoder's sharpened similarity distribution over a queue of past keys.
//!
//! - [`SceLoss`]: the objective; `lambda = 1` is MoCo's InfoNCE, `lambda = 0` the relational term.
//! - [`ResslLoss`]: ReSSL's loss (positive removed from both distributions), a baseline.
//! - [`QueueObjective`]: what both losses share, so a training step can hold either.
//! - [`KeyQueue`]: the FIFO ring of past keys (negatives and relational anchors).
//! - [`ViewPairing`] and [`multi_view_loss`]: asymmetric, symmetric and multi-crop aggregation.
//! - [`LongRows`]: how softmax rows are reduced, whole or in blocks (devices with a loop budget;
//!   sce-ops' `rows`, re-exported).
//! - [`golden`]: the float64 golden-vector format the loss is checked against.
//!
//! Every function takes plain tensors on any device; nothing here names a backend. Inputs are
//! cast to f32 before the similarity matmuls so mixed-precision networks keep an f32 loss.

mod error;
pub mod golden;
mod objective;
mod queue;
mod ressl;
mod sce;
mod views;

pub use error::LossError;
pub use objective::QueueObjective;
pub use queue::KeyQueue;
pub use ressl::ResslLoss;
// The row reductions the losses use live with the other per-device operations (sce-ops).
pub use sce::{SceLoss, TargetPositive};
pub use sce_ops::rows::{
    BLOCK, LongRows, log_softmax_rows, long_rows, set_long_rows, softmax_rows, sum_rows,
};
pub use views::{ViewPairing, multi_view_loss};

#[cfg(test)]
mod test_util;
