use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::params::ema_update;
use crate::{Mlp, MlpConfig, ModelError, ResNet, ResNetConfig};

/// What the pair is made of: one trunk and projector recipe for both branches, and an optional
/// predictor on the online branch only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MomentumPairConfig {
    pub trunk: ResNetConfig,
    pub projector: MlpConfig,
    pub predictor: Option<MlpConfig>,
}

impl MomentumPairConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        self.trunk.validate()?;
        self.projector.validate()?;
        if self.projector.dims[0] != self.trunk.feature_dim() {
            return Err(ModelError::Config(format!(
                "the projector takes {} features but the trunk gives {}",
                self.projector.dims[0],
                self.trunk.feature_dim()
            )));
        }
        if let Some(predictor) = &self.predictor {
            predictor.validate()?;
            let out = self.projector.output_dim();
            if predictor.dims[0] != out || predictor.output_dim() != out {
                return Err(ModelError::Config(format!(
                    "the predictor must map the projector's {out} dimensions to {out}, got {:?}",
                    predictor.dims
                )));
            }
        }
        Ok(())
    }

    /// Dimension of the embeddings compared by the loss (and stored in the queue).
    pub fn embedding_dim(&self) -> usize {
        self.projector.output_dim()
    }
}

/// Trunk and projector: what both branches share in shape.
#[derive(Module, Debug)]
pub struct Branch {
    pub trunk: ResNet,
    pub projector: Mlp,
}

impl Branch {
    fn init(config: &MomentumPairConfig, device: &Device) -> Result<Self, ModelError> {
        Ok(Self {
            trunk: config.trunk.init(device)?,
            projector: config.projector.init(device)?,
        })
    }
}

/// The online branch (trainable, optional predictor) and its momentum target.
///
/// The target is built as a fresh module and then given the online values: a `clone()` would
/// share parameter ids with the optimizer's state and BatchNorm running statistics with the
/// online branch. It never receives gradients; [`update_target`](Self::update_target) moves its
/// parameters (not its BatchNorm statistics) towards the online ones.
#[derive(Module, Debug)]
pub struct MomentumPair {
    online: Branch,
    predictor: Option<Mlp>,
    target: Branch,
}

impl MomentumPair {
    pub fn new(config: &MomentumPairConfig, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let online = Branch::init(config, device)?;
        let predictor = config
            .predictor
            .as_ref()
            .map(|p| p.init(device))
            .transpose()?;
        let target = ema_update(&online, Branch::init(config, device)?, 0.0).no_grad();
        Ok(Self {
            online,
            predictor,
            target,
        })
    }

    pub fn online(&self) -> &Branch {
        &self.online
    }

    pub fn target(&self) -> &Branch {
        &self.target
    }

    /// The online branch's predictor, if the method has one.
    pub fn predictor(&self) -> Option<&Mlp> {
        self.predictor.as_ref()
    }

    /// `q = normalize(predictor(projector(trunk(x))))`, the predictor being the identity if absent.
    pub fn online_embed(&self, x: Tensor<4>) -> Tensor<2> {
        self.online_embed_with_features(x).0
    }

    /// `q` as [`online_embed`](Self::online_embed), and the trunk features it was computed
    /// from, detached: what a monitor (the online linear probe) may read without reaching the
    /// trunk's gradients.
    pub fn online_embed_with_features(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let features = self.online.trunk.forward(x);
        let z = self.online.projector.forward(features.clone());
        let z = match &self.predictor {
            Some(predictor) => predictor.forward(z),
            None => z,
        };
        (l2_normalize(z), features.detach())
    }

    /// `k = normalize(projector(trunk(x)))` of the target, detached.
    ///
    /// With `bn_splits > 1` the trunk's batch norms see that many groups of a batch shuffled by
    /// `shuffle_seed`, and the keys come back in the original order (spec §2.5).
    pub fn target_embed(
        &self,
        x: Tensor<4>,
        bn_splits: usize,
        shuffle_seed: u64,
    ) -> Result<Tensor<2>, ModelError> {
        let n = x.dims()[0];
        let device = x.device();
        let (x, unshuffle) = if bn_splits > 1 {
            if !n.is_multiple_of(bn_splits) {
                return Err(ModelError::BatchNotDivisible {
                    batch: n,
                    splits: bn_splits,
                });
            }
            let (perm, inverse) = permutation(n, shuffle_seed, &device);
            (x.select(0, perm), Some(inverse))
        } else {
            (x, None)
        };
        let features = self.target.trunk.forward_split(x, bn_splits)?;
        let k = l2_normalize(self.target.projector.forward(features)).detach();
        Ok(match unshuffle {
            Some(inverse) => k.select(0, inverse),
            None => k,
        })
    }

    /// `p_target ← m·p_target + (1 − m)·p_online` over trunk and projector parameters.
    pub fn update_target(self, momentum: f64) -> Self {
        let target = ema_update(&self.online, self.target, momentum);
        Self { target, ..self }
    }
}

/// Rows scaled to unit L2 norm, as `F.normalize(x, dim=1)` (norm clamped at 1e-12).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// A seeded permutation of `0..n` and its inverse, as index tensors.
fn permutation(n: usize, seed: u64, device: &Device) -> (Tensor<1, Int>, Tensor<1, Int>) {
    let mut perm: Vec<i64> = (0..n as i64).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut inverse = vec![0i64; n];
    for (position, &source) in perm.iter().enumerate() {
        inverse[source as usize] = position as i64;
    }
    (
        Tensor::from_data(perm.as_slice(), device),
        Tensor::from_data(inverse.as_slice(), device),
    )
}

