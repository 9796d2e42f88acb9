//! Parameters by path: counts that match PyTorch's, and the EMA over parameters only.
//!
//! Burn visits BatchNorm running statistics like parameters; PyTorch calls them buffers. Both
//! the parameter count and the momentum update must skip them, which needs the path.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// True for BatchNorm running statistics, which are buffers rather than parameters.
pub fn is_buffer(path: &str) -> bool {
    path.ends_with("running_mean") || path.ends_with("running_var")
}

/// Folds pending BatchNorm running-statistic updates into the stored values.
///
/// Burn's `RunningState` keeps the latest update per thread and merges it lazily, so a visitor
/// (and therefore `into_record`) reads values one update behind. Call this before recording or
/// inspecting buffers; it works in place because clones share the state.
pub fn sync_buffers<M: Module>(module: &M) {
    let _ = module.valid();
}

/// Float tensors of a module keyed by dotted path (`layer1.0.conv1.weight`), buffers included.
pub fn named_tensors<M: Module>(module: &M) -> Vec<(String, Tensor<1>)> {
    let mut collect = Collect::default();
    module.visit(&mut collect);
    collect.tensors
}

/// Number of trainable-parameter elements, as `sum(p.numel() for p in m.parameters())` counts.
pub fn count_parameters<M: Module>(module: &M) -> usize {
    named_tensors(module)
        .iter()
        .filter(|(path, _)| !is_buffer(path))
        .map(|(_, t)| t.dims()[0])
        .sum()
}

/// The path of the first float tensor of `module` holding NaN or an infinity, BatchNorm
/// statistics included: a diverged run can keep a finite loss while its running variances are
/// infinite, and ReLU hides NaN weights from the features, so the state itself is checked
/// before it is saved, evaluated or exported. Call [`sync_buffers`] first. The values are read
/// on the host: a few megabytes at checkpoint time, and no long device reduction (software
/// Vulkan sums long rows wrongly, docs/backends.md).
pub fn first_non_finite<M: Module>(module: &M) -> Option<String> {
    named_tensors(module)
        .into_iter()
        .find(|(_, t)| t.clone().into_data().iter::<f32>().any(|v| !v.is_finite()))
        .map(|(path, _)| path)
}

/// `target ← m·target + (1 − m)·online` for every parameter, matched by path; BatchNorm running
/// statistics keep the target's own values. `m = 0` copies the online parameters.
pub fn ema_update<M: Module>(online: &M, target: M, momentum: f64) -> M {
    let sources: HashMap<String, Tensor<1>> = named_tensors(online)
        .into_iter()
        .filter(|(path, _)| !is_buffer(path))
        .collect();
    target.map(&mut Ema {
        path: Vec::new(),
        sources,
        momentum,
    })
}

#[derive(Default)]
struct Collect {
    path: Vec<String>,
    tensors: Vec<(String, Tensor<1>)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let flat = param.val().detach().reshape([-1]);
        self.tensors.push((self.path.join("."), flat));
    }
}

struct Ema {
    path: Vec<String>,
    sources: HashMap<String, Tensor<1>>,
    momentum: f64,
}

impl ModuleMapper for Ema {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        if is_buffer(&path) {
            return param;
        }
        let source = self
            .sources
            .remove(&path)
            .unwrap_or_else(|| panic!("EMA source and target differ: no source for `{path}`"));
        let m = self.momentum;
        param.map(|t| {
            let shape = t.shape();
            let source = source.reshape(shape).to_device(&t.device());
            let updated = if m == 0.0 {
                source
            } else {
                t * m + source * (1.0 - m)
            };
            updated.detach().set_require_grad(false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
    use burn::tensor::TensorData;

    #[derive(Module, Debug)]
    struct Tiny {
        linear: Linear,
        bn: BatchNorm,
    }

    fn tiny(weight: [f32; 2], bias: f32, running_mean: f32) -> Tiny {
        let device = device();
        let mut linear = LinearConfig::new(2, 1).init(&device);
        linear.weight = linear
            .weight
            .map(|_| Tensor::from_data(TensorData::new(weight.to_vec(), [2, 1]), &device));
        linear.bias = linear
            .bias
            .map(|b| b.map(|_| Tensor::from_data([bias], &device)));
        let bn = BatchNormConfig::new(1).init(&device);
        bn.running_mean
            .update(Tensor::from_data([running_mean], &device));
        Tiny { linear, bn }
    }

    #[test]
    fn the_first_non_finite_tensor_is_named_buffers_included() {
        let healthy = tiny([1.0, 2.0], 0.5, 0.0);
        assert_eq!(first_non_finite(&healthy), None);
        let nan_weight = tiny([1.0, f32::NAN], 0.5, 0.0);
        assert_eq!(
            first_non_finite(&nan_weight).as_deref(),
            Some("linear.weight")
        );
        let infinite_statistic = tiny([1.0, 2.0], 0.5, f32::INFINITY);
        sync_buffers(&infinite_statistic);
        assert_eq!(
            first_non_finite(&infinite_statistic).as_deref(),
            Some("bn.running_mean")
        );
    }

    /// Hand-computed: m = 0.9, target w = (1, 2), online w = (3, -2):
    /// 0.9·1 + 0.1·3 = 1.2 and 0.9·2 + 0.1·(−2) = 1.6; bias 0.9·0.5 + 0.1·1.5 = 0.6.
    #[test]
    fn ema_matches_hand_computed_values_and_skips_buffers() {
        let online = tiny([3.0, -2.0], 1.5, 7.0);
        let target = tiny([1.0, 2.0], 0.5, -4.0);
        let updated = ema_update(&online, target, 0.9);
        sync_buffers(&updated);
        assert_close_all(
            &flat(updated.linear.weight.val().reshape([2, 1])),
            &[1.2, 1.6],
            1e-6,
        );
        let bias = updated.linear.bias.as_ref().unwrap().val().reshape([1, 1]);
        assert_close_all(&flat(bias), &[0.6], 1e-6);
        // BatchNorm gamma is a parameter (1 on both sides); the running mean is the target's own.
        assert_close_all(&flat(updated.bn.gamma.val().reshape([1, 1])), &[1.0], 0.0);
        let running = updated.bn.running_mean.value().reshape([1, 1]);
        assert_close_all(&flat(running), &[-4.0], 0.0);
    }

    #[test]
    fn counts_skip_running_statistics() {
        let model = tiny([0.0, 0.0], 0.0, 0.0);
        // linear 2 + 1, bn gamma + beta; running mean/var are not parameters.
        assert_eq!(count_parameters(&model), 5);
        assert_eq!(model.num_params(), 7);
    }
}
