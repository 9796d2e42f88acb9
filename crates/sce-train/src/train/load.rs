//! A finished (or running) run's networks, for the commands that evaluate or export them.

use anyhow::anyhow;
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;

use super::checkpoint::{complete_steps, newest_intact, record_path};
use super::run_dir::RunDir;
use crate::config::{ConfigSource, TrainConfig, load_config};
use crate::error::usage;
use crate::model::SceModel;
use crate::parts::fresh_model;

/// A run's configuration and its networks with the weights of its newest intact checkpoint.
pub struct TrainedRun {
    pub config: TrainConfig,
    pub model: SceModel,
    /// The optimizer steps that checkpoint was trained for.
    pub step: usize,
}

/// Loads a run's newest intact checkpoint onto `device` (queue and optimizer state are not
/// needed to evaluate or export).
pub fn load_run(run_dir: &std::path::Path, device: &Device) -> anyhow::Result<TrainedRun> {
    let run = RunDir::open(run_dir.to_path_buf())?;
    let config = load_config(&ConfigSource {
        path: run.config_path(),
        overrides: Vec::new(),
    })?;
    let dir = run.checkpoints();
    let Some((step, _)) = newest_intact(&dir, &|warning| eprintln!("{warning}")) else {
        if complete_steps(&dir).is_empty() {
            return Err(usage(format!(
                "{} holds no checkpoint (train it first)",
                dir.display()
            )));
        }
        anyhow::bail!(
            "every checkpoint in {} is damaged (see the warnings above): nothing to load",
            dir.display()
        );
    };
    // `newest_intact` has checked every record's bytes and values (all finite).
    let model = fresh_model(&config, 1, device)?;
    let file = record_path(&dir, "model", step);
    let record =
        ModuleRecord::load(&file).map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
    let model = model.try_load_record(record).map_err(|e| {
        anyhow!(
            "{} does not fit the run's configuration: {e}",
            file.display()
        )
    })?;
    Ok(TrainedRun {
        config,
        model,
        step,
    })
}
