//! Optimisers and the learning-rate schedule of the paper (spec §3, §8 item 9–10).

mod lars;
mod schedule;

pub use lars::{Lars, LarsState};
pub use schedule::WarmupCosine;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{ModuleOptimizer, SgdConfig};

use crate::config::{OptimSection, OptimizerName};

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
