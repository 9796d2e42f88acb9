//! The network side of SCE, backend-agnostic: every constructor takes a `Device`.
//!
//! - [`ResNet`] trunks (18/34/50, CIFAR or ImageNet stem) returning pooled features.
//! - [`Mlp`] projector and predictor heads built from a [`MlpConfig`] (spec §2.2 recipes).
//! - [`split_batch_norm`]: one device simulating N for the target trunk's batch statistics,
//!   followed by the ReLU and shortcut after it ([`split_batch_norm_then`]); every training
//!   batch norm becomes [`synced_batch_norm`] when sce-ops sums over the ranks of a
//!   distributed run (SyncBatchNorm).
//!
//! How each operation runs on each device (the convolutions' and batch norms' CPU kernels, the
//! reductions for devices with a loop budget) is sce-ops' business: nothing here names a
//! backend.
//! - [`MomentumPair`]: online branch (+ predictor) and its EMA target, [`MomentumSchedule`].
//! - [`params`]: parameter paths, counts and the EMA over parameters only.
//! - [`weights`]: torchvision `.pth` import and safetensors export/import of trunks.

mod error;
mod mlp;
mod momentum;
mod norm;
pub mod params;
mod resnet;
pub mod weights;

pub use error::ModelError;
pub use mlp::{Mlp, MlpConfig};
pub use momentum::{Branch, MomentumPair, MomentumPairConfig, MomentumSchedule, l2_normalize};
pub use norm::{split_batch_norm, split_batch_norm_then, synced_batch_norm};
pub use resnet::{Depth, ResNet, ResNetConfig, Stem};

#[cfg(test)]
mod test_util;
