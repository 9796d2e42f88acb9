//! How each operation SCE trains with runs on each device: the only crate of the workspace that
//! names a Burn backend. Every function takes plain tensors (or Burn's `Conv2d`) on any device
//! and sends each device the implementation it computes right and fast; the networks
//! (sce-model) and the losses (sce-loss) sit on top and never name a backend.
//!
//! - [`conv`]: 2-D convolutions; on `flex` sce-ops' own GEMM and Winograd kernels with their
//!   own backward step (a Burn backend extension), Burn's convolution elsewhere.
//! - [`norm`]: a training batch norm with the batch's statistics and what follows it in a
//!   ResNet (`relu(bn(x) + residual)`): fused kernels on `flex`; statistics reduced in one pass
//!   or in short passes for devices with a loop budget.
//! - [`precision`]: mixed precision — convolutions and linear layers in f16 or bf16 over f32
//!   master weights.
//! - [`ranks`]: sums over the processes of a distributed run inside the autodiff graph
//!   (SyncBatchNorm's statistics), through whatever transport the binary hands it.
//! - [`rows`]: softmax and sums along long rows (the losses' similarity rows), whole or in
//!   blocks for the same devices.
//! - [`topk`]: the largest values of each row and their indices (kNN, top-5 accuracy), the
//!   device's answer proven and, where the device ranks wrongly, recomputed on the host.
//! - [`check`]: what numerical checks of a device against float64 are made of, and the probes
//!   of Burn's one-pass reductions that decide between the implementations above.
//!
//! Which implementation runs is a process-wide choice per operation, made once at start-up by
//! the binary from what the device computes (`sce-train check`) or from environment variables:
//! [`conv::set_conv_kernels`], [`norm::set_norm_kernels`], [`norm::set_statistics_reduction`],
//! [`rows::set_long_rows`], all one [`Switch`] type.

// The CPU kernels are reached only through the `flex` backend extensions.
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

pub mod check;
pub mod conv;
#[cfg(feature = "flex")]
mod flex_values;
pub mod norm;
pub mod precision;
pub mod ranks;
pub mod rows;
mod switch;
pub mod topk;

pub use switch::Switch;
