//! Dynamic loss scaling for f16 training (`run.precision = "f16"`).
//!
//! f16's smallest normal value is 6.1e-5: gradients of a contrastive loss routinely fall below
//! it and would round to zero in the f16 backward passes of convolutions and linear layers. So
//! the loss is multiplied by a large scale before the backward pass, the f32 master gradients
//! are divided by it before the optimizer sees them, and the scale follows the gradients: a
//! step whose gradients overflowed (a non-finite value anywhere) is skipped and the scale
//! halved; after [`GROWTH_INTERVAL`] clean steps in a row it doubles. These are PyTorch's
//! `GradScaler` defaults (2^16 to start, ×2 every 2,000 clean steps, ×0.5 on overflow), which
//! the reference trains with; bf16 has f32's range and needs none of this.
//!
//! The scaler's state is part of the training state (`state-S.json` of every checkpoint), so a
//! resumed run scales, skips and grows exactly as the uninterrupted one.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// The scale of the first step: 2^16.
pub const INITIAL_SCALE: f64 = 65_536.0;
/// Clean steps in a row after which the scale doubles.
pub const GROWTH_INTERVAL: u32 = 2_000;
/// Overflowing steps in a row after which training stops: the scale has fallen from 2^16 to
/// 2^-16, so the gradients are not finite at any scale — the run diverged.
pub const MAX_SKIPS_IN_A_ROW: u32 = 32;

/// The loss scale and its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// What the loss is multiplied by before the backward pass.
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean_steps: u32,
    /// Steps skipped in a row, the latest included.
    pub skips_in_a_row: u32,
    /// Steps skipped since the run began.
    pub skipped_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: INITIAL_SCALE,
            clean_steps: 0,
            skips_in_a_row: 0,
            skipped_steps: 0,
        }
    }
}

impl LossScaler {
    /// Takes the outcome of a step whose loss was scaled by [`scale`](Self::scale): returns
    /// whether to apply it (its gradients were finite), and moves the scale for the next step.
    /// Fails once the gradients have overflowed [`MAX_SKIPS_IN_A_ROW`] steps in a row.
    pub fn update(&mut self, finite: bool) -> anyhow::Result<bool> {
        if finite {
            self.skips_in_a_row = 0;
            self.clean_steps += 1;
            if self.clean_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
            return Ok(true);
        }
        self.skips_in_a_row += 1;
        self.skipped_steps += 1;
        self.clean_steps = 0;
        self.scale *= 0.5;
        anyhow::ensure!(
            self.skips_in_a_row < MAX_SKIPS_IN_A_ROW,
            "the gradients overflowed {} steps in a row in f16 (loss scale now {:e}): they are not \
             finite at any scale, so the run diverged; lower optim.lr or train in f32 or bf16",
            self.skips_in_a_row,
            self.scale
        );
        Ok(false)
    }

    /// The gradients of a step whose loss was scaled by [`scale`](Self::scale), unscaled for
    /// the optimizer, and the scale moved for the next step. Where they overflowed, no
    /// gradients at all: the optimizer then leaves every parameter and its state alone, while
    /// the step's keys still enter the queue and the target still takes its EMA step — what
    /// the reference's `GradScaler` does, which skips `optimizer.step()` only. The batch and the
    /// step still count, so the schedules go on.
    pub fn unscale<M: Module>(
        &mut self,
        grads: GradientsParams,
        model: &M,
    ) -> anyhow::Result<GradientsParams> {
        let (grads, finite) = unscale_gradients(grads, model, self.scale);
        Ok(match self.update(finite)? {
            true => grads,
            false => GradientsParams::new(),
        })
    }
}

/// Divides every gradient of `model`'s parameters by `scale`; says whether all of them are
/// finite (one value read back from the device, whatever the number of parameters).
fn unscale_gradients<M: Module>(
    grads: GradientsParams,
    model: &M,
    scale: f64,
) -> (GradientsParams, bool) {
    let mut unscale = Unscale {
        grads,
        factor: 1.0 / scale,
        poison: None,
    };
    model.visit(&mut unscale);
    // `x · 0` is 0 for a finite x and NaN for ±inf or NaN: the sum is finite iff all are.
    let finite = unscale
        .poison
        .is_none_or(|p| p.into_scalar::<f32>().is_finite());
    (unscale.grads, finite)
}

struct Unscale {
    grads: GradientsParams,
    factor: f64,
    poison: Option<Tensor<1>>,
}

impl ModuleVisitor for Unscale {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let grad = grad * self.factor;
        let zero = (grad.clone() * 0.0).sum();
        self.poison = Some(match self.poison.take() {
            Some(sum) => sum + zero,
            None => zero,
        });
        self.grads.register(param.id, grad);
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale() {
        let mut scaler = LossScaler::default();
        assert!(scaler.update(true).unwrap());
        assert!(
            !scaler.update(false).unwrap(),
            "an overflowing step is skipped"
        );
        assert_eq!(scaler.scale, INITIAL_SCALE / 2.0);
        assert_eq!(scaler.skipped_steps, 1);
        assert_eq!(scaler.clean_steps, 0, "the clean run starts again");
        assert!(!scaler.update(false).unwrap());
        assert_eq!(scaler.scale, INITIAL_SCALE / 4.0);
        assert_eq!((scaler.skipped_steps, scaler.skips_in_a_row), (2, 2));
        assert!(scaler.update(true).unwrap());
        assert_eq!(scaler.skips_in_a_row, 0);
    }

