//! Image folders, decoded lazily per sample: ImageNet-style `class/image.jpg`, Tiny-ImageNet's
//! layout, ImageNet-100 (a class-list file over ImageNet) and flat unlabelled folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::datasets::{ImageSource, Sample};
use crate::{DataError, Image};

/// Image files listed once at open time and decoded on every `get`.
pub struct FolderImages {
    name: String,
    items: Vec<(PathBuf, Option<u16>)>,
    classes: Vec<String>,
    channels: usize,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(DataError::io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(DataError::io(dir)))
        .collect::<Result<Vec<_>, _>>()?;
    entries.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

/// Every image file under `dir`, recursively, in sorted order.
fn images_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            out.extend(images_under(&path)?);
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

impl FolderImages {
    fn build(
        name: String,
        items: Vec<(PathBuf, Option<u16>)>,
        classes: Vec<String>,
        channels: usize,
        root: &Path,
    ) -> Result<Self, DataError> {
        if items.is_empty() {
            return Err(DataError::NotFound {
                dataset: name,
                searched: vec![root.to_path_buf()],
                hint: "no .jpg/.jpeg/.png image was found there".into(),
            });
        }
        Ok(Self {
            name,
            items,
            classes,
            channels,
        })
    }

    /// `root/<class>/…/<image>`: one class per subfolder, sorted by name (torchvision's
    /// `ImageFolder`). With `only`, just those classes, indexed in the list's sorted order.
    pub fn classified(
        root: &Path,
        channels: usize,
        only: Option<&[String]>,
    ) -> Result<Self, DataError> {
        let mut classes: Vec<String> = read_dir_sorted(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
            .collect();
        if let Some(only) = only {
            let mut wanted: Vec<String> = only.to_vec();
            wanted.sort();
            if let Some(missing) = wanted.iter().find(|c| !classes.contains(c)) {
                return Err(DataError::NotFound {
                    dataset: format!("class {missing}"),
                    searched: vec![root.to_path_buf()],
                    hint: "the class list names a folder that does not exist".into(),
                });
            }
            classes = wanted;
        }
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let label = u16::try_from(label).map_err(|_| {
                DataError::Config(format!("more than 65536 classes in {}", root.display()))
            })?;
            items.extend(
                images_under(&root.join(class))?
                    .into_iter()
                    .map(|p| (p, Some(label))),
            );
        }
        Self::build(root.display().to_string(), items, classes, channels, root)
    }

    /// Every image under `root`, unlabelled.
    pub fn flat(root: &Path, channels: usize) -> Result<Self, DataError> {
        let items = images_under(root)?.into_iter().map(|p| (p, None)).collect();
        Self::build(
            root.display().to_string(),
            items,
            Vec::new(),
            channels,
            root,
        )
    }

    /// `root` as class subfolders if it holds only folders, else as a flat unlabelled folder.
    pub fn auto(root: &Path, channels: usize) -> Result<Self, DataError> {
        let entries = read_dir_sorted(root)?;
        if !entries.is_empty() && entries.iter().all(|p| p.is_dir()) {
            Self::classified(root, channels, None)
        } else {
            Self::flat(root, channels)
        }
    }

    /// Tiny-ImageNet: `train/<wnid>/images/*.JPEG`, and `val/images/*.JPEG` labelled by
    /// `val/val_annotations.txt` (file, wnid, box). Classes are the sorted training folders.
    pub fn tiny_imagenet(root: &Path, train: bool, channels: usize) -> Result<Self, DataError> {
        let train_set = Self::classified(&root.join("train"), channels, None)?;
        if train {
            return Ok(Self {
                name: "tiny-imagenet/train".into(),
                ..train_set
            });
        }
        let index: HashMap<&str, u16> = train_set
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u16))
            .collect();
        let annotations = root.join("val").join("val_annotations.txt");
        let text = std::fs::read_to_string(&annotations).map_err(DataError::io(&annotations))?;
        let mut items = Vec::new();
        for (line_no, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let mut fields = line.split('\t');
            let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
                return Err(DataError::corrupt(
                    &annotations,
                    format!("line {} has no tab-separated file and class", line_no + 1),
                ));
            };
            let label = *index.get(wnid).ok_or_else(|| {
                DataError::corrupt(
                    &annotations,
                    format!(
                        "line {} names class {wnid}, absent from train/",
                        line_no + 1
                    ),
                )
            })?;
            items.push((root.join("val").join("images").join(file), Some(label)));
        }
        Self::build(
            "tiny-imagenet/val".into(),
            items,
            train_set.classes,
            channels,
            root,
        )
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn path(&self, index: usize) -> &Path {
        &self.items[index].0
    }
}

impl ImageSource for FolderImages {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self
            .items
            .get(index)
            .ok_or_else(|| DataError::out_of_range(index, self.len(), &self.name))?;
        Ok(Sample {
            image: Image::open(path, self.channels)?,
            label: label.map(usize::from),
        })
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn item_name(&self, index: usize) -> String {
        self.items
            .get(index)
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_default()
    }
}

/// Reads a class-list file: one class folder name per line (`#` comments and blanks ignored).
pub fn read_class_list(path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
    let classes: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if classes.is_empty() {
        return Err(DataError::corrupt(path, "the class list is empty"));
    }
    Ok(classes)
}
