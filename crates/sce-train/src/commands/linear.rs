//! `sce-train linear`: the linear protocol on a run's frozen trunk.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use sce_data::augment::{ViewPipeline, ViewSpec};
use sce_data::{LoaderConfig, ViewLoader};
use serde::Serialize;

use crate::atomic_file::write_atomic;
use crate::backend::parse_device;
use crate::config::TrainConfig;
use crate::eval::{LinearProtocol, test_linear, train_linear};
use crate::options::print_json;
use crate::options::{Common, at_least_one, positive_number};
use crate::parts::{DataAccess, channels_of, eval_transform, limited, normalization};

use super::trained_trunk;

#[derive(Args, Debug)]
pub struct LinearCmd {
    #[command(flatten)]
    pub common: Common,
    /// Run directory written by `pretrain`.
    #[arg(long, value_name = "RUN_DIR")]
    pub checkpoint: PathBuf,
    /// Epochs (default: 100 for small images, 90 for ImageNet-like data, spec §5).
    #[arg(long, value_parser = at_least_one)]
    pub epochs: Option<usize>,
    /// Learning rate (default: 30 with step decay for small images, 0.4·batch/1024 with cosine
    /// otherwise).
    #[arg(long, value_parser = positive_number)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub batch_size: usize,
    /// Train the classifier on N images (a seeded, class-stratified subset).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub limit_train: Option<usize>,
    /// Evaluate on N test images (a seeded, class-stratified subset).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub limit_test: Option<usize>,
    /// Normalise features with a non-affine BatchNorm before the linear layer (MAE's linear
    /// probe). Off by default, as the spec's protocol; it makes SGD converge on features with
    /// a large common offset (short pretraining, untrained trunks).
    #[arg(long)]
    pub feature_bn: bool,
}

#[derive(Serialize)]
struct LinearReport {
    #[serde(serialize_with = "crate::report::lossy_path")]
    run_dir: PathBuf,
    /// The checkpoint evaluated (optimizer steps it was trained for).
    step: usize,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    schedule: &'static str,
    feature_bn: bool,
    train_images: usize,
    test_images: usize,
    top1: f64,
    top5: f64,
    seconds: f64,
}

impl LinearCmd {
    pub fn run(&self) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        let console = self.common.console();
        let device = parse_device(&self.common.device)?;
        let (config, trunk, step) = trained_trunk(&self.checkpoint, &device, &console)?;
        let data = DataAccess::locate(&config, self.common.data_dir.clone(), &console)?;
        let seed = config.run.seed;
        let train = limited(
            data.labelled_train()?,
            self.limit_train,
            seed,
            "training set",
            &console,
        );
        let test = limited(
            data.open(config.data.test_split)?,
            self.limit_test,
            seed,
            "test set",
            &console,
        );
        let classes = train.num_classes();
        anyhow::ensure!(classes > 0, "{} has no labelled training split", data.kind);
        let protocol = LinearProtocol::for_size(
            config.augment.size,
            self.batch_size,
            self.epochs,
            self.lr,
            self.feature_bn,
        );
        let norm = normalization(&config, data.kind, train.channels());
        let loader = ViewLoader::new(
            train.clone(),
            ViewPipeline::new(
                vec![ViewSpec::linear_eval(
                    config.augment.size,
                    protocol.step_decay,
                )],
                norm.clone(),
            )?,
            LoaderConfig {
                batch_size: self.batch_size.min(train.len()),
                drop_last: false,
                shuffle: true,
                seed: config.run.seed,
                threads: config.data.threads,
                prefetch: 2,
                skip: data.skip.clone(),
            },
            device.clone(),
        )?;
        let (head, rows) = train_linear(
            &trunk,
            &loader,
            pair_feature_dim(&config),
            classes,
            &protocol,
            &device,
            &console,
        )?;
        let run_dir = &self.checkpoint;
        let accuracy = test_linear(
            &trunk,
            &head,
            &test,
            &eval_transform(&config, norm),
            self.batch_size,
            &device,
            &data.skip,
        )
        .with_context(|| format!("linear evaluation of {}", run_dir.display()))?;
        let report = LinearReport {
            run_dir: run_dir.clone(),
            step,
            epochs: protocol.epochs,
            batch_size: self.batch_size,
            lr: protocol.base_lr,
            schedule: protocol.schedule_name(),
            feature_bn: self.feature_bn,
            train_images: train.len(),
            test_images: accuracy.images,
            top1: accuracy.top1,
            top5: accuracy.top5,
            seconds: start.elapsed().as_secs_f64(),
        };
        let mut csv = String::from("epoch,lr,loss,train_top1\n");
        for r in &rows {
            csv.push_str(&format!(
                "{},{},{:.6},{:.4}\n",
                r.epoch, r.lr, r.loss, r.train_top1
            ));
        }
        write_atomic(&run_dir.join("linear.csv"), csv.as_bytes())?;
        write_atomic(
            &run_dir.join("linear.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        console.line(format!(
            "linear evaluation: top-1 {:.2}%  top-5 {:.2}% on {} test images ({})",
            report.top1,
            report.top5,
            accuracy.images,
            run_dir.join("linear.json").display()
        ));
        print_json(&self.common, &report)
    }
}

fn pair_feature_dim(config: &TrainConfig) -> usize {
    crate::parts::pair_config(config, channels_of(config))
        .trunk
        .feature_dim()
}
