use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why data could not be found, fetched, read or transformed.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing failed: a full disk, a read-only folder, a quota.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but does not hold what its format promises.
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{dataset} not found; looked in: {searched}. {hint}",
        searched = display_paths(searched)
    )]
    NotFound {
        dataset: String,
        searched: Vec<PathBuf>,
        hint: String,
    },
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("checksum mismatch for {path}: expected md5 {expected}, got {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("invalid data configuration: {0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Like [`io`](Self::io), for writes: the message must not say "read" of a full disk.
    pub(crate) fn write(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
        move |source| DataError::Write {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An index outside a dataset of `len` images called `name`.
    pub(crate) fn out_of_range(index: usize, len: usize, name: &str) -> DataError {
        DataError::Config(format!("index {index} is past the {len} images of {name}"))
    }

    pub(crate) fn corrupt(path: &Path, detail: impl Into<String>) -> DataError {
        DataError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere (no candidate directory)".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
