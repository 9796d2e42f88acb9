//! The evaluation commands, each on a run directory written by `pretrain`; the
//! protocols themselves live in [`crate::eval`].

mod embed;
mod knn;
mod linear;

pub use embed::EmbedCmd;
pub use knn::KnnCmd;
pub use linear::LinearCmd;

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use sce_model::ResNet;

use crate::config::TrainConfig;
use crate::console::Console;
use crate::train::load_run;

/// The trunk of a run's newest intact checkpoint, with the run's configuration and the
/// checkpoint's step (said on the console: an older one is used when newer ones are damaged).
fn trained_trunk(
    run_dir: &Path,
    device: &Device,
    console: &Console,
) -> anyhow::Result<(TrainConfig, ResNet, usize)> {
    let run = load_run(run_dir, device)?;
    console.line(format!(
        "using the checkpoint at step {} of {}",
        run.step,
        run_dir.display()
    ));
    let trunk = run.model.valid().pair.online().trunk.clone();
    Ok((run.config, trunk, run.step))
}
