//! `sce-train export`: a run's online trunk (and on request its projector and predictor) as
//! safetensors, by default under PyTorch's state-dict names, with a JSON file beside it saying
//! what a PyTorch user needs to rebuild the network and feed it (stem, width, channels,
//! normalisation).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use clap::{Args, ValueEnum};
use sce_model::weights::{save_pytorch, save_safetensors};
use sce_model::{Depth, Stem};
use serde::Serialize;

use crate::atomic_file::write_atomic;
use crate::backend::parse_device;
use crate::config::TrainConfig;
use crate::options::Common;
use crate::options::print_json;
use crate::parts::{channels_of, normalization};
use crate::train::{TrainedRun, load_run};

/// Key names and layouts of the exported tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// PyTorch's: torchvision's ResNet state-dict names (`bn1.weight`, `downsample.0`,
    /// `num_batches_tracked`), Linear weights as [out, in].
    Torchvision,
    /// Burn's own module names (`bn1.gamma`, `downsample.conv`), as sce-rs reads them back.
    Burn,
}

#[derive(Args, Debug)]
pub struct ExportCmd {
    #[command(flatten)]
    pub common: Common,
    /// Run directory written by `pretrain`.
    #[arg(long, value_name = "RUN_DIR")]
    pub checkpoint: PathBuf,
    /// Destination of the online trunk (safetensors); FILE.json beside it describes it.
    #[arg(long, value_name = "FILE.safetensors")]
    pub output: PathBuf,
    /// Tensor names: torchvision (loads into `torchvision.models.resnet*`) or burn.
    #[arg(long, value_enum, default_value_t = ExportFormat::Torchvision)]
    pub format: ExportFormat,
    /// Also write the projector (and the predictor, where the method has one) beside the
    /// trunk, as FILE.projector.safetensors and FILE.predictor.safetensors.
    #[arg(long)]
    pub heads: bool,
}

/// The normalisation the run trained with: what inputs must get before the network.
#[derive(Debug, Serialize)]
pub struct InputNormalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// What the exported files hold and how to use them; written as FILE.json.
#[derive(Debug, Serialize)]
pub struct ExportInfo {
    pub format: ExportFormat,
    #[serde(serialize_with = "crate::report::lossy_path")]
    pub trunk: PathBuf,
    #[serde(serialize_with = "crate::report::lossy_optional_path")]
    pub projector: Option<PathBuf>,
    #[serde(serialize_with = "crate::report::lossy_optional_path")]
    pub predictor: Option<PathBuf>,
    pub architecture: Depth,
    /// Channels of the first stage (torchvision's ResNets are 64 wide).
    pub width: usize,
    pub in_channels: usize,
    /// `cifar`: 3×3 stride-1 `conv1` and no max-pool; `imagenet`: torchvision's stem.
    pub stem: Stem,
    pub feature_dim: usize,
    /// Python that builds the matching torchvision module (absent when none matches).
    pub torchvision: Option<String>,
    /// Side of the square images the run trained on.
    pub input_size: usize,
    pub normalization: InputNormalization,
    /// Optimizer steps of the exported checkpoint (also each BatchNorm's
    /// `num_batches_tracked`).
    pub steps: usize,
    pub run: PathBuf,
}

/// `FILE.safetensors` → `FILE.<part>.safetensors` (or `FILE.json` for `json`).
fn beside(output: &Path, part: &str) -> PathBuf {
    let stem = output.file_stem().unwrap_or_default().to_string_lossy();
    if part == "json" {
        output.with_file_name(format!("{stem}.json"))
    } else {
        output.with_file_name(format!("{stem}.{part}.safetensors"))
    }
}

/// The Python that builds a torchvision ResNet holding exactly the exported trunk, or `None`
/// for widths torchvision's constructors do not offer.
fn torchvision_builder(depth: Depth, width: usize, channels: usize, stem: Stem) -> Option<String> {
    if width != 64 {
        return None;
    }
    let mut lines = vec![format!("model = torchvision.models.{}()", name(depth))];
    match stem {
        Stem::Cifar => {
            lines.push(format!(
                "model.conv1 = torch.nn.Conv2d({channels}, 64, 3, 1, 1, bias=False)"
            ));
            lines.push("model.maxpool = torch.nn.Identity()".into());
        }
        Stem::Imagenet if channels != 3 => lines.push(format!(
            "model.conv1 = torch.nn.Conv2d({channels}, 64, 7, 2, 3, bias=False)"
        )),
        Stem::Imagenet => {}
    }
    lines.push("model.fc = torch.nn.Identity()".into());
    Some(lines.join("; "))
}

/// The configuration name of a value (`resnet18`, `cifar`, `torchvision`).
fn name<T: Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where the export's files go: the trunk at `output`, the heads beside it when asked for.
struct ExportFiles {
    trunk: PathBuf,
    projector: Option<PathBuf>,
    predictor: Option<PathBuf>,
}

