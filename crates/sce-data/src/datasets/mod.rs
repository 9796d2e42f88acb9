//! The datasets SCE is trained and evaluated on, behind one [`ImageSource`] trait.

mod cifar;
mod folder;
mod idx;
mod memory;
mod stl10;
mod subset;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use cifar::write_cifar_records;
pub use folder::{ClassMap, FolderImages, read_class_list};
pub use memory::InMemoryImages;
pub use subset::{Subset, stratified_indices};

use crate::augment::Normalization;
use crate::{DataError, Image};

/// One image and its class, if the split is labelled.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub image: Image,
    pub label: Option<usize>,
}

/// Indexed access to the images of one split.
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Decodes (or copies) image `index`; errors name the file.
    fn get(&self, index: usize) -> Result<Sample, DataError>;
    /// The class of image `index`, without decoding it where the source knows it (subsets
    /// are drawn from labels).
    fn label(&self, index: usize) -> Option<usize> {
        self.get(index).ok().and_then(|s| s.label)
    }
    /// Number of classes; 0 for unlabelled data.
    fn num_classes(&self) -> usize;
    /// The name of each class, by label, where the source knows them (empty otherwise): for
    /// pictures and legends.
    fn class_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn channels(&self) -> usize;
    /// A path or `dataset/split#index`, for messages and embedding files.
    fn item_name(&self, index: usize) -> String;
    /// What opening the split noticed that the user should hear about (files ignored, folders
    /// listed once), one line each.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Every dataset the toolkit knows how to find, fetch and read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
    Cifar10,
    Cifar100,
    Stl10,
    TinyImagenet,
    Imagenet,
    Imagenet100,
    /// A user's own images: `train/` (class subfolders or flat) and optionally `val/`.
    Folder,
}

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
    /// STL-10's 100,000 unlabelled images.
    Unlabeled,
    /// STL-10's train and unlabelled images together.
    TrainUnlabeled,
}

