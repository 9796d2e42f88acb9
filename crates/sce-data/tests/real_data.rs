//! Loaders on real data from `$SCE_DATA_DIR`: the full Fashion-MNIST and MNIST, and the real
//! CIFAR-10/100 test images shipped as PNG samples (stand-ins made from Fashion-MNIST when the
//! data folder has no `samples/`), written into the CIFAR binary layout.

mod common;

use std::path::Path;

use sce_data::datasets::write_cifar_records;
use sce_data::{DatasetKind, Image, ImageSource, OpenOptions, Split};

fn class_counts(source: &dyn ImageSource) -> Vec<usize> {
    let mut counts = vec![0; source.num_classes()];
    for i in 0..source.len() {
        counts[source.get(i).unwrap().label.unwrap()] += 1;
    }
    counts
}

#[test]
fn fashion_mnist_and_mnist_load_completely() {
    let Some(dir) = common::data_dir("fashion_mnist_and_mnist_load_completely") else {
        return;
    };
    for kind in [DatasetKind::FashionMnist, DatasetKind::Mnist] {
        let root = dir.join(kind.dir_name());
        assert!(
            kind.present(&root),
            "{} missing under {}",
            kind,
            dir.display()
        );
        let train = kind
            .open(Split::Train, &root, &OpenOptions::default())
            .unwrap();
        let test = kind
            .open(Split::Test, &root, &OpenOptions::default())
            .unwrap();
        assert_eq!((train.len(), test.len()), (60_000, 10_000), "{kind}");
        let first = train.get(0).unwrap();
        assert_eq!(
            (first.image.width, first.image.height, first.image.channels),
            (28, 28, 1)
        );
        if kind == DatasetKind::FashionMnist {
            assert_eq!(class_counts(train.as_ref()), vec![6_000; 10]);
            assert_eq!(class_counts(test.as_ref()), vec![1_000; 10]);
            // The first training image of Fashion-MNIST is an ankle boot (class 9).
            assert_eq!(first.label, Some(9));
            assert_eq!(train.class_names()[9], "Ankle boot");
        } else {
            // MNIST's first training digit is a 5.
            assert_eq!(first.label, Some(5));
            assert_eq!(test.class_names()[5], "5");
        }
        assert_eq!(train.class_names().len(), train.num_classes());
    }
}

/// `(name, label, image)` of the shared PNG samples starting with `prefix`.
fn samples(dir: &Path, prefix: &str) -> Vec<(String, u8, Image)> {
    let mut out: Vec<_> = std::fs::read_dir(common::samples_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with(prefix) && name.ends_with(".png")
        })
        .map(|p| {
            let name = p.file_stem().unwrap().to_str().unwrap().to_string();
            let label = name.rsplit('_').next().unwrap().parse().unwrap();
            (name, label, Image::open(&p, 3).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn real_cifar_images_round_trip_through_the_binary_layout() {
    let Some(dir) = common::data_dir("real_cifar_images_round_trip_through_the_binary_layout")
    else {
        return;
    };
    for (kind, prefix, folder, coarse) in [
        (
            DatasetKind::Cifar10,
            "cifar10_",
            "cifar-10-batches-bin",
            None,
        ),
        (
            DatasetKind::Cifar100,
            "cifar100_",
            "cifar-100-binary",
            Some(3u8),
        ),
    ] {
        let images = samples(&dir, prefix);
        assert_eq!(images.len(), 20, "{kind} samples");
        let records: Vec<(&[u8], u8)> = images
            .iter()
            .map(|(_, l, img)| (img.pixels.as_slice(), *l))
            .collect();
        let bytes = write_cifar_records(&records, coarse);
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join(folder);
        std::fs::create_dir_all(&base).unwrap();
        let names: &[&str] = if kind == DatasetKind::Cifar10 {
            &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
                "test_batch.bin",
            ]
        } else {
            &["train.bin", "test.bin"]
        };
        for name in names {
            std::fs::write(base.join(name), &bytes).unwrap();
        }
        assert!(kind.present(root.path()));
        let test = kind
            .open(Split::Test, root.path(), &OpenOptions::default())
            .unwrap();
        assert_eq!(test.len(), 20);
        for (i, (name, label, image)) in images.iter().enumerate() {
            let sample = test.get(i).unwrap();
            assert_eq!(sample.label, Some(*label as usize), "{name}");
            assert_eq!(&sample.image, image, "{name}: pixels differ");
        }
        let train = kind
            .open(Split::Train, root.path(), &OpenOptions::default())
            .unwrap();
        assert_eq!(
            train.len(),
            if kind == DatasetKind::Cifar10 {
                100
            } else {
                20
            }
        );
    }
}

#[test]
fn real_jpegs_decode_in_an_image_folder() {
    let Some(dir) = common::data_dir("real_jpegs_decode_in_an_image_folder") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::samples_dir(&dir)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(rest) = name.strip_prefix("imagenet_") {
            let class = rest
                .trim_end_matches(".jpg")
                .split('_')
                .nth(1)
                .unwrap()
                .to_string();
            let target = root.path().join("train").join(format!("n{class:0>8}"));
            std::fs::create_dir_all(&target).unwrap();
            std::fs::copy(&path, target.join(&name)).unwrap();
        }
    }
    let train = DatasetKind::Imagenet
        .open(Split::Train, root.path(), &OpenOptions::default())
        .unwrap();
    assert_eq!(train.len(), 20);
    let sample = train.get(0).unwrap();
    assert_eq!(
        (
            sample.image.width,
            sample.image.height,
            sample.image.channels
        ),
        (512, 512, 3)
    );
    assert!(train.num_classes() >= 10);
}
