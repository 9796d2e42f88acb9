//! What a user looks at, beside `metrics.csv`: TensorBoard event files, picture grids of
//! augmentations and retrievals, and embedding maps.
//!
//! - [`tensorboard`]: event files (TFRecord + protobuf) with scalars and images.
//! - [`grid`]: images in rows with captions, the layout of every picture here.
//! - [`preview`]: the configured augmentation applied to the first images of a dataset.
//! - [`embedding_map`]: a 2-D t-SNE map of embeddings, coloured by class.
//! - [`run_log`]: what a training session writes of all that, without ever ending the run.
//! - [`font`]: the system font that labels pictures, when there is one.

pub mod embedding_map;
pub mod font;
pub mod grid;
pub mod preview;
pub mod run_log;
pub mod tensorboard;

use std::path::Path;

use anyhow::Context;

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
    crate::train::write_atomic(path, &png_bytes(image)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