    #[test]
    fn the_scale_doubles_after_a_run_of_clean_steps() {
        let mut scaler = LossScaler::default();
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(scaler.update(true).unwrap());
        }
        assert_eq!(scaler.scale, INITIAL_SCALE, "not yet");
        assert!(scaler.update(true).unwrap());
        assert_eq!(scaler.scale, 2.0 * INITIAL_SCALE);
        assert_eq!(scaler.clean_steps, 0);
        // An overflow in the next run resets its count: growth needs a full run again.
        for _ in 0..GROWTH_INTERVAL - 1 {
            scaler.update(true).unwrap();
        }
        scaler.update(false).unwrap();
        for _ in 0..GROWTH_INTERVAL - 1 {
            scaler.update(true).unwrap();
        }
        assert_eq!(scaler.scale, INITIAL_SCALE, "doubled once, halved once");
    }

    #[test]
    fn gradients_that_overflow_at_every_scale_stop_the_run() {
        let mut scaler = LossScaler::default();
        for _ in 0..MAX_SKIPS_IN_A_ROW - 1 {
            assert!(!scaler.update(false).unwrap());
        }
        let error = scaler.update(false).unwrap_err().to_string();
        assert!(error.contains("overflowed 32 steps in a row"), "{error}");
    }

    /// What a checkpoint stores brings back a scaler that goes on exactly as the original.
    #[test]
    fn a_resumed_scaler_continues_where_it_stopped() {
        let mut scaler = LossScaler::default();
        let outcomes = [true, false, true, true, false, false, true];
        for finite in outcomes {
            scaler.update(finite).unwrap();
        }
        let saved = serde_json::to_string(&scaler).unwrap();
        let mut resumed: LossScaler = serde_json::from_str(&saved).unwrap();
        assert_eq!(resumed, scaler);
        for finite in [true, false, true] {
            assert_eq!(
                resumed.update(finite).unwrap(),
                scaler.update(finite).unwrap()
            );
        }
        assert_eq!(resumed, scaler);
        assert_eq!(scaler.skipped_steps, 4);
    }

    fn gradients(layer: &Linear, poison: Option<f32>) -> GradientsParams {
        let device = layer.weight.device();
        let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, -1.0]], &device);
        let mut loss = (layer.forward(x) * 1024.0).sum();
        if let Some(value) = poison {
            loss = loss * value;
        }
        GradientsParams::from_grads(loss.backward(), layer)
    }

    #[test]
    fn unscaling_divides_every_gradient_and_spots_a_non_finite_one() {
        let device = Device::default().autodiff();
        let layer = LinearConfig::new(2, 3).init(&device);
        let weight_grad = |grads: &GradientsParams| {
            grads
                .get::<2>(layer.weight.id)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let scaled = gradients(&layer, None);
        let before = weight_grad(&scaled);
        let (unscaled, finite) = unscale_gradients(scaled, &layer, 1024.0);
        assert!(finite);
        let after = weight_grad(&unscaled);
        for (a, b) in after.iter().zip(&before) {
            assert_eq!(*a, b / 1024.0);
        }
        assert!(unscaled.get::<1>(layer.bias.as_ref().unwrap().id).is_some());
        for poison in [f32::INFINITY, f32::NAN] {
            let (_, finite) = unscale_gradients(gradients(&layer, Some(poison)), &layer, 1024.0);
            assert!(!finite, "{poison} in the gradients");
        }
    }

    /// An overflowing step hands the optimizer no gradient: SGD then leaves the parameters as
    /// they were; a clean one hands it the unscaled gradients.
    #[test]
    fn a_skipped_step_leaves_the_parameters_alone() {
        use burn::optim::SgdConfig;
        let device = Device::default().autodiff();
        let layer = LinearConfig::new(2, 3).init(&device);
        let weights = |l: &Linear| l.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let before = weights(&layer);
        let mut optim = SgdConfig::new().init();
        let mut scaler = LossScaler {
            scale: 1024.0,
            ..LossScaler::default()
        };
        let grads = scaler
            .unscale(gradients(&layer, Some(f32::INFINITY)), &layer)
            .unwrap();
        let layer = optim.step(0.1, layer, grads);
        assert_eq!(weights(&layer), before, "skipped");
        assert_eq!(scaler.scale, 512.0);
        let grads = scaler.unscale(gradients(&layer, None), &layer).unwrap();
        let layer = optim.step(0.1, layer, grads);
        let after = weights(&layer);
        // The update is lr × the unscaled gradient (×1024 / 512: the loss's factor, the scale).
        let x = [[1.0f32, 2.0], [3.0, -1.0]];
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            let (row, _) = (i / 3, i % 3);
            let grad = (x[0][row] + x[1][row]) * 1024.0 / 512.0;
            assert!((b - a - 0.1 * grad).abs() < 1e-4, "{i}: {b} → {a}");
        }
    }
}
