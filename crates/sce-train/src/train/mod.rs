//! `sce-train pretrain`: from a configuration to a trained run directory.

mod checkpoint;
mod console;
mod continuity;
mod plot;
mod probe;
mod run_dir;
mod signal;
mod state;
mod strategy;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::optim::lr_scheduler::LrSchedulerRecord;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use burn::train::metric::{LearningRateMetric, LossMetric};
use burn::train::{Interrupter, Learner, SupervisedTraining, TrainingStrategy};
use sce_data::augment::{EvalTransform, Normalization, ViewPipeline};
use sce_data::{
    DatasetKind, ImageSource, Locator, OpenOptions, SkipLog, Split, Subset, ViewLoader,
};
use sce_loss::{ResslLoss, SceLoss};
use sce_model::{MlpConfig, MomentumPairConfig, ResNetConfig};

pub use checkpoint::{Manifest, complete_steps, newest_intact, record_path, verify, write_atomic};
pub use console::Console;
pub use probe::OnlineProbe;
pub use run_dir::{RunDir, Summary};
pub use state::{EpochRow, TrainState};
pub use strategy::{Ending, SceStrategy};

use self::checkpoint::{AtomicCheckpointer, SaveLog, SaveWhenAsked, set_aside_after};
use crate::backend::{init_on_host, parse_device};
use crate::config::{ConfigSource, HeadSection, MethodName, TrainConfig, load_config};
use crate::error::usage;
use crate::model::{Objective, SceModel, StepContext};
use crate::optim::{WarmupCosine, build_optimizer, peak_learning_rate};
use crate::report::preview::augmentation_grid;
use crate::report::run_log::{AUGMENTATIONS_PNG, RunLog};

/// What `pretrain` was asked to do.
#[derive(Clone, Debug)]
pub struct PretrainArgs {
    pub source: ConfigSource,
    pub output: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    /// Resume even if the configuration changed in keys that break continuity.
    pub force: bool,
    pub device: String,
    /// Several devices for data-parallel training (overrides `device`).
    pub devices: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub console: Console,
    /// The command line, recorded in the run's config.
    pub origin: String,
}

/// The data a run reads: where the dataset lives and how to open it.
pub struct DataAccess {
    pub kind: DatasetKind,
    pub root: PathBuf,
    pub options: OpenOptions,
    /// Where what opening a split noticed (ignored files, …) is said.
    pub console: Console,
    /// `data.skip_corrupt` for every image the run reads, and the images skipped.
    pub skip: Arc<SkipLog>,
}

impl DataAccess {
    pub fn locate(
        config: &TrainConfig,
        data_dir: Option<PathBuf>,
        console: &Console,
    ) -> anyhow::Result<Self> {
        let kind = config.data.dataset;
        let locator = Locator::from_env(data_dir, config.data.download);
        let mut progress = console.download_progress();
        let root = locator.resolve(kind, &mut progress)?;
        // Said every time: with several possible folders, which one a result came from.
        console.line(format!("data: {kind} from {}", root.display()));
        let warn = {
            let console = *console;
            move |line: &str| console.line(line)
        };
        Ok(Self {
            kind,
            root,
            console: *console,
            skip: Arc::new(SkipLog::new(config.data.skip_corrupt, Box::new(warn))),
            options: OpenOptions {
                channels: config.data.channels,
                class_list: config.data.class_list.clone(),
            },
        })
    }

    pub fn open(&self, split: Split) -> anyhow::Result<Arc<dyn ImageSource>> {
        let source = self.kind.open(split, &self.root, &self.options)?;
        for note in source.notes() {
            self.console.line(format!("note: {note}"));
        }
        Ok(source)
    }

    /// The labelled split used as a kNN memory bank / linear-probe training set.
    pub fn labelled_train(&self) -> anyhow::Result<Arc<dyn ImageSource>> {
        self.open(Split::Train)
    }
}

