//! Image folders, decoded lazily per sample: ImageNet-style `class/image.jpg`, Tiny-ImageNet's
//! layout, ImageNet-100 (a class-list file over ImageNet) and flat unlabelled folders.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::datasets::{ImageSource, Sample};
use crate::{DataError, Image};

/// Image files listed once at open time and decoded on every `get`.
pub struct FolderImages {
    name: String,
    items: Vec<(PathBuf, Option<u16>)>,
    classes: Vec<String>,
    channels: usize,
    notes: Vec<String>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

/// The entries of `dir` except hidden ones, sorted by name (non-UTF-8 names included).
fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(DataError::io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(DataError::io(dir)))
        .collect::<Result<Vec<_>, _>>()?;
    entries.retain(|p| {
        !p.file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
    });
    entries.sort();
    Ok(entries)
}

/// A folder's name as a class name (lossy for names that are not UTF-8: only for display and
/// matching; files are opened through their real paths).
fn class_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A listing of image files that follows symbolic links but lists each real folder and file
/// once (a symlink loop or two links to one folder would multiply its images), and remembers
/// what it skipped, for one note to the user.
///
/// In a class folder, a link must stay inside that class (`class` holds its real path): an
/// image reached through a link into another class, or outside the dataset, would be labelled
/// by the folder the link sits in, not by the one the image lives in. Such a link is an error
/// naming it; links within the class (shared subfolders, deduplicated copies) are followed.
#[derive(Default)]
struct Walk {
    visited: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
    ignored: Vec<PathBuf>,
    /// Images directly beside class folders: in no class, so without a label.
    unlabelled: Vec<PathBuf>,
    revisits: Vec<PathBuf>,
    class: Option<PathBuf>,
}

impl Walk {
    /// Every image file under the class folder `dir`, recursively, in sorted order; links that
    /// leave `dir` are an error.
    fn images_of_class(&mut self, dir: &Path) -> Result<Vec<PathBuf>, DataError> {
        self.class = Some(dir.canonicalize().map_err(DataError::io(dir))?);
        let images = self.images_under(dir);
        self.class = None;
        images
    }

    /// The real path of `path`, checked to lie inside the class folder being listed, if any.
    fn real_path(&self, path: &Path) -> Result<PathBuf, DataError> {
        let real = path.canonicalize().map_err(DataError::io(path))?;
        match &self.class {
            Some(class) if !real.starts_with(class) => Err(DataError::Config(format!(
                "{} leads to {}, outside its class folder {}: its images would be labelled \
                 with the wrong class. Replace the link by the files, or move it into the class \
                 its images belong to",
                path.display(),
                real.display(),
                class.display()
            ))),
            _ => Ok(real),
        }
    }

    /// Every image file under `dir`, recursively, in sorted order.
    fn images_under(&mut self, dir: &Path) -> Result<Vec<PathBuf>, DataError> {
        let real = self.real_path(dir)?;
        if !self.visited.insert(real) {
            self.revisits.push(dir.to_path_buf());
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for path in read_dir_sorted(dir)? {
            if path.is_dir() {
                out.extend(self.images_under(&path)?);
            } else if is_image(&path) {
                if self.files.insert(self.real_path(&path)?) {
                    out.push(path);
                } else {
                    self.revisits.push(path);
                }
            } else {
                self.ignored.push(path);
            }
        }
        Ok(out)
    }

    fn notes(&self, root: &Path) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(first) = self.unlabelled.first() {
            notes.push(format!(
                "ignored {} image(s) directly under {}, beside its class folders: they are in \
                 no class, so have no label (first: {})",
                self.unlabelled.len(),
                root.display(),
                first.display()
            ));
        }
        if let Some(first) = self.ignored.first() {
            notes.push(format!(
                "ignored {} file(s) under {} that are not .jpg/.jpeg/.png images (first: {})",
                self.ignored.len(),
                root.display(),
                first.display()
            ));
        }
        if let Some(first) = self.revisits.first() {
            notes.push(format!(
                "skipped {} folder(s) or image(s) under {} already listed through another path \
                 (a symbolic link loop or two links to one place; first: {})",
                self.revisits.len(),
                root.display(),
                first.display()
            ));
        }
        notes
    }
}

/// The class folders of `root` (sorted), and the files beside them.
fn class_folders(root: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    Ok(read_dir_sorted(root)?.into_iter().partition(|p| p.is_dir()))
}

/// Whether `root` is laid out as class folders: it holds folders. Images beside them are
/// strays, ignored with a note; they do not turn a labelled set into an unlabelled one.
fn has_class_folders(root: &Path) -> Result<bool, DataError> {
    let (folders, _) = class_folders(root)?;
    Ok(!folders.is_empty())
}

