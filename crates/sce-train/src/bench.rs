//! `sce-train bench`: throughput figures printed as one JSON line (docs/benchmarks.md).
//!
//! - `augment`: source images per second through every view of a recipe, on the CPU.
//! - `step`: source images per second through the whole training step (both branches, loss,
//!   queue, EMA, optimizer) on synthetic input, with the recipe of the model's family.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use burn::tensor::{Distribution, Tensor};
use burn::train::Learner;
use clap::{Args, Subcommand, ValueEnum};
use sce_data::augment::{Recipe, ViewPipeline};
use sce_data::datasets::InMemoryImages;
use sce_data::{
    DataError, DatasetKind, Image, ImageSource, LoaderConfig, Sample, ViewBatch, ViewLoader,
};
use serde::Serialize;

use crate::backend::parse_device;
use crate::config::PrecisionName;
use crate::config::{ConfigSource, TrainConfig, load_config};
use crate::optim::{LossScaler, WarmupCosine, build_optimizer};
use crate::options::Common;
use crate::parts::fresh_model;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Augmentation throughput of a recipe on the CPU.
    Augment(AugmentBench),
    /// Training-step throughput on synthetic input.
    Step(StepBench),
    /// Forward + backward of the trunk alone (no heads, loss, queue or optimizer).
    Trunk(StepBench),
}

impl BenchCmd {
    pub fn run(&self) -> anyhow::Result<()> {
        match self {
            BenchCmd::Augment(b) => b.run(),
            BenchCmd::Step(b) => b.run(),
            BenchCmd::Trunk(b) => b.run_trunk(),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineName {
    /// The small-dataset weak/strong pair on 32×32 images.
    CifarAsym,
    /// The ImageNet two-crop pair at 224 from JPEGs (decoded per sample).
    #[value(name = "imagenet-2crop", alias = "imagenet2crop")]
    #[serde(rename = "imagenet-2crop")]
    Imagenet2crop,
    /// Two 224 crops and four local crops from JPEGs.
    ImagenetMulticrop,
}

#[derive(Args, Debug)]
pub struct AugmentBench {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum)]
    pub pipeline: PipelineName,
    /// Source images: a folder of PNG/JPEG files (e.g. shared/data/samples). For cifar-asym the
    /// `cifar10_*.png` files are used when present; without a folder, random 32×32 images.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Augmentation threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measure for at least this long.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

/// Encoded images kept in memory and decoded on every access, like a folder dataset whose
/// files sit in the page cache: the benchmark measures decoding, not the disk.
struct EncodedImages {
    files: Vec<(String, Vec<u8>)>,
    len: usize,
}

impl ImageSource for EncodedImages {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (name, bytes) = &self.files[index % self.files.len()];
        let image = Image::decode(bytes, 3).map_err(|detail| DataError::Corrupt {
            path: name.into(),
            detail,
        })?;
        Ok(Sample { image, label: None })
    }
    fn num_classes(&self) -> usize {
        0
    }
    fn channels(&self) -> usize {
        3
    }
    fn item_name(&self, index: usize) -> String {
        self.files[index % self.files.len()].0.clone()
    }
}

fn files_with(dir: &std::path::Path, pred: impl Fn(&str) -> bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    files.sort();
    Ok(files)
}

#[derive(Serialize)]
struct AugmentReport {
    bench: &'static str,
    pipeline: PipelineName,
    images_per_s: f64,
    threads: usize,
    views: usize,
    images: usize,
    seconds: f64,
}

impl AugmentBench {
    fn source(&self) -> anyhow::Result<Arc<dyn ImageSource>> {
        let len = self.batch * 16;
        Ok(match self.pipeline {
            PipelineName::CifarAsym => {
                let images: Vec<Image> = match &self.images {
                    Some(dir) => {
                        files_with(dir, |n| n.starts_with("cifar10_") && n.ends_with(".png"))?
                            .iter()
                            .map(|p| Image::open(p, 3))
                            .collect::<Result<_, _>>()?
                    }
                    None => Vec::new(),
                };
                let pixels: Vec<u8> = if images.is_empty() {
                    (0..len * 3072)
                        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
                        .collect()
                } else {
                    (0..len)
                        .flat_map(|i| images[i % images.len()].pixels.clone())
                        .collect()
                };
                Arc::new(InMemoryImages::new(
                    "bench",
                    (32, 32, 3),
                    pixels,
                    vec![None; len],
                    0,
                ))
            }
            PipelineName::Imagenet2crop | PipelineName::ImagenetMulticrop => {
                let dir = self.images.as_ref().ok_or_else(|| {
                    crate::error::usage(
                        "--images DIR with JPEG files is needed for the ImageNet pipelines",
                    )
                })?;
                let files = files_with(dir, |n| {
                    let n = n.to_ascii_lowercase();
                    n.ends_with(".jpg") || n.ends_with(".jpeg")
                })?;
                anyhow::ensure!(!files.is_empty(), "no JPEG in {}", dir.display());
                let files = files
                    .into_iter()
                    .map(|p| Ok((p.display().to_string(), std::fs::read(&p)?)))
                    .collect::<std::io::Result<Vec<_>>>()?;
                Arc::new(EncodedImages { files, len })
            }
        })
    }