pub fn normalization(config: &TrainConfig, kind: DatasetKind, channels: usize) -> Normalization {
    match (&config.augment.mean, &config.augment.std) {
        (Some(mean), Some(std)) => Normalization {
            mean: mean.clone(),
            std: std.clone(),
        },
        _ => {
            let n = kind.normalization();
            // Grayscale folders get the mean of the RGB statistics.
            if channels == 1 && n.mean.len() == 3 {
                let avg = |v: &[f32]| vec![v.iter().sum::<f32>() / 3.0];
                Normalization {
                    mean: avg(&n.mean),
                    std: avg(&n.std),
                }
            } else {
                n
            }
        }
    }
}

pub fn eval_transform(config: &TrainConfig, normalization: Normalization) -> EvalTransform {
    EvalTransform {
        size: config.augment.size,
        crop_fraction: config.eval.crop_fraction,
        normalization,
    }
}

fn head(input: usize, head: &HeadSection) -> MlpConfig {
    let mut dims = vec![input];
    dims.extend(&head.hidden);
    dims.push(head.output);
    MlpConfig {
        dims,
        last_norm: head.last_norm,
        last_bias: head.last_bias,
    }
}

/// The networks of the configuration for images of `channels` channels.
pub fn pair_config(config: &TrainConfig, channels: usize) -> MomentumPairConfig {
    let m = &config.model;
    let trunk = ResNetConfig::new(m.depth, m.stem)
        .with_in_channels(channels)
        .with_width(m.width)
        .with_zero_init_residual(m.zero_init_residual);
    MomentumPairConfig {
        projector: head(trunk.feature_dim(), &m.projector),
        predictor: m.predictor.as_ref().map(|p| head(m.projector.output, p)),
        trunk,
    }
}

pub fn objective(config: &TrainConfig) -> anyhow::Result<Objective> {
    let m = &config.method;
    Ok(match m.name {
        MethodName::Sce => Objective::Sce(
            SceLoss::new(m.tau, m.tau_m, m.lambda)?.with_target_positive(m.target_positive.into()),
        ),
        MethodName::Moco => Objective::Sce(SceLoss::info_nce(m.tau)?),
        MethodName::Ressl => Objective::Ressl(ResslLoss::new(m.tau, m.tau_m)?),
    })
}

/// `source`, or with a limit its seeded class-stratified subset, said in one line.
pub fn limited(
    source: Arc<dyn ImageSource>,
    limit: Option<usize>,
    seed: u64,
    role: &str,
    console: &Console,
) -> Arc<dyn ImageSource> {
    match limit {
        Some(n) if n < source.len() => {
            let all = source.len();
            let subset = Subset::stratified(source, n, seed);
            console.line(format!(
                "{role}: {} of {all} images, {} of {} classes (stratified subset, seed {seed})",
                subset.len(),
                subset.classes_present(),
                subset.num_classes()
            ));
            Arc::new(subset)
        }
        _ => source,
    }
}

/// The kNN monitor of a run, unless the dataset has no labelled test split.
pub fn knn_evaluator(
    config: &TrainConfig,
    data: &DataAccess,
    transform: EvalTransform,
    device: &Device,
    console: &Console,
) -> anyhow::Result<Option<crate::eval::KnnEvaluator>> {
    // Only a split that does not exist turns monitoring off; a split that exists but cannot
    // be read (corrupt, classes that do not match training) is an error.
    let off = |why: String| {
        console.line(format!(
            "note: no labelled {:?} split for {} ({why}); kNN monitoring is off",
            config.data.test_split, data.kind
        ));
        Ok(None)
    };
    let test = match data.open(config.data.test_split) {
        Ok(test) if test.num_classes() > 0 => test,
        Ok(_) => return off("its images have no labels".into()),
        Err(e) => match e.downcast_ref::<sce_data::DataError>() {
            Some(not_found @ sce_data::DataError::NotFound { .. }) => {
                return off(not_found.to_string());
            }
            _ => return Err(e),
        },
    };
    let bank = data.labelled_train()?;
    Ok(Some(crate::eval::KnnEvaluator {
        bank: limited(
            bank,
            config.eval.bank_limit,
            config.run.seed,
            "kNN bank",
            console,
        ),
        test: limited(
            test,
            config.eval.test_limit,
            config.run.seed,
            "kNN test set",
            console,
        ),
        transform,
        batch_size: config.eval.batch_size,
        k: config.eval.knn_k,
        temperature: config.eval.knn_temperature,
        device: device.clone(),
        skip: data.skip.clone(),
    }))
}

