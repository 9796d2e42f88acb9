//! `sce-train preview`: the configured augmentation as a picture, to check a recipe in seconds
//! before training (`pretrain` writes the same grid into its run directory).

use std::path::PathBuf;

use clap::Args;
use sce_data::augment::ViewPipeline;
use serde::Serialize;

use crate::config::QUICKSTART;
use crate::config::{ConfigSource, load_config, parse_override};
use crate::options::print_json;
use crate::options::{Common, at_least_one};
use crate::parts::open_input;
use crate::parts::{DataAccess, limited, normalization};
use crate::report::preview::{DEFAULT_IMAGES, augmentation_grid, view_names};

#[derive(Args, Debug)]
pub struct PreviewCmd {
    #[command(flatten)]
    pub common: Common,
    /// Configuration file (TOML) whose augmentation is shown.
    #[arg(long, value_name = "FILE", default_value = QUICKSTART)]
    pub config: PathBuf,
    /// Override any config value, e.g. --set augment.recipe=imagenet-multicrop (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Other images than the configuration's training set: a folder, or a dataset name with
    /// an optional split (`cifar10:test`).
    #[arg(long, value_name = "DIR_OR_DATASET")]
    pub input: Option<std::ffi::OsString>,
    /// Images shown, one per row.
    #[arg(long, default_value_t = DEFAULT_IMAGES, value_parser = at_least_one)]
    pub images: usize,
    /// Where to write the picture.
    #[arg(long, value_name = "FILE.png", default_value = "augmentations.png")]
    pub output: PathBuf,
}

#[derive(Serialize)]
struct PreviewReport {
    #[serde(serialize_with = "crate::report::lossy_path")]
    output: PathBuf,
    images: usize,
    views: Vec<String>,
}

impl PreviewCmd {
    pub fn run(&self) -> anyhow::Result<()> {
        let console = self.common.console();
        let overrides = self
            .set
            .iter()
            .map(|s| parse_override(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = load_config(&ConfigSource {
            path: self.config.clone(),
            overrides,
        })?;
        // The training set as pretraining sees it (its subset, image for image), or the input.
        let (source, kind) = match &self.input {
            Some(input) => (
                open_input(input, "train", &config, &self.common)?,
                config.data.dataset,
            ),
            None => {
                let data = DataAccess::locate(&config, self.common.data_dir.clone(), &console)?;
                let train = data.open(config.data.train_split)?;
                let seed = config.run.seed;
                let source = limited(
                    train,
                    config.data.limit_train,
                    seed,
                    "training set",
                    &console,
                );
                (source, data.kind)
            }
        };
        let norm = normalization(&config, kind, source.channels());
        let pipeline = ViewPipeline::new(config.views(), norm)?;
        let names = view_names(&config);
        let grid = augmentation_grid(&*source, &pipeline, &names, self.images, config.run.seed)?;
        crate::report::write_png(&self.output, &grid)?;
        let images = self.images.min(source.len());
        console.line(format!(
            "wrote {images} images and their views ({}) to {}",
            names.join(", "),
            self.output.display()
        ));
        print_json(
            &self.common,
            &PreviewReport {
                output: self.output.clone(),
                images,
                views: names,
            },
        )
    }
}
