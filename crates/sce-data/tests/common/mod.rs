//! Shared by the integration tests: the real-data folder, when configured.

use std::path::PathBuf;

/// `$SCE_DATA_DIR` (CI: ../shared/data), or `None` with a printed notice so a user's clone
/// without the data still tests cleanly.
pub fn data_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SCE_DATA_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("skipping {test}: SCE_DATA_DIR is not set (real-data test)");
            None
        }
    }
}