/// Options some datasets need to open.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Channels to decode folder images into (default 3).
    pub channels: Option<usize>,
    /// ImageNet-100 (or any ImageNet subset): file listing the class folders to use.
    pub class_list: Option<PathBuf>,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 9] = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Stl10,
        DatasetKind::TinyImagenet,
        DatasetKind::Imagenet,
        DatasetKind::Imagenet100,
        DatasetKind::Folder,
    ];

    /// The folder name under a data directory, also the config spelling.
    pub fn dir_name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Stl10 => "stl10",
            DatasetKind::TinyImagenet => "tiny-imagenet",
            DatasetKind::Imagenet => "imagenet",
            DatasetKind::Imagenet100 => "imagenet100",
            DatasetKind::Folder => "folder",
        }
    }

    /// Image channels of the dataset (folders: RGB unless configured).
    pub fn channels(self) -> usize {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => 1,
            _ => 3,
        }
    }

    /// The per-channel statistics used to normalise inputs.
    pub fn normalization(self) -> Normalization {
        let (mean, std): (&[f32], &[f32]) = match self {
            DatasetKind::Mnist => (&[0.1307], &[0.3081]),
            DatasetKind::FashionMnist => (&[0.2860], &[0.3530]),
            DatasetKind::Cifar10 => (&[0.4914, 0.4822, 0.4465], &[0.2023, 0.1994, 0.2010]),
            DatasetKind::Cifar100 => (&[0.5071, 0.4865, 0.4409], &[0.2009, 0.1984, 0.2023]),
            // ReSSL's STL-10 statistics (the SCE code reuses CIFAR-10's, spec §8 item 17).
            DatasetKind::Stl10 => (&[0.4408, 0.4279, 0.3867], &[0.2682, 0.2610, 0.2686]),
            DatasetKind::TinyImagenet => (&[0.4802, 0.4481, 0.3975], &[0.2302, 0.2265, 0.2262]),
            DatasetKind::Imagenet | DatasetKind::Imagenet100 | DatasetKind::Folder => {
                (&[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225])
            }
        };
        Normalization {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// The folder holding the dataset's files below `root` (archives unpack into one).
    fn base(self, root: &Path) -> PathBuf {
        if self == DatasetKind::TinyImagenet {
            let nested = root.join("tiny-imagenet-200");
            if nested.is_dir() {
                return nested;
            }
        }
        root.to_path_buf()
    }

    /// True when `root` holds what [`open`](Self::open) reads.
    pub fn present(self, root: &Path) -> bool {
        let base = self.base(root);
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => idx::present(&base),
            DatasetKind::Cifar10 => cifar::Cifar::Ten.present(&base),
            DatasetKind::Cifar100 => cifar::Cifar::Hundred.present(&base),
            DatasetKind::Stl10 => stl10::present(&base),
            DatasetKind::TinyImagenet => {
                base.join("train").is_dir() && base.join("val/val_annotations.txt").is_file()
            }
            DatasetKind::Imagenet | DatasetKind::Imagenet100 => base.join("train").is_dir(),
            DatasetKind::Folder => base.is_dir(),
        }
    }

    /// What the files look like, for "not found" messages.
    pub fn expected_layout(self) -> &'static str {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => {
                "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz \
                 and t10k-labels-idx1-ubyte.gz (gzipped or not)"
            }
            DatasetKind::Cifar10 => {
                "cifar-10-batches-bin/ with data_batch_1..5.bin and test_batch.bin"
            }
            DatasetKind::Cifar100 => "cifar-100-binary/ with train.bin and test.bin",
            DatasetKind::Stl10 => "stl10_binary/ with train_X/y.bin, test_X/y.bin, unlabeled_X.bin",
            DatasetKind::TinyImagenet => {
                "tiny-imagenet-200/ with train/<wnid>/images/ and val/val_annotations.txt"
            }
            DatasetKind::Imagenet | DatasetKind::Imagenet100 => {
                "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (validation sorted into class folders)"
            }
            DatasetKind::Folder => "train/ (class subfolders or flat images) and optionally val/",
        }
    }

    /// Opens `split` of the dataset in `root`.
    /// The class names of the built-in datasets with ten classes, by label (the order of
    /// their own label files); empty for the others.
    pub fn class_names(self) -> Vec<String> {
        let names: &[&str] = match self {
            DatasetKind::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => &[
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            DatasetKind::Cifar10 => &[
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
            DatasetKind::Stl10 => &[
                "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
            ],
            _ => &[],
        };
        names.iter().map(|n| n.to_string()).collect()
    }

    pub fn open(
        self,
        split: Split,
        root: &Path,
        options: &OpenOptions,
    ) -> Result<Arc<dyn ImageSource>, DataError> {
        let base = self.base(root);
        let unsupported = || {
            Err(DataError::Config(format!(
                "{} has no {split:?} split",
                self.dir_name()
            )))
        };
        let channels = options.channels.unwrap_or(self.channels());
        let train = match split {
            Split::Train => true,
            Split::Test => false,
            Split::Unlabeled | Split::TrainUnlabeled if self == DatasetKind::Stl10 => true,
            _ => return unsupported(),
        };
        Ok(match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => Arc::new(
                idx::load(&base, train, self.dir_name())?.with_class_names(self.class_names()),
            ),
            DatasetKind::Cifar10 => Arc::new(
                cifar::Cifar::Ten
                    .load(&base, train)?
                    .with_class_names(self.class_names()),
            ),
            DatasetKind::Cifar100 => Arc::new(cifar::Cifar::Hundred.load(&base, train)?),
            DatasetKind::Stl10 => Arc::new(
                match split {
                    Split::Train => stl10::load_part(&base, "train")?,
                    Split::Test => stl10::load_part(&base, "test")?,
                    Split::Unlabeled => stl10::load_part(&base, "unlabeled")?,
                    Split::TrainUnlabeled => stl10::load_part(&base, "train")?.concat(
                        stl10::load_part(&base, "unlabeled")?,
                        "stl10/train+unlabeled",
                    ),
                }
                .with_class_names(self.class_names()),
            ),
            DatasetKind::TinyImagenet => {
                Arc::new(FolderImages::tiny_imagenet(&base, train, channels)?)
            }
            DatasetKind::Imagenet | DatasetKind::Imagenet100 => {
                let dir = base.join(if train { "train" } else { "val" });
                let classes = match (&options.class_list, self) {
                    (Some(list), _) => Some(read_class_list(list)?),
                    (None, DatasetKind::Imagenet100) => {
                        return Err(DataError::Config(
                            "imagenet100 needs a class list (data.class_list): one ImageNet \
                             class folder name per line"
                                .into(),
                        ));
                    }
                    (None, _) => None,
                };
                Arc::new(match (&classes, train) {
                    (Some(list), true) => {
                        FolderImages::classified(&dir, channels, ClassMap::Only(list))?
                    }
                    (Some(list), false) => {
                        FolderImages::classified(&dir, channels, ClassMap::Within(list))?
                    }
                    (None, true) => FolderImages::classified(&dir, channels, ClassMap::Own)?,
                    (None, false) => FolderImages::validation(&dir, &base.join("train"), channels)?,
                })
            }
            DatasetKind::Folder => {
                let dir = if train {
                    base.join("train")
                } else {
                    base.join("val")
                };
                let dir = if train && !dir.is_dir() {
                    base.clone()
                } else {
                    dir
                };
                if !dir.is_dir() {
                    return Err(DataError::NotFound {
                        dataset: "folder validation split".into(),
                        searched: vec![dir],
                        hint: "add val/ with one subfolder per class to evaluate".into(),
                    });
                }
                Arc::new(if train {
                    FolderImages::auto(&dir, channels)?
                } else {
                    FolderImages::validation(&dir, &base.join("train"), channels)?
                })
            }
        })
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.dir_name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = DatasetKind::ALL.iter().map(|k| k.dir_name()).collect();
                format!("unknown dataset `{s}`; known: {}", names.join(", "))
            })
    }
}
