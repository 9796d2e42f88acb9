//! What a checkpoint records beside the Burn records, and the per-epoch history of a run.

use serde::{Deserialize, Serialize};

use crate::optim::LossScaler;

/// One line of `metrics.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub positive_similarity: f64,
    pub knn_top1: Option<f64>,
    /// The online probe's accuracy on the epoch's training batches, each counted before the
    /// probe's step on it (percent; absent when the probe is off).
    #[serde(default)]
    pub probe_train_top1: Option<f64>,
    /// The online probe's top-1 on the kNN test set, at each kNN evaluation.
    #[serde(default)]
    pub probe_top1: Option<f64>,
    /// The f16 loss scale at the epoch's end and the steps skipped so far for overflowing
    /// gradients (absent in f32 and bf16).
    #[serde(default)]
    pub loss_scale: Option<f64>,
    #[serde(default)]
    pub skipped_steps: Option<u64>,
    pub images_per_s: f64,
    pub seconds: f64,
}

/// Where training stands: enough to continue exactly where it stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch in progress (0-based) and the next batch within it.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    /// Optimizer steps completed.
    pub global_step: usize,
    /// Where the next keys go in the queue (the keys themselves are in the model record).
    pub queue_ptr: usize,
    /// The data order and augmentations derive from this seed with (epoch, index).
    pub seed: u64,
    /// Partial sums of the epoch in progress.
    pub epoch_loss_sum: f64,
    pub epoch_similarity_sum: f64,
    pub epoch_batches: usize,
    pub epoch_seconds: f64,
    /// Labelled images the online probe saw this epoch, and how many it got right.
    #[serde(default)]
    pub epoch_probe_seen: usize,
    #[serde(default)]
    pub epoch_probe_correct: usize,
    /// Training time and images across all epochs, for the throughput figure.
    pub train_seconds: f64,
    pub train_images: usize,
    /// Wall time of all sessions of this run.
    pub wall_seconds: f64,
    pub knn_initial: Option<f64>,
    pub history: Vec<EpochRow>,
    /// Processes (MPI ranks) the run trains on: its data shards and global batch depend on it,
    /// so it resumes only on as many.
    #[serde(default = "one")]
    pub ranks: usize,
    /// The loss scale of an f16 run (none in f32 and bf16).
    #[serde(default)]
    pub loss_scale: Option<LossScaler>,
}

fn one() -> usize {
    1
}

impl TrainState {
    pub fn fresh(seed: u64, ranks: usize) -> Self {
        Self {
            seed,
            ranks,
            ..Default::default()
        }
    }
}

impl TrainState {
    /// Closes the epoch in progress with its line of `metrics.csv`: the next one starts from
    /// its first batch with empty sums.
    pub fn end_epoch(&mut self, row: EpochRow) {
        self.epoch = row.epoch;
        self.history.push(row);
        self.batch_in_epoch = 0;
        self.epoch_loss_sum = 0.0;
        self.epoch_similarity_sum = 0.0;
        self.epoch_batches = 0;
        self.epoch_seconds = 0.0;
        self.epoch_probe_seen = 0;
        self.epoch_probe_correct = 0;
    }
}
