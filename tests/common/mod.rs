//! Helpers for the end-to-end tests: run the `sce-train` binary, find the real data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (configs/ lives there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `sce-train` with the workspace root as working directory and quiet progress.
pub fn sce_train() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sce-train"));
    cmd.current_dir(root());
    cmd
}

/// `$SCE_DATA_DIR`, or `None` with a printed notice (the test is then skipped).
pub fn data_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SCE_DATA_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("skipping {test}: SCE_DATA_DIR is not set (real-data test)");
            None
        }
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a failed run: the exit code, a message containing each of `needles`, no panic.
pub fn assert_clean_failure(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit status; stderr:\n{err}");
    assert!(
        !err.contains("panicked"),
        "a user mistake must not panic:\n{err}"
    );
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks `{needle}`:\n{err}");
    }
}

/// The last stdout line parsed as JSON.
pub fn json_line(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no stdout; stderr:\n{}", stderr(out)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// A folder holding the 20 `fashionMNIST_<index>_<label>.png` sample images (the first
/// Fashion-MNIST test images): `samples/` of the data folder, or, on a clone whose data folder
/// has no `samples/`, the same images written from the Fashion-MNIST test set.
pub fn fashion_samples(data: &Path) -> PathBuf {
    let shared = data.join("samples");
    if shared.is_dir() {
        return shared;
    }
    eprintln!(
        "note: {} is absent; writing the Fashion-MNIST samples from the test set",
        shared.display()
    );
    let dir = tempfile::tempdir().unwrap().keep();
    let test = sce_data::DatasetKind::FashionMnist
        .open(
            sce_data::Split::Test,
            &data.join("fashion-mnist"),
            &sce_data::OpenOptions::default(),
        )
        .unwrap();
    for i in 0..20 {
        let sample = test.get(i).unwrap();
        let label = sample.label.unwrap();
        image::GrayImage::from_raw(28, 28, sample.image.pixels)
            .unwrap()
            .save(dir.join(format!("fashionMNIST_{i:02}_{label}.png")))
            .unwrap();
    }
    dir
}
