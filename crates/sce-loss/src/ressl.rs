use burn::tensor::Tensor;

use crate::LossError;
use crate::objective::{QueueObjective, check_temperature, prepare};
use sce_ops::rows::{log_softmax_rows, softmax_rows, sum_rows};

/// ReSSL's relational loss: the cross-entropy between the target's sharpened similarities to
/// the queue and the online similarities to the same queue, with the positive removed from both
/// distributions (eztorch `compute_ressl_loss`, `use_keys=False`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResslLoss {
    tau: f64,
    tau_m: f64,
}

impl ResslLoss {
    pub fn new(tau: f64, tau_m: f64) -> Result<Self, LossError> {
        check_temperature("tau", tau)?;
        check_temperature("tau_m", tau_m)?;
        Ok(Self { tau, tau_m })
    }
}

impl QueueObjective for ResslLoss {
    fn forward(
        &self,
        q: Tensor<2>,
        k: Tensor<2>,
        queue: Tensor<2>,
    ) -> Result<Tensor<1>, LossError> {
        let (q, k, queue) = prepare(q, k, queue)?;
        let queue_t = queue.transpose();
        let log_p = log_softmax_rows(q.matmul(queue_t.clone()) / self.tau);
        let target = softmax_rows(k.matmul(queue_t) / self.tau_m);
        Ok(sum_rows(target * log_p).mean().neg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SceLoss;
    use crate::test_util::*;

    /// Spec §1.8: L_SCE(lambda=0) = L_ReSSL + mean_i log(1 + e^{a_i0} / Σ_{j≥1} e^{a_ij}).
    #[test]
    fn sce_at_lambda_zero_is_ressl_plus_positive_term() {
        let device = device();
        let q = random_unit_rows(5, 8, 41, &device);
        let k = random_unit_rows(5, 8, 42, &device);
        let queue = random_unit_rows(16, 8, 43, &device);
        let (tau, tau_m) = (0.1, 0.05);
        let ressl = scalar(
            ResslLoss::new(tau, tau_m)
                .unwrap()
                .forward(q.clone(), k.clone(), queue.clone())
                .unwrap(),
        );
        let sce0 = scalar(
            SceLoss::new(tau, tau_m, 0.0)
                .unwrap()
                .forward(q.clone(), k.clone(), queue.clone())
                .unwrap(),
        );
        let (q, k, queue) = (rows(q), rows(k), rows(queue));
        let extra: f64 = q
            .iter()
            .zip(&k)
            .map(|(qi, ki)| {
                let pos = (dot(qi, ki) / tau).exp();
                let neg: f64 = queue.iter().map(|e| (dot(qi, e) / tau).exp()).sum();
                (1.0 + pos / neg).ln()
            })
            .sum::<f64>()
            / q.len() as f64;
        assert_close(sce0, ressl + extra, 1e-5);
        assert!(sce0 > ressl);
    }
}
