//! Mixed precision: the float type convolutions and linear layers compute in, for the whole
//! process. The parameters stay in f32 (the master weights the optimizer updates); in f16 or
//! bf16 each convolution and linear layer casts its input and weights down, computes, and casts
//! its output back to f32, so batch norm, softmax, the losses, the momentum update, the queue
//! and the optimizer state all see f32. Burn's `cast` is differentiable and hands the
//! gradient back in the input's type: the master weights' gradients come out in f32.
//!
//! Why only these two: they are nearly all of a step's arithmetic and what tensor cores speed
//! up; the rest (statistics over a batch, exponentials over long rows) is where f16 loses
//! digits (docs/backends.md).

use std::sync::atomic::{AtomicU8, Ordering};

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, FloatDType, Tensor};

/// The float type convolutions and linear layers compute in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32 (the default).
    F32,
    /// IEEE half precision: 10-bit mantissa, largest value 65,504; gradients need loss scaling.
    F16,
    /// bfloat16: f32's range with an 8-bit mantissa; no loss scaling needed.
    BF16,
}

impl Precision {
    /// Burn's float type for it.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::BF16 => FloatDType::BF16,
        }
    }

    /// The name configurations and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
        }
    }

    /// Whether its range is narrow enough that small gradients vanish without loss scaling.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Chooses the compute precision of convolutions and linear layers for the whole process.
pub fn set_precision(precision: Precision) {
    PRECISION.store(precision as u8, Ordering::SeqCst);
}

/// The compute precision of convolutions and linear layers.
pub fn precision() -> Precision {
    match PRECISION.load(Ordering::SeqCst) {
        1 => Precision::F16,
        2 => Precision::BF16,
        _ => Precision::F32,
    }
}

/// Whether `device` computes in half precision without hardware for it: the CPU backend
/// (`flex`) converts through f32 in its kernels, so f16 and bf16 there check a recipe but are
/// several times slower than f32.
pub fn emulated(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if device.clone().without_autodiff() == Device::flex() {
        return true;
    }
    let _ = device;
    false
}

/// The low compute type, when one is chosen.
pub(crate) fn low_precision() -> Option<FloatDType> {
    match precision() {
        Precision::F32 => None,
        low => Some(low.dtype()),
    }
}

/// `tensor` in f32 (a no-op where it already is).
fn to_f32<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    if tensor.dtype() == DType::F32 {
        tensor
    } else {
        tensor.cast(FloatDType::F32)
    }
}

/// `conv.forward(x)` computed in `low`, with an f32 result.
pub(crate) fn conv2d_in(low: FloatDType, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, height, width] = x.dims();
    let [kh, kw] = conv.kernel_size;
    let same = |k: usize, s: usize, size: usize| {
        let out = size.div_ceil(s);
        let total = ((out.max(1) - 1) * s + k).saturating_sub(size);
        (total / 2, total - total / 2)
    };
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => [
            same(kh, conv.stride[0], height),
            same(kw, conv.stride[1], width),
        ],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    let y = burn::tensor::module::conv2d(
        x.cast(low),
        conv.weight.val().cast(low),
        conv.bias.as_ref().map(|b| b.val().cast(low)),
        options,
    );
    to_f32(y)
}

/// `linear.forward(x)`, in the chosen compute precision with an f32 result.
pub fn linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let Some(low) = low_precision() else {
        return linear.forward(x);
    };
    let y = burn::tensor::module::linear(
        x.cast(low),
        linear.weight.val().cast(low),
        linear.bias.as_ref().map(|b| b.val().cast(low)),
    );
    to_f32(y)
}
