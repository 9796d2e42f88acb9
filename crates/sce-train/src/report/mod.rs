//! What a user looks at, beside `metrics.csv`: TensorBoard event files, picture grids of
//! augmentations and retrievals, and embedding maps.
//!
//! - [`tensorboard`]: event files (TFRecord + protobuf) with scalars and images.
//! - [`grid`]: images in rows with captions, the layout of every picture here.
//! - [`preview`]: the configured augmentation applied to the first images of a dataset.
//! - [`embedding_map`]: a 2-D t-SNE map of embeddings, coloured by class.
//! - [`run_log`]: what a training session writes of all that, without ever ending the run.
//! - [`font`]: the system font that labels pictures, when there is one.
//!
//! Paths in JSON reports go through [`lossy_path`]: a folder name that is not UTF-8 (Latin-1)
//! must not make a finished run's report fail to serialise.

pub mod embedding_map;
pub mod font;
pub mod grid;
pub mod preview;
pub mod run_log;
pub mod tensorboard;

use std::path::Path;

use anyhow::Context;

/// Serialises a path as text, replacing bytes that are not UTF-8 with U+FFFD (serde refuses
/// such paths, and a report is for reading, not for reopening the path).
pub fn lossy_path<S: serde::Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&path.to_string_lossy())
}

/// [`lossy_path`] for an optional path.
pub fn lossy_optional_path<S: serde::Serializer>(
    path: &Option<std::path::PathBuf>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => serializer.serialize_some(&path.to_string_lossy()),
        None => serializer.serialize_none(),
    }
}

/// How a picture names class `label`: its name where the dataset knows it, else "class k".
pub fn class_label(names: &[String], label: usize) -> String {
    names
        .get(label)
        .cloned()
        .unwrap_or_else(|| format!("class {label}"))
}

/// An RGB image as PNG bytes.
pub fn png_bytes(image: &image::RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .context("cannot encode a PNG")?;
    Ok(bytes.into_inner())
}

/// Writes `image` as a PNG at `path`, atomically.
pub fn write_png(path: &Path, image: &image::RgbImage) -> anyhow::Result<()> {
    crate::atomic_file::write_atomic(path, &png_bytes(image)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