    pub fn run(&self) -> anyhow::Result<()> {
        let (recipe, size, kind) = match self.pipeline {
            PipelineName::CifarAsym => (Recipe::SmallAsym, 32, DatasetKind::Cifar10),
            PipelineName::Imagenet2crop => (Recipe::Imagenet2crop, 224, DatasetKind::Imagenet),
            PipelineName::ImagenetMulticrop => {
                (Recipe::ImagenetMulticrop, 224, DatasetKind::Imagenet)
            }
        };
        let views = recipe.views(size);
        let view_count = views.len();
        let threads = self.threads.unwrap_or_else(rayon::current_num_threads);
        let loader = ViewLoader::new(
            self.source()?,
            ViewPipeline::new(views, kind.normalization())?,
            LoaderConfig {
                batch_size: self.batch,
                drop_last: true,
                shuffle: true,
                seed: 0,
                threads: Some(threads),
                prefetch: 1,
                skip: std::sync::Arc::new(sce_data::SkipLog::strict()),
            },
            burn::tensor::Device::default(),
        )?;
        loader.host_batch(0, 0)?; // warm-up: thread pool, allocator
        let start = Instant::now();
        let mut images = 0;
        let mut batch = 0;
        while start.elapsed().as_secs_f64() < self.seconds {
            loader.host_batch(1, batch % loader.batches_per_epoch())?;
            images += self.batch;
            batch += 1;
        }
        let seconds = start.elapsed().as_secs_f64();
        let report = AugmentReport {
            bench: "augment",
            pipeline: self.pipeline,
            images_per_s: images as f64 / seconds,
            threads,
            views: view_count,
            images,
            seconds,
        };
        self.common.console().line(format!(
            "{:?}: {:.1} source images/s ({:.1} per thread) with {threads} threads, {view_count} views",
            self.pipeline,
            report.images_per_s,
            report.images_per_s / threads as f64
        ));
        if self.common.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    /// configs/cifar10.toml: ResNet-18 (width 64, small stem), asymmetric 32×32 step.
    Resnet18Cifar,
    /// configs/imagenet.toml: ResNet-50, projector + predictor, symmetric 2×224 step, LARS.
    Resnet50,
}

#[derive(Args, Debug)]
pub struct StepBench {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum)]
    pub model: ModelName,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed steps or passes (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Compute precision of convolutions and linear layers (f16 with its loss scaling).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionName,
}

#[derive(Serialize)]
struct StepReport {
    bench: &'static str,
    model: ModelName,
    batch: usize,
    steps: usize,
    images_per_s: f64,
    seconds_per_step: f64,
    /// `gemm` (sce-ops' kernels) or `burn` (`SCE_CONV=burn`): which convolutions ran on flex.
    conv_kernels: &'static str,
    /// `fused` (sce-ops' kernels) or `burn` (`SCE_NORM=burn`): which training batch norms
    /// ran on flex.
    norm_kernels: &'static str,
    /// Seconds per step inside the GEMM convolution kernels: forward, input gradient, weight
    /// gradient (zero where they did not run: another device, or `SCE_CONV=burn`).
    conv_seconds_per_step: [f64; 3],
    /// Seconds to check every tensor of the model (weights, BatchNorm statistics, queue) for
    /// NaN or infinity, as the run does before each evaluation and checkpoint.
    state_check_seconds: f64,
    /// The process's peak resident memory (Linux), MiB.
    peak_rss_mib: Option<f64>,
    /// What convolutions and linear layers computed in.
    precision: &'static str,
    /// The model's parameters and buffers (both branches, the queue) in f32, MiB.
    parameters_mib: f64,
    /// The device allocator after the timed steps, where the backend reports it (GPU backends;
    /// not `flex`, whose figure is `peak_rss_mib`).
    device_memory: Option<DeviceMemory>,
    device: String,
}

/// A device allocator's figures, MiB.
#[derive(Serialize)]
struct DeviceMemory {
    /// Live allocations: weights, optimizer state, queue, whatever the step left.
    in_use_mib: f64,
    /// Pages the allocator holds, in use or kept for reuse: its high-water mark, so at least
    /// the step's peak (activations included).
    reserved_mib: f64,
}

fn device_memory(device: &burn::tensor::Device) -> Option<DeviceMemory> {
    let usage = device.memory_pool_usage()?;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    Some(DeviceMemory {
        in_use_mib: mib(usage.bytes_in_use),
        reserved_mib: mib(usage.bytes_reserved),
    })
}

/// The process's peak resident set size in MiB, from `/proc/self/status` (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl StepBench {
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let file = match self.model {
            ModelName::Resnet18Cifar => "configs/cifar10.toml",
            ModelName::Resnet50 => "configs/imagenet.toml",
        };
        let mut overrides = vec![("run.batch_size".to_string(), self.batch.to_string())];
        // Keep the queue a multiple of the keys per step and the split-BN groups dividing the batch.
        let views = match self.model {
            ModelName::Resnet18Cifar => 1,
            ModelName::Resnet50 => 2,
        };
        let keys = self.batch * views;
        let base: usize = match self.model {
            ModelName::Resnet18Cifar => 4096,
            ModelName::Resnet50 => 65536,
        };
        overrides.push((
            "method.queue_size".into(),
            (base.div_ceil(keys) * keys).to_string(),
        ));
        if !self.batch.is_multiple_of(8) {
            overrides.push(("model.bn_splits".into(), "1".into()));
        }
        load_config(&ConfigSource {
            path: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(file),
            overrides,
        })
    }

    pub fn run(&self) -> anyhow::Result<()> {
        let config = self.config()?;
        let device = parse_device(&self.common.device)?;
        // Benchmark the reductions training would use on this device.
        crate::device::adapt_to_device(&device)?;
        let precision = self.precision.precision();
        if let Some(note) = crate::device::use_precision(std::slice::from_ref(&device), precision)?
        {
            self.common.console().line(note);
        }
        let ad = device.clone().autodiff();
        let total = self.steps + 1;
        let model = fresh_model(&config, total, &ad)?;
        let peak = crate::optim::peak_learning_rate(config.optim.lr, config.run.batch_size, 1);
        let mut learner = Learner::new(
            model,
            build_optimizer(&config.optim),
            WarmupCosine::new(peak, 0, total),
        );
        let size = config.augment.size;
        let channels = config.data.dataset.channels();
        let views = (0..config.views().len())
            .map(|_| {
                Tensor::<4>::random(
                    [self.batch, channels, size, size],
                    Distribution::Normal(0.0, 1.0),
                    &ad,
                )
            })
            .collect();
        let batch = ViewBatch {
            views,
            labels: vec![None; self.batch],
            indices: (0..self.batch).collect(),
            shard: 0,
        };
        // In f16 the step scales its loss and unscales the gradients, as training does.
        let mut scaler = precision.needs_loss_scaling().then(LossScaler::default);
        let mut step = |learner: &mut Learner<crate::model::SceModel>| -> anyhow::Result<f32> {
            let scale = scaler.as_ref().map_or(1.0, |s| s.scale);
            learner.model().ctx.begin_step(0, scale);
            let out = learner.train_step(batch.clone());
            let loss = out.item.loss.clone().into_scalar::<f32>();
            let grads = match scaler.as_mut() {
                Some(scaler) => scaler.unscale(out.grads, &learner.model())?,
                None => out.grads,
            };
            learner.lr_step();
            learner.optimizer_step(grads);
            Ok(loss)
        };
        let console = self.common.console();
        console.line(format!(
            "{:?} batch {} on {device:?}: warm-up step…",
            self.model, self.batch
        ));
        step(&mut learner)?;
        device.sync().map_err(|e| anyhow!("device error: {e:?}"))?;
        let conv_before = sce_ops::conv::kernel_times();
        let start = Instant::now();
        for i in 0..self.steps {
            let loss = step(&mut learner)?;
            console.line(format!("step {}/{}: loss {loss:.4}", i + 1, self.steps));
        }
        // The EMA and queue update of the last step are queued work too.
        let _ = learner.model().queue.keys().into_data();
        device.sync().map_err(|e| anyhow!("device error: {e:?}"))?;
        let seconds = start.elapsed().as_secs_f64();
        let conv_after = sce_ops::conv::kernel_times();
        let conv_seconds_per_step = std::array::from_fn(|i| {
            (conv_after[i] - conv_before[i]).as_secs_f64() / self.steps as f64
        });
        let check = Instant::now();
        let non_finite = sce_model::params::first_non_finite(&learner.model());
        let state_check_seconds = check.elapsed().as_secs_f64();
        if let Some(path) = non_finite {
            anyhow::bail!("the benchmark's model diverged: `{path}` is not finite");
        }
        let report = StepReport {
            bench: "step",
            model: self.model,
            batch: self.batch,
            steps: self.steps,
            images_per_s: (self.steps * self.batch) as f64 / seconds,
            seconds_per_step: seconds / self.steps as f64,
            conv_kernels: match sce_ops::conv::conv_kernels() {
                sce_ops::conv::ConvKernels::Gemm => "gemm",
                sce_ops::conv::ConvKernels::Burn => "burn",
            },
            norm_kernels: match sce_ops::norm::norm_kernels() {
                sce_ops::norm::NormKernels::Fused => "fused",
                sce_ops::norm::NormKernels::Burn => "burn",
            },
            conv_seconds_per_step,
            state_check_seconds,
            peak_rss_mib: peak_rss_mib(),
            precision: precision.name(),
            parameters_mib: burn::module::Module::num_params(&learner.model()) as f64 * 4.0
                / (1024.0 * 1024.0),
            device_memory: device_memory(&device),
            device: format!("{device:?}"),
        };
        let [forward, input_grad, weight_grad] = conv_seconds_per_step;
        console.line(format!(
            "{:.2} source images/s, {:.3} s/step (GEMM convolutions: forward {forward:.3} s, \
             input gradients {input_grad:.3} s, weight gradients {weight_grad:.3} s); peak RSS {}",
            report.images_per_s,
            report.seconds_per_step,
            report
                .peak_rss_mib
                .map_or("unknown".into(), |m| format!("{m:.0} MiB")),
        ));
        if let Some(memory) = &report.device_memory {
            console.line(format!(
                "{}: parameters {:.1} MiB; device memory in use {:.1} MiB, reserved (high-water) \
                 {:.1} MiB",
                report.precision, report.parameters_mib, memory.in_use_mib, memory.reserved_mib
            ));
        }
        console.line(format!(
            "state check (every tensor finite, before each evaluation and checkpoint): {:.1} ms, \
             {:.2} % of one step",
            state_check_seconds * 1e3,
            100.0 * state_check_seconds / report.seconds_per_step
        ));
        if self.common.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        Ok(())
    }
}

