//! Plain f32 slices in and out of `flex` tensors, for the kernels behind the backend extensions
//! (`conv`, `norm`).

use burn::backend::DType;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, Shape};

/// A flex tensor's f32 values, contiguous and in row-major order (copied only when strided).
pub struct Values(FlexTensor);

impl Values {
    pub fn of(t: &FlexTensor) -> Self {
        assert_eq!(
            t.dtype(),
            DType::F32,
            "sce-ops' flex kernels run on f32 only (their callers check)"
        );
        Self(t.to_contiguous())
    }

    pub fn as_slice(&self) -> &[f32] {
        let (start, end) = self
            .0
            .layout()
            .contiguous_offsets()
            .expect("a contiguous tensor");
        &self.0.storage::<f32>()[start..end]
    }
}

/// A contiguous f32 flex tensor of shape `dims` holding `values`.
pub fn tensor(values: Vec<f32>, dims: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(dims.to_vec())),
        DType::F32,
    )
}

/// The dimensions of a flex tensor.
pub fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}
