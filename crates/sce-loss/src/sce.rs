use burn::tensor::Tensor;

use crate::LossError;
use crate::objective::{QueueObjective, check_temperature, prepare};
use sce_ops::rows::{log_softmax_rows, softmax_rows, sum_rows};

/// What the target distribution puts in the positive slot before mixing with the one-hot.
///
/// The paper masks the anchor's own key out of the relational target (`-inf` logit), so the
/// positive gets exactly `lambda`. The authors' code uses a constant 0 logit instead, which
/// leaves a sliver of extra mass on the positive (spec §1.3); keep it for bit-parity with the
/// released checkpoints. Both train the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetPositive {
    /// Paper formula: `w = lambda * e0 + (1 - lambda) * softmax(k·Qᵀ / tau_m)` over the queue only.
    #[default]
    Masked,
    /// Reference code: `w = lambda * e0 + (1 - lambda) * softmax([0, k·Qᵀ] / tau_m)`.
    ZeroLogit,
}

/// The SCE objective: soft cross-entropy between the online distribution over
/// `[positive, queue]` and a target mixing the one-hot positive with the momentum keys'
/// sharpened similarities to the queue.
///
/// `lambda = 1` is MoCo's InfoNCE; `lambda = 0` the relational term alone (with the positive
/// still in the online denominator, an upper bound of ReSSL's loss).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SceLoss {
    tau: f64,
    tau_m: f64,
    lambda: f64,
    positive: TargetPositive,
}

impl SceLoss {
    /// `tau`: online temperature, `tau_m`: target temperature, `lambda`: weight of the one-hot.
    pub fn new(tau: f64, tau_m: f64, lambda: f64) -> Result<Self, LossError> {
        check_temperature("tau", tau)?;
        check_temperature("tau_m", tau_m)?;
        if !(0.0..=1.0).contains(&lambda) {
            return Err(LossError::InvalidParameter {
                name: "lambda",
                value: lambda,
                allowed: "in [0, 1]",
            });
        }
        Ok(Self {
            tau,
            tau_m,
            lambda,
            positive: TargetPositive::Masked,
        })
    }

    /// MoCo's InfoNCE with a queue: SCE with `lambda = 1` (the target temperature is unused).
    pub fn info_nce(tau: f64) -> Result<Self, LossError> {
        Self::new(tau, 1.0, 1.0)
    }

    /// Chooses how the target treats the positive slot (default: the paper's mask).
    pub fn with_target_positive(mut self, positive: TargetPositive) -> Self {
        self.positive = positive;
        self
    }

    pub fn tau(&self) -> f64 {
        self.tau
    }

    pub fn tau_m(&self) -> f64 {
        self.tau_m
    }

    pub fn lambda(&self) -> f64 {
        self.lambda
    }
}

