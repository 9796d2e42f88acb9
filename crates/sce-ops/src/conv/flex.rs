//! The GEMM convolution as a Burn backend extension on `flex`, with its own backward step.
//!
//! Burn's autodiff would send a plain `conv2d` through `flex`'s `conv2d_x_backward` (a transposed
//! convolution) and `conv2d_weight_backward` (a 9-wide GEMM); an extension operation with a
//! hand-written [`Backward`] step routes both gradients to [`kernels`] instead. Only `Flex` (and
//! `Autodiff<Flex>`) is listed: other devices never reach this module.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};

use super::geometry::ConvGeometry;
use super::kernels;
use crate::flex_values::{Values, tensor};

#[backend_extension(Flex, Autodiff)]
pub trait GemmConv: Backend {
    /// A bias-free, ungrouped, undilated 2-D convolution computed by [`kernels`].
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;
}

impl GemmConv for Flex {
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let g = geometry(&x, &weight, stride, padding);
        let y = kernels::forward(
            &g,
            Values::of(&x).as_slice(),
            Values::of(&weight).as_slice(),
        );
        tensor(y, &[g.batch, g.c_out, g.out_h, g.out_w])
    }
}

impl<C: CheckpointStrategy> GemmConv for Autodiff<Flex, C> {
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let g = geometry(x.primitive(), weight.primitive(), stride, padding);
        match GemmConv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let y =
                    Flex::gemm_conv2d(x.into_primitive(), weight.into_primitive(), stride, padding);
                prep.finish((x_state, weight_state, g), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::gemm_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                stride,
                padding,
            )),
        }
    }
}

/// The backward step: both gradients by [`kernels`], each only when its input needs one.
#[derive(Debug)]
struct GemmConv2dBackward;

impl Backward<Flex, 2> for GemmConv2dBackward {
    type State = (NodeId, NodeId, ConvGeometry);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let dy = Values::of(&grads.consume::<Flex>(&ops.node));
        let (x_state, weight_state, g) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_state);
        if let Some(node) = node_x {
            let dx = kernels::input_grad(&g, Values::of(&weight).as_slice(), dy.as_slice());
            grads.register::<Flex>(node.id, tensor(dx, &[g.batch, g.c_in, g.h, g.w]));
        }
        if let Some(node) = node_weight {
            let dw = kernels::weight_grad(&g, Values::of(&x).as_slice(), dy.as_slice());
            let [kh, kw] = g.kernel;
            grads.register::<Flex>(node.id, tensor(dw, &[g.c_out, g.c_in, kh, kw]));
        }
    }
}

fn geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
) -> ConvGeometry {
    let dims = |t: &FlexTensor| -> [usize; 4] {
        t.layout()
            .shape()
            .to_vec()
            .try_into()
            .expect("gemm_conv2d takes 4-D tensors")
    };
    ConvGeometry::new(dims(x), dims(weight), stride, padding)
        .expect("gemm_conv2d: the caller checked the shapes (conv::conv2d)")
}
