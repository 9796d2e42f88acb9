//! The command line: `pretrain` (default), `knn`, `linear`, `preview`, `embed`, `export`,
//! `bench`, `check`, `fetch`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigSource, parse_override};
use crate::options::{Common, at_least_one};
use crate::train::{PretrainArgs, pretrain};

#[derive(Parser, Debug)]
#[command(
    name = "sce-train",
    version,
    about = "Self-supervised representation learning with SCE (Similarity Contrastive Estimation, \
             Denize et al., WACV 2023) on Burn: CPU, CUDA or any WGPU GPU.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: `pretrain` on configs/quickstart.toml.
    #[command(flatten)]
    pub pretrain: PretrainCmd,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain a network with SCE (or MoCo / ReSSL) and monitor it with kNN.
    Pretrain(PretrainCmd),
    /// Weighted kNN accuracy of a run's online trunk (and of an untrained one, and raw pixels).
    Knn(crate::commands::KnnCmd),
    /// Linear evaluation: a linear classifier on the frozen online trunk.
    Linear(crate::commands::LinearCmd),
    /// A picture of the configured augmentation: images beside their views, before training.
    Preview(crate::preview::PreviewCmd),
    /// Embeddings of images with a run's trunk; nearest-neighbour image retrieval.
    Embed(crate::commands::EmbedCmd),
    /// Write a run's online trunk (and heads) as safetensors, under torchvision's names.
    Export(crate::export::ExportCmd),
    /// Benchmarks: augmentation throughput, training-step throughput.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
    /// Check a device's arithmetic against float64 references before trusting it with a run.
    Check(crate::check::CheckCmd),
    /// Find or download datasets ahead of a run (into --data-dir or the user cache).
    Fetch(crate::fetch::FetchCmd),
}

#[derive(Args, Debug, Clone)]
pub struct PretrainCmd {
    #[command(flatten)]
    pub common: Common,
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run directory (default: runs/<config>-<n>).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "output"])]
    pub resume: Option<PathBuf>,
    /// With --resume: continue even if the run's config.toml was edited in keys that change
    /// the experiment (e.g. a lower optim.lr after a diverged run); the changes are printed.
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// Override any config value, e.g. --set method.lambda=0.3 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Random seed (run.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of epochs (run.epochs).
    #[arg(long, value_parser = at_least_one)]
    pub epochs: Option<usize>,
    /// Batch size (run.batch_size).
    #[arg(long, value_parser = at_least_one)]
    pub batch_size: Option<usize>,
    /// What convolutions and linear layers compute in: f32, or f16 / bf16 over f32 master
    /// weights (run.precision; a GPU feature, refused on a device without the type).
    #[arg(long, value_enum)]
    pub precision: Option<crate::config::PrecisionName>,
    /// Train on N images: a seeded, class-stratified subset (data.limit_train).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub limit_train: Option<usize>,
    /// Data-parallel training on several devices, e.g. `cuda:0,cuda:1`: each runs the step on
    /// its own batch of `run.batch_size`; gradients are averaged on the first.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub devices: Vec<String>,
}

impl PretrainCmd {
    /// Whether any option of `pretrain` beyond the global ones was given.
    fn has_own_options(&self) -> bool {
        self.config.is_some()
            || self.output.is_some()
            || self.resume.is_some()
            || self.force
            || !self.set.is_empty()
            || self.seed.is_some()
            || self.epochs.is_some()
            || self.batch_size.is_some()
            || self.limit_train.is_some()
            || self.precision.is_some()
            || !self.devices.is_empty()
    }

    fn source(&self) -> anyhow::Result<ConfigSource> {
        let mut overrides = self
            .set
            .iter()
            .map(|s| parse_override(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let flags = [
            ("run.seed", self.seed.map(|v| v.to_string())),
            ("run.epochs", self.epochs.map(|v| v.to_string())),
            ("run.batch_size", self.batch_size.map(|v| v.to_string())),
            ("data.limit_train", self.limit_train.map(|v| v.to_string())),
            (
                "run.precision",
                self.precision.map(|p| p.precision().name().to_string()),
            ),
        ];
        overrides.extend(
            flags
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
        );
        if self.resume.is_some() && !overrides.is_empty() {
            return Err(crate::error::usage(
                "--resume continues a run with its saved configuration; overrides are not allowed",
            ));
        }
        Ok(ConfigSource {
            path: self
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::config::QUICKSTART)),
            overrides,
        })
    }

    pub fn run(&self) -> anyhow::Result<()> {
        let mut source = self.source()?;
        if let Some(note) = crate::config::fit_warmup_to_epochs(&mut source)? {
            self.common.console().line(note);
        }
        let args = PretrainArgs {
            source,
            output: self.output.clone(),
            resume: self.resume.clone(),
            force: self.force,
            device: self.common.device.clone(),
            devices: self.devices.clone(),
            data_dir: self.common.data_dir.clone(),
            console: self.common.console(),
            // Lossy: the command line is a note in the log, and arguments need not be UTF-8.
            origin: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let summary = pretrain(&args)?;
        if crate::distributed::launched_rank() != 0 {
            // Under MPI rank 0 reports the run, once.
            return Ok(());
        }
        let console = self.common.console();
        console.line(format!(
            "done: {} epochs, final loss {:.4}, kNN top-1 {} (untrained {}), {:.1} img/s, {:.0} s; \
             summary in {}",
            summary.epochs,
            summary.final_loss,
            summary
                .knn_top1
                .map(|v| format!("{v:.2}%"))
                .unwrap_or("-".into()),
            summary
                .knn_top1_initial
                .map(|v| format!("{v:.2}%"))
                .unwrap_or("-".into()),
            summary.images_per_s,
            summary.seconds,
            summary.run_dir.join("summary.json").display()
        ));
        if self.common.json {
            println!("{}", serde_json::to_string(&summary)?);
        }
        Ok(())
    }
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    let result = match &cli.command {
        Some(_) if cli.pretrain.has_own_options() => Err(crate::error::usage(
            "pretraining options (--config, --output, --resume, --force, --set, --seed, --epochs, \
             --batch-size, --limit-train, --precision, --devices) before a subcommand apply only \
             when there is none; write them after `pretrain`",
        )),
        None => cli.pretrain.run(),
        Some(Command::Pretrain(cmd)) => cmd.run(),
        Some(Command::Knn(cmd)) => cmd.run(),
        Some(Command::Linear(cmd)) => cmd.run(),
        Some(Command::Preview(cmd)) => cmd.run(),
        Some(Command::Embed(cmd)) => cmd.run(),
        Some(Command::Export(cmd)) => cmd.run(),
        Some(Command::Bench(cmd)) => cmd.run(),
        Some(Command::Check(cmd)) => cmd.run(),
        Some(Command::Fetch(cmd)) => cmd.run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            if !error.is::<crate::error::Silent>() {
                eprintln!("{}", crate::error::report(&error));
            }
            std::process::ExitCode::from(crate::error::exit_code(&error))
        }
    }
}
