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
use crate::distributed::Ranks;
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

/// Trains (or continues) a run and returns its summary. Started by `mpirun` as one of several
/// ranks, trains the run together with the other ranks; a failure on this rank ends them all.
pub fn pretrain(args: &PretrainArgs) -> anyhow::Result<Summary> {
    let ranks = Arc::new(Ranks::join()?);
    let result = pretrain_as(args, ranks.clone());
    match result {
        Err(e) if ranks.is_distributed() && !ranks.ended_together() => {
            eprintln!("error on rank {} of {}: {e:#}", ranks.rank, ranks.size);
            ranks.abort(1);
            Err(e)
        }
        // Past the end every rank ended alike (an interrupted run): rank 0 says so, the
        // others leave with the same status.
        Err(e) if !ranks.writes() => Err(e.context(crate::error::Silent)),
        result => result,
    }
}

/// With `model.sync_bn`, hands sce-ops the ranks' all-reduce, which turns every training
/// batch norm into SyncBatchNorm. Several devices of one process keep their own statistics.
fn synchronise_batch_norm(
    config: &TrainConfig,
    ranks: &Arc<Ranks>,
    devices: usize,
    console: &Console,
) {
    if !config.model.sync_bn {
        return;
    }
    if ranks.is_distributed() {
        let ranks = ranks.clone();
        sce_ops::ranks::sum_over_ranks_with(Some(Arc::new(move |values: &mut [f32]| {
            ranks.sum_in_place(values)
        })));
    } else if devices > 1 {
        console.line(format!(
            "note: model.sync_bn synchronises batch norm across MPI ranks; the {devices} devices \
             of this process normalise their own batches"
        ));
    }
}

/// `device` for this rank of an MPI run: an index-less GPU device takes the rank's local index
/// (one GPU per rank). Where the node has no such wgpu device (fewer GPUs than ranks, or one
/// integrated or software adapter), the ranks share the default adapter; a missing CUDA
/// device is an error.
fn rank_device(device: &str, ranks: &Ranks) -> anyhow::Result<Device> {
    let lower = device.to_ascii_lowercase();
    if !["cuda", "wgpu", "vulkan", "metal"].contains(&lower.as_str()) {
        return parse_device(device);
    }
    match parse_device(&format!("{device}:{}", ranks.local_rank)) {
        Err(_) if lower != "cuda" => parse_device(device),
        result => result.with_context(|| {
            format!(
                "rank {} (local rank {}) takes device `{device}:{}`",
                ranks.rank, ranks.local_rank, ranks.local_rank
            )
        }),
    }
}

/// The run directory rank 0 created, on every rank (rank 0 passes its path on).
fn shared_run_dir(
    ranks: &Ranks,
    create: impl FnOnce() -> anyhow::Result<RunDir>,
) -> anyhow::Result<RunDir> {
    if ranks.writes() {
        let run = create()?;
        ranks.broadcast(run.path.as_os_str().as_encoded_bytes().to_vec());
        return Ok(run);
    }
    let bytes = ranks.broadcast(Vec::new());
    // SAFETY: the bytes are `as_encoded_bytes` of a path of the same build on the same platform.
    let path = unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(bytes) };
    Ok(RunDir::written_elsewhere(PathBuf::from(path)))
}

