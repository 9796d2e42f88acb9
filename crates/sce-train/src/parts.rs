//! What a run is built from, by its configuration: where its data lives and how it is
//! opened, normalised and subset; its networks and objective; the kNN monitor. Shared by
//! `pretrain` and every command that reads a run (`knn`, `linear`, `embed`, `export`, `bench`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use sce_data::augment::{EvalTransform, Normalization};
use sce_data::datasets::FolderImages;
use sce_data::{DatasetKind, ImageSource, Locator, OpenOptions, SkipLog, Split, Subset};
use sce_loss::{ResslLoss, SceLoss};
use sce_model::{MlpConfig, MomentumPairConfig, ResNetConfig};

use crate::config::{HeadSection, MethodName, TrainConfig};
use crate::console::Console;
use crate::error::usage;
use crate::model::{Objective, SceModel, StepContext};
use crate::options::Common;

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

/// `data.channels` and `augment.mean/std` must describe the images the run reads: evaluation
/// and export rebuild the network from the configuration, so a disagreement would train, then
/// fail (or mislead) later.
pub(crate) fn check_channels(
    config: &TrainConfig,
    channels: usize,
    kind: DatasetKind,
) -> anyhow::Result<()> {
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

/// Images named on the command line: a folder (class subfolders give labels), or a dataset
/// name with an optional split (`cifar10:train`; `default_split` otherwise), read with the
/// channels of `config`.
///
/// A folder may have any name the file system allows (a Latin-1 name included); a dataset name
/// is text.
pub fn open_input(
    input: &std::ffi::OsStr,
    default_split: &str,
    config: &TrainConfig,
    common: &Common,
) -> anyhow::Result<Arc<dyn ImageSource>> {
    let channels = channels_of(config);
    let path = Path::new(input);
    if path.is_dir() {
        let folder = FolderImages::auto(path, channels)?;
        for note in folder.notes() {
            common.console().line(format!("note: {note}"));
        }
        return Ok(Arc::new(folder));
    }
    let Some(input) = input.to_str() else {
        return Err(crate::error::usage(format!(
            "--input `{}`: no such folder (and not a dataset name)",
            path.display()
        )));
    };
    let (name, split) = input.split_once(':').unwrap_or((input, default_split));
    let kind: DatasetKind = name.parse().map_err(|e: String| {
        crate::error::usage(format!("--input `{input}`: not a folder, and {e}"))
    })?;
    let split: Split = serde_json::from_value(serde_json::Value::String(split.into()))
        .map_err(|_| crate::error::usage(format!("--input: unknown split `{split}`")))?;
    let mut config = config.clone();
    config.data.dataset = kind;
    let data = DataAccess::locate(&config, common.data_dir.clone(), &common.console())?;
    data.open(split)
}
