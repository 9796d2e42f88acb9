//! Convolutions for the trunks. On the `flex` CPU backend, sce-ops' own kernels with their
//! own backward step: Winograd F(4×4, 3×3) for 3×3 stride-1 convolutions (`winograd.rs`),
//! three well-shaped GEMMs for the others (`kernels.rs`). Everywhere else, and for anything the
//! kernels do not cover (bias, groups, dilation, asymmetric padding, other dtypes), Burn's
//! own `Conv2d::forward`.
//!
//! Why: Burn's `flex` computes a convolution's weight gradient as a convolution whose GEMM is
//! only kernel-size wide and its input gradient as a transposed convolution; together they
//! were over half of a CPU training step (docs/benchmarks.md).

mod gemm_common;
mod geometry;
mod kernels;
pub mod reference;
mod winograd;

#[cfg(feature = "flex")]
mod flex;

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

pub use geometry::ConvGeometry;

use crate::switch::Switch;

/// Wall-clock time the GEMM kernels have spent so far in this process, as
/// `[forward, input gradient, weight gradient]`: how `bench step` splits a step's convolutions.
pub fn kernel_times() -> [std::time::Duration; 3] {
    kernels::kernel_times()
}

/// Which implementation [`conv2d`] uses on the `flex` backend (other backends always use Burn's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernels {
    /// This module's GEMM kernels, with their own backward step (the default).
    Gemm,
    /// Burn's `Conv2d::forward` and its autodiff, for comparison.
    Burn,
}

static KERNELS: Switch<ConvKernels> = Switch::new(ConvKernels::Gemm, ConvKernels::Burn);

/// Chooses the convolution implementation for the whole process.
pub fn set_conv_kernels(kernels: ConvKernels) {
    KERNELS.set(kernels);
}

/// The implementation [`conv2d`] uses on `flex`.
pub fn conv_kernels() -> ConvKernels {
    KERNELS.get()
}

/// `conv.forward(x)`, by the GEMM kernels where they apply (see the module doc), in the
/// process's compute precision ([`crate::precision`]; the kernels compute f32 only).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if let Some(low) = crate::precision::low_precision() {
        return crate::precision::conv2d_in(low, conv, x);
    }
    #[cfg(feature = "flex")]
    if let Some((stride, padding)) = gemm_arguments(conv, &x) {
        use burn::backend::Dispatch;
        use flex::GemmConv;
        let y = <Dispatch as GemmConv>::gemm_conv2d(
            x.into_dispatch(),
            conv.weight.val().into_dispatch(),
            stride,
            padding,
        );
        return Tensor::from_dispatch(y);
    }
    conv.forward(x)
}

/// Stride and symmetric padding when the GEMM kernels can run this convolution.
#[cfg(feature = "flex")]
fn gemm_arguments(conv: &Conv2d, x: &Tensor<4>) -> Option<([usize; 2], [usize; 2])> {
    use burn::tensor::{DType, Device};
    let on_flex = x.device().without_autodiff() == Device::flex();
    let weight = conv.weight.val();
    let plain = conv.bias.is_none() && conv.groups == 1 && conv.dilation == [1, 1];
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if conv_kernels() != ConvKernels::Gemm || !on_flex || !plain || !f32s {
        return None;
    }
    use burn::nn::PaddingConfig2d;
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        // `Same` and asymmetric padding stay with Burn.
        _ => return None,
    };
    let fits = ConvGeometry::new(x.dims(), weight.dims(), conv.stride, padding).is_some();
    fits.then_some((conv.stride, padding))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    /// Output, input gradient and weight gradient of `conv` on `x` under a fixed output weighting.
    fn run(conv: &Conv2d, x: &Tensor<4>, kernels: ConvKernels) -> [Vec<f32>; 3] {
        let x = x.clone().require_grad();
        if kernels == ConvKernels::Gemm {
            assert!(
                gemm_arguments(conv, &x).is_some(),
                "the GEMM path must take this case"
            );
        }
        let y = match kernels {
            ConvKernels::Gemm => conv2d(conv, x.clone()),
            ConvKernels::Burn => conv.forward(x.clone()),
        };
        let weighting = Tensor::<4>::ones(y.dims(), &y.device()).cumsum(3).sin();
        let grads = (y.clone() * weighting).sum().backward();
        let values = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        [
            values(y),
            values(x.grad(&grads).unwrap()),
            values(conv.weight.val().grad(&grads).unwrap()),
        ]
    }

    /// Through Burn's autodiff, the GEMM convolution gives what Burn's own `flex` convolution
    /// gives: the output and both gradients, on strides 1 and 2, paddings 0, 1 and 3, 1×1, 3×3
    /// and 7×7 kernels, batch 1 and channel counts off the SIMD width.
    #[test]
    fn gemm_convolution_matches_burns_through_autodiff() {
        let device = burn::tensor::Device::flex().autodiff();
        let cases = [
            ([1, 3, 9, 9], 5, 3, 1, 1),
            ([2, 5, 8, 8], 7, 3, 2, 1),
            ([3, 17, 6, 6], 4, 1, 1, 0),
            ([2, 6, 8, 8], 9, 1, 2, 0),
            ([1, 3, 15, 15], 8, 7, 2, 3),
        ];
        for (dims, c_out, kernel, stride, pad) in cases {
            let conv = Conv2dConfig::new([dims[1], c_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(&device);
            let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let gemm = run(&conv, &x, ConvKernels::Gemm);
            let burn = run(&conv, &x, ConvKernels::Burn);
            for (what, (a, b)) in ["y", "dx", "dW"].iter().zip(gemm.iter().zip(&burn)) {
                assert_eq!(a.len(), b.len());
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (p, q)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * scale,
                        "{what}[{i}] of {dims:?} k{kernel} s{stride} p{pad}: {p} vs {q}"
                    );
                }
            }
        }
    }

    /// Without gradients (the momentum encoder's forward), the same values come out.
    #[test]
    fn gemm_convolution_runs_without_autodiff() {
        let device = burn::tensor::Device::flex();
        let conv = Conv2dConfig::new([4, 6], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&device);
        let x = Tensor::<4>::random([2, 4, 7, 7], Distribution::Normal(0.0, 1.0), &device);
        let a = conv2d(&conv, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = conv.forward(x).into_data().try_to_vec::<f32>().unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}