fn pretrain_as(args: &PretrainArgs, ranks: Arc<Ranks>) -> anyhow::Result<Summary> {
    // Rank 0 speaks for the run; the others only report their errors.
    let console = Console {
        quiet: args.console.quiet || !ranks.writes(),
    };
    let (config, existing_run, resume_from) = match &args.resume {
        Some(dir) => {
            // Rank 0 locks the run (and may restore its config) before the others read it.
            let run = shared_run_dir(&ranks, || RunDir::open_locked(dir.clone()))?;
            let config = load_config(&ConfigSource {
                path: run.config_path(),
                overrides: args.source.overrides.clone(),
            })?;
            // Rank 0 sets damaged checkpoints aside before the others look for theirs.
            let resume_from = if ranks.writes() {
                let point = resume_point(&run, &config, args.force, &console)?;
                ranks.barrier();
                point
            } else {
                ranks.barrier();
                resume_point(&run, &config, args.force, &console)?
            };
            (config, Some(run), resume_from)
        }
        None => (load_config(&args.source)?, None, None),
    };
    let devices = if ranks.is_distributed() {
        if !args.devices.is_empty() {
            return Err(usage(
                "--devices trains on several devices in one process; under mpirun each rank \
                 takes one device (--device cuda gives rank r the device cuda:LOCAL_RANK)",
            ));
        }
        vec![rank_device(&args.device, &ranks)?]
    } else if args.devices.is_empty() {
        vec![parse_device(&args.device)?]
    } else {
        args.devices
            .iter()
            .map(|d| parse_device(d))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    synchronise_batch_norm(&config, &ranks, devices.len(), &console);
    let replicas = devices.len() * ranks.size;
    let keys_per_step = config.keys_per_step() * replicas;
    if !config.method.queue_size.is_multiple_of(keys_per_step) {
        return Err(usage(format!(
            "`method.queue_size` = {} must be a multiple of the {keys_per_step} keys all \
             {replicas} devices enqueue per step",
            config.method.queue_size,
        )));
    }
    let device = devices[0].clone();
    if crate::device::adapt_to_device(&device)?.short {
        console.line(crate::device::short_reductions_note(&device));
    }
    let precision = config.run.precision.precision();
    if let Some(note) = crate::device::use_precision(&devices, precision)? {
        console.line(note);
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
    // Each rank draws its own shard of every epoch's batches (one shard without MPI).
    let loader = if ranks.is_distributed() {
        loader.shard(ranks.rank, ranks.size, &train_device)
    } else {
        loader
    };
    // Evaluation runs once, on rank 0.
    let evaluator = if ranks.writes() {
        knn_evaluator(
            &config,
            &data,
            eval_transform(&config, norm),
            &device,
            &console,
        )?
    } else {
        None
    };
    // Everything the run needs is there: only now does it get a directory.
    let run = match existing_run {
        Some(run) => run,
        None => shared_run_dir(&ranks, || {
            let run = RunDir::create(RunDir::choose(args.output.as_deref(), &args.source.path))?;
            run.write_config(&config, &args.origin)?;
            Ok(run)
        })?,
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
    let peak = peak_learning_rate(config.optim.lr, config.run.batch_size, replicas);
    let warmup = (config.optim.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let mut scheduler = WarmupCosine::new(peak, warmup, total_steps);
    let probe = online_probe(
        &config,
        &train_source,
        networks.trunk.feature_dim(),
        &train_device,
        &console,
    );
    let (model, optim, mut state, probe) = match resume_from {
        Some((step, manifest)) => {
            let probe = probe
                .map(|probe| restore_probe(&run, step, &manifest, probe, &console))
                .transpose()?;
            let (model, optim, state) =
                restore(&run, step, manifest.state, model, optim, &mut scheduler)?;
            (model, optim, state, probe)
        }
        None => (
            model,
            optim,
            TrainState::fresh(config.run.seed, ranks.size),
            probe,
        ),
    };
    // f16 scales its loss (the scaler's state resumes with the run); f32 and bf16 do not.
    state.loss_scale = match precision.needs_loss_scaling() {
        true => Some(state.loss_scale.take().unwrap_or_default()),
        false => None,
    };
    if state.ranks != ranks.size {
        return Err(usage(format!(
            "{} was trained on {} process(es) and this is {}: its data shards and global batch \
             depend on the count, so resume it with as many (mpirun -np {})",
            run.path.display(),
            state.ranks,
            ranks.size,
            state.ranks
        )));
    }
    if state.epoch >= config.run.epochs {
        console.line(format!(
            "{} already finished its {} epochs",
            run.path.display(),
            config.run.epochs
        ));
        return run.read_summary();
    }
    console.line(format!(
        "{} on {} ({} images, {} steps/epoch, {} epochs) on {device:?}{}; run directory {}",
        format!("{:?}", config.method.name).to_lowercase(),
        data.kind,
        train_source.len(),
        steps_per_epoch,
        config.run.epochs,
        match ranks.size {
            1 => String::new(),
            n => format!(
                " × {n} MPI ranks (global batch {})",
                config.run.batch_size * replicas
            ),
        },
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

    // Only rank 0 writes TensorBoard events and pictures.
    let report_section = if ranks.writes() {
        config.report.clone()
    } else {
        crate::config::ReportSection {
            tensorboard: false,
            embedding_map: false,
        }
    };
    let mut report = RunLog::open(
        run.path.clone(),
        &report_section,
        config.run.seed,
        (state.global_step > 0).then_some(state.global_step),
        console,
    );
    if state.global_step == 0 && ranks.writes() {
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
        ranks: ranks.clone(),
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
    // Burn's metric logs and experiment.log are rank 0's to write.
    let training = if ranks.writes() {
        training
    } else {
        training
            .with_metric_logger(crate::quiet::DiscardMetrics)
            .with_application_logger(None)
    };
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
    let outcome = outcome?;
    // Every rank has finished (and rank 0 saved) before any rank reports or exits.
    ranks.end_together();
    if let Some(cost) = ranks.exchange_cost() {
        console.line(format!(
            "gradient exchange across {} ranks: {:.1} MB of f32 per rank and step, {:.1} ms per \
             step (host copies included; mean of {} steps)",
            ranks.size,
            cost.values_per_step as f64 * 4.0 / 1e6,
            cost.seconds_per_step * 1e3,
            cost.steps
        ));
    }
    match outcome {
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
            let verified = match ranks.writes() {
                true => verify(&checkpoints, state.global_step).map(|_| ()),
                false => Ok(()),
            };
            verified.with_context(|| {
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
                precision: precision.name().to_string(),
                skipped_steps: state.loss_scale.as_ref().map(|s| s.skipped_steps),
                skipped,
            };
            if ranks.writes() {
                run.write_summary(&summary)?;
            }
            Ok(summary)
        }
    }
}
