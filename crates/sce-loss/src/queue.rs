use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::LossError;

/// The FIFO ring of past target keys: the negatives of the online softmax and the anchors of the
/// relational target.
///
/// It starts as seeded random unit vectors (not zeros: the first steps need spread-out
/// negatives), is written `n` rows at a time at `ptr`, and requires `size % n == 0` so a write
/// never wraps. The keys are part of the module record; the pointer is a plain value the
/// trainer saves beside it.
#[derive(Module, Debug)]
pub struct KeyQueue {
    keys: Param<Tensor<2>>,
    ptr: usize,
}

impl KeyQueue {
    /// `size` random unit vectors of dimension `dim`, drawn from a standard normal seeded by
    /// `seed` on the host, so every backend starts from the same queue.
    pub fn new(size: usize, dim: usize, seed: u64, device: &Device) -> Result<Self, LossError> {
        if size == 0 || dim == 0 {
            return Err(LossError::Shape(format!(
                "a queue needs at least one entry and one dimension, got {size}x{dim}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values: Vec<f32> = (0..size * dim)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        for row in values.chunks_mut(dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        }
        let keys = Tensor::from_data(TensorData::new(values, [size, dim]), device);
        Ok(Self::from_keys(keys))
    }

    /// A queue holding exactly `keys` (M×D rows), pointer at 0.
    pub fn from_keys(keys: Tensor<2>) -> Self {
        let keys = keys.cast(FloatDType::F32).detach().set_require_grad(false);
        Self {
            keys: Param::initialized(ParamId::new(), keys),
            ptr: 0,
        }
    }

    /// The current keys, M×D, detached.
    pub fn keys(&self) -> Tensor<2> {
        self.keys.val().detach()
    }

    /// Number of entries M.
    pub fn size(&self) -> usize {
        self.keys.shape().dims::<2>()[0]
    }

    /// Key dimension D.
    pub fn dim(&self) -> usize {
        self.keys.shape().dims::<2>()[1]
    }

    /// Row where the next write starts.
    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// Restores a saved pointer (keys come back through the module record).
    pub fn with_ptr(mut self, ptr: usize) -> Result<Self, LossError> {
        if ptr >= self.size() {
            return Err(LossError::Shape(format!(
                "queue pointer {ptr} is outside a queue of {} entries",
                self.size()
            )));
        }
        self.ptr = ptr;
        Ok(self)
    }

    /// Writes `keys` (n×D) at the pointer and advances it by n, modulo the size.
    ///
    /// Call it after the loss of the step that produced the keys: the current keys are never
    /// negatives for themselves.
    pub fn enqueue(self, keys: Tensor<2>) -> Result<Self, LossError> {
        let [n, d] = keys.dims();
        let (size, dim) = (self.size(), self.dim());
        if d != dim {
            return Err(LossError::Shape(format!(
                "cannot enqueue keys of dimension {d} into a queue of dimension {dim}"
            )));
        }
        if n == 0 || !size.is_multiple_of(n) {
            return Err(LossError::QueueNotMultiple {
                queue_size: size,
                enqueued: n,
            });
        }
        let ptr = self.ptr;
        let keys = keys
            .cast(FloatDType::F32)
            .detach()
            .to_device(&self.keys.device());
        let stored = self.keys.map(|all| {
            all.slice_assign([ptr..ptr + n, 0..dim], keys)
                .set_require_grad(false)
        });
        Ok(Self {
            keys: stored,
            ptr: (ptr + n) % size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn starts_as_seeded_unit_vectors() {
        let device = device();
        let a = rows(KeyQueue::new(8, 5, 7, &device).unwrap().keys());
        let b = rows(KeyQueue::new(8, 5, 7, &device).unwrap().keys());
        let c = rows(KeyQueue::new(8, 5, 8, &device).unwrap().keys());
        assert_eq!(a, b);
        assert_ne!(a, c);
        for row in &a {
            assert_close(dot(row, row), 1.0, 1e-6);
        }
    }

    /// Keys land in FIFO order at the pointer, which wraps back to 0 after the last slot.
    #[test]
    fn fifo_order_and_wrap() {
        let device = device();
        let mut queue = KeyQueue::from_keys(Tensor::zeros([6, 2], &device));
        let batch = |v: f64| tensor2(&[[v, 0.0], [v, 1.0]], &device);
        for (step, v) in [1.0, 2.0, 3.0].into_iter().enumerate() {
            queue = queue.enqueue(batch(v)).unwrap();
            assert_eq!(queue.ptr(), (2 * (step + 1)) % 6);
        }
        let expected = vec![
            vec![1.0, 0.0],
            vec![1.0, 1.0],
            vec![2.0, 0.0],
            vec![2.0, 1.0],
            vec![3.0, 0.0],
            vec![3.0, 1.0],
        ];
        assert_eq!(rows(queue.keys()), expected);
        // The fourth write overwrites the oldest entries.
        queue = queue.enqueue(batch(4.0)).unwrap();
        assert_eq!(queue.ptr(), 2);
        let got = rows(queue.keys());
        assert_eq!(got[0], vec![4.0, 0.0]);
        assert_eq!(got[1], vec![4.0, 1.0]);
        assert_eq!(got[2..], expected[2..]);
    }

    #[test]
    fn rejects_a_batch_that_does_not_divide_the_size() {
        let device = device();
        let queue = KeyQueue::new(10, 4, 0, &device).unwrap();
        let err = queue
            .enqueue(random_unit_rows(3, 4, 1, &device))
            .unwrap_err();
        assert_eq!(
            err,
            LossError::QueueNotMultiple {
                queue_size: 10,
                enqueued: 3
            }
        );
    }

    #[test]
    fn keys_survive_a_record_round_trip() {
        let device = device();
        let queue = KeyQueue::new(4, 3, 1, &device)
            .unwrap()
            .enqueue(random_unit_rows(2, 3, 9, &device))
            .unwrap();
        let before = rows(queue.keys());
        let record = queue.clone().into_record();
        let fresh = KeyQueue::new(4, 3, 2, &device).unwrap().load_record(record);
        assert_eq!(rows(fresh.keys()), before);
    }
}
