//! `sce-train pretrain`: from a configuration to a trained run directory.

mod checkpoint;
mod continuity;
mod epoch;
mod load;
mod plot;
mod probe;
mod resume;
mod run_dir;
mod save;
mod signal;
mod state;
mod strategy;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use burn::tensor::Device;
use burn::train::metric::{LearningRateMetric, LossMetric};
use burn::train::{Interrupter, Learner, SupervisedTraining, TrainingStrategy};
use sce_data::augment::ViewPipeline;
use sce_data::{ImageSource, ViewLoader};

pub use checkpoint::{Manifest, complete_steps, newest_intact, record_path, verify};
pub use load::{TrainedRun, load_run};
pub use probe::OnlineProbe;
pub use run_dir::{RunDir, Summary};
pub use state::{EpochRow, TrainState};
pub use strategy::{Ending, SceStrategy};

use self::checkpoint::{AtomicCheckpointer, SaveLog, SaveWhenAsked};
use self::resume::{restore, restore_probe, resume_point};
use crate::backend::{init_on_host, parse_device};
use crate::config::{ConfigSource, TrainConfig, load_config};
use crate::console::Console;
use crate::error::usage;
use crate::model::{SceModel, StepContext};
use crate::optim::{WarmupCosine, build_optimizer, peak_learning_rate};
use crate::parts::{
    DataAccess, check_channels, eval_transform, knn_evaluator, limited, normalization, objective,
    pair_config,
};
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
    if crate::device::adapt_to_device(&device)?.short {
        console.line(crate::device::short_reductions_note(&device));
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
        step_context: model.ctx.clone(),
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
