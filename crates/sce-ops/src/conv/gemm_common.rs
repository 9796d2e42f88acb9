//! What both convolution algorithms (im2col + GEMM in `kernels`, Winograd in `winograd`) run
//! on: the `gemm` crate's matrix product over strided views, and per-thread scratch buffers
//! reused from call to call. A sibling of both, so neither imports the other for it.

/// Buffers reused from call to call: a training step makes hundreds of convolution calls, and
/// fresh multi-megabyte buffers would each be zeroed and page-faulted in again.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    pub(super) product: Vec<f32>,
    pub(super) output_grad: Vec<f32>,
    /// Transformed weights (or their gradient) of the Winograd kernels.
    pub(super) weights: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|scratch| f(&mut scratch.borrow_mut()))
}

/// Sets a scratch buffer's length without clearing what is kept: every user overwrites it.
pub(super) fn resize(buffer: &mut Vec<f32>, len: usize) {
    buffer.resize(len, 0.0);
}

/// A row-major destination `rows × cols`, `stride` elements from one row to the next.
pub(super) struct Matrix<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<'a> Matrix<'a> {
    pub(super) fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    pub(super) fn strided(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Self {
        assert!(rows == 0 || (rows - 1) * stride + cols <= data.len());
        Self {
            data,
            rows,
            cols,
            stride,
        }
    }
}

/// A GEMM operand read from a row-major buffer with `stride` elements per row, either as stored
/// or transposed.
pub(super) struct Operand<'a> {
    data: &'a [f32],
    stride: usize,
    transposed: bool,
}

impl<'a> Operand<'a> {
    pub(super) fn row_major(data: &'a [f32], stride: usize) -> Self {
        Self {
            data,
            stride,
            transposed: false,
        }
    }

    pub(super) fn transposed(data: &'a [f32], stride: usize) -> Self {
        Self {
            data,
            stride,
            transposed: true,
        }
    }

    /// (column stride, row stride) of the operand as the product reads it.
    fn strides(&self) -> (isize, isize) {
        let s = self.stride as isize;
        if self.transposed { (s, 1) } else { (1, s) }
    }

    /// Checks that every element of a `rows × cols` view lies inside the buffer.
    fn check(&self, rows: usize, cols: usize) {
        let (cs, rs) = self.strides();
        if rows > 0 && cols > 0 {
            let last = (rows - 1) as isize * rs + (cols - 1) as isize * cs;
            assert!(
                (last as usize) < self.data.len(),
                "GEMM operand out of bounds"
            );
        }
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), `lhs` being `dst.rows × depth`
/// and `rhs` `depth × dst.cols`, on all of rayon's threads.
pub(super) fn gemm(
    dst: Matrix<'_>,
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    depth: usize,
    accumulate: bool,
) {
    gemm_on(
        dst,
        lhs,
        rhs,
        depth,
        accumulate,
        gemm::Parallelism::Rayon(0),
    );
}

/// [`gemm`] on the calling thread alone, for callers that run several products in parallel.
pub(super) fn gemm_serial(
    dst: Matrix<'_>,
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    depth: usize,
    accumulate: bool,
) {
    gemm_on(dst, lhs, rhs, depth, accumulate, gemm::Parallelism::None);
}

fn gemm_on(
    dst: Matrix<'_>,
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    depth: usize,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let (m, n) = (dst.rows, dst.cols);
    lhs.check(m, depth);
    rhs.check(depth, n);
    let (lhs_cs, lhs_rs) = lhs.strides();
    let (rhs_cs, rhs_rs) = rhs.strides();
    // SAFETY: `Matrix::row_major` and `Operand::check` keep every index the product touches inside
    // the borrowed buffers; `dst` is borrowed mutably, so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            depth,
            dst.data.as_mut_ptr(),
            1,
            dst.stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
