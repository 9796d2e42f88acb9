//! Sums over the processes (ranks) of a distributed run, inside the autodiff graph: what
//! SyncBatchNorm needs to normalise with the statistics of every rank's batch together.
//!
//! sce-ops knows no transport. The binary hands it one at start-up ([`sum_over_ranks_with`]):
//! a function that replaces a slice of f32 by its element-wise sum over all ranks (MPI's
//! all-reduce). Until then there is one rank and every sum is the identity.
//!
//! [`rank_sum`] is differentiable: each rank's value enters every rank's sum, so the gradient of
//! a rank's input is the sum over the ranks of the gradients of their sums — the same
//! all-reduce, called in backward. Every rank builds the same graph and Burn runs backward in
//! graph order, so the ranks meet in the same collectives in the same order. Values go through
//! host memory on every backend, one code path for the CPU, wgpu and CUDA.

use std::sync::{Arc, RwLock};

use burn::tensor::{Tensor, TensorData};

/// Replaces its argument by the element-wise sum over all ranks.
pub type RankReducer = Arc<dyn Fn(&mut [f32]) + Send + Sync>;

static REDUCER: RwLock<Option<RankReducer>> = RwLock::new(None);

/// From now on [`rank_sum`] sums over the ranks with `reducer` (`None`: one rank again).
pub fn sum_over_ranks_with(reducer: Option<RankReducer>) {
    *REDUCER.write().unwrap() = reducer;
}

/// Whether sums run over several ranks (a reducer was given): batch norm then synchronises.
pub fn sums_over_ranks() -> bool {
    REDUCER.read().unwrap().is_some()
}

/// `values` summed over the ranks, on the host (no gradient): counts and other constants.
pub fn host_sum(values: &mut [f32]) {
    if let Some(reducer) = REDUCER.read().unwrap().as_ref() {
        reducer(values);
    }
}

/// The element-wise sum of `x` over all ranks, on every rank, with its gradient (the sum over
/// the ranks of the gradients). The identity with one rank.
pub fn rank_sum<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !sums_over_ranks() {
        return x;
    }
    extension::rank_sum(x)
}

/// Host round trip of one tensor's values through the reducer.
fn summed_data(data: TensorData) -> TensorData {
    let shape = data.shape().clone();
    let mut values: Vec<f32> = data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32");
    host_sum(&mut values);
    TensorData::new(values, shape)
}

#[cfg(any(feature = "flex", feature = "wgpu", feature = "cuda"))]
mod extension {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
    use burn::tensor::{DType, Tensor, try_read_sync};

    /// The sum over ranks as a Burn backend extension, so that autodiff records its backward
    /// step. The default body (every backend) reads the values to the host, reduces them and
    /// uploads the result; a fused backend flushes its queue on the read.
    #[backend_extension(
        Flex: cfg(feature = "flex"),
        Cube: cfg(any(feature = "wgpu", feature = "cuda")),
        Autodiff
    )]
    pub trait RankSum: Backend {
        /// The element-wise sum of `x` over all ranks.
        fn rank_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let device = x.device();
            let dtype = x.dtype();
            let data = try_read_sync(Self::float_into_data(x))
                .expect("a tensor read for the sum over ranks")
                .expect("a tensor read for the sum over ranks");
            let summed = super::summed_data(data);
            let summed = match dtype {
                DType::F32 => summed,
                other => summed.convert_dtype(other),
            };
            Self::float_from_data(summed, &device)
        }
    }

    #[cfg(feature = "flex")]
    impl RankSum for burn::backend::Flex {}

    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    impl RankSum for burn::backend::Cube {}

    impl<B: RankSum, C: CheckpointStrategy> RankSum for Autodiff<B, C> {
        fn rank_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
            // Compute-bound: never recomputed by a checkpointing strategy, which would call
            // the collective once more on this rank alone.
            let prepared = RankSumBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful();
            let summed = B::rank_sum(x.into_primitive());
            match prepared {
                OpsKind::Tracked(prep) => prep.finish((), summed),
                OpsKind::UnTracked(prep) => prep.finish(summed),
            }
        }
    }

    #[derive(Debug)]
    struct RankSumBackward;

    impl<B: RankSum> Backward<B, 1> for RankSumBackward {
        type State = ();

        fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let [parent] = ops.parents;
            // Every rank's input reached every rank's sum: its gradient is the sum of theirs.
            let grad = B::rank_sum(grad);
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, grad);
            }
        }
    }

    pub fn rank_sum<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        use burn::backend::Dispatch;
        Tensor::from_dispatch(<Dispatch as RankSum>::rank_sum(x.into_dispatch()))
    }
}

/// Without a backend extension to record it in, the sum runs on the host and carries no
/// gradient (no build of the workspace takes this path: `sce-train` turns on `flex`).
#[cfg(not(any(feature = "flex", feature = "wgpu", feature = "cuda")))]
mod extension {
    use burn::tensor::Tensor;

    pub fn rank_sum<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        Tensor::from_data(super::summed_data(x.into_data()), &device)
    }
}
