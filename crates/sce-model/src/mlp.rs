use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::norm::synced_batch_norm;
use sce_ops::norm::AfterNorm;

/// An MLP head as SCE builds them (spec §2.2): each layer is Linear, optional BN1d, ReLU (not on
/// the last). A Linear followed by BN has no bias; hidden BNs are affine; the optional last BN is
/// not (its scale and shift stay 1 and 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Widths from input to output, e.g. `[512, 512, 128]`.
    pub dims: Vec<usize>,
    /// End with a non-affine BatchNorm1d.
    pub last_norm: bool,
    /// Bias on the last Linear when no BN follows it.
    pub last_bias: bool,
}

impl MlpConfig {
    /// CIFAR projector: 512 → 512 (BN, ReLU) → 128 with bias.
    pub fn cifar_projector(input: usize) -> Self {
        Self {
            dims: vec![input, 512, 128],
            last_norm: false,
            last_bias: true,
        }
    }

    /// ImageNet projector: 2048 → 4096 → 4096 → 256, BN everywhere, the last non-affine.
    pub fn imagenet_projector(input: usize) -> Self {
        Self {
            dims: vec![input, 4096, 4096, 256],
            last_norm: true,
            last_bias: false,
        }
    }

    /// ImageNet predictor: 256 → 4096 (BN, ReLU) → 256, no bias, no final BN.
    pub fn predictor(dim: usize) -> Self {
        Self {
            dims: vec![dim, 4096, dim],
            last_norm: false,
            last_bias: false,
        }
    }

    pub fn output_dim(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.dims.len() < 2 || self.dims.contains(&0) {
            return Err(ModelError::Config(format!(
                "an MLP needs at least an input and an output width, all >= 1; got {:?}",
                self.dims
            )));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<Mlp, ModelError> {
        self.validate()?;
        let last = self.dims.len() - 2;
        let layers = self
            .dims
            .windows(2)
            .enumerate()
            .map(|(i, io)| {
                let is_last = i == last;
                let norm = !is_last || self.last_norm;
                let linear = LinearConfig::new(io[0], io[1])
                    .with_bias(!norm && self.last_bias)
                    .init(device);
                let norm = norm.then(|| {
                    let bn = BatchNormConfig::new(io[1]).init(device);
                    if is_last { non_affine(bn) } else { bn }
                });
                MlpLayer { linear, norm }
            })
            .collect();
        Ok(Mlp { layers })
    }
}

/// A BN whose scale and shift are frozen at 1 and 0, as PyTorch's `affine=False`.
fn non_affine(mut bn: BatchNorm) -> BatchNorm {
    bn.gamma = bn.gamma.set_require_grad(false);
    bn.beta = bn.beta.set_require_grad(false);
    bn
}

#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<MlpLayer>,
}

#[derive(Module, Debug)]
struct MlpLayer {
    linear: Linear,
    norm: Option<BatchNorm>,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = sce_ops::precision::linear(&layer.linear, x);
            if let Some(bn) = &layer.norm {
                x = batch_norm_1d(bn, x);
            }
            if i != last {
                x = relu(x);
            }
        }
        x
    }
}

/// `bn` on `[N, C]` features: synchronised across ranks in training when the run has several
/// (SyncBatchNorm), Burn's batch norm otherwise.
fn batch_norm_1d(bn: &BatchNorm, x: Tensor<2>) -> Tensor<2> {
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    if !(training && sce_ops::ranks::sums_over_ranks()) {
        return bn.forward(x);
    }
    let [n, c] = x.dims();
    synced_batch_norm(bn, x.reshape([n, c, 1, 1]), AfterNorm::none()).reshape([n, c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{count_parameters, named_tensors};
    use crate::test_util::*;
    use burn::tensor::Distribution;

    fn paths(mlp: &Mlp) -> Vec<String> {
        named_tensors(mlp).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn recipes_have_the_spec_structure() {
        let device = device().autodiff();
        let cifar = MlpConfig::cifar_projector(512).init(&device).unwrap();
        // 512·512 (no bias) + BN 2·512 + 512·128 + 128 bias.
        assert_eq!(count_parameters(&cifar), 512 * 512 + 1024 + 512 * 128 + 128);
        let p = paths(&cifar);
        assert!(p.contains(&"layers.1.linear.bias".to_string()));
        assert!(!p.contains(&"layers.0.linear.bias".to_string()));
        assert!(!p.iter().any(|p| p.starts_with("layers.1.norm")));

        let projector = MlpConfig::imagenet_projector(2048).init(&device).unwrap();
        let p = paths(&projector);
        assert!(p.iter().all(|p| !p.ends_with("linear.bias")));
        assert!(p.contains(&"layers.2.norm.running_mean".to_string()));
        let last_bn = projector.layers[2].norm.as_ref().unwrap();
        assert!(!last_bn.gamma.is_require_grad() && !last_bn.beta.is_require_grad());
        assert!(
            projector.layers[1]
                .norm
                .as_ref()
                .unwrap()
                .gamma
                .is_require_grad()
        );

        let predictor = MlpConfig::predictor(256).init(&device).unwrap();
        assert_eq!(
            count_parameters(&predictor),
            256 * 4096 + 2 * 4096 + 4096 * 256
        );
    }

    #[test]
    fn forward_shapes() {
        let device = device().autodiff();
        let mlp = MlpConfig {
            dims: vec![8, 16, 16, 4],
            last_norm: true,
            last_bias: false,
        }
        .init(&device)
        .unwrap();
        let x = Tensor::<2>::random([5, 8], Distribution::Default, &device);
        assert_eq!(mlp.forward(x).dims(), [5, 4]);
        assert!(
            MlpConfig {
                dims: vec![8],
                last_norm: false,
                last_bias: true
            }
            .init(&device)
            .is_err()
        );
    }
}
