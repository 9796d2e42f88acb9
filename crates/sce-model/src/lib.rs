//! The network side of SCE, backend-agnostic: every constructor takes a `Device`.
//!
//! - [`ResNet`] trunks (18/34/50, CIFAR or ImageNet stem) returning pooled features.
//! - [`Mlp`] projector and predictor heads built from a [`MlpConfig`] (spec §2.2 recipes).
//! - [`split_batch_norm`]: one device simulating N for the target trunk's batch statistics;
//!   on `flex` fused with the ReLU and shortcut after it ([`split_batch_norm_then`]).
//! - [`conv`]: the trunks' convolutions, as GEMM kernels with their own backward on `flex`.
//! - [`MomentumPair`]: online branch (+ predictor) and its EMA target, [`MomentumSchedule`].
//! - [`params`]: parameter paths, counts and the EMA over parameters only.
//! - [`weights`]: torchvision `.pth` import and safetensors export/import of trunks.

pub mod conv;
mod error;
#[cfg(feature = "flex")]
mod flex_values;
mod mlp;
mod momentum;
mod norm;
pub mod params;
mod resnet;
mod switch;
pub mod weights;

pub use error::ModelError;
pub use mlp::{Mlp, MlpConfig};
pub use momentum::{Branch, MomentumPair, MomentumPairConfig, MomentumSchedule, l2_normalize};
pub use norm::{
    AfterNorm, NormKernels, StatisticsReduction, batch_norm_with_statistics, norm_kernels,
    set_norm_kernels, set_statistics_reduction, split_batch_norm, split_batch_norm_then,
    statistics_reduction,
};
pub use resnet::{Depth, ResNet, ResNetConfig, Stem};

#[cfg(test)]
mod test_util;
