//! A torchvision-layout state dict, written here as a real `torch.save` zip archive (pickle
//! protocol 2 + raw little-endian storages), loads into the right tensors of a trunk.

use std::io::Write;
use std::path::Path;

use burn::tensor::Device;
use sce_model::params::{is_buffer, named_tensors};
use sce_model::weights::load_torchvision;
use sce_model::{Depth, ResNetConfig, Stem};

/// One entry of the state dict: float32 values, or the int64 `num_batches_tracked` scalar.
enum Entry {
    Float(Vec<usize>, Vec<f32>),
    Long(i64),
}

/// Minimal pickle writer for `collections.OrderedDict` of `torch._utils._rebuild_tensor_v2`.
struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        self.0.push(b'J');
        self.0.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn tuple(&mut self, values: &[usize]) {
        self.0.push(b'(');
        values.iter().for_each(|&v| self.int(v));
        self.0.push(b't');
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.extend_from_slice(b")R");
    }
}

fn write_torch_file(path: &Path, entries: &[(String, Entry)]) {
    let mut pickle = Pickle(b"\x80\x02".to_vec());
    pickle.ordered_dict();
    pickle.0.push(b'(');
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (name, entry) in entries {
        let (shape, storage_type, bytes): (Vec<usize>, &str, Vec<u8>) = match entry {
            Entry::Float(shape, values) => (
                shape.clone(),
                "FloatStorage",
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            Entry::Long(v) => (vec![], "LongStorage", v.to_le_bytes().to_vec()),
        };
        let numel = shape.iter().product::<usize>();
        let mut strides = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        pickle.string(name);
        pickle.global("torch._utils", "_rebuild_tensor_v2");
        pickle.0.push(b'(');
        // Persistent id: ('storage', torch.XStorage, key, 'cpu', numel).
        pickle.0.push(b'(');
        pickle.string("storage");
        pickle.global("torch", storage_type);
        pickle.string(&storages.len().to_string());
        pickle.string("cpu");
        pickle.int(numel.max(1));
        pickle.0.extend_from_slice(b"tQ");
        pickle.int(0);
        pickle.tuple(&shape);
        pickle.tuple(&strides);
        pickle.0.push(0x89); // requires_grad = False
        pickle.ordered_dict();
        pickle.0.extend_from_slice(b"tR");
        storages.push(bytes);
    }
    pickle.0.extend_from_slice(b"u.");

    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut add = |name: &str, bytes: &[u8]| {
        zip.start_file(format!("archive/{name}"), options).unwrap();
        zip.write_all(bytes).unwrap();
    };
    add("data.pkl", &pickle.0);
    add("byteorder", b"little");
    for (i, bytes) in storages.iter().enumerate() {
        add(&format!("data/{i}"), bytes);
    }
    add("version", b"3\n");
    zip.finish().unwrap();
}

/// Our path → torchvision's key.
fn torchvision_key(path: &str) -> String {
    path.replace("downsample.conv", "downsample.0")
        .replace("downsample.bn", "downsample.1")
        .replace(".gamma", ".weight")
        .replace(".beta", ".bias")
}

#[test]
fn torchvision_state_dict_loads_into_the_right_tensors() {
    let device = Device::default();
    let config = ResNetConfig::new(Depth::R18, Stem::Imagenet).with_width(4);
    let fresh = config.init(&device).unwrap();

    // Each tensor gets distinct values derived from its index, so a swap would be caught.
    let ours = named_tensors(&fresh);
    let mut entries = Vec::new();
    let mut expected = Vec::new();
    for (index, (path, tensor)) in ours.iter().enumerate() {
        let numel = tensor.dims()[0];
        let values: Vec<f32> = (0..numel)
            .map(|i| index as f32 + i as f32 / (numel as f32 + 1.0))
            .collect();
        expected.push((path.clone(), values.clone()));
        let shape = tensor_shape(&fresh, path);
        entries.push((torchvision_key(path), Entry::Float(shape, values)));
        if path.ends_with("running_var") {
            let prefix = torchvision_key(path).replace("running_var", "num_batches_tracked");
            entries.push((prefix, Entry::Long(7)));
        }
    }
    // torchvision's classifier, which a trunk must ignore.
    entries.push((
        "fc.weight".into(),
        Entry::Float(vec![10, 32], vec![0.5; 320]),
    ));
    entries.push(("fc.bias".into(), Entry::Float(vec![10], vec![0.5; 10])));
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "bn1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.1.conv2.weight",
    ] {
        assert!(
            keys.contains(&key),
            "the generated dict lacks torchvision key {key}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.pth");
    write_torch_file(&path, &entries);
    let loaded = load_torchvision(config.init(&device).unwrap(), &path, None).unwrap();
    let got: Vec<(String, Vec<f32>)> = named_tensors(&loaded)
        .into_iter()
        .map(|(p, t)| (p, t.into_data().try_to_vec::<f32>().unwrap()))
        .collect();
    assert_eq!(got.len(), expected.len());
    for ((path, got), (_, want)) in got.iter().zip(&expected) {
        assert_eq!(got, want, "{path} (buffer: {})", is_buffer(path));
    }

    // A state dict missing a trunk tensor is refused with the file named.
    let partial: Vec<(String, Entry)> = entries
        .into_iter()
        .filter(|(k, _)| k != "layer3.1.bn2.weight")
        .collect();
    write_torch_file(&path, &partial);
    let err = load_torchvision(config.init(&device).unwrap(), &path, None).unwrap_err();
    assert!(err.to_string().contains("resnet18.pth"), "{err}");
}

/// The shape of one tensor of the trunk, read back through the module's own snapshot.
fn tensor_shape(trunk: &sce_model::ResNet, path: &str) -> Vec<usize> {
    use burn::store::ModuleSnapshot;
    trunk
        .collect(None, None, false)
        .into_iter()
        .find(|t| t.name == path)
        .map(|t| t.shape.to_vec())
        .unwrap_or_else(|| panic!("no tensor {path}"))
}