/// How a split's class folders map to labels.
pub enum ClassMap<'a> {
    /// Every folder is a class, in sorted order (torchvision's `ImageFolder`).
    Own,
    /// Exactly these classes (a class-list file): each must be a folder; others are ignored.
    Only(&'a [String]),
    /// A validation split labelled like its training split: each folder must be one of these
    /// training classes (a class may be missing); labels are the training indices.
    SameAs(&'a [String]),
    /// The validation split of a class-list subset: folders of these classes, labelled by
    /// their index in the sorted list (a class may be missing); other folders are ignored.
    Within(&'a [String]),
}

impl FolderImages {
    fn build(
        name: String,
        items: Vec<(PathBuf, Option<u16>)>,
        classes: Vec<String>,
        channels: usize,
        root: &Path,
        notes: Vec<String>,
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
            notes,
        })
    }

    /// `root/<class>/…/<image>`: one class per subfolder, labelled as `map` says.
    pub fn classified(root: &Path, channels: usize, map: ClassMap) -> Result<Self, DataError> {
        let (folders, files) = class_folders(root)?;
        let (unlabelled, ignored) = files.into_iter().partition(|f| is_image(f));
        let mut walk = Walk {
            ignored,
            unlabelled,
            ..Walk::default()
        };
        let by_name: Vec<(String, PathBuf)> =
            folders.into_iter().map(|p| (class_name(&p), p)).collect();
        let sorted = |list: &[String]| {
            let mut list = list.to_vec();
            list.sort();
            list.dedup();
            list
        };
        // The class names labels index; folders whose name is not among them are left out.
        let classes: Vec<String> = match map {
            ClassMap::Own => by_name.iter().map(|(n, _)| n.clone()).collect(),
            ClassMap::Only(list) | ClassMap::Within(list) => sorted(list),
            ClassMap::SameAs(train) => train.to_vec(),
        };
        let label_of = |name: &str| classes.iter().position(|c| c == name);
        if let ClassMap::Only(_) = map
            && let Some(missing) = classes
                .iter()
                .find(|c| !by_name.iter().any(|(n, _)| n == *c))
        {
            return Err(DataError::NotFound {
                dataset: format!("class {missing}"),
                searched: vec![root.to_path_buf()],
                hint: "the class list names a folder that does not exist".into(),
            });
        }
        if let ClassMap::SameAs(train) = map
            && let Some((extra, _)) = by_name.iter().find(|(n, _)| label_of(n).is_none())
        {
            return Err(DataError::Config(format!(
                "class folder `{extra}` of {} has no counterpart among the {} training \
                 classes; validation classes are matched to training classes by name",
                root.display(),
                train.len()
            )));
        }
        let labelled: Vec<(usize, PathBuf)> = by_name
            .into_iter()
            .filter_map(|(n, p)| label_of(&n).map(|i| (i, p)))
            .collect();
        if classes.len() > usize::from(u16::MAX) + 1 {
            return Err(DataError::Config(format!(
                "more than 65536 classes in {}",
                root.display()
            )));
        }
        let mut items = Vec::new();
        for (label, folder) in labelled {
            items.extend(
                walk.images_of_class(&folder)?
                    .into_iter()
                    .map(|p| (p, Some(label as u16))),
            );
        }
        let notes = walk.notes(root);
        Self::build(
            root.display().to_string(),
            items,
            classes,
            channels,
            root,
            notes,
        )
    }

    /// Every image under `root`, unlabelled.
    pub fn flat(root: &Path, channels: usize) -> Result<Self, DataError> {
        let mut walk = Walk::default();
        let items = walk
            .images_under(root)?
            .into_iter()
            .map(|p| (p, None))
            .collect();
        let notes = walk.notes(root);
        Self::build(
            root.display().to_string(),
            items,
            Vec::new(),
            channels,
            root,
            notes,
        )
    }

    /// `root` as class subfolders if it holds folders (files beside them, images included,
    /// are ignored with a note), else as a flat unlabelled folder.
    pub fn auto(root: &Path, channels: usize) -> Result<Self, DataError> {
        if has_class_folders(root)? {
            Self::classified(root, channels, ClassMap::Own)
        } else {
            Self::flat(root, channels)
        }
    }

    /// A validation folder labelled by the training split's classes when the training folder
    /// has classes; otherwise as [`auto`](Self::auto).
    pub fn validation(root: &Path, train_root: &Path, channels: usize) -> Result<Self, DataError> {
        if train_root.is_dir() && has_class_folders(train_root)? && has_class_folders(root)? {
            let (folders, _) = class_folders(train_root)?;
            let train: Vec<String> = folders.iter().map(|p| class_name(p)).collect();
            Self::classified(root, channels, ClassMap::SameAs(&train))
        } else {
            Self::auto(root, channels)
        }
    }

    /// Tiny-ImageNet: `train/<wnid>/images/*.JPEG`, and `val/images/*.JPEG` labelled by
    /// `val/val_annotations.txt` (file, wnid, box). Classes are the sorted training folders.
    pub fn tiny_imagenet(root: &Path, train: bool, channels: usize) -> Result<Self, DataError> {
        let train_set = Self::classified(&root.join("train"), channels, ClassMap::Own)?;
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
            Vec::new(),
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

    fn label(&self, index: usize) -> Option<usize> {
        self.items.get(index).and_then(|(_, l)| l.map(usize::from))
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
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

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
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
