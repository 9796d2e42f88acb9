//! `sce-train fetch DATASET…`: find or download datasets ahead of a run (before going offline,
//! or to fill the cache the tests read).

use std::path::PathBuf;

use clap::Args;
use sce_data::{DatasetKind, Locator};
use serde::Serialize;

use crate::options::Common;

#[derive(Args, Debug)]
pub struct FetchCmd {
    #[command(flatten)]
    pub common: Common,
    /// Datasets to find or download: mnist, fashion-mnist, cifar10, cifar100, stl10,
    /// tiny-imagenet.
    #[arg(required = true, value_name = "DATASET")]
    pub datasets: Vec<String>,
}

#[derive(Serialize)]
struct Fetched {
    dataset: String,
    #[serde(serialize_with = "crate::report::lossy_path")]
    path: PathBuf,
}

impl FetchCmd {
    pub fn run(&self) -> anyhow::Result<()> {
        let console = self.common.console();
        let locator = Locator::from_env(self.common.data_dir.clone(), true);
        let mut found = Vec::new();
        for name in &self.datasets {
            let kind: DatasetKind = name
                .parse()
                .map_err(|e: String| crate::error::usage(format!("`{name}`: {e}")))?;
            let mut progress = console.download_progress();
            let path = locator.resolve(kind, &mut progress)?;
            console.line(format!("{kind}: {}", path.display()));
            found.push(Fetched {
                dataset: kind.to_string(),
                path,
            });
        }
        if self.common.json {
            println!("{}", serde_json::to_string(&found)?);
        }
        Ok(())
    }
}
