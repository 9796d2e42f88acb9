//! `sce-train`: the SCE pretraining binary and what it is built from.
//!
//! - [`cli`]: the command line (`pretrain`, `knn`, `linear`, `preview`, `embed`, `export`,
//!   `bench`, `check`, `fetch`).
//! - [`preview`]: the configured augmentation as a picture, before training.
//! - [`options`]: options every command takes, the rules their values follow, `--json` output.
//! - [`config`]: typed TOML configuration, `--set` overrides, validation.
//! - [`backend`]: Cargo-feature backends chosen at run time with `--device`.
//! - [`device`]: how training runs on the device it got (reduction paths, kernels).
//! - [`console`]: what the user sees on stderr; [`atomic_file`]: files written whole or not at
//!   all.
//! - [`parts`]: what a run is built from by its configuration (data, networks, objective,
//!   kNN monitor), for `pretrain` and every command that reads a run.
//! - [`model`]: the SCE step hosted by burn-train's `Learner` (EMA and queue in `optimize`).
//! - [`optim`]: LARS and the warmup + cosine schedule.
//! - [`distributed`]: which MPI rank this process is, and the collective operations of a
//!   data-parallel step across processes.
//! - [`train`]: `pretrain`: the epoch loop (a custom learning strategy), run directory,
//!   checkpoints, resuming, loading a run for evaluation.
//! - [`eval`]: kNN, linear evaluation, embeddings; [`commands`]: `knn`, `linear`, `embed`.
//! - [`report`]: what a user looks at: TensorBoard logs, augmentation and retrieval
//!   pictures, embedding maps.
//! - [`export`]: trained weights for PyTorch (torchvision's names) or Burn, with what to know.
//! - [`bench`]: augmentation and training-step benchmarks.
//! - [`check`]: a device's arithmetic against float64 references (`sce-train check`).
//! - [`fetch`]: datasets found or downloaded ahead of a run (`sce-train fetch`).

pub mod atomic_file;
pub mod backend;
pub mod bench;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod device;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod model;
pub mod optim;
pub mod options;
pub mod parts;
pub mod preview;
mod quiet;
pub mod report;
pub mod train;

// `#[derive(RecordState)]` (LARS state) expands to paths at the crate root.
#[allow(unused_imports)]
use burn::optim::{RecordState, StateSink, StateSource, join_index, join_path};
