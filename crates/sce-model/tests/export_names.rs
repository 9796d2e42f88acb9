//! The PyTorch-named export of a trunk has exactly torchvision's state-dict names, shapes and
//! dtypes (without `fc`), checked against lists generated once from torchvision
//! (`tests/torchvision/generate.py`).

use std::collections::BTreeMap;

use burn::tensor::Device;
use sce_model::weights::save_pytorch;
use sce_model::{Depth, ResNetConfig, Stem};

/// `name [shape] dtype` lines of a safetensors file, sorted.
fn exported(depth: Depth) -> Vec<String> {
    let trunk = ResNetConfig::new(depth, Stem::Imagenet)
        .init(&Device::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trunk.safetensors");
    save_pytorch(&trunk, &path, 0, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut lines: Vec<String> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => "float32",
                safetensors::Dtype::I64 => "int64",
                other => panic!("{name} is {other:?}"),
            };
            format!("{name} {:?} {dtype}", view.shape())
        })
        .collect();
    lines.sort();
    lines
}

fn torchvision(name: &str) -> Vec<String> {
    let path = format!(
        "{}/tests/torchvision/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn resnet18_export_has_torchvision_names_and_shapes() {
    let (ours, theirs) = (exported(Depth::R18), torchvision("resnet18"));
    assert_eq!(theirs.len(), 120);
    assert_eq!(ours, theirs);
}

#[test]
fn resnet50_export_has_torchvision_names_and_shapes() {
    let (ours, theirs) = (exported(Depth::R50), torchvision("resnet50"));
    assert_eq!(theirs.len(), 318);
    assert_eq!(ours, theirs);
}
