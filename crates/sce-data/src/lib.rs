//! The data side of SCE, on the CPU: datasets, downloads and multi-view augmentation.
//!
//! - [`datasets`]: CIFAR-10/100, STL-10, MNIST, Fashion-MNIST, image folders (ImageNet,
//!   Tiny-ImageNet, ImageNet-100, flat), behind [`ImageSource`].
//! - [`Locator`]: where a dataset lives (`--data-dir`, `$SCE_DATA_DIR`, the user cache) and
//!   [`download`]: fetching it with checksum verification when it is absent.
//! - [`augment`]: torchvision-faithful crops, flips, colour jitter, grayscale, blur, solarize,
//!   and the paper's view recipes.
//! - [`ViewLoader`]: a Burn data loader producing one tensor per view, augmenting in parallel.
//! - [`rng`]: per-sample randomness derived from (seed, epoch, index).
//! - [`SkipLog`]: unreadable images skipped (with `data.skip_corrupt`) and reported.

pub mod augment;
pub mod datasets;
pub mod download;
mod error;
mod image;
mod loader;
mod locate;
pub mod rng;
mod skip;

pub use datasets::{DatasetKind, ImageSource, OpenOptions, Sample, Split, Subset};
pub use error::DataError;
pub use image::Image;
pub use loader::{Cursor, EvalBatch, HostBatch, LoaderConfig, ViewBatch, ViewLoader, eval_batches};
pub use locate::Locator;
pub use skip::{SkipLog, Warn};
