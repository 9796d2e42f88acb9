//! Weights in and out: torchvision checkpoints into a trunk, safetensors for our own exports.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, PytorchStore, SafetensorsStore};

use crate::{ModelError, ResNet};

/// Loads a torchvision ResNet state dict (`.pth`/`.pt`) into `trunk`.
///
/// Key names already match ours except the shortcut (`downsample.0/1` → `downsample.conv/bn`);
/// BatchNorm `weight/bias` become `gamma/beta` through Burn's PyTorch adapter. The classifier
/// (`fc.*`) and `num_batches_tracked` are ignored; any trunk tensor missing from the file or of
/// the wrong shape is an error. `top_level_key` selects a nested dict such as `state_dict`.
pub fn load_torchvision(
    mut trunk: ResNet,
    path: &Path,
    top_level_key: Option<&str>,
) -> Result<ResNet, ModelError> {
    let fail = |reason: String| ModelError::Load {
        path: path.display().to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let mut store = PytorchStore::from_file(path)
        .with_key_remapping(r"^(.+)\.downsample\.0\.(.+)$", "$1.downsample.conv.$2")
        .with_key_remapping(r"^(.+)\.downsample\.1\.(.+)$", "$1.downsample.bn.$2")
        .validate(true)
        .allow_partial(false);
    if let Some(key) = top_level_key {
        store = store.with_top_level_key(key);
    }
    let result = trunk
        .load_from(&mut store)
        .map_err(|e| fail(e.to_string()))?;
    if !result.errors.is_empty() {
        return Err(fail(result.to_string()));
    }
    Ok(trunk)
}

/// Writes `module` as safetensors, atomically: a temporary file renamed over `path`, so a crash
/// never leaves a truncated file under the final name.
pub fn save_safetensors<M: Module>(module: &M, path: &Path) -> Result<(), ModelError> {
    let fail = |reason: String| ModelError::Save {
        path: path.display().to_string(),
        reason,
    };
    let tmp = temp_path(path);
    let mut store = SafetensorsStore::from_file(&tmp);
    module
        .save_into(&mut store)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
}

/// Loads every tensor of `module` from a safetensors file written by [`save_safetensors`].
pub fn load_safetensors<M: Module>(mut module: M, path: &Path) -> Result<M, ModelError> {
    let fail = |reason: String| ModelError::Load {
        path: path.display().to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let mut store = SafetensorsStore::from_file(path).validate(true);
    let result = module
        .load_from(&mut store)
        .map_err(|e| fail(e.to_string()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(fail(result.to_string()));
    }
    Ok(module)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::named_tensors;
    use crate::test_util::*;
    use crate::{Depth, ResNetConfig, Stem};

    fn all_values(trunk: &ResNet) -> Vec<(String, Vec<f32>)> {
        named_tensors(trunk)
            .into_iter()
            .map(|(p, t)| (p, t.into_data().try_to_vec::<f32>().unwrap()))
            .collect()
    }

    #[test]
    fn safetensors_round_trip_is_bit_identical() {
        let device = device();
        let config = ResNetConfig::new(Depth::R18, Stem::Cifar).with_width(4);
        let trunk = config.init(&device).unwrap();
        // Give the BatchNorm statistics non-default values so they are checked too.
        let trunk = trunk.map(&mut Shift(0.125));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trunk.safetensors");
        save_safetensors(&trunk, &path).unwrap();
        let loaded = load_safetensors(config.init(&device).unwrap(), &path).unwrap();
        assert_eq!(all_values(&loaded), all_values(&trunk));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn loading_a_different_architecture_is_an_error() {
        let device = device();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trunk.safetensors");
        let small = ResNetConfig::new(Depth::R18, Stem::Cifar).with_width(4);
        save_safetensors(&small.init(&device).unwrap(), &path).unwrap();
        let other = ResNetConfig::new(Depth::R18, Stem::Cifar).with_width(8);
        let err = load_safetensors(other.init(&device).unwrap(), &path).unwrap_err();
        assert!(err.to_string().contains("trunk.safetensors"), "{err}");
        let missing = load_safetensors(small.init(&device).unwrap(), &dir.path().join("nope"));
        assert!(missing.unwrap_err().to_string().contains("no such file"));
    }
}
