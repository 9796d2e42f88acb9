//! Continuing a run: the checkpoint it continues from, and loading it into fresh parts.

use anyhow::{Context, anyhow};
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::optim::lr_scheduler::LrSchedulerRecord;
use burn::store::ModuleRecord;

use super::checkpoint::{Manifest, newest_intact, record_path, set_aside_after};
use super::continuity;
use super::probe::OnlineProbe;
use super::run_dir::RunDir;
use super::state::TrainState;
use crate::config::TrainConfig;
use crate::console::Console;
use crate::model::SceModel;
use crate::optim::WarmupCosine;

/// The probe as checkpoint `step` saved it; a checkpoint without one (the probe was off, or
/// the run predates it) leaves the probe fresh, with a note.
pub(super) fn restore_probe(
    run: &RunDir,
    step: usize,
    manifest: &Manifest,
    probe: OnlineProbe,
    console: &Console,
) -> anyhow::Result<OnlineProbe> {
    let [classifier, optim] = super::probe::PROBE_RECORDS;
    if !(manifest.records.contains_key(classifier) && manifest.records.contains_key(optim)) {
        console.line(format!(
            "note: the checkpoint at step {step} holds no online probe; the probe starts \
             untrained"
        ));
        return Ok(probe);
    }
    let dir = run.checkpoints();
    let (classifier, optim) = (
        record_path(&dir, classifier, step),
        record_path(&dir, optim, step),
    );
    probe
        .load(
            ModuleRecord::load(&classifier)
                .map_err(|e| anyhow!("cannot read {}: {e}", classifier.display()))?,
            OptimizerRecord::load(&optim)
                .map_err(|e| anyhow!("cannot read {}: {e}", optim.display()))?,
        )
        .with_context(|| format!("cannot restore the online probe from {}", dir.display()))
}

/// Loads checkpoint `step` (already verified, see [`newest_intact`]) into the fresh learner
/// parts.
pub(super) fn restore(
    run: &RunDir,
    step: usize,
    state: TrainState,
    model: SceModel,
    optim: burn::optim::ModuleOptimizer,
    scheduler: &mut WarmupCosine,
) -> anyhow::Result<(SceModel, burn::optim::ModuleOptimizer, TrainState)> {
    use burn::optim::lr_scheduler::LrScheduler;
    let dir = run.checkpoints();
    let model_file = record_path(&dir, "model", step);
    let record = ModuleRecord::load(&model_file)
        .map_err(|e| anyhow!("cannot read {}: {e}", model_file.display()))?;
    let model = model
        .try_load_record(record)
        .map_err(|e| anyhow!("{} does not fit this model: {e}", model_file.display()))?;
    let optim_file = record_path(&dir, "optim", step);
    let optim = optim.load_record(
        OptimizerRecord::load(&optim_file)
            .map_err(|e| anyhow!("cannot read {}: {e}", optim_file.display()))?,
    );
    let sched_file = record_path(&dir, "scheduler", step);
    let record = LrSchedulerRecord::load(&sched_file)
        .map_err(|e| anyhow!("cannot read {}: {e}", sched_file.display()))?;
    // The Learner's ModuleLrScheduler nests its single group's record under "0".
    scheduler.load_record(record.record("0"));
    anyhow::ensure!(
        scheduler.steps_taken() == state.global_step,
        "{} is at step {} but the training state at step {}; the checkpoint is inconsistent",
        sched_file.display(),
        scheduler.steps_taken(),
        state.global_step
    );
    let queue = model.queue.with_ptr(state.queue_ptr)?;
    Ok((SceModel { queue, ..model }, optim, state))
}

/// The checkpoint a resumed run continues from: the newest intact one, trained under a
/// configuration compatible with `config`; `None` (the run restarts from step 0) when the run
/// died before its first checkpoint.
pub(super) fn resume_point(
    run: &RunDir,
    config: &TrainConfig,
    force: bool,
    console: &Console,
) -> anyhow::Result<Option<(usize, Manifest)>> {
    let dir = run.checkpoints();
    remove_stale_temporaries(&dir);
    let newest = newest_intact(&dir, &|warning| console.line(warning));
    set_aside_after(&dir, newest.as_ref().map(|(step, _)| *step))
        .with_context(|| format!("cannot set damaged checkpoints aside in {}", dir.display()))?;
    match newest {
        Some((step, manifest)) => {
            match continuity::ensure_continuable(&manifest.config, config, &run.config_path(), step)
            {
                Err(e) if force => console.line(format!("warning: {e} (continuing: --force)")),
                result => result?,
            }
            Ok(Some((step, manifest)))
        }
        None => {
            console.line(format!(
                "note: {} holds no intact checkpoint; starting the run from step 0 with its \
                 recorded configuration",
                dir.display()
            ));
            Ok(None)
        }
    }
}

/// Removes the temporary files of writes a killed process left behind (`NAME.tmp-PID`); only
/// the process holding the run's lock may.
fn remove_stale_temporaries(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
