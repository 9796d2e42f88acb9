//! Saving a checkpoint: Burn's records, the probe's, the manifest last, and only a finite state.

use anyhow::anyhow;
use burn::train::metric::store::EventStoreClient;
use burn::train::{Learner, LearningCheckpointer};
use sce_model::params::{first_non_finite, sync_buffers};

use super::checkpoint::{Manifest, RecordInfo, delete_checkpoint, record_path, state_path};
use super::state::TrainState;
use super::strategy::SceStrategy;
use crate::atomic_file::write_atomic;
use crate::model::SceModel;

impl SceStrategy {
    /// Writes the online probe's records of checkpoint `step` (synchronously, atomically).
    fn save_probe(&self, step: usize) -> anyhow::Result<Vec<(String, RecordInfo)>> {
        let Some(probe) = &self.probe else {
            return Ok(Vec::new());
        };
        let (classifier, optim) = probe.lock().unwrap().records();
        let dir = self.run.checkpoints();
        let mut written = Vec::new();
        for (name, bytes) in [
            ("probe", classifier.into_bytes()),
            ("probe_optim", optim.into_bytes()),
        ] {
            let path = record_path(&dir, name, step);
            let bytes = bytes.map_err(|e| anyhow!("cannot serialise {}: {e}", path.display()))?;
            write_atomic(&path, &bytes)
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
            written.push((name.to_string(), RecordInfo::of(&bytes)));
        }
        Ok(written)
    }

    /// Refuses a state holding NaN or infinite values anywhere (online and target networks with
    /// their BatchNorm statistics, queue, probe): a diverged run must not be saved, scored or
    /// summarised as a result, even when its loss still reads finite.
    pub(super) fn ensure_finite(
        &self,
        model: &SceModel,
        step: usize,
        dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let probe = || self.probe.as_ref()?.lock().unwrap().first_non_finite();
        let Some(path) = first_non_finite(model).or_else(|| probe().map(|p| format!("probe.{p}")))
        else {
            return Ok(());
        };
        Err(anyhow!(
            "the training state diverged: `{path}` holds NaN or infinite values at step {step}. \
             Training stopped without saving this state; the last finite checkpoint in {} is \
             kept. Lower optim.lr or check the data",
            dir.display()
        ))
    }

    /// Saves a checkpoint and returns only once it is complete and durable: Burn's threads
    /// write the records, this waits for each one's outcome, then writes the manifest. Only
    /// then are checkpoints older than the newest two deleted. Any failure ends the run.
    pub(super) fn save(
        &self,
        learner: &Learner<SceModel>,
        state: &mut TrainState,
        checkpointer: Option<&mut LearningCheckpointer<SceModel>>,
        store: &EventStoreClient,
    ) -> anyhow::Result<()> {
        let Some(checkpointer) = checkpointer.filter(|_| self.ranks.writes()) else {
            return Ok(());
        };
        let model = learner.model();
        // Burn's BatchNorm statistics merge their latest update lazily; fold it in first.
        sync_buffers(&model);
        state.queue_ptr = model.queue.ptr();
        let step = state.global_step;
        let dir = self.run.checkpoints();
        self.ensure_finite(&model, step, &dir)?;
        let not_saved =
            |e: anyhow::Error| anyhow!("cannot save the checkpoint at step {step}: {e:#}");
        checkpointer.checkpoint(learner, step, store);
        let mut records = self.saves.wait(step).map_err(not_saved)?;
        records.extend(self.save_probe(step).map_err(not_saved)?);
        let manifest = Manifest {
            state: state.clone(),
            records,
            config: self.config.clone(),
        };
        let path = state_path(&dir, step);
        write_atomic(&path, &serde_json::to_vec_pretty(&manifest)?)
            .map_err(|e| not_saved(anyhow!("cannot write {}: {e}", path.display())))?;
        let mut saved = self.saved.lock().unwrap();
        if saved.last() != Some(&step) {
            saved.push(step);
        }
        while saved.len() > 2 {
            let old = saved.remove(0);
            if let Err(e) = delete_checkpoint(&dir, old) {
                self.console.line(format!(
                    "warning: cannot delete the old checkpoint at step {old} in {}: {e}",
                    dir.display()
                ));
            }
        }
        Ok(())
    }
}
