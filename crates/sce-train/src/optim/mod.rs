//! Optimisers and the learning-rate schedule of the paper (spec §3, §8 item 9–10), and the loss
//! scaling f16 training needs.

mod lars;
mod loss_scale;
mod schedule;

pub use lars::{Lars, LarsState};
pub use loss_scale::LossScaler;
pub use schedule::WarmupCosine;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{ModuleOptimizer, SgdConfig};

use crate::config::{OptimSection, OptimizerName};

/// The peak learning rate: `optim.lr` scaled linearly by the *global* batch (spec §3: lr ×
/// batch / 256), i.e. `run.batch_size` on each of `devices` devices, as the reference scales
/// by the batch of all its GPUs.
pub fn peak_learning_rate(lr: f64, batch_size: usize, devices: usize) -> f64 {
    lr * (batch_size * devices.max(1)) as f64 / 256.0
}

/// The configured optimiser: SGD with momentum and L2 weight decay on every parameter (CIFAR
/// recipe), or LARS (ImageNet recipe).
pub fn build_optimizer(config: &OptimSection) -> ModuleOptimizer {
    match config.name {
        OptimizerName::Sgd => SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: config.momentum,
                dampening: 0.0,
                nesterov: false,
            }))
            .with_weight_decay((config.weight_decay > 0.0).then_some(WeightDecayConfig {
                penalty: config.weight_decay as f32,
            }))
            .init(),
        OptimizerName::Lars => Lars {
            momentum: config.momentum,
            weight_decay: config.weight_decay,
            trust_coefficient: config.trust_coefficient,
        }
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_scales_with_the_global_batch() {
        assert_eq!(peak_learning_rate(0.06, 256, 1), 0.06);
        assert_eq!(peak_learning_rate(0.06, 128, 1), 0.03);
        // Two devices of 128 are one global batch of 256, not two of 128.
        assert_eq!(peak_learning_rate(0.06, 128, 2), 0.06);
    }
}