fn describe(
    config: &TrainConfig,
    run: &Path,
    steps: usize,
    format: ExportFormat,
    files: ExportFiles,
) -> ExportInfo {
    let m = &config.model;
    let channels = channels_of(config);
    let norm = normalization(config, config.data.dataset, channels);
    let trunk = crate::parts::pair_config(config, channels).trunk;
    ExportInfo {
        format,
        trunk: files.trunk,
        projector: files.projector,
        predictor: files.predictor,
        architecture: m.depth,
        width: m.width,
        in_channels: channels,
        stem: m.stem,
        feature_dim: trunk.feature_dim(),
        torchvision: torchvision_builder(m.depth, m.width, channels, m.stem),
        input_size: config.augment.size,
        normalization: InputNormalization {
            mean: norm.mean,
            std: norm.std,
        },
        steps,
        run: run.to_path_buf(),
    }
}

impl ExportCmd {
    fn save<M: Module>(&self, module: &M, path: &Path, info: &ExportInfo) -> anyhow::Result<()> {
        match self.format {
            ExportFormat::Torchvision => {
                let metadata =
                    BTreeMap::from([("sce_rs".to_string(), serde_json::to_string(info)?)]);
                save_pytorch(module, path, info.steps as i64, &metadata)?
            }
            ExportFormat::Burn => save_safetensors(module, path)?,
        }
        Ok(())
    }

    pub fn run(&self) -> anyhow::Result<()> {
        let console = self.common.console();
        let device = parse_device(&self.common.device)?;
        let TrainedRun {
            config,
            model,
            step,
        } = load_run(&self.checkpoint, &device)?;
        let model = model.valid();
        let online = model.pair.online();
        let files = ExportFiles {
            trunk: self.output.clone(),
            projector: self.heads.then(|| beside(&self.output, "projector")),
            predictor: model
                .pair
                .predictor()
                .filter(|_| self.heads)
                .map(|_| beside(&self.output, "predictor")),
        };
        let info = describe(&config, &self.checkpoint, step, self.format, files);
        self.save(&online.trunk, &self.output, &info)?;
        if let Some(path) = &info.projector {
            self.save(&online.projector, path, &info)?;
        }
        if let (Some(path), Some(predictor)) = (&info.predictor, model.pair.predictor()) {
            self.save(predictor, path, &info)?;
        }
        let json = beside(&self.output, "json");
        write_atomic(&json, serde_json::to_string_pretty(&info)?.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", json.display()))?;

        let files: Vec<String> = [
            Some(&info.trunk),
            info.projector.as_ref(),
            info.predictor.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
        console.line(format!(
            "wrote the online {} of {} (step {step}) to {} ({} names); described in {}",
            if files.len() > 1 {
                "trunk and heads"
            } else {
                "trunk"
            },
            self.checkpoint.display(),
            files.join(", "),
            serde_json::to_value(self.format)?
                .as_str()
                .unwrap_or_default(),
            json.display()
        ));
        console.line(format!(
            "  {} width {}, {} input channel(s), {} stem; inputs {}×{} normalised with mean {:?} \
             std {:?}",
            name(info.architecture),
            info.width,
            info.in_channels,
            name(info.stem),
            info.input_size,
            info.input_size,
            info.normalization.mean,
            info.normalization.std
        ));
        match (&info.torchvision, self.format) {
            (Some(builder), ExportFormat::Torchvision) => {
                console.line(format!("  in PyTorch: {builder}"));
            }
            (None, ExportFormat::Torchvision) => console.line(format!(
                "  note: torchvision's ResNets are 64 wide; this width-{} trunk has their names \
                 and layouts but needs a ResNet built with that width",
                info.width
            )),
            _ => {}
        }
        print_json(&self.common, &info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_adapts_the_stem() {
        let small = torchvision_builder(Depth::R18, 64, 1, Stem::Cifar).unwrap();
        assert!(small.contains("resnet18()"));
        assert!(small.contains("Conv2d(1, 64, 3, 1, 1, bias=False)"));
        assert!(small.contains("maxpool = torch.nn.Identity()"));
        let imagenet = torchvision_builder(Depth::R50, 64, 3, Stem::Imagenet).unwrap();
        assert_eq!(
            imagenet,
            "model = torchvision.models.resnet50(); model.fc = torch.nn.Identity()"
        );
        assert!(torchvision_builder(Depth::R18, 16, 3, Stem::Cifar).is_none());
        assert_eq!(
            beside(Path::new("out/trunk.safetensors"), "projector"),
            Path::new("out/trunk.projector.safetensors")
        );
        assert_eq!(
            beside(Path::new("out/trunk.safetensors"), "json"),
            Path::new("out/trunk.json")
        );
    }
}
