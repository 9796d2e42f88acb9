use burn::optim::Optimizer;
use burn::tensor::{Device, Tensor};

/// LARS as the SCE reference uses it (spec §8 item 9): for parameters of rank ≥ 2,
/// `g ← g + wd·w`, then `g ← g · η‖w‖/‖g‖` (1 if either norm is 0); 1-D parameters (biases,
/// batch-norm scales) skip both. Then `μ ← m·μ + g`, `w ← w − lr·μ`.
#[derive(Clone, Debug)]
pub struct Lars {
    pub momentum: f64,
    pub weight_decay: f64,
    pub trust_coefficient: f64,
}

/// Per-parameter momentum buffer.
#[derive(burn::optim::RecordState, Clone)]
pub struct LarsState<const D: usize> {
    pub velocity: Tensor<D>,
}

impl Optimizer for Lars {
    type State<const D: usize> = LarsState<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        weight: Tensor<D>,
        grad: Tensor<D>,
        state: Option<LarsState<D>>,
    ) -> (Tensor<D>, Option<LarsState<D>>) {
        let update = if D > 1 {
            let grad = grad + weight.clone() * self.weight_decay;
            let w_norm = weight.clone().square().sum().sqrt();
            let g_norm = grad.clone().square().sum().sqrt();
            // Trust ratio on the device (no host sync); 1 where a norm is zero.
            let zero = w_norm
                .clone()
                .equal_elem(0.0)
                .bool_or(g_norm.clone().equal_elem(0.0));
            let ratio = (w_norm * self.trust_coefficient / g_norm.clamp_min(1e-30))
                .mask_fill(zero, 1.0)
                .reshape([1usize; D]);
            grad * ratio
        } else {
            grad
        };
        let velocity = match state {
            Some(state) => state.velocity * self.momentum + update,
            None => update,
        };
        let weight = weight - velocity.clone() * lr;
        (weight, Some(LarsState { velocity }))
    }

    fn to_device<const D: usize>(state: LarsState<D>, device: &Device) -> LarsState<D> {
        LarsState {
            velocity: state.velocity.to_device(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_to_vec().unwrap()
    }

    /// Hand-computed: w = [[3, 4]] (‖w‖ = 5), g = [[0, 1]], wd = 0.5, η = 0.1, m = 0.9, lr = 2.
    /// g' = g + 0.5·w = [[1.5, 3]], ‖g'‖ = √11.25; trust = 0.1·5/√11.25 = 0.149071;
    /// μ₁ = g'·trust = [[0.223607, 0.447214]]; w₁ = w − 2·μ₁ = [[2.552786, 3.105573]].
    #[test]
    fn two_steps_by_hand() {
        let device = Device::default();
        let lars = Lars {
            momentum: 0.9,
            weight_decay: 0.5,
            trust_coefficient: 0.1,
        };
        let w = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
        let g = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2]), &device);
        let (w1, s1) = lars.step(2.0, w, g.clone(), None);
        let expect = [2.552786, 3.105573];
        for (a, b) in values(w1.clone()).iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Step 2 with the same gradient: g' = g + 0.5·w₁ = [[1.276393, 2.552786]],
        // ‖w₁‖ = 4.020249, ‖g'‖ = 2.854102, trust = 0.140859;
        // μ₂ = 0.9·μ₁ + g'·trust = [[0.381038, 0.762076]]; w₂ = w₁ − 2·μ₂.
        let (w2, _) = lars.step(2.0, w1, g, s1);
        let expect = [2.552786 - 2.0 * 0.381038, 3.105573 - 2.0 * 0.762076];
        for (a, b) in values(w2).iter().zip(expect) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    /// Rank-1 parameters: no weight decay, no trust ratio — plain momentum SGD.
    #[test]
    fn one_dimensional_parameters_skip_adaptation() {
        let device = Device::default();
        let lars = Lars {
            momentum: 0.9,
            weight_decay: 0.5,
            trust_coefficient: 0.001,
        };
        let w = Tensor::<1>::from_data([1.0f32, 2.0], &device);
        let g = Tensor::<1>::from_data([0.5f32, -1.0], &device);
        let (w1, s1) = lars.step(0.1, w, g.clone(), None);
        for (a, b) in values(w1.clone()).iter().zip([0.95, 2.1]) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let (w2, _) = lars.step(0.1, w1, g, s1);
        // μ₂ = 0.9·g + g = 1.9·g.
        let expect = [0.95 - 0.1 * 0.95, 2.1 + 0.1 * 1.9];
        for (a, b) in values(w2).iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn zero_weights_use_a_unit_trust_ratio() {
        let device = Device::default();
        let lars = Lars {
            momentum: 0.9,
            weight_decay: 0.0,
            trust_coefficient: 0.001,
        };
        let w = Tensor::<2>::zeros([1, 2], &device);
        let g = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &device);
        let (w1, _) = lars.step(0.5, w, g, None);
        assert_eq!(values(w1), vec![-0.5, -1.0]);
    }
}
