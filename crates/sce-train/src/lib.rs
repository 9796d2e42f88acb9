//! `sce-train`: the SCE pretraining binary and what it is built from.
//!
//! - [`cli`]: the command line (`pretrain`, `knn`, `linear`, `preview`, `embed`, `export`,
//!   `bench`, `check`, `fetch`).
//! - [`preview`]: the configured augmentation as a picture, before training.
//! - [`options`]: options every command takes, and the rules their values follow.
//! - [`config`]: typed TOML configuration, `--set` overrides, validation.
//! - [`backend`]: Cargo-feature backends chosen at run time with `--device`.
//! - [`model`]: the SCE step hosted by burn-train's `Learner` (EMA and queue in `optimize`).
//! - [`optim`]: LARS and the warmup + cosine schedule.
//! - [`train`]: the epoch loop (a custom learning strategy), run directory, checkpoints.
//! - [`eval`]: kNN, linear evaluation, embeddings.
//! - [`report`]: what a user looks at: TensorBoard logs, augmentation and retrieval
//!   pictures, embedding maps.
//! - [`export`]: trained weights for PyTorch (torchvision's names) or Burn, with what to know.
//! - [`bench`]: augmentation and training-step benchmarks.
//! - [`check`]: a device's arithmetic against float64 references (`sce-train check`).
//! - [`fetch`]: datasets found or downloaded ahead of a run (`sce-train fetch`).

pub mod backend;
pub mod bench;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod model;
pub mod optim;
pub mod options;
pub mod preview;
mod quiet;
pub mod report;
pub mod train;

// `#[derive(RecordState)]` (LARS state) expands to paths at the crate root.
#[allow(unused_imports)]
use burn::optim::{RecordState, StateSink, StateSource, join_index, join_path};