/// The online linear probe of a run, when `eval.online_probe` is on and the training images
/// have labels (said in one line when it is off for want of them).
fn online_probe(
    config: &TrainConfig,
    train: &Arc<dyn ImageSource>,
    feature_dim: usize,
    device: &Device,
    console: &Console,
) -> Option<OnlineProbe> {
    if !config.eval.online_probe {
        return None;
    }
    if train.num_classes() == 0 {
        console.line("note: the training images have no labels; the online linear probe is off");
        return None;
    }
    Some(OnlineProbe::new(
        feature_dim,
        train.num_classes(),
        config.eval.online_probe_lr,
        device,
    ))
}

/// The probe as checkpoint `step` saved it; a checkpoint without one (the probe was off, or
/// the run predates it) leaves the probe fresh, with a note.
fn restore_probe(
    run: &RunDir,
    step: usize,
    manifest: &Manifest,
    probe: OnlineProbe,
    console: &Console,
) -> anyhow::Result<OnlineProbe> {
    let [classifier, optim] = self::probe::PROBE_RECORDS;
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
fn restore(
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
    model.ctx.set_step(state.global_step);
    let queue = model.queue.with_ptr(state.queue_ptr)?;
    Ok((SceModel { queue, ..model }, optim, state))
}

/// The checkpoint a resumed run continues from: the newest intact one, trained under a
/// configuration compatible with `config`; `None` (the run restarts from step 0) when the run
/// died before its first checkpoint.
fn resume_point(
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

/// Trains (or continues) a run and returns its summary.
pub fn pretrain(args: &PretrainArgs) -> anyhow::Result<Summary> {
    let console = args.console;
    let (config, existing_run, resume_from) = match &args.resume {
        Some(dir) => {
            let run = RunDir::open_locked(dir.clone())?;
            let config = load_config(&ConfigSource {
                path: run.config_path(),
                overrides: args.source.overrides.clone(),
            })?;
            let resume_from = resume_point(&run, &config, args.force, &console)?;
            (config, Some(run), resume_from)
        }
        None => (load_config(&args.source)?, None, None),
    };
    let devices = if args.devices.is_empty() {
        vec![parse_device(&args.device)?]
    } else {
        args.devices
            .iter()
            .map(|d| parse_device(d))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let keys_per_step = config.keys_per_step() * devices.len();
    if !config.method.queue_size.is_multiple_of(keys_per_step) {
        return Err(usage(format!(
            "`method.queue_size` = {} must be a multiple of the {keys_per_step} keys all {} \
             devices enqueue per step",
            config.method.queue_size,
            devices.len()
        )));
    }
    let device = devices[0].clone();
    if crate::check::adapt_to_device(&device)?.short {
        console.line(crate::check::short_reductions_note(&device));
    }
    let train_device = device.clone().autodiff();
    let train_devices: Vec<_> = devices.iter().map(|d| d.clone().autodiff()).collect();
    device.seed(config.run.seed);

    let data = DataAccess::locate(&config, args.data_dir.clone(), &console)?;
    let train_source = limited(
        data.open(config.data.train_split)?,
        config.data.limit_train,
        config.run.seed,
        "training set",
        &console,
    );
    let channels = train_source.channels();
    check_channels(&config, channels, data.kind)?;
    let norm = normalization(&config, data.kind, channels);
    let pipeline = ViewPipeline::new(config.views(), norm.clone())?;
    let loader = ViewLoader::new(
        train_source.clone(),
        pipeline.clone(),
        sce_data::LoaderConfig {
            batch_size: config.run.batch_size,
            drop_last: true,
            shuffle: true,
            seed: config.run.seed,
            threads: config.data.threads,
            prefetch: config.data.prefetch,
            skip: data.skip.clone(),
        },
        train_device.clone(),
    )?;
    let evaluator = knn_evaluator(
        &config,
        &data,
        eval_transform(&config, norm),
        &device,
        &console,
    )?;
    // Everything the run needs is there: only now does it get a directory.
    let run = match existing_run {
        Some(run) => run,
        None => {
            let run = RunDir::create(RunDir::choose(args.output.as_deref(), &args.source.path))?;
            run.write_config(&config, &args.origin)?;
            run
        }
    };

    let steps_per_epoch = loader.batches_per_epoch() / devices.len();
    anyhow::ensure!(
        steps_per_epoch > 0,
        "{} training images make fewer batches of {} than there are devices",
        train_source.len(),
        config.run.batch_size
    );
    let total_steps = steps_per_epoch * config.run.epochs;
    let ctx = StepContext::new(
        objective(&config)?,
        config.pairing(),
        config.model.bn_splits,
        config.method.momentum,
        total_steps,
        config.run.seed,
    )
    .with_devices(train_devices.clone());
    let networks = pair_config(&config, channels);
    let model = init_on_host(&train_device, config.run.seed, |device| {
        SceModel::new(&networks, config.method.queue_size, ctx, device)
    })?;
    let optim = build_optimizer(&config.optim);
    let peak = peak_learning_rate(config.optim.lr, config.run.batch_size, devices.len());
    let warmup = (config.optim.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let mut scheduler = WarmupCosine::new(peak, warmup, total_steps);
    let probe = online_probe(
        &config,
        &train_source,
        networks.trunk.feature_dim(),
        &train_device,
        &console,
    );
    let (model, optim, state, probe) = match resume_from {
        Some((step, manifest)) => {
            let probe = probe
                .map(|probe| restore_probe(&run, step, &manifest, probe, &console))
                .transpose()?;
            let (model, optim, state) =
                restore(&run, step, manifest.state, model, optim, &mut scheduler)?;
            (model, optim, state, probe)
        }
        None => (model, optim, TrainState::fresh(config.run.seed), probe),
    };
    if state.epoch >= config.run.epochs {
        console.line(format!(
            "{} already finished its {} epochs",
            run.path.display(),
            config.run.epochs
        ));
        return run.read_summary();
    }
    console.line(format!(
        "{} on {} ({} images, {} steps/epoch, {} epochs) on {device:?}; run directory {}",
        format!("{:?}", config.method.name).to_lowercase(),
        data.kind,
        train_source.len(),
        steps_per_epoch,
        config.run.epochs,
        run.path.display()
    ));
    if state.global_step > 0 {
        console.line(format!(
            "resuming at epoch {}, batch {} (step {})",
            state.epoch + 1,
            state.batch_in_epoch,
            state.global_step
        ));
    }

    let mut report = RunLog::open(
        run.path.clone(),
        &config.report,
        config.run.seed,
        (state.global_step > 0).then_some(state.global_step),
        console,
    );
    if state.global_step == 0 {
        let names = crate::report::preview::view_names(&config);
        let images = crate::report::preview::DEFAULT_IMAGES;
        match augmentation_grid(&*train_source, &pipeline, &names, images, config.run.seed) {
            Ok(grid) => report.picture(0, AUGMENTATIONS_PNG, "augmentations", &grid),
            Err(e) => console.line(format!("warning: no augmentation preview: {e:#}")),
        }
    }

    let checkpoints = run.checkpoints();
    let existing = complete_steps(&checkpoints);
    let saves = SaveLog::default();
    let strategy = Arc::new(SceStrategy {
        devices: train_devices,
        loader: loader.clone(),
        evaluator,
        probe: probe.map(Mutex::new),
        run: run.clone(),
        console,
        epochs: config.run.epochs,
        batch_size: config.run.batch_size,
        knn_every: config.eval.knn_every,
        checkpoint_every: config.run.checkpoint_every,
        saved: Mutex::new(existing),
        saves: saves.clone(),
        config: config.clone(),
        state: Mutex::new(state),
        outcome: Mutex::new(None),
        report: Mutex::new(report),
    });
    let interrupter = Interrupter::new();
    signal::route_signals_to(&interrupter);
    let training = SupervisedTraining::new(&run.path, Arc::new(loader.clone()), Arc::new(loader))
        .with_training_strategy(TrainingStrategy::Custom(strategy.clone()))
        .with_custom_checkpointers(
            AtomicCheckpointer::new(&checkpoints, "model", saves.clone()),
            AtomicCheckpointer::new(&checkpoints, "optim", saves.clone()),
            AtomicCheckpointer::new(&checkpoints, "scheduler", saves),
        )
        .with_checkpointing_strategy(SaveWhenAsked)
        .renderer(Box::new(crate::quiet::QuietRenderer))
        .with_interrupter(interrupter)
        .metrics((LossMetric::new(),))
        .metric_train_numeric(LearningRateMetric::new())
        .num_epochs(config.run.epochs);
    let result = training.launch(Learner::new(model, optim, scheduler));
    drop(result);

    let outcome = strategy
        .outcome
        .lock()
        .unwrap()
        .take()
        .unwrap_or_else(|| Err(anyhow!("training did not run")));
    let state = strategy.state.lock().unwrap().clone();
    let skipped: Vec<String> = data
        .skip
        .skipped()
        .into_iter()
        .map(|(_, why)| why)
        .collect();
    if !skipped.is_empty() {
        console.line(format!(
            "{} unreadable image(s) were skipped; listed in summary.json",
            skipped.len()
        ));
    }
    match outcome? {
        Ending::Interrupted => Err(anyhow!(
            "training interrupted at epoch {}, batch {} (step {}); the checkpoint is saved — \
             continue with: sce-train pretrain --resume {}",
            state.epoch + 1,
            state.batch_in_epoch,
            state.global_step,
            run.path.display()
        )),
        Ending::Finished => {
            let last = state
                .history
                .last()
                .ok_or_else(|| anyhow!("no epoch completed"))?;
            // A summary speaks for a run whose final checkpoint is on disk, never past it.
            verify(&checkpoints, state.global_step).with_context(|| {
                format!(
                    "the final checkpoint (step {}) of {} is not intact",
                    state.global_step,
                    run.path.display()
                )
            })?;
            let summary = Summary {
                run_dir: run.path.clone(),
                method: format!("{:?}", config.method.name).to_lowercase(),
                dataset: data.kind.to_string(),
                data_dir: Some(data.root.clone()),
                device: format!("{device:?}"),
                epochs: config.run.epochs,
                steps: state.global_step,
                final_loss: last.loss,
                knn_top1: last.knn_top1,
                knn_top1_initial: state.knn_initial,
                probe_top1: last.probe_top1,
                probe_train_top1: last.probe_train_top1,
                images_per_s: state.train_images as f64 / state.train_seconds.max(1e-9),
                seconds: state.wall_seconds,
                skipped,
            };
            run.write_summary(&summary)?;
            Ok(summary)
        }
    }
}

/// `data.channels` and `augment.mean/std` must describe the images the run reads: evaluation
/// and export rebuild the network from the configuration, so a disagreement would train, then
/// fail (or mislead) later.
fn check_channels(config: &TrainConfig, channels: usize, kind: DatasetKind) -> anyhow::Result<()> {
    if let Some(c) = config.data.channels
        && c != channels
    {
        return Err(usage(format!(
            "`data.channels` = {c}, but {kind} images have {channels} channel(s); set it to \
             {channels} or remove it"
        )));
    }
    if let Some(mean) = &config.augment.mean
        && mean.len() != channels
    {
        return Err(usage(format!(
            "`augment.mean`/`augment.std` have {} value(s), but {kind} images have {channels} \
             channel(s)",
            mean.len()
        )));
    }
    Ok(())
}

/// Image channels a configuration trains on.
pub fn channels_of(config: &TrainConfig) -> usize {
    config
        .data
        .channels
        .unwrap_or(config.data.dataset.channels())
}

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

/// The untrained networks of a configuration (seeded by `run.seed`), for `total_steps` steps.
pub fn fresh_model(
    config: &TrainConfig,
    total_steps: usize,
    device: &Device,
) -> anyhow::Result<SceModel> {
    device.seed(config.run.seed);
    let ctx = StepContext::new(
        objective(config)?,
        config.pairing(),
        config.model.bn_splits,
        config.method.momentum,
        total_steps,
        config.run.seed,
    );
    SceModel::new(
        &pair_config(config, channels_of(config)),
        config.method.queue_size,
        ctx,
        device,
    )
}
