//! MNIST-style IDX files (gzipped or not): Fashion-MNIST and MNIST.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::datasets::memory::InMemoryImages;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
/// The largest image side an IDX header may announce.
const MAX_SIDE: usize = 4096;

/// Reads a whole file, inflating it when it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(DataError::io(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::corrupt(path, format!("bad gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// Images of an `idx3-ubyte` file: (count, rows, cols, pixels).
pub(crate) fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 16 {
        return Err(DataError::corrupt(
            path,
            "shorter than the 16-byte IDX header",
        ));
    }
    let magic = be_u32(&bytes, 0);
    if magic != IMAGES_MAGIC {
        return Err(DataError::corrupt(
            path,
            format!(
                "magic number {magic:#010x} at offset 0, expected {IMAGES_MAGIC:#010x} (images)"
            ),
        ));
    }
    let (n, rows, cols) = (
        be_u32(&bytes, 4) as usize,
        be_u32(&bytes, 8) as usize,
        be_u32(&bytes, 12) as usize,
    );
    // Every header field is checked: an empty set or 0×0 images would train on nothing and
    // score garbage; absurd sizes would overflow.
    if n == 0 || rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
        return Err(DataError::corrupt(
            path,
            format!(
                "header announces {n} images of {rows}x{cols}; expected at least one image with \
                 sides between 1 and {MAX_SIDE}"
            ),
        ));
    }
    let expected = n
        .checked_mul(rows * cols)
        .and_then(|b| b.checked_add(16))
        .unwrap_or(usize::MAX);
    if bytes.len() != expected {
        return Err(DataError::corrupt(
            path,
            format!(
                "header announces {n} images of {rows}x{cols} ({expected} bytes) but the data \
                 is {} bytes (truncated at image {})",
                bytes.len(),
                (bytes.len().saturating_sub(16)) / (rows * cols).max(1)
            ),
        ));
    }
    Ok((n, rows, cols, bytes[16..].to_vec()))
}

/// Labels of an `idx1-ubyte` file, each checked below `classes`.
pub(crate) fn read_labels(path: &Path, classes: usize) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 8 {
        return Err(DataError::corrupt(
            path,
            "shorter than the 8-byte IDX header",
        ));
    }
    let magic = be_u32(&bytes, 0);
    if magic != LABELS_MAGIC {
        return Err(DataError::corrupt(
            path,
            format!(
                "magic number {magic:#010x} at offset 0, expected {LABELS_MAGIC:#010x} (labels)"
            ),
        ));
    }
    let n = be_u32(&bytes, 4) as usize;
    if n == 0 {
        return Err(DataError::corrupt(path, "header announces 0 labels"));
    }
    if bytes.len() != 8 + n {
        return Err(DataError::corrupt(
            path,
            format!("header announces {n} labels but holds {}", bytes.len() - 8),
        ));
    }
    let labels = bytes[8..].to_vec();
    if let Some(pos) = labels.iter().position(|&l| l as usize >= classes) {
        return Err(DataError::corrupt(
            path,
            format!(
                "label {} of record {pos} is not below {classes}",
                labels[pos]
            ),
        ));
    }
    Ok(labels)
}

/// The file `name` in `dir`, gzipped (`name.gz`) or not.
pub(crate) fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [format!("{name}.gz"), name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// File-name prefix of a split: `train` or `t10k`.
fn prefix(train: bool) -> &'static str {
    if train { "train" } else { "t10k" }
}

/// True when `dir` holds the four IDX files.
pub(crate) fn present(dir: &Path) -> bool {
    [true, false].iter().all(|&train| {
        find(dir, &format!("{}-images-idx3-ubyte", prefix(train))).is_some()
            && find(dir, &format!("{}-labels-idx1-ubyte", prefix(train))).is_some()
    })
}

/// Loads the train (60,000) or test (10,000) split of an MNIST-layout directory.
pub(crate) fn load(dir: &Path, train: bool, name: &str) -> Result<InMemoryImages, DataError> {
    let p = prefix(train);
    let missing = |file: String| DataError::NotFound {
        dataset: name.to_string(),
        searched: vec![dir.to_path_buf()],
        hint: format!("{file}(.gz) is missing"),
    };
    let images_name = format!("{p}-images-idx3-ubyte");
    let labels_name = format!("{p}-labels-idx1-ubyte");
    let images_path = find(dir, &images_name).ok_or_else(|| missing(images_name))?;
    let labels_path = find(dir, &labels_name).ok_or_else(|| missing(labels_name))?;
    let (n, rows, cols, pixels) = read_images(&images_path)?;
    let labels = read_labels(&labels_path, 10)?;
    if labels.len() != n {
        return Err(DataError::corrupt(
            &labels_path,
            format!(
                "{} labels for {n} images in {}",
                labels.len(),
                images_path.display()
            ),
        ));
    }
    let split = if train { "train" } else { "test" };
    Ok(InMemoryImages::new(
        format!("{name}/{split}"),
        (cols, rows, 1),
        pixels,
        labels.into_iter().map(|l| Some(l as u16)).collect(),
        10,
    ))
}