impl QueueObjective for SceLoss {
    fn forward(
        &self,
        q: Tensor<2>,
        k: Tensor<2>,
        queue: Tensor<2>,
    ) -> Result<Tensor<1>, LossError> {
        let (q, k, queue) = prepare(q, k, queue)?;
        let queue_size = queue.dims()[0];
        let queue_t = queue.transpose();

        // Online log-probabilities over [positive, queue entries].
        let positive = (q.clone() * k.clone()).sum_dim(1);
        let negatives = q.matmul(queue_t.clone());
        let log_p = log_softmax_rows(Tensor::cat(vec![positive, negatives], 1) / self.tau);

        // Per-anchor sum of w · log p, split into the one-hot part and the relational part.
        let mut weighted = log_p.clone().narrow(1, 0, 1) * self.lambda;
        if self.lambda < 1.0 {
            let target_logits = k.matmul(queue_t) / self.tau_m;
            let relational = match self.positive {
                TargetPositive::Masked => {
                    let target = softmax_rows(target_logits);
                    sum_rows(target * log_p.narrow(1, 1, queue_size))
                }
                TargetPositive::ZeroLogit => {
                    let zero = target_logits.zeros_like().narrow(1, 0, 1);
                    let target = softmax_rows(Tensor::cat(vec![zero, target_logits], 1));
                    sum_rows(target * log_p)
                }
            };
            weighted = weighted + relational * (1.0 - self.lambda);
        }
        Ok(weighted.mean().neg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn rejects_out_of_range_parameters() {
        assert!(matches!(
            SceLoss::new(0.0, 0.05, 0.5),
            Err(LossError::InvalidParameter { name: "tau", .. })
        ));
        assert!(matches!(
            SceLoss::new(0.1, f64::NAN, 0.5),
            Err(LossError::InvalidParameter { name: "tau_m", .. })
        ));
        assert!(matches!(
            SceLoss::new(0.1, 0.05, 1.5),
            Err(LossError::InvalidParameter { name: "lambda", .. })
        ));
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let device = device();
        let loss = SceLoss::new(0.1, 0.05, 0.5).unwrap();
        let q = random_unit_rows(4, 8, 1, &device);
        let k = random_unit_rows(3, 8, 2, &device);
        let queue = random_unit_rows(16, 8, 3, &device);
        let err = loss.forward(q.clone(), k, queue).unwrap_err();
        assert!(err.to_string().contains("4x8"), "{err}");
        let queue = random_unit_rows(16, 7, 3, &device);
        let err = loss.forward(q.clone(), q, queue).unwrap_err();
        assert!(err.to_string().contains("dimension 8"), "{err}");
    }

    /// Spec §10 vector A: one anchor, hand-computed in float64.
    #[test]
    fn spec_vector_a_both_target_variants() {
        let device = device();
        let q = tensor2(&[[1.0, 0.0, 0.0]], &device);
        let k = tensor2(&[[0.0, 0.0, 1.0]], &device);
        let queue = tensor2(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], &device);
        let masked = SceLoss::new(0.1, 0.05, 0.5).unwrap();
        let zero = masked.with_target_positive(TargetPositive::ZeroLogit);
        let l_masked = scalar(masked.forward(q.clone(), k.clone(), queue.clone()).unwrap());
        let l_zero = scalar(zero.forward(q, k, queue).unwrap());
        assert_close(l_masked, 7.500091, 1e-5);
        assert_close(l_zero, 8.333424, 1e-5);
    }

    /// Spec §10 vector C (eztorch's unit test, unnormalised inputs): 88.75 masked, 90.5 code.
    #[test]
    fn spec_vector_c_eztorch_inputs() {
        let device = device();
        let q = tensor2(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], &device);
        let k = tensor2(&[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]], &device);
        let queue = tensor2(&[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 2.0]], &device);
        let masked = SceLoss::new(0.1, 0.07, 0.5).unwrap();
        let zero = masked.with_target_positive(TargetPositive::ZeroLogit);
        let l_masked = scalar(masked.forward(q.clone(), k.clone(), queue.clone()).unwrap());
        let l_zero = scalar(zero.forward(q, k, queue).unwrap());
        assert_close(l_masked, 88.75, 1e-5);
        assert_close(l_zero, 90.5, 1e-5);
    }

    /// Half-precision embeddings (a network run in f16) still get an f32 loss: the inputs are
    /// cast up before the similarity matmuls and the (log-)softmax.
    #[test]
    fn half_precision_inputs_give_an_f32_loss() {
        use burn::tensor::{DType, FloatDType};
        let device = device();
        let q = random_unit_rows(6, 8, 81, &device);
        let k = random_unit_rows(6, 8, 82, &device);
        let queue = random_unit_rows(32, 8, 83, &device);
        let loss = SceLoss::new(0.1, 0.05, 0.5).unwrap();
        let half = |t: Tensor<2>| t.cast(FloatDType::F16);
        let out = loss
            .forward(half(q.clone()), half(k.clone()), half(queue.clone()))
            .unwrap();
        assert_eq!(out.dtype(), DType::F32);
        // f16 rounding of the unit inputs (~5e-4 relative) moves the loss by about as much.
        let reference = scalar(loss.forward(q, k, queue).unwrap());
        assert_close(scalar(out), reference, 5e-3);
    }

    #[test]
    fn loss_is_linear_in_lambda() {
        let device = device();
        let q = random_unit_rows(6, 8, 11, &device);
        let k = random_unit_rows(6, 8, 12, &device);
        let queue = random_unit_rows(24, 8, 13, &device);
        let at = |lambda: f64| {
            let loss = SceLoss::new(0.1, 0.05, lambda).unwrap();
            scalar(loss.forward(q.clone(), k.clone(), queue.clone()).unwrap())
        };
        let (l0, l1) = (at(0.0), at(1.0));
        for lambda in [0.25, 0.5, 0.8] {
            assert_close(at(lambda), lambda * l1 + (1.0 - lambda) * l0, 1e-5);
        }
    }

    /// lambda = 1 must equal InfoNCE written independently: -log(e^{q·k/τ} / Σ e^{...}) in f64.
    #[test]
    fn lambda_one_is_info_nce() {
        let device = device();
        let q = random_unit_rows(5, 8, 21, &device);
        let k = random_unit_rows(5, 8, 22, &device);
        let queue = random_unit_rows(20, 8, 23, &device);
        let tau = 0.2;
        let ours = scalar(
            SceLoss::info_nce(tau)
                .unwrap()
                .forward(q.clone(), k.clone(), queue.clone())
                .unwrap(),
        );
        let (q, k, queue) = (rows(q), rows(k), rows(queue));
        let mut expected = 0.0;
        for (qi, ki) in q.iter().zip(&k) {
            let pos = dot(qi, ki) / tau;
            let all: Vec<f64> = std::iter::once(pos)
                .chain(queue.iter().map(|e| dot(qi, e) / tau))
                .collect();
            let log_sum = all.iter().map(|x| x.exp()).sum::<f64>().ln();
            expected += log_sum - pos;
        }
        expected /= q.len() as f64;
        assert_close(ours, expected, 1e-5);
    }

    /// Central finite differences of the loss in f64 against Burn's autodiff gradient.
    #[test]
    fn gradient_matches_finite_differences() {
        let device = device();
        let ad = device.clone().autodiff();
        let (n, d, m) = (3, 4, 6);
        let q0 = rows(random_unit_rows(n, d, 31, &device));
        let k = random_unit_rows(n, d, 32, &device);
        let queue = random_unit_rows(m, d, 33, &device);
        let loss = SceLoss::new(0.5, 0.3, 0.4).unwrap();

        let q = tensor2_vec(&q0, &ad).require_grad();
        let out = loss
            .forward(
                q.clone(),
                k.clone().to_device(&ad),
                queue.clone().to_device(&ad),
            )
            .unwrap();
        let grads = out.backward();
        let grad = rows(q.grad(&grads).unwrap());

        let eval = |qv: &Vec<Vec<f64>>| {
            scalar(
                loss.forward(tensor2_vec(qv, &device), k.clone(), queue.clone())
                    .unwrap(),
            )
        };
        let h = 1e-2;
        for i in 0..n {
            for j in 0..d {
                let (mut plus, mut minus) = (q0.clone(), q0.clone());
                plus[i][j] += h;
                minus[i][j] -= h;
                let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h);
                assert!(
                    (numeric - grad[i][j]).abs() < 2e-3,
                    "d loss / d q[{i}][{j}]: autodiff {} vs finite difference {numeric}",
                    grad[i][j]
                );
            }
        }
    }
}
