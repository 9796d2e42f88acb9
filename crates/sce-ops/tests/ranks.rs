//! The sum over ranks and SyncBatchNorm's operation, with two threads of this process as the two
//! ranks and an in-memory all-reduce as their transport, against one batch norm over both
//! threads' batches. (A process of its own: the transport is process-wide.) Two real ranks
//! under MPI: `tests/distributed.rs`.
#![cfg(feature = "flex")]

use std::sync::{Arc, Barrier, Mutex};

use burn::tensor::{Device, Tensor};
use sce_ops::check::{download, host_values, relative_error, upload};
use sce_ops::norm::{AfterNorm, StatisticsReduction, composed_batch_norm, rank_synced_batch_norm};
use sce_ops::ranks::{rank_sum, sum_over_ranks_with, sums_over_ranks};

/// An all-reduce between two threads: both hand in their values, both get the sum.
struct TwoThreadSum {
    barrier: Barrier,
    total: Mutex<Vec<f32>>,
}

impl TwoThreadSum {
    fn sum(&self, values: &mut [f32]) {
        {
            let mut total = self.total.lock().unwrap();
            total.resize(values.len(), 0.0);
            total
                .iter_mut()
                .zip(values.iter())
                .for_each(|(t, v)| *t += v);
        }
        self.barrier.wait();
        values.copy_from_slice(&self.total.lock().unwrap());
        if self.barrier.wait().is_leader() {
            self.total.lock().unwrap().clear();
        }
        self.barrier.wait();
    }
}

fn close(got: Vec<f64>, expected: Vec<f64>, what: &str) {
    let error = relative_error(&got, &expected);
    assert!(error < 1e-5, "{what}: relative error {error}");
}

const SHAPE: [usize; 4] = [4, 3, 5, 2];
const GAMMA: [f32; 3] = [1.5, 0.5, -1.0];
const BETA: [f32; 3] = [0.25, -0.5, 0.0];

/// What one rank computes: the sum over ranks of `x` and its gradient under `(sum · g).sum()`,
/// then SyncBatchNorm (with residual and ReLU) of `x`: its output and the gradients of x, γ
/// and β under `(output · g).sum()`.
fn rank_computes(x: &[f32], g: &[f32]) -> [Vec<f64>; 6] {
    let ad = Device::flex().autodiff();
    let xs = upload(&x[..40], [4, 10], &ad).require_grad();
    let gs = upload(&g[..40], [4, 10], &ad);
    let summed = rank_sum(xs.clone());
    let grads = (summed.clone() * gs).sum().backward();
    let sum_grad = download(xs.grad(&grads).unwrap());

    let x = upload(x, SHAPE, &ad).require_grad();
    let g = upload(g, SHAPE, &ad);
    let residual = upload(&host_values(x.dims().iter().product(), 7), SHAPE, &ad);
    let gamma = Tensor::<1>::from_data(GAMMA, &ad).require_grad();
    let beta = Tensor::<1>::from_data(BETA, &ad).require_grad();
    let after = AfterNorm::residual_relu(residual);
    let (out, _, _) = rank_synced_batch_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5, after);
    let grads = (out.clone() * g).sum().backward();
    [
        download(summed.without_autodiff()),
        sum_grad,
        download(out.without_autodiff()),
        download(x.grad(&grads).unwrap()),
        download(gamma.grad(&grads).unwrap()),
        download(beta.grad(&grads).unwrap()),
    ]
}

/// One test, so that the process-wide transport is set once, before every use.
#[test]
fn two_ranks_normalise_as_one_batch_norm_over_both_batches() {
    let len: usize = SHAPE.iter().product();
    let inputs: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
        .map(|r| (host_values(len, 10 + r), host_values(len, 20 + r)))
        .collect();

    // One rank: the sum is the identity.
    assert!(!sums_over_ranks());
    let alone = rank_computes(&inputs[0].0, &inputs[0].1);
    close(
        alone[0].clone(),
        download(upload(&inputs[0].0[..40], [4, 10], &Device::flex())),
        "sum alone",
    );

    let transport = Arc::new(TwoThreadSum {
        barrier: Barrier::new(2),
        total: Mutex::new(Vec::new()),
    });
    let reducer = transport.clone();
    sum_over_ranks_with(Some(Arc::new(move |values: &mut [f32]| {
        reducer.sum(values)
    })));
    let ranks: Vec<[Vec<f64>; 6]> = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|(x, g)| scope.spawn(|| rank_computes(x, g)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // The sum over ranks: both ranks' values on each; each input's gradient is the sum of
    // both ranks' upstream gradients.
    let plus = |a: &[f32], b: &[f32]| -> Vec<f64> {
        a[..40]
            .iter()
            .zip(&b[..40])
            .map(|(x, y)| f64::from(x + y))
            .collect()
    };
    for rank in &ranks {
        close(rank[0].clone(), plus(&inputs[0].0, &inputs[1].0), "sum");
        close(
            rank[1].clone(),
            plus(&inputs[0].1, &inputs[1].1),
            "gradient of the sum",
        );
    }

    // One batch norm over both batches (Burn's operations), the loss summed over both.
    let device = Device::flex().autodiff();
    let both = |i: usize| -> Vec<f32> {
        inputs
            .iter()
            .flat_map(|p| if i == 0 { p.0.clone() } else { p.1.clone() })
            .collect()
    };
    let shape = [2 * SHAPE[0], SHAPE[1], SHAPE[2], SHAPE[3]];
    let x = upload(&both(0), shape, &device).require_grad();
    let g = upload(&both(1), shape, &device);
    let residual: Vec<f32> = (0..2).flat_map(|_| host_values(len, 7)).collect();
    let gamma = Tensor::<1>::from_data(GAMMA, &device).require_grad();
    let beta = Tensor::<1>::from_data(BETA, &device).require_grad();
    let after = AfterNorm::residual_relu(upload(&residual, shape, &device));
    let short = StatisticsReduction::Short;
    let (out, _, _) =
        composed_batch_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5, short, after);
    let grads = (out.clone() * g).sum().backward();
    let (out, x_grad) = (
        download(out.without_autodiff()),
        download(x.grad(&grads).unwrap()),
    );
    let (gamma_grad, beta_grad) = (
        download(gamma.grad(&grads).unwrap()),
        download(beta.grad(&grads).unwrap()),
    );

    // Each rank's rows of the output and of the input's gradient are the one batch norm's.
    let rows = |v: &[f64], r: usize| v[r * len..(r + 1) * len].to_vec();
    for (r, rank) in ranks.iter().enumerate() {
        close(rank[2].clone(), rows(&out, r), "output");
        close(rank[3].clone(), rows(&x_grad, r), "x gradient");
    }
    // γ and β: each rank holds its batch's part; summed over the ranks (as the gradient
    // averaging does, up to its 1/N), the whole batch's.
    let summed = |k: usize| -> Vec<f64> {
        ranks[0][k]
            .iter()
            .zip(&ranks[1][k])
            .map(|(a, b)| a + b)
            .collect()
    };
    close(summed(4), gamma_grad, "γ gradient");
    close(summed(5), beta_grad, "β gradient");
}
