//! CIFAR-10 and CIFAR-100, binary versions: one record per image, a label byte (two for
//! CIFAR-100: coarse then fine) followed by the red, green and blue 32×32 planes.

use std::path::{Path, PathBuf};

use crate::DataError;
use crate::datasets::memory::InMemoryImages;

const PLANE: usize = 32 * 32;

/// Which CIFAR and where its files live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cifar {
    Ten,
    Hundred,
}

impl Cifar {
    fn subdir(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar-10-batches-bin",
            Cifar::Hundred => "cifar-100-binary",
        }
    }

    fn files(self, train: bool) -> Vec<String> {
        match (self, train) {
            (Cifar::Ten, true) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Cifar::Ten, false) => vec!["test_batch.bin".into()],
            (Cifar::Hundred, true) => vec!["train.bin".into()],
            (Cifar::Hundred, false) => vec!["test.bin".into()],
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    pub(crate) fn classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar10",
            Cifar::Hundred => "cifar100",
        }
    }

    /// Files may sit in the archive's folder or directly in `root`.
    fn base(self, root: &Path) -> PathBuf {
        let nested = root.join(self.subdir());
        if nested.is_dir() {
            nested
        } else {
            root.to_path_buf()
        }
    }

    pub(crate) fn present(self, root: &Path) -> bool {
        let base = self.base(root);
        [true, false]
            .iter()
            .all(|&t| self.files(t).iter().all(|f| base.join(f).is_file()))
    }

    /// Loads a split, checking every record's size and label.
    pub(crate) fn load(self, root: &Path, train: bool) -> Result<InMemoryImages, DataError> {
        let base = self.base(root);
        let record = self.label_bytes() + 3 * PLANE;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for file in self.files(train) {
            let path = base.join(&file);
            let bytes = std::fs::read(&path).map_err(DataError::io(&path))?;
            if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
                return Err(DataError::corrupt(
                    &path,
                    format!(
                        "{} bytes is not a whole number of {record}-byte records (record {} is \
                         truncated at offset {})",
                        bytes.len(),
                        bytes.len() / record,
                        bytes.len() / record * record
                    ),
                ));
            }
            for (index, rec) in bytes.chunks_exact(record).enumerate() {
                let label = rec[self.label_bytes() - 1] as usize;
                if label >= self.classes() {
                    return Err(DataError::corrupt(
                        &path,
                        format!(
                            "record {index} (offset {}) has label {label}, not below {}",
                            index * record,
                            self.classes()
                        ),
                    ));
                }
                labels.push(Some(label as u16));
                let planes = &rec[self.label_bytes()..];
                pixels.extend(
                    (0..PLANE).flat_map(|p| [planes[p], planes[PLANE + p], planes[2 * PLANE + p]]),
                );
            }
        }
        let split = if train { "train" } else { "test" };
        Ok(InMemoryImages::new(
            format!("{}/{split}", self.name()),
            (32, 32, 3),
            pixels,
            labels,
            self.classes(),
        ))
    }
}

/// Writes images in the CIFAR binary record layout (for tests and conversions).
pub fn write_cifar_records(images: &[(&[u8], u8)], coarse_label: Option<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for (rgb, label) in images {
        assert_eq!(rgb.len(), 3 * PLANE, "CIFAR images are 32x32 RGB");
        if let Some(coarse) = coarse_label {
            out.push(coarse);
        }
        out.push(*label);
        for c in 0..3 {
            out.extend((0..PLANE).map(|p| rgb[p * 3 + c]));
        }
    }
    out
}
