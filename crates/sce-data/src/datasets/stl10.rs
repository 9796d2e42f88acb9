//! STL-10, binary version: 96×96 RGB images stored channel by channel in column-major order,
//! labels 1–10 in separate files; 100,000 unlabelled images.

use std::path::{Path, PathBuf};

use crate::DataError;
use crate::datasets::memory::InMemoryImages;

const SIDE: usize = 96;
const RECORD: usize = 3 * SIDE * SIDE;

fn base(root: &Path) -> PathBuf {
    let nested = root.join("stl10_binary");
    if nested.is_dir() {
        nested
    } else {
        root.to_path_buf()
    }
}

pub(crate) fn present(root: &Path) -> bool {
    let base = base(root);
    [
        "train_X.bin",
        "train_y.bin",
        "test_X.bin",
        "test_y.bin",
        "unlabeled_X.bin",
    ]
    .iter()
    .all(|f| base.join(f).is_file())
}

/// One part: `train`, `test` (labelled) or `unlabeled`.
pub(crate) fn load_part(root: &Path, part: &str) -> Result<InMemoryImages, DataError> {
    let base = base(root);
    let x_path = base.join(format!("{part}_X.bin"));
    let bytes = std::fs::read(&x_path).map_err(DataError::io(&x_path))?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::corrupt(
            &x_path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte images (image {} is truncated)",
                bytes.len(),
                bytes.len() / RECORD
            ),
        ));
    }
    let n = bytes.len() / RECORD;
    let labels = if part == "unlabeled" {
        vec![None; n]
    } else {
        let y_path = base.join(format!("{part}_y.bin"));
        let y = std::fs::read(&y_path).map_err(DataError::io(&y_path))?;
        if y.len() != n {
            return Err(DataError::corrupt(
                &y_path,
                format!("{} labels for {n} images in {}", y.len(), x_path.display()),
            ));
        }
        y.iter()
            .enumerate()
            .map(|(i, &l)| {
                if (1..=10).contains(&l) {
                    Ok(Some(u16::from(l - 1)))
                } else {
                    Err(DataError::corrupt(
                        &y_path,
                        format!("label {l} of record {i} (offset {i}) is not in 1..=10"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?
    };
    // Column-major planes: byte (c, x, y) → HWC (y, x, c).
    let mut pixels = vec![0u8; bytes.len()];
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let out = &mut pixels[i * RECORD..(i + 1) * RECORD];
        for c in 0..3 {
            for x in 0..SIDE {
                for y in 0..SIDE {
                    out[(y * SIDE + x) * 3 + c] = rec[c * SIDE * SIDE + x * SIDE + y];
                }
            }
        }
    }
    Ok(InMemoryImages::new(
        format!("stl10/{part}"),
        (SIDE, SIDE, 3),
        pixels,
        labels,
        10,
    ))
}
