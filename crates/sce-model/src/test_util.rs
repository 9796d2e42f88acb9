//! Helpers for the unit tests.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};

use crate::params::is_buffer;

/// The default device of the build (flex in CI; `BURN_DEVICE` picks another).
pub fn device() -> Device {
    Device::default()
}

/// Values of a `[n, 1]`-shaped (or any 2-D) tensor, flattened, as f64.
pub fn flat(t: Tensor<2>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec().unwrap()
}

pub fn assert_close_all(got: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() <= tol, "got {got:?}, expected {expected:?}");
    }
}

pub fn assert_tensors_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f64) {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f64> = a.into_data().convert::<f64>().try_to_vec().unwrap();
    let b: Vec<f64> = b.into_data().convert::<f64>().try_to_vec().unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

/// Whether each parameter (buffers excluded) has a gradient in `grads`.
pub fn params_with_grad<M: Module>(module: &M, grads: &Gradients) -> Vec<(String, bool)> {
    struct Check<'a> {
        grads: &'a Gradients,
        path: Vec<String>,
        out: Vec<(String, bool)>,
    }
    impl ModuleVisitor for Check<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self.path.join(".");
            if !is_buffer(&path) {
                let has = param.val().grad(self.grads).is_some();
                self.out.push((path, has));
            }
        }
    }
    let mut check = Check {
        grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut check);
    check.out
}

/// Adds a constant to every float tensor of a module.
pub struct Shift(pub f64);

impl ModuleMapper for Shift {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shift = self.0;
        param.map(|t| (t + shift).detach())
    }
}
