use std::path::PathBuf;

use sce_data::augment::{Recipe, ViewSpec};
use sce_data::{DatasetKind, Split};
use sce_loss::TargetPositive;
use sce_model::{Depth, MomentumSchedule, Stem};
use serde::{Deserialize, Serialize};

use crate::error::usage;

/// Everything a pretraining run needs. Sections mirror the crates: data, augment, model,
/// method (loss + queue + EMA), optim (optimizer + schedule), eval, run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunSection,
    pub data: DataSection,
    pub augment: AugmentSection,
    pub model: ModelSection,
    pub method: MethodSection,
    pub optim: OptimSection,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub report: ReportSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub epochs: usize,
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// Save a checkpoint every this many epochs (the last epoch is always saved).
    #[serde(default = "one")]
    pub checkpoint_every: usize,
    /// What convolutions and linear layers compute in: "f32" (default), or "f16" / "bf16"
    /// over f32 master weights (mixed precision; f16 with dynamic loss scaling).
    #[serde(default)]
    pub precision: PrecisionName,
}

/// The compute precision of convolutions and linear layers (`sce_ops::precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionName {
    #[default]
    F32,
    F16,
    Bf16,
}

impl PrecisionName {
    pub fn precision(self) -> sce_ops::precision::Precision {
        use sce_ops::precision::Precision;
        match self {
            PrecisionName::F32 => Precision::F32,
            PrecisionName::F16 => Precision::F16,
            PrecisionName::Bf16 => Precision::BF16,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub dataset: DatasetKind,
    #[serde(default = "train_split")]
    pub train_split: Split,
    #[serde(default = "test_split")]
    pub test_split: Split,
    /// Train on N images: a subset seeded by `run.seed`, stratified by class.
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Download the dataset when it is not found locally.
    #[serde(default = "yes")]
    pub download: bool,
    /// ImageNet subsets: file listing the class folders to use.
    #[serde(default)]
    pub class_list: Option<PathBuf>,
    /// Channels to decode folder images into (1 or 3).
    #[serde(default)]
    pub channels: Option<usize>,
    /// Augmentation threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Batches prepared ahead of the training step.
    #[serde(default = "two")]
    pub prefetch: usize,
    /// Replace unreadable images by the next one (listed at the end) instead of stopping.
    #[serde(default)]
    pub skip_corrupt: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSection {
    /// One of the paper's recipes; `views` replaces it entirely when given.
    pub recipe: Recipe,
    /// Crop size of the (global) views.
    pub size: usize,
    #[serde(default)]
    pub views: Option<Vec<ViewSpec>>,
    /// Normalisation; defaults to the dataset's statistics.
    #[serde(default)]
    pub mean: Option<Vec<f32>>,
    #[serde(default)]
    pub std: Option<Vec<f32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSection {
    pub hidden: Vec<usize>,
    pub output: usize,
    #[serde(default)]
    pub last_norm: bool,
    #[serde(default)]
    pub last_bias: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub depth: Depth,
    pub stem: Stem,
    #[serde(default = "sixty_four")]
    pub width: usize,
    #[serde(default)]
    pub zero_init_residual: bool,
    pub projector: HeadSection,
    #[serde(default)]
    pub predictor: Option<HeadSection>,
    /// Batch-norm groups of the target trunk (spec §2.5): 8 on one device, 1 to disable.
    #[serde(default = "one")]
    pub bn_splits: usize,
    /// SyncBatchNorm: under MPI every training batch norm (both trunks, projector, predictor)
    /// normalises with the statistics of all ranks' batches (spec §2.5, the ImageNet recipes).
    /// One process normalises its batch either way.
    #[serde(default)]
    pub sync_bn: bool,
}

/// The objective being trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    /// Similarity Contrastive Estimation.
    Sce,
    /// InfoNCE with a queue (SCE with lambda = 1).
    Moco,
    /// ReSSL's relational loss.
    Ressl,
}

/// How online and target views are paired (spec §1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairingName {
    Asymmetric,
    Symmetric,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    pub name: MethodName,
    pub tau: f64,
    pub tau_m: f64,
    pub lambda: f64,
    pub queue_size: usize,
    #[serde(default)]
    pub target_positive: TargetPositiveName,
    pub momentum: MomentumSchedule,
    /// Defaults from the recipe: asymmetric for small images, symmetric for ImageNet.
    #[serde(default)]
    pub pairing: Option<PairingName>,
    /// Views encoded by the target in symmetric mode (the global crops; 2 when absent). The
    /// asymmetric pairing has one target view, so setting it there is refused, not ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_views: Option<usize>,
}

/// Config spelling of [`TargetPositive`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetPositiveName {
    #[default]
    Masked,
    ZeroLogit,
}

impl From<TargetPositiveName> for TargetPositive {
    fn from(name: TargetPositiveName) -> Self {
        match name {
            TargetPositiveName::Masked => TargetPositive::Masked,
            TargetPositiveName::ZeroLogit => TargetPositive::ZeroLogit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    Sgd,
    Lars,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub name: OptimizerName,
    /// Learning rate per 256 images; the run uses `lr · batch / 256`.
    pub lr: f64,
    #[serde(default = "point_nine")]
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    /// LARS trust coefficient.
    #[serde(default = "lars_eta")]
    pub trust_coefficient: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    #[serde(default = "two_hundred")]
    pub knn_k: usize,
    #[serde(default = "point_one")]
    pub knn_temperature: f64,
    /// kNN every this many epochs (and always before training and after the last epoch).
    #[serde(default = "one")]
    pub knn_every: usize,
    /// Training images used as the kNN memory bank (default: all; a limit takes a seeded,
    /// class-stratified subset).
    #[serde(default)]
    pub bank_limit: Option<usize>,
    /// Test images classified by kNN (default: all; a limit takes a stratified subset).
    #[serde(default)]
    pub test_limit: Option<usize>,
    #[serde(default = "two_fifty_six")]
    pub batch_size: usize,
    /// Evaluation center crop: resize the shorter side to size / fraction, crop `size`.
    #[serde(default = "crop_fraction")]
    pub crop_fraction: f64,
    /// The online linear probe (spec §5.3): a linear classifier trained during pretraining on
    /// detached trunk features of the labelled training batches, with its own Adam optimizer.
    /// Monitoring only; it never touches the trunk. Ignored when the training images have no
    /// labels.
    #[serde(default = "yes")]
    pub online_probe: bool,
    /// Adam learning rate of the online probe (the reference's 1e-4).
    #[serde(default = "probe_lr")]
    pub online_probe_lr: f64,
}

/// What a run writes for a user to look at, beside `metrics.csv` and `training.png`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// TensorBoard event files in the run directory (scalars per step and epoch, pictures).
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// A t-SNE map of the kNN test embeddings at each kNN evaluation (`embedding_map.png`).
    #[serde(default = "yes")]
    pub embedding_map: bool,
}

impl Default for ReportSection {
    fn default() -> Self {
        Self {
            tensorboard: true,
            embedding_map: true,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            knn_k: 200,
            knn_temperature: 0.1,
            knn_every: 1,
            bank_limit: None,
            test_limit: None,
            batch_size: 256,
            crop_fraction: 0.875,
            online_probe: true,
            online_probe_lr: probe_lr(),
        }
    }
}

/// A finite number above zero (false for NaN).
fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn sixty_four() -> usize {
    64
}
fn two_hundred() -> usize {
    200
}
fn two_fifty_six() -> usize {
    256
}
fn yes() -> bool {
    true
}
fn point_nine() -> f64 {
    0.9
}
fn point_one() -> f64 {
    0.1
}
fn lars_eta() -> f64 {
    1e-3
}
fn probe_lr() -> f64 {
    1e-4
}
fn crop_fraction() -> f64 {
    0.875
}
fn train_split() -> Split {
    Split::Train
}
fn test_split() -> Split {
    Split::Test
}

impl TrainConfig {
    /// The views of one sample: the explicit list or the recipe's.
    pub fn views(&self) -> Vec<ViewSpec> {
        self.augment
            .views
            .clone()
            .unwrap_or_else(|| self.augment.recipe.views(self.augment.size))
    }

