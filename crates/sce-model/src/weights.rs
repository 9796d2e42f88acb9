//! Weights in and out: torchvision checkpoints into a trunk, and safetensors out, either under
//! PyTorch's names (what `torchvision.models.resnet*().load_state_dict` accepts) or Burn's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};

use crate::{ModelError, ResNet};

/// torchvision's shortcut names (`downsample.0/1`) against ours (`downsample.conv/bn`).
const TORCH_SHORTCUT: [(&str, &str); 2] = [
    (r"^(.+)\.downsample\.0\.(.+)$", "$1.downsample.conv.$2"),
    (r"^(.+)\.downsample\.1\.(.+)$", "$1.downsample.bn.$2"),
];
const OUR_SHORTCUT: [(&str, &str); 2] = [
    (r"^(.+)\.downsample\.conv\.(.+)$", "$1.downsample.0.$2"),
    (r"^(.+)\.downsample\.bn\.(.+)$", "$1.downsample.1.$2"),
];

/// Loads a torchvision ResNet state dict into `trunk`: a PyTorch pickle (`.pth`/`.pt`) or a
/// safetensors file under PyTorch's names (what [`save_pytorch`] writes).
///
/// Key names already match ours except the shortcut (`downsample.0/1` → `downsample.conv/bn`);
/// BatchNorm `weight/bias` become `gamma/beta` through Burn's PyTorch adapter. The classifier
/// (`fc.*`) and `num_batches_tracked` are ignored; any trunk tensor missing from the file or of
/// the wrong shape is an error. `top_level_key` selects a nested dict such as `state_dict` (of
/// a pickle).
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
    let result = if path.extension().is_some_and(|e| e == "safetensors") {
        let mut store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .validate(true)
            .allow_partial(false);
        for (from, to) in TORCH_SHORTCUT {
            store = store.with_key_remapping(from, to);
        }
        trunk.load_from(&mut store).map_err(|e| e.to_string())
    } else {
        let mut store = PytorchStore::from_file(path)
            .validate(true)
            .allow_partial(false);
        for (from, to) in TORCH_SHORTCUT {
            store = store.with_key_remapping(from, to);
        }
        if let Some(key) = top_level_key {
            store = store.with_top_level_key(key);
        }
        trunk.load_from(&mut store).map_err(|e| e.to_string())
    }
    .map_err(fail)?;
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

/// Writes `module` as safetensors under PyTorch's conventions, atomically: BatchNorm
/// `weight/bias` (Burn: `gamma/beta`) with a `num_batches_tracked` counter (int64, 0-d, set to
/// `batches_tracked`; PyTorch reads it only for cumulative-average batch norms), Linear weights
/// as `[out, in]`, and ResNet shortcuts as torchvision's `downsample.0/1`. For a ResNet trunk
/// these are exactly torchvision's state-dict names and shapes, without `fc`. `metadata` goes
/// into the file's header.
pub fn save_pytorch<M: Module>(
    module: &M,
    path: &Path,
    batches_tracked: i64,
    metadata: &BTreeMap<String, String>,
) -> Result<(), ModelError> {
    use safetensors::tensor::{Dtype, TensorView};
    let fail = |reason: String| ModelError::Save {
        path: path.display().to_string(),
        reason,
    };
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter);
    for (from, to) in OUR_SHORTCUT {
        store = store.with_key_remapping(from, to);
    }
    module
        .save_into(&mut store)
        .map_err(|e| fail(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| fail(e.to_string()))?;
    let parsed = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
    let counter = batches_tracked.to_le_bytes();
    let mut tensors: Vec<(String, TensorView)> = Vec::new();
    for (name, view) in parsed.tensors() {
        if let Some(norm) = name.strip_suffix(".running_var") {
            let count = TensorView::new(Dtype::I64, Vec::new(), &counter)
                .map_err(|e| fail(e.to_string()))?;
            tensors.push((format!("{norm}.num_batches_tracked"), count));
        }
        tensors.push((name, view));
    }
    let mut header: HashMap<String, String> = metadata.clone().into_iter().collect();
    // What `safetensors.torch` writes, so PyTorch tools recognise the file.
    header.insert("format".into(), "pt".into());
    let data = safetensors::serialize(tensors, Some(header)).map_err(|e| fail(e.to_string()))?;
    let tmp = temp_path(path);
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e.to_string())
        })
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

    /// The PyTorch-named export loads back through the torchvision importer bit for bit, under
    /// torchvision's names: BatchNorm `weight/bias` with a counter, `downsample.0/1`.
    #[test]
    fn pytorch_names_round_trip_through_the_torchvision_importer() {
        let device = device();
        let config = ResNetConfig::new(Depth::R18, Stem::Cifar).with_width(4);
        let trunk = config.init(&device).unwrap().map(&mut Shift(0.125));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trunk.safetensors");
        let metadata = BTreeMap::from([("stem".to_string(), "cifar".to_string())]);
        save_pytorch(&trunk, &path, 7, &metadata).unwrap();
        let loaded = load_torchvision(config.init(&device).unwrap(), &path, None).unwrap();
        assert_eq!(all_values(&loaded), all_values(&trunk));

        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let names = file.names();
        for name in [
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_var",
        ] {
            assert!(names.contains(&name), "{name} missing: {names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("gamma") || n.contains("beta"))
        );
        let counter = file.tensor("layer4.1.bn2.num_batches_tracked").unwrap();
        assert_eq!(counter.dtype(), safetensors::Dtype::I64);
        assert!(counter.shape().is_empty());
        assert_eq!(counter.data(), 7i64.to_le_bytes());
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let header = header.metadata().clone().unwrap();
        assert_eq!(header["stem"], "cifar");
        assert_eq!(header["format"], "pt");
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
