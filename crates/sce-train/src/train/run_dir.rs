//! The run directory: resolved config, checkpoints, metrics, plot and summary.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};

use super::checkpoint::{complete_steps, newest_intact, state_path};
use super::state::EpochRow;
use crate::atomic_file::write_atomic;
use crate::config::TrainConfig;

/// The end-of-run figures, written to `summary.json` and printed with `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(serialize_with = "crate::report::lossy_path")]
    pub run_dir: PathBuf,
    pub method: String,
    pub dataset: String,
    /// The folder the dataset was read from (`--data-dir`, `$SCE_DATA_DIR`, the cache, …).
    #[serde(default, serialize_with = "crate::report::lossy_optional_path")]
    pub data_dir: Option<PathBuf>,
    pub device: String,
    pub epochs: usize,
    pub steps: usize,
    pub final_loss: f64,
    pub knn_top1: Option<f64>,
    pub knn_top1_initial: Option<f64>,
    /// The online linear probe's top-1 on the kNN test set after the last epoch, and its
    /// accuracy on the last epoch's training batches (percent; absent when it is off).
    #[serde(default)]
    pub probe_top1: Option<f64>,
    #[serde(default)]
    pub probe_train_top1: Option<f64>,
    /// Source images per second of training (evaluation excluded).
    pub images_per_s: f64,
    /// Wall time of the run, evaluation included.
    pub seconds: f64,
    /// What convolutions and linear layers computed in (`run.precision`).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Steps skipped for overflowing gradients (f16 only).
    #[serde(default)]
    pub skipped_steps: Option<u64>,
    /// Unreadable images skipped in this session (`data.skip_corrupt`), each with the reason.
    #[serde(default)]
    pub skipped: Vec<String>,
}

fn f32_name() -> String {
    "f32".into()
}

#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
    /// Held while this process writes the run (see [`RunDir::lock`]).
    _lock: Option<Arc<File>>,
}

/// Takes the run directory's lock file: an OS file lock held until the process ends (so a
/// process that died leaves no stale lock), with the holder's PID written inside for the
/// message another process gets.
fn lock(dir: &Path) -> anyhow::Result<Arc<File>> {
    let path = dir.join("lock");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(anyhow!(
                "{} is in use by another sce-train process (PID {}); wait for it to end or stop \
                 it first",
                dir.display(),
                holder.trim()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(anyhow!("cannot lock {}: {e}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Arc::new(file))
}

impl RunDir {
    /// `output`, or the first free `runs/<config name>-<n>`.
    pub fn choose(output: Option<&Path>, config_path: &Path) -> PathBuf {
        if let Some(out) = output {
            return out.to_path_buf();
        }
        let stem = config_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("run");
        (0..)
            .map(|n| PathBuf::from("runs").join(format!("{stem}-{n}")))
            .find(|p| !p.exists())
            .expect("an unused run name exists")
    }

    /// The run directory another process (MPI rank 0) writes: read, never written or locked.
    pub fn written_elsewhere(path: PathBuf) -> Self {
        Self { path, _lock: None }
    }

    /// Creates a fresh run directory and locks it; refuses one that already holds a run.
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path.join("checkpoints"))
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        let lock = lock(&path)?;
        if path.join("config.toml").exists() {
            return Err(crate::error::usage(format!(
                "{} already holds a run; pass --resume {} to continue it or choose another --output",
                path.display(),
                path.display()
            )));
        }
        Ok(Self {
            path,
            _lock: Some(lock),
        })
    }

    /// An existing run. A run whose `config.toml` was lost but whose checkpoints are intact
    /// gets it back from the newest checkpoint's manifest, which records the configuration.
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let run = Self { path, _lock: None };
        if !run.config_path().is_file() {
            run.restore_config()?;
        }
        Ok(run)
    }

    fn restore_config(&self) -> anyhow::Result<()> {
        let dir = self.checkpoints();
        if complete_steps(&dir).is_empty() {
            return Err(crate::error::usage(format!(
                "{} is not a run directory (no config.toml, no checkpoint)",
                self.path.display()
            )));
        }
        let Some((step, manifest)) = newest_intact(&dir, &|warning| eprintln!("{warning}")) else {
            anyhow::bail!(
                "{} has no config.toml and every checkpoint in {} is damaged: the configuration \
                 cannot be recovered",
                self.path.display(),
                dir.display()
            );
        };
        let source = state_path(&dir, step);
        self.write_config(
            &manifest.config,
            &format!(
                "restored from {} (config.toml was missing)",
                source.display()
            ),
        )?;
        eprintln!(
            "note: {} was missing; restored it from the configuration recorded in {}",
            self.config_path().display(),
            source.display()
        );
        Ok(())
    }

    /// An existing run, locked for writing: a second process writing it is refused.
    pub fn open_locked(path: PathBuf) -> anyhow::Result<Self> {
        let run = Self::open(path)?;
        std::fs::create_dir_all(run.checkpoints())
            .with_context(|| format!("cannot create {}", run.checkpoints().display()))?;
        let lock = lock(&run.path)?;
        Ok(Self {
            _lock: Some(lock),
            ..run
        })
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    /// The resolved configuration, with the command line that produced it as a comment.
    pub fn write_config(&self, config: &TrainConfig, origin: &str) -> anyhow::Result<()> {
        let body = toml::to_string_pretty(config).context("cannot serialise the configuration")?;
        let text = format!("# Resolved configuration of this run.\n# {origin}\n\n{body}");
        write_atomic(&self.config_path(), text.as_bytes())
            .with_context(|| format!("cannot write {}", self.config_path().display()))
    }

    pub fn write_metrics(&self, rows: &[EpochRow]) -> anyhow::Result<()> {
        let mut csv = String::from(
            "epoch,step,loss,lr,positive_similarity,knn_top1,probe_train_top1,probe_top1,\
             loss_scale,skipped_steps,images_per_s,seconds\n",
        );
        let percent = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        for r in rows {
            csv.push_str(&format!(
                "{},{},{:.6},{:.6e},{:.6},{},{},{},{},{},{:.2},{:.2}\n",
                r.epoch,
                r.step,
                r.loss,
                r.lr,
                r.positive_similarity,
                percent(r.knn_top1),
                percent(r.probe_train_top1),
                percent(r.probe_top1),
                r.loss_scale.map(|v| v.to_string()).unwrap_or_default(),
                r.skipped_steps.map(|v| v.to_string()).unwrap_or_default(),
                r.images_per_s,
                r.seconds
            ));
        }
        let path = self.path.join("metrics.csv");
        write_atomic(&path, csv.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn write_summary(&self, summary: &Summary) -> anyhow::Result<()> {
        let path = self.path.join("summary.json");
        let text = serde_json::to_string_pretty(summary)?;
        write_atomic(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read_summary(&self) -> anyhow::Result<Summary> {
        let path = self.path.join("summary.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_run_refuses_a_second_writer_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        let run = RunDir::create(path.clone()).unwrap();
        std::fs::write(run.config_path(), "").unwrap();
        let error = RunDir::open_locked(path.clone()).unwrap_err().to_string();
        let pid = std::process::id().to_string();
        assert!(error.contains("in use") && error.contains(&pid), "{error}");
        // Readers (evaluation) need no lock.
        assert!(RunDir::open(path.clone()).is_ok());
        drop(run);
        // The lock file stays behind, like one left by a killed process: it is no obstacle.
        assert!(path.join("lock").is_file());
        assert!(RunDir::open_locked(path).is_ok());
    }
}