impl StepBench {
    /// `bench trunk`: the model's trunk alone, forward + backward of the summed features.
    pub fn run_trunk(&self) -> anyhow::Result<()> {
        let config = self.config()?;
        let device = parse_device(&self.common.device)?;
        // Benchmark the reductions training would use on this device.
        crate::device::adapt_to_device(&device)?;
        crate::device::use_precision(std::slice::from_ref(&device), self.precision.precision())?;
        let ad = device.clone().autodiff();
        device.seed(0);
        let trunk = crate::parts::pair_config(&config, 3).trunk.init(&ad)?;
        let size = config.augment.size;
        let x = Tensor::<4>::random(
            [self.batch, 3, size, size],
            Distribution::Normal(0.0, 1.0),
            &ad,
        );
        let pass = || {
            let _grads = trunk.forward(x.clone()).sum().backward();
            device.sync()
        };
        pass().map_err(|e| anyhow!("device error: {e:?}"))?;
        let start = Instant::now();
        for _ in 0..self.steps {
            pass().map_err(|e| anyhow!("device error: {e:?}"))?;
        }
        let seconds = start.elapsed().as_secs_f64() / self.steps as f64;
        let report = serde_json::json!({
            "bench": "trunk",
            "model": self.model,
            "batch": self.batch,
            "steps": self.steps,
            "seconds_per_forward_backward": seconds,
            "images_per_s": self.batch as f64 / seconds,
            "device": format!("{device:?}"),
        });
        self.common.console().line(format!(
            "{:?} forward+backward at batch {}: {seconds:.3} s ({:.1} img/s)",
            self.model,
            self.batch,
            self.batch as f64 / seconds
        ));
        if self.common.json {
            println!("{report}");
        }
        Ok(())
    }
}
