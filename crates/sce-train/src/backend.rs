//! Backends are compiled in by Cargo features (`flex`, `wgpu`, `vulkan`, `metal`, `cuda`) and
//! chosen at run time with `--device`; the library crates never name one.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::error::usage;

/// Backends this binary was built with, in the order `auto` prefers them.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "cuda") {
        out.push("cuda");
    }
    if cfg!(feature = "metal") {
        out.push("metal");
    }
    if cfg!(feature = "vulkan") {
        out.push("vulkan");
    }
    if cfg!(feature = "wgpu") {
        out.push("wgpu");
    }
    if cfg!(feature = "flex") {
        out.push("cpu");
    }
    out
}

fn not_compiled(spec: &str, feature: &str) -> anyhow::Error {
    usage(format!(
        "device `{spec}` needs the `{feature}` feature, but this binary was built with: {}. \
         Rebuild with `cargo build --release -p sce-train --features {feature}`",
        compiled_backends().join(", ")
    ))
}

/// Parses an index suffix: `cuda:1` → 1, `cuda` → 0.
fn index(spec: &str, rest: Option<&str>) -> anyhow::Result<usize> {
    match rest {
        None => Ok(0),
        Some(n) => n
            .parse()
            .map_err(|_| usage(format!("device `{spec}`: `{n}` is not a device index"))),
    }
}

/// The device named by `spec`: `auto`, `cpu`/`flex`, `cuda[:N]`, `wgpu[:N]`, `vulkan[:N]`,
/// `metal[:N]`. `auto` picks the first GPU backend compiled in, else the CPU.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let lower = spec.to_ascii_lowercase();
    let (name, rest) = match lower.split_once(':') {
        Some((name, rest)) => (name, Some(rest)),
        None => (lower.as_str(), None),
    };
    let n = index(spec, rest)?;
    #[allow(unused_variables)]
    let gpu_kind = if rest.is_some() {
        burn::tensor::DeviceKind::DiscreteGpu(n)
    } else {
        burn::tensor::DeviceKind::DefaultDevice
    };
    match name {
        "auto" => match compiled_backends().first() {
            Some(&"cpu") | None => parse_device("cpu"),
            Some(first) => parse_device(first),
        },
        "cpu" | "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "flex"))
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            return present(Device::cuda(n), spec, burn::tensor::DeviceType::Cuda);
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "cuda"))
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return present(Device::wgpu(gpu_kind), spec, burn::tensor::DeviceType::Wgpu);
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "wgpu"))
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            return present(
                Device::vulkan(gpu_kind),
                spec,
                burn::tensor::DeviceType::Vulkan,
            );
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "vulkan"))
        }
        "metal" => {
            #[cfg(feature = "metal")]
            return present(
                Device::metal(gpu_kind),
                spec,
                burn::tensor::DeviceType::Metal,
            );
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "metal"))
        }
        _ => Err(usage(format!(
            "unknown device `{spec}`; use auto, cpu, cuda[:N], wgpu[:N], vulkan[:N] or metal[:N] \
             (compiled in: {})",
            compiled_backends().join(", ")
        ))),
    }
}

/// `device` if this machine has it: a GPU device that is not there would make the backend
/// panic on first use. `wgpu` without an index is any adapter; with one, a discrete GPU.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn present(device: Device, spec: &str, kind: burn::tensor::DeviceType) -> anyhow::Result<Device> {
    let found = Device::enumerate(kind);
    if found.contains(&device) || (!spec.contains(':') && !found.is_empty()) {
        return Ok(device);
    }
    let listed: Vec<String> = found.iter().map(|d| format!("{d:?}")).collect();
    Err(usage(match listed.is_empty() {
        true => format!(
            "device `{spec}`: this machine has no such device (is its driver installed?); \
             `sce-train check --device cpu` runs without one"
        ),
        false => format!(
            "device `{spec}` is not on this machine, which has: {} (an index names a \
             discrete GPU; without one, `{}` takes the default adapter)",
            listed.join(", "),
            spec.split(':').next().unwrap_or(spec)
        ),
    }))
}

/// Builds a module with `build` where its random initial weights are drawn the same on every
/// backend: on the CPU backend (when compiled in) seeded with `seed`, then moved to `device`.
/// Each backend has its own random stream, so without this a seed would give a GPU run other
/// starting weights than a CPU run, and the two could not be compared step for step. On the
/// CPU itself, or without the CPU backend, `device` draws them, seeded the same way.
pub fn init_on_host<M: Module>(
    device: &Device,
    seed: u64,
    build: impl FnOnce(&Device) -> anyhow::Result<M>,
) -> anyhow::Result<M> {
    #[cfg(feature = "flex")]
    let host = Some(Device::flex()).filter(|host| *host != device.clone().without_autodiff());
    #[cfg(not(feature = "flex"))]
    let host: Option<Device> = None;
    let at = host.map(|h| h.with_autodiff_context_from(device));
    let builder = at.as_ref().unwrap_or(device);
    builder.seed(seed);
    let module = build(builder)?;
    // Parameters initialise lazily, in the order they are first used, and a lazy one moved to
    // another device would draw its values there: draw them all here, in the module's order.
    module.visit(&mut Materialize);
    Ok(match at {
        Some(_) => module.fork(device),
        None => module,
    })
}

/// Touches every parameter, which initialises the lazy ones where they were built.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        let _ = param.val();
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        let _ = param.val();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_initial_weights() {
        let device = parse_device("cpu").unwrap().autodiff();
        let weights = |seed| {
            let layer = init_on_host(&device, seed, |d| {
                Ok(burn::nn::LinearConfig::new(8, 4).init(d))
            })
            .unwrap();
            layer
                .weight
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(weights(7), weights(7));
        assert_ne!(weights(7), weights(8));
    }

    #[test]
    fn devices_not_compiled_in_are_clear_errors() {
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("not a device index"), "{err}");
        if !cfg!(feature = "cuda") {
            let err = parse_device("cuda:1").unwrap_err().to_string();
            assert!(err.contains("needs the `cuda` feature"), "{err}");
        }
        assert!(parse_device("cpu").is_ok());
        assert!(parse_device("auto").is_ok());
    }
}
