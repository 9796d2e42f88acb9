//! Finding a dataset on disk, fetching it when allowed.
//!
//! Search order: `--data-dir` (the folder itself or its `<dataset>/` subfolder) alone when it is
//! given (a folder named on the command line is never silently replaced by another), else
//! `$SCE_DATA_DIR/<dataset>`, then the per-user cache (`~/.cache/sce-rs/<dataset>` on Linux),
//! then for Fashion-MNIST the Debian package's `/usr/share/datasets/fashion-mnist`. If none
//! holds the files and the dataset has a canonical address, it is downloaded into
//! `--data-dir/<dataset>` or the cache.

use std::path::PathBuf;

use crate::DataError;
use crate::datasets::DatasetKind;
use crate::download::{Progress, fetch, lock_dir, remote};

/// Where to look and whether to download.
#[derive(Clone, Debug, Default)]
pub struct Locator {
    pub data_dir: Option<PathBuf>,
    pub env_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub download: bool,
    /// Base URL tried before the canonical ones (`$SCE_DATA_MIRROR`).
    pub mirror: Option<String>,
}

impl Locator {
    /// `--data-dir`, `$SCE_DATA_DIR`, `$SCE_DATA_MIRROR` and the user cache from the environment;
    /// `$SCE_DATA_DOWNLOAD=0` turns downloads off whatever `download` says (machines without
    /// network fail at once with what to put where, instead of waiting for time-outs).
    pub fn from_env(data_dir: Option<PathBuf>, download: bool) -> Self {
        let allowed = std::env::var("SCE_DATA_DOWNLOAD").map_or(true, |v| v != "0");
        Self {
            data_dir,
            env_dir: std::env::var_os("SCE_DATA_DIR").map(PathBuf::from),
            cache_dir: dirs::cache_dir().map(|d| d.join("sce-rs")),
            download: download && allowed,
            mirror: std::env::var("SCE_DATA_MIRROR")
                .ok()
                .filter(|m| !m.is_empty()),
        }
    }

    /// Candidate folders in search order: only `--data-dir`'s when it is given.
    pub fn candidates(&self, kind: DatasetKind) -> Vec<PathBuf> {
        let name = kind.dir_name();
        let mut out = Vec::new();
        if let Some(dir) = &self.data_dir {
            out.push(dir.join(name));
            out.push(dir.clone());
        }
        if kind == DatasetKind::Folder || self.data_dir.is_some() {
            return out;
        }
        if let Some(dir) = &self.env_dir {
            out.push(dir.join(name));
        }
        if let Some(dir) = &self.cache_dir {
            out.push(dir.join(name));
        }
        if kind == DatasetKind::FashionMnist {
            out.push(PathBuf::from("/usr/share/datasets/fashion-mnist"));
        }
        out
    }

    /// The folder holding `kind`, downloading it first if needed and allowed.
    pub fn resolve(&self, kind: DatasetKind, progress: Progress) -> Result<PathBuf, DataError> {
        let candidates = self.candidates(kind);
        if let Some(found) = candidates.iter().find(|c| kind.present(c)) {
            return Ok(found.clone());
        }
        let target = self
            .data_dir
            .as_ref()
            .or(self.cache_dir.as_ref())
            .map(|d| d.join(kind.dir_name()));
        let not_found = |hint: String| DataError::NotFound {
            dataset: kind.dir_name().to_string(),
            searched: candidates.clone(),
            hint,
        };
        let layout = format!("Expected {}.", kind.expected_layout());
        match (remote(kind), target) {
            (Some(remote), Some(target)) if self.download => {
                // One job downloads into a folder at a time; a job that waited finds the data.
                let _lock = lock_dir(&target)?;
                if kind.present(&target) {
                    return Ok(target);
                }
                match fetch(&remote, &target, self.mirror.as_deref(), progress) {
                    Ok(()) if kind.present(&target) => Ok(target),
                    Ok(()) => Err(not_found(format!(
                        "the download into {} did not produce the expected files. {layout}",
                        target.display()
                    ))),
                    Err(e) => Err(not_found(format!(
                        "Downloading failed ({e}). Without network access, copy the files into \
                         {} (or pass --data-dir). {layout}",
                        target.display()
                    ))),
                }
            }
            (Some(remote), _) => Err(not_found(format!(
                "Downloads are disabled; fetch {} from {} into one of those folders. {layout}",
                remote
                    .files
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", "),
                remote.base_urls[0]
            ))),
            (None, _) if kind == DatasetKind::Folder => Err(not_found(
                "Pass --data-dir pointing at your image folder. ".to_string() + &layout,
            )),
            (None, _) => Err(not_found(format!(
                "{} cannot be downloaded automatically (licence); place it in one of those \
                 folders or pass --data-dir. {layout}",
                kind.dir_name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An explicit `--data-dir` is the only place searched: an incomplete one is reported, not
    /// silently replaced by `$SCE_DATA_DIR`'s copy.
    #[test]
    fn a_given_data_dir_is_searched_alone() {
        let locator = Locator {
            data_dir: Some("/given".into()),
            env_dir: Some("/env".into()),
            cache_dir: Some("/cache".into()),
            ..Locator::default()
        };
        let given = locator.candidates(DatasetKind::Cifar10);
        assert!(given.iter().all(|c| c.starts_with("/given")), "{given:?}");
        let fallback = Locator {
            data_dir: None,
            ..locator
        }
        .candidates(DatasetKind::Cifar10);
        assert!(fallback[0].starts_with("/env") && fallback[1].starts_with("/cache"));
    }
}