    /// Pairing of online and target views.
    pub fn pairing(&self) -> sce_loss::ViewPairing {
        let views = self.views().len();
        let name = self.method.pairing.unwrap_or(match self.augment.recipe {
            Recipe::SmallAsym => PairingName::Asymmetric,
            Recipe::Imagenet2crop | Recipe::ImagenetMulticrop => PairingName::Symmetric,
        });
        match name {
            PairingName::Asymmetric => sce_loss::ViewPairing::Asymmetric { views },
            PairingName::Symmetric => sce_loss::ViewPairing::Symmetric {
                views,
                global: self.method.global_views.unwrap_or(2),
            },
        }
    }

    /// Keys enqueued per step: batch × target views.
    pub fn keys_per_step(&self) -> usize {
        self.run.batch_size * self.pairing().target_views().len()
    }

    /// Checks every value that can be checked before data is read; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |key: &str, message: String| Err(usage(format!("`{key}`: {message}")));
        let r = &self.run;
        if r.epochs == 0 {
            return bad("run.epochs", "must be >= 1".into());
        }
        if r.batch_size < 2 {
            return bad(
                "run.batch_size",
                format!("{} is too small (batch norm needs >= 2)", r.batch_size),
            );
        }
        if r.checkpoint_every == 0 {
            return bad("run.checkpoint_every", "must be >= 1".into());
        }
        if let Some(limit) = self.data.limit_train
            && limit < r.batch_size
        {
            return bad(
                "data.limit_train",
                format!("{limit} images do not fill one batch of {}", r.batch_size),
            );
        }
        if let Some(c) = self.data.channels
            && c != 1
            && c != 3
        {
            return bad("data.channels", format!("{c} is not 1 or 3"));
        }
        if self.data.threads == Some(0) {
            return bad(
                "data.threads",
                "must be >= 1 (omit it to use every core)".into(),
            );
        }
        if self.augment.size == 0 {
            return bad("augment.size", "must be >= 1".into());
        }
        if self.augment.mean.is_some() != self.augment.std.is_some() {
            return bad("augment.mean", "give both mean and std, or neither".into());
        }
        if let (Some(mean), Some(std)) = (&self.augment.mean, &self.augment.std) {
            if mean.len() != std.len() || !(mean.len() == 1 || mean.len() == 3) {
                return bad(
                    "augment.std",
                    format!(
                        "mean has {} value(s) and std {}: give one per channel (1 or 3)",
                        mean.len(),
                        std.len()
                    ),
                );
            }
            if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
                return bad("augment.mean", format!("{m} is not a finite number"));
            }
            if let Some(s) = std.iter().find(|s| !positive(f64::from(**s))) {
                return bad("augment.std", format!("{s} must be a finite number > 0"));
            }
        }
        let m = &self.model;
        if m.width == 0 {
            return bad("model.width", "must be >= 1".into());
        }
        if m.projector.output == 0 || m.projector.hidden.contains(&0) {
            return bad("model.projector", "widths must be >= 1".into());
        }
        if let Some(p) = &m.predictor
            && p.output != m.projector.output
        {
            return bad(
                "model.predictor.output",
                format!("must equal the projector output {}", m.projector.output),
            );
        }
        if m.bn_splits == 0 || !r.batch_size.is_multiple_of(m.bn_splits) {
            return bad(
                "model.bn_splits",
                format!(
                    "{} must be >= 1 and divide run.batch_size = {}",
                    m.bn_splits, r.batch_size
                ),
            );
        }
        if m.sync_bn && m.bn_splits > 1 {
            return bad(
                "model.sync_bn",
                format!(
                    "SyncBatchNorm replaces the target's split batch norm (spec §2.5): set \
                     model.bn_splits = 1, not {}",
                    m.bn_splits
                ),
            );
        }
        let me = &self.method;
        for (key, value) in [("method.tau", me.tau), ("method.tau_m", me.tau_m)] {
            if !positive(value) {
                return bad(key, format!("{value} must be a finite number > 0"));
            }
        }
        if !(0.0..=1.0).contains(&me.lambda) {
            return bad("method.lambda", format!("{} must be in [0, 1]", me.lambda));
        }
        if let Err(e) = me.momentum.validate() {
            return bad("method.momentum", e.to_string());
        }
        if let (sce_loss::ViewPairing::Asymmetric { .. }, Some(n)) =
            (self.pairing(), me.global_views)
        {
            return bad(
                "method.global_views",
                format!(
                    "{n} global views mean nothing to the asymmetric pairing (its target encodes \
                     view 0 alone); remove the key, or set method.pairing = \"symmetric\""
                ),
            );
        }
        if let Err(e) = self.pairing().validate() {
            return bad("method.pairing", e.to_string());
        }
        let keys = self.keys_per_step();
        if me.queue_size == 0 || !me.queue_size.is_multiple_of(keys) {
            return bad(
                "method.queue_size",
                format!(
                    "{} must be a positive multiple of the {keys} keys enqueued per step \
                     (batch_size × target views)",
                    me.queue_size
                ),
            );
        }
        let o = &self.optim;
        if !positive(o.lr) {
            return bad("optim.lr", format!("{} must be > 0", o.lr));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return bad(
                "optim.momentum",
                format!("{} must be in [0, 1)", o.momentum),
            );
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(
                "optim.weight_decay",
                format!("{} must be >= 0", o.weight_decay),
            );
        }
        if !(o.warmup_epochs >= 0.0 && o.warmup_epochs < r.epochs as f64) {
            return bad(
                "optim.warmup_epochs",
                format!(
                    "{} must be >= 0 and below run.epochs = {}",
                    o.warmup_epochs, r.epochs
                ),
            );
        }
        if !positive(o.trust_coefficient) {
            return bad("optim.trust_coefficient", "must be > 0".into());
        }
        let e = &self.eval;
        if e.knn_k == 0 {
            return bad("eval.knn_k", "must be >= 1".into());
        }
        if !positive(e.knn_temperature) {
            return bad("eval.knn_temperature", "must be > 0".into());
        }
        if e.batch_size == 0 {
            return bad("eval.batch_size", "must be >= 1".into());
        }
        if !positive(e.online_probe_lr) {
            return bad("eval.online_probe_lr", "must be > 0".into());
        }
        if !(e.crop_fraction > 0.0 && e.crop_fraction <= 1.0) {
            return bad("eval.crop_fraction", "must be in (0, 1]".into());
        }
        if e.knn_every == 0 {
            return bad("eval.knn_every", "must be >= 1".into());
        }
        Ok(())
    }
}