/// How the EMA coefficient evolves over optimisation steps (spec §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum MomentumSchedule {
    /// The same `m` at every step (CIFAR recipe: 0.99).
    Constant { value: f64 },
    /// `m(t) = 1 − (1 − m0)·(cos(π·t/(T−1)) + 1)/2`, from `m0` at step 0 to 1 at step T−1.
    Cosine { base: f64 },
}

impl MomentumSchedule {
    /// The coefficient after step `step` of `total_steps` (0-based).
    pub fn value(&self, step: usize, total_steps: usize) -> f64 {
        match *self {
            MomentumSchedule::Constant { value } => value,
            MomentumSchedule::Cosine { base } => {
                if total_steps <= 1 {
                    return base;
                }
                let progress = step.min(total_steps - 1) as f64 / (total_steps - 1) as f64;
                1.0 - (1.0 - base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
            }
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let m = match *self {
            MomentumSchedule::Constant { value } => value,
            MomentumSchedule::Cosine { base } => base,
        };
        if (0.0..=1.0).contains(&m) {
            Ok(())
        } else {
            Err(ModelError::Config(format!(
                "the momentum must lie in [0, 1], got {m}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::named_tensors;
    use crate::test_util::*;
    use crate::{Depth, Stem};
    use burn::tensor::Distribution;

    fn tiny_config() -> MomentumPairConfig {
        let trunk = ResNetConfig::new(Depth::R18, Stem::Cifar)
            .with_in_channels(1)
            .with_width(2);
        MomentumPairConfig {
            projector: MlpConfig {
                dims: vec![trunk.feature_dim(), 8, 4],
                last_norm: false,
                last_bias: true,
            },
            predictor: Some(MlpConfig {
                dims: vec![4, 8, 4],
                last_norm: false,
                last_bias: false,
            }),
            trunk,
        }
    }

    fn values(branch: &Branch) -> Vec<(String, Vec<f64>)> {
        crate::params::sync_buffers(branch);
        named_tensors(branch)
            .into_iter()
            .map(|(p, t)| (p, flat(t.reshape([-1, 1]))))
            .collect()
    }

    #[test]
    fn target_starts_as_an_independent_copy() {
        let ad = device().autodiff();
        let pair = MomentumPair::new(&tiny_config(), &ad).unwrap();
        assert!(values(pair.online()) == values(pair.target()));
        // Separate BatchNorm buffers: a target forward must not move the online statistics.
        let before = values(pair.online());
        let x = Tensor::<4>::random([4, 1, 8, 8], Distribution::Normal(3.0, 1.0), &ad);
        pair.target_embed(x, 2, 0).unwrap();
        assert!(values(pair.online()) == before, "online statistics moved");
        assert!(
            values(pair.target()) != before,
            "target statistics did not move"
        );
    }

    #[test]
    fn target_parameters_receive_no_gradient() {
        let ad = device().autodiff();
        let pair = MomentumPair::new(&tiny_config(), &ad).unwrap();
        let x = Tensor::<4>::random([4, 1, 8, 8], Distribution::Default, &ad);
        let q = pair.online_embed(x.clone());
        let k = pair.target_embed(x, 1, 0).unwrap();
        let grads = (q * k).sum().backward();
        let online = params_with_grad(&pair.online, &grads);
        assert!(online.iter().any(|(_, has)| *has));
        for (path, has) in params_with_grad(&pair.target, &grads) {
            assert!(!has, "target parameter {path} got a gradient");
        }
    }

    #[test]
    fn update_target_moves_parameters_by_the_momentum() {
        let ad = device().autodiff();
        let mut pair = MomentumPair::new(&tiny_config(), &ad).unwrap();
        // Make the online branch differ: shift every online parameter by +1.
        pair.online = pair.online.map(&mut Shift(1.0));
        let before = values(pair.target());
        let online = values(pair.online());
        let pair = pair.update_target(0.75);
        for (((path, t0), (_, s)), (_, t1)) in before.iter().zip(&online).zip(values(pair.target()))
        {
            for ((a, b), c) in t0.iter().zip(s).zip(t1) {
                let expected = if crate::params::is_buffer(path) {
                    *a
                } else {
                    0.75 * a + 0.25 * b
                };
                assert!((c - expected).abs() < 1e-5, "{path}: {c} vs {expected}");
            }
        }
    }

    #[test]
    fn shuffled_split_keys_come_back_in_input_order() {
        let ad = device().autodiff();
        let pair = MomentumPair::new(&tiny_config(), &ad).unwrap();
        // In eval mode split-BN is plain BN, so shuffling must be invisible in the output.
        let valid = pair.valid();
        let x = Tensor::<4>::random([6, 1, 8, 8], Distribution::Default, &device());
        let plain = valid.target_embed(x.clone(), 1, 0).unwrap();
        let shuffled = valid.target_embed(x, 3, 42).unwrap();
        assert_tensors_close(plain, shuffled, 1e-6);
    }

    #[test]
    fn cosine_schedule_runs_from_base_to_one() {
        let s = MomentumSchedule::Cosine { base: 0.99 };
        assert_eq!(s.value(0, 101), 0.99);
        assert!((s.value(50, 101) - 0.995).abs() < 1e-12);
        assert_eq!(s.value(100, 101), 1.0);
        assert_eq!(
            MomentumSchedule::Constant { value: 0.99 }.value(7, 10),
            0.99
        );
        assert!(
            MomentumSchedule::Constant { value: 1.5 }
                .validate()
                .is_err()
        );
    }

    #[test]
    fn config_mismatch_is_an_error() {
        let mut config = tiny_config();
        config.projector.dims[0] = 99;
        let err = MomentumPair::new(&config, &device()).unwrap_err();
        assert!(err.to_string().contains("projector takes 99"), "{err}");
    }
}
