//! Softmax and sums along the similarity rows, exact on every device.
//!
//! A 65,536-key queue makes every softmax row 65,537 long. On devices without subgroup
//! operations Burn reduces a row inside one shader invocation, and Mesa's llvmpipe (the CPU
//! behind the software Vulkan device lavapipe) leaves an invocation's loops after 65,535
//! iterations: the end of the row is silently dropped (docs/backends.md). [`LongRows::Blocked`]
//! cuts rows into blocks of [`BLOCK`] and reduces in two short passes, forward and — through
//! autodiff, which reduces a broadcast gradient one dimension at a time — backward. Other
//! devices keep Burn's single pass ([`LongRows::Fused`], the default), so their numbers do not
//! change.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};

use crate::switch::Switch;

/// How the losses reduce along their rows; one choice per process, made at start-up from what
/// the device computes (`sce-train check`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongRows {
    /// Burn's reductions over whole rows.
    #[default]
    Fused,
    /// Reductions over blocks of [`BLOCK`] elements, then over the blocks.
    Blocked,
}

/// Block length of [`LongRows::Blocked`]: short for any device, long enough that rows of a
/// 65,536-key queue make only 65 blocks.
pub const BLOCK: usize = 1024;

static LONG_ROWS: Switch<LongRows> = Switch::new(LongRows::Fused, LongRows::Blocked);

/// Sets how every loss of this process reduces its rows.
pub fn set_long_rows(rows: LongRows) {
    LONG_ROWS.set(rows);
}

/// How the losses of this process reduce their rows.
pub fn long_rows() -> LongRows {
    LONG_ROWS.get()
}

/// `log_softmax(x, 1)` of a `[rows, len]` tensor.
pub fn log_softmax_rows(x: Tensor<2>) -> Tensor<2> {
    log_softmax_by(x, long_rows())
}

/// `softmax(x, 1)` of a `[rows, len]` tensor.
pub fn softmax_rows(x: Tensor<2>) -> Tensor<2> {
    softmax_by(x, long_rows())
}

/// `x.sum_dim(1)` of a `[rows, len]` tensor: `[rows, 1]`.
pub fn sum_rows(x: Tensor<2>) -> Tensor<2> {
    sum_by(x, long_rows())
}

fn log_softmax_by(x: Tensor<2>, how: LongRows) -> Tensor<2> {
    let [rows, len] = x.dims();
    if how == LongRows::Fused || len <= BLOCK {
        return log_softmax(x, 1);
    }
    let blocks = into_blocks(x, f32::NEG_INFINITY);
    // The shift only keeps exp() finite; log-softmax's gradient does not depend on it.
    let shift = blocks.clone().detach().max_dim(2).max_dim(1);
    let shifted = blocks - shift;
    let log_norm = shifted.clone().exp().sum_dim(2).sum_dim(1).log();
    from_blocks(shifted - log_norm, len, rows)
}

fn softmax_by(x: Tensor<2>, how: LongRows) -> Tensor<2> {
    if how == LongRows::Fused || x.dims()[1] <= BLOCK {
        return softmax(x, 1);
    }
    log_softmax_by(x, how).exp()
}

fn sum_by(x: Tensor<2>, how: LongRows) -> Tensor<2> {
    let [rows, len] = x.dims();
    if how == LongRows::Fused || len <= BLOCK {
        return x.sum_dim(1);
    }
    into_blocks(x, 0.0).sum_dim(2).sum_dim(1).reshape([rows, 1])
}

/// `[rows, len]` → `[rows, blocks, BLOCK]`, the last block filled up with `fill`.
fn into_blocks(x: Tensor<2>, fill: f32) -> Tensor<3> {
    let [rows, len] = x.dims();
    let blocks = len.div_ceil(BLOCK);
    let missing = blocks * BLOCK - len;
    let x = if missing == 0 {
        x
    } else {
        let filler = Tensor::full([rows, missing], fill, &x.device());
        Tensor::cat(vec![x, filler], 1)
    };
    x.reshape([rows, blocks, BLOCK])
}

/// The inverse of [`into_blocks`]: the first `len` elements of each row.
fn from_blocks(x: Tensor<3>, len: usize, rows: usize) -> Tensor<2> {
    let [_, blocks, block] = x.dims();
    x.reshape([rows, blocks * block]).narrow(1, 0, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::host_values;
    use burn::tensor::Device;

    /// `n` unit rows of length `d` from the checks' deterministic values.
    fn random_unit_rows(n: usize, d: usize, seed: u64, device: &Device) -> Tensor<2> {
        let mut values = host_values(n * d, seed);
        for row in values.chunks_mut(d) {
            let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            row.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
        Tensor::from_data(burn::tensor::TensorData::new(values, [n, d]), device)
    }

    fn flat(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec().unwrap()
    }

    #[test]
    fn blocked_rows_match_whole_rows_forward_and_backward() {
        // The default device of the build (flex in CI; `BURN_DEVICE` picks another).
        let device = Device::default().autodiff();
        // Lengths below, at, just above and well above one block, and one that is a multiple.
        for (len, seed) in [
            (7, 1),
            (BLOCK, 2),
            (BLOCK + 1, 3),
            (5 * BLOCK + 37, 4),
            (3 * BLOCK, 5),
        ] {
            // Entries up to about ±14, as similarities over a small temperature are.
            let x = random_unit_rows(3, len, seed, &device) * (8.0 * (len as f64).sqrt());
            let weights = random_unit_rows(3, len, seed + 10, &device);
            let run = |how: LongRows| {
                let x = x.clone().detach().require_grad();
                let log_p = log_softmax_by(x.clone(), how);
                let p = softmax_by(x.clone(), how);
                let total = sum_by(log_p.clone() * weights.clone(), how).sum()
                    + sum_by(p.clone() * weights.clone(), how).sum();
                let grads = total.backward();
                let grad = x.grad(&grads).unwrap();
                (flat(log_p), flat(p), flat(grad))
            };
            let (fused, blocked) = (run(LongRows::Fused), run(LongRows::Blocked));
            for (name, a, b) in [
                ("log_softmax", &fused.0, &blocked.0),
                ("softmax", &fused.1, &blocked.1),
                ("gradient", &fused.2, &blocked.2),
            ] {
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|(u, v)| (u - v).abs() / u.abs().max(1e-3))
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 1e-4,
                    "{name}, length {len}: relative difference {worst}"
                );
                assert!(b.iter().all(|v| v.is_finite()), "{name}, length {len}");
            }
        }
    }
}
