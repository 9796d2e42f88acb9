//! The fused training batch norm ([`kernels`]) as a Burn backend extension on `flex`, with its
//! own backward step, in the same way as the convolutions (`conv/flex.rs`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};

use super::kernels::{self, NormShape, SavedForward};
use crate::flex_values::{Values, dims, tensor};

#[backend_extension(Flex, Autodiff)]
pub trait FusedBatchNorm: Backend {
    /// Batch norm with the batch's statistics on `[N, C, H, W]` f32 input, then a ReLU when
    /// `relu`: the output, and the per-channel mean and biased variance.
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `relu(batch_norm(x) + residual)`, the end of a residual block; returns as
    /// [`fused_batch_norm`](FusedBatchNorm::fused_batch_norm).
    fn fused_batch_norm_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The same with given statistics (evaluation: the running ones), without gradients: only on
/// devices without autodiff.
#[backend_extension(Flex)]
pub trait FusedBatchNormInference: Backend {
    /// `batch_norm(x)` with `mean` and `variance`, then a ReLU when `relu`.
    fn fused_batch_norm_inference(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(batch_norm(x) + residual)` with `mean` and `variance`.
    fn fused_batch_norm_inference_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

impl FusedBatchNormInference for Flex {
    fn fused_batch_norm_inference(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> FlexTensor {
        inference([x, gamma, beta, mean, variance], None, epsilon, relu)
    }

    fn fused_batch_norm_inference_add_relu(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        residual: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        inference(
            [x, gamma, beta, mean, variance],
            Some(residual),
            epsilon,
            true,
        )
    }
}

/// `inputs` are x, γ, β, mean and variance.
fn inference(
    inputs: [FlexTensor; 5],
    residual: Option<FlexTensor>,
    epsilon: f64,
    relu: bool,
) -> FlexTensor {
    let dims = dims(&inputs[0]);
    let [x, gamma, beta, mean, variance] = inputs.each_ref().map(Values::of);
    let residual = residual.as_ref().map(Values::of);
    let output = kernels::inference(
        shape_of(&dims),
        x.as_slice(),
        gamma.as_slice(),
        beta.as_slice(),
        mean.as_slice(),
        variance.as_slice(),
        residual.as_ref().map(Values::as_slice),
        epsilon,
        relu,
    );
    tensor(output, &dims)
}

type Triple<T> = (T, T, T);

impl FusedBatchNorm for Flex {
    fn fused_batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> Triple<FlexTensor> {
        forward(x, gamma, beta, None, epsilon, relu)
    }

    fn fused_batch_norm_add_relu(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        residual: FlexTensor,
        epsilon: f64,
    ) -> Triple<FlexTensor> {
        forward(x, gamma, beta, Some(residual), epsilon, true)
    }
}

fn forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    residual: Option<FlexTensor>,
    epsilon: f64,
    relu: bool,
) -> Triple<FlexTensor> {
    let dims = dims(&x);
    let residual = residual.as_ref().map(Values::of);
    let result = kernels::forward(
        shape_of(&dims),
        Values::of(&x).as_slice(),
        Values::of(&gamma).as_slice(),
        Values::of(&beta).as_slice(),
        residual.as_ref().map(Values::as_slice),
        epsilon,
        relu,
    );
    (
        tensor(result.output, &dims),
        tensor(result.mean, &[dims[1]]),
        tensor(result.variance, &[dims[1]]),
    )
}

impl<C: CheckpointStrategy> FusedBatchNorm for Autodiff<Flex, C> {
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> Triple<FloatTensor<Self>> {
        let prepared = FusedBatchNormBackward::<3>
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        track(prepared, x, gamma, beta, None, epsilon, relu)
    }

    fn fused_batch_norm_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> Triple<FloatTensor<Self>> {
        let prepared = FusedBatchNormBackward::<4>
            .prepare::<C>([x.node(), gamma.node(), beta.node(), residual.node()])
            .compute_bound()
            .stateful();
        let residual = Some(residual.into_primitive());
        track(prepared, x, gamma, beta, residual, epsilon, true)
    }
}

/// Runs the forward pass and records the backward step when any input needs a gradient. The
/// statistics are results, not differentiated outputs (as in Burn's own `batch_norm_train`):
/// the caller only feeds them to the running statistics.
fn track<C: CheckpointStrategy, const N: usize>(
    prepared: OpsKind<FusedBatchNormBackward<N>, Flex, Saved, C, N>,
    x: FloatTensor<Autodiff<Flex, C>>,
    gamma: FloatTensor<Autodiff<Flex, C>>,
    beta: FloatTensor<Autodiff<Flex, C>>,
    residual: Option<FlexTensor>,
    epsilon: f64,
    relu: bool,
) -> Triple<FloatTensor<Autodiff<Flex, C>>> {
    let untracked = <FloatTensor<Autodiff<Flex, C>>>::new;
    let (x, gamma, beta) = (
        x.into_primitive(),
        gamma.into_primitive(),
        beta.into_primitive(),
    );
    match prepared {
        OpsKind::Tracked(prep) => {
            let (y, mean, var) = forward(x.clone(), gamma.clone(), beta, residual, epsilon, relu);
            let saved = Saved {
                x,
                gamma,
                mean: mean.clone(),
                variance: var.clone(),
                relu_output: relu.then(|| y.clone()),
                epsilon,
            };
            (prep.finish(saved, y), untracked(mean), untracked(var))
        }
        OpsKind::UnTracked(prep) => {
            let (y, mean, var) = forward(x, gamma, beta, residual, epsilon, relu);
            (prep.finish(y), untracked(mean), untracked(var))
        }
    }
}

/// What the backward step reads, kept from the forward pass. The output is kept only behind a
/// ReLU (its mask); it is the next layer's input, so keeping it costs no memory.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    relu_output: Option<FlexTensor>,
    epsilon: f64,
}

/// The backward step, for 3 inputs (x, γ, β) or 4 (and the residual).
#[derive(Debug)]
struct FusedBatchNormBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for FusedBatchNormBackward<N> {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = Values::of(&grads.consume::<Flex>(&ops.node));
        let saved = ops.state;
        let dims = dims(&saved.x);
        let (x, gamma) = (Values::of(&saved.x), Values::of(&saved.gamma));
        let (mean, variance) = (Values::of(&saved.mean), Values::of(&saved.variance));
        let relu_output = saved.relu_output.as_ref().map(Values::of);
        let residual_node = ops.parents.get(3).cloned().flatten();
        let result = kernels::backward(
            shape_of(&dims),
            &SavedForward {
                x: x.as_slice(),
                gamma: gamma.as_slice(),
                mean: mean.as_slice(),
                variance: variance.as_slice(),
                relu_output: relu_output.as_ref().map(Values::as_slice),
                epsilon: saved.epsilon,
            },
            dy.as_slice(),
            residual_node.is_some(),
        );
        let channels = [dims[1]];
        let outputs = [
            Some(tensor(result.x, &dims)),
            Some(tensor(result.gamma, &channels)),
            Some(tensor(result.beta, &channels)),
            result.residual.map(|r| tensor(r, &dims)),
        ];
        for (parent, grad) in ops.parents.into_iter().zip(outputs) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

fn shape_of(dims: &[usize]) -> NormShape {
    assert_eq!(dims.len(), 4, "fused_batch_norm takes [N, C, H, W] input");
    NormShape {
        batch: dims[0],
        channels: dims[1],
        plane: dims[2] * dims[3],
    }
}
