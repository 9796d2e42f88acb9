//! The multi-view loader: determinism across thread counts and resumes, shapes, epochs.

use std::sync::Arc;

use burn::data::dataloader::DataLoader;
use burn::tensor::Device;
use sce_data::augment::{Recipe, ViewPipeline};
use sce_data::datasets::InMemoryImages;
use sce_data::{DatasetKind, ImageSource, LoaderConfig, ViewLoader};

fn source(n: usize) -> Arc<dyn ImageSource> {
    let pixels: Vec<u8> = (0..n * 32 * 32 * 3)
        .map(|i| ((i * 7919) % 251) as u8)
        .collect();
    let labels = (0..n).map(|i| Some((i % 10) as u16)).collect();
    Arc::new(InMemoryImages::new(
        "synthetic",
        (32, 32, 3),
        pixels,
        labels,
        10,
    ))
}

fn loader(threads: usize, n: usize) -> ViewLoader {
    let pipeline = ViewPipeline::new(
        Recipe::SmallAsym.views(32),
        DatasetKind::Cifar10.normalization(),
    )
    .unwrap();
    let config = LoaderConfig {
        batch_size: 8,
        drop_last: true,
        shuffle: true,
        seed: 42,
        threads: Some(threads),
        prefetch: 2,
        skip_corrupt: false,
    };
    ViewLoader::new(source(n), pipeline, config, Device::default()).unwrap()
}

#[test]
fn same_seed_gives_the_same_batch_with_one_or_two_threads() {
    let one = loader(1, 40).host_batch(3, 2).unwrap();
    let two = loader(2, 40).host_batch(3, 2).unwrap();
    assert_eq!(one, two);
    let other_epoch = loader(2, 40).host_batch(4, 2).unwrap();
    assert_ne!(one.indices, other_epoch.indices);
    assert_eq!(one.views.len(), 2);
    assert_eq!(one.views[0].1, [8, 3, 32, 32]);
}

#[test]
fn iterating_yields_whole_batches_and_resumes_mid_epoch() {
    let loader = loader(2, 43);
    assert_eq!(
        loader.batches_per_epoch(),
        5,
        "43 images, batch 8, drop_last"
    );
    loader.cursor().set(1, 0);
    let full: Vec<_> = loader.iter().map(|b| b.unwrap()).collect();
    assert_eq!(full.len(), 5);
    assert!(full.iter().all(|b| b.views[1].dims() == [8, 3, 32, 32]));

    // A resume at batch 3 of the same epoch reproduces batches 3 and 4 exactly.
    loader.cursor().set(1, 3);
    let resumed: Vec<_> = loader.iter().map(|b| b.unwrap()).collect();
    assert_eq!(resumed.len(), 2);
    for (a, b) in resumed.iter().zip(&full[3..]) {
        assert_eq!(a.indices, b.indices);
        let (x, y) = (a.views[1].to_data(), b.views[1].to_data());
        assert_eq!(x, y);
    }
    loader.cursor().set(1, 0);
    assert_eq!(loader.iter().count(), 5);

    // Two shards split the epoch's batches between them: even and odd batch indices.
    let even = loader.shard(0, 2, &Device::default());
    let odd = loader.shard(1, 2, &Device::default());
    assert_eq!((even.batches_per_epoch(), odd.batches_per_epoch()), (2, 2));
    let shards: Vec<Vec<usize>> = [&even, &odd]
        .iter()
        .flat_map(|s| s.iter().map(|b| b.unwrap().indices).collect::<Vec<_>>())
        .collect();
    assert_eq!(shards[0], full[0].indices);
    assert_eq!(shards[1], full[2].indices);
    assert_eq!(shards[2], full[1].indices);
    assert_eq!(shards[3], full[3].indices);
}

#[test]
fn a_dataset_smaller_than_a_batch_is_refused() {
    let pipeline = ViewPipeline::new(
        Recipe::SmallAsym.views(32),
        DatasetKind::Cifar10.normalization(),
    )
    .unwrap();
    let config = LoaderConfig {
        batch_size: 64,
        drop_last: true,
        shuffle: true,
        seed: 0,
        threads: None,
        prefetch: 1,
        skip_corrupt: false,
    };
    let err = ViewLoader::new(source(10), pipeline, config, Device::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("do not fill one batch"), "{err}");
}
