//! Truncated or corrupt files give an error naming the file and the record or offset.

use std::io::Write;

use sce_data::{DatasetKind, OpenOptions, Split};

fn idx_images(n: u32, side: u32) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 3];
    for v in [n, side, side] {
        bytes.extend(v.to_be_bytes());
    }
    bytes.extend(std::iter::repeat_n(17u8, (n * side * side) as usize));
    bytes
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend((labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

fn write_mnist(dir: &std::path::Path, images: Vec<u8>, labels: Vec<u8>) {
    for prefix in ["train", "t10k"] {
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), &images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), &labels).unwrap();
    }
}

fn open_err(kind: DatasetKind, dir: &std::path::Path) -> String {
    match kind.open(Split::Train, dir, &OpenOptions::default()) {
        Ok(_) => panic!("{kind} in {} should not open", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn idx_files() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), idx_images(3, 4), idx_labels(&[1, 2, 3]));
    let ok = DatasetKind::Mnist
        .open(Split::Train, dir.path(), &OpenOptions::default())
        .unwrap();
    assert_eq!(ok.len(), 3);

    let mut truncated = idx_images(3, 4);
    truncated.truncate(16 + 20);
    write_mnist(dir.path(), truncated, idx_labels(&[1, 2, 3]));
    let err = open_err(DatasetKind::Mnist, dir.path());
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("truncated at image 1"),
        "{err}"
    );

    let mut bad_magic = idx_images(3, 4);
    bad_magic[3] = 9;
    write_mnist(dir.path(), bad_magic, idx_labels(&[1, 2, 3]));
    let err = open_err(DatasetKind::Mnist, dir.path());
    assert!(
        err.contains("magic number") && err.contains("offset 0"),
        "{err}"
    );

    write_mnist(dir.path(), idx_images(3, 4), idx_labels(&[1, 12, 3]));
    let err = open_err(DatasetKind::Mnist, dir.path());
    assert!(
        err.contains("train-labels-idx1-ubyte") && err.contains("record 1"),
        "{err}"
    );

    // Every header field is checked: no images, 0×0 images, absurd sides, no labels.
    for ((n, side), what) in [
        ((0, 4), "0 images of 4x4"),
        ((3, 0), "3 images of 0x0"),
        ((1, 70_000), "1 images of 70000x70000"),
    ] {
        let mut header = idx_images(0, 0);
        header[4..8].copy_from_slice(&u32::to_be_bytes(n));
        header[8..12].copy_from_slice(&u32::to_be_bytes(side));
        header[12..16].copy_from_slice(&u32::to_be_bytes(side));
        write_mnist(dir.path(), header, idx_labels(&[1, 2, 3]));
        let err = open_err(DatasetKind::Mnist, dir.path());
        assert!(
            err.contains("train-images-idx3-ubyte") && err.contains(what),
            "{err}"
        );
    }
    write_mnist(dir.path(), idx_images(3, 4), idx_labels(&[]));
    let err = open_err(DatasetKind::Mnist, dir.path());
    assert!(err.contains("0 labels"), "{err}");

    // A corrupt gzip stream.
    std::fs::remove_file(dir.path().join("train-images-idx3-ubyte")).unwrap();
    let mut gz = vec![0x1f, 0x8b];
    gz.extend([1, 2, 3, 4, 5]);
    std::fs::File::create(dir.path().join("train-images-idx3-ubyte.gz"))
        .unwrap()
        .write_all(&gz)
        .unwrap();
    let err = open_err(DatasetKind::Mnist, dir.path());
    assert!(
        err.contains("train-images-idx3-ubyte.gz") && err.contains("gzip"),
        "{err}"
    );
}

#[test]
fn cifar_records() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&base).unwrap();
    let good: Vec<u8> = std::iter::once(3u8)
        .chain(std::iter::repeat_n(9u8, 3072))
        .collect();
    for name in [
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        std::fs::write(base.join(name), &good).unwrap();
    }
    let mut truncated = good.repeat(2);
    truncated.truncate(3073 + 100);
    std::fs::write(base.join("data_batch_1.bin"), &truncated).unwrap();
    let err = open_err(DatasetKind::Cifar10, dir.path());
    assert!(
        err.contains("data_batch_1.bin") && err.contains("record 1"),
        "{err}"
    );

    let mut bad_label = good.repeat(2);
    bad_label[3073] = 42;
    std::fs::write(base.join("data_batch_1.bin"), &bad_label).unwrap();
    let err = open_err(DatasetKind::Cifar10, dir.path());
    assert!(
        err.contains("record 1") && err.contains("label 42"),
        "{err}"
    );
}

#[test]
fn stl10_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("stl10_binary");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("train_X.bin"), vec![0u8; 27648 + 5]).unwrap();
    std::fs::write(base.join("train_y.bin"), [1u8]).unwrap();
    let err = open_err(DatasetKind::Stl10, dir.path());
    assert!(
        err.contains("train_X.bin") && err.contains("image 1"),
        "{err}"
    );

    // A folder dataset opens lazily; the broken JPEG errors when read, naming the file.
    let root = tempfile::tempdir().unwrap();
    let class = root.path().join("train").join("cat");
    std::fs::create_dir_all(&class).unwrap();
    std::fs::write(
        class.join("broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .unwrap();
    let set = DatasetKind::Folder
        .open(Split::Train, root.path(), &OpenOptions::default())
        .unwrap();
    let err = set.get(0).unwrap_err().to_string();
    assert!(err.contains("broken.jpg"), "{err}");

    // Tiny-ImageNet with a bad annotation line.
    let tiny = tempfile::tempdir().unwrap();
    let wnid = tiny.path().join("train/n01/images");
    std::fs::create_dir_all(&wnid).unwrap();
    image::RgbImage::new(4, 4).save(wnid.join("a.png")).unwrap();
    std::fs::create_dir_all(tiny.path().join("val/images")).unwrap();
    std::fs::write(
        tiny.path().join("val/val_annotations.txt"),
        "val_0.JPEG\tn99\t0\t0\t4\t4\n",
    )
    .unwrap();
    let err =
        match DatasetKind::TinyImagenet.open(Split::Test, tiny.path(), &OpenOptions::default()) {
            Ok(_) => panic!("bad annotation accepted"),
            Err(e) => e.to_string(),
        };
    assert!(
        err.contains("val_annotations.txt") && err.contains("line 1") && err.contains("n99"),
        "{err}"
    );
}
