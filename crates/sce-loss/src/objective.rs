use burn::tensor::{FloatDType, Tensor};

use crate::LossError;

/// A contrastive objective scored against a queue of past keys.
///
/// `q`: online embeddings (N×D), `k`: target keys (N×D), `queue`: past keys (M×D); all rows
/// L2-normalised by the caller. `k` and `queue` never receive gradients. Returns the batch mean
/// as a one-element tensor.
pub trait QueueObjective {
    fn forward(&self, q: Tensor<2>, k: Tensor<2>, queue: Tensor<2>)
    -> Result<Tensor<1>, LossError>;
}

/// Checks that `q`, `k` and `queue` fit together and returns them in f32, with `k` and `queue`
/// detached: the target side is a constant for the online gradient.
pub(crate) fn prepare(
    q: Tensor<2>,
    k: Tensor<2>,
    queue: Tensor<2>,
) -> Result<(Tensor<2>, Tensor<2>, Tensor<2>), LossError> {
    let [n, d] = q.dims();
    let [nk, dk] = k.dims();
    let [m, dq] = queue.dims();
    if n == 0 {
        return Err(LossError::Shape("the batch is empty".into()));
    }
    if (nk, dk) != (n, d) {
        return Err(LossError::Shape(format!(
            "online embeddings are {n}x{d} but target keys are {nk}x{dk}"
        )));
    }
    if dq != d || m == 0 {
        return Err(LossError::Shape(format!(
            "queue is {m}x{dq} but embeddings have dimension {d}"
        )));
    }
    let f32 = |t: Tensor<2>| t.cast(FloatDType::F32);
    Ok((f32(q), f32(k).detach(), f32(queue).detach()))
}

/// Rejects a temperature that is not a finite positive number.
pub(crate) fn check_temperature(name: &'static str, value: f64) -> Result<(), LossError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(LossError::InvalidParameter {
            name,
            value,
            allowed: "a finite number > 0",
        })
    }
}
