//! The multi-view loader: determinism across thread counts and resumes, shapes, epochs.

use std::sync::Arc;

use burn::data::dataloader::DataLoader;
use burn::tensor::Device;
use sce_data::augment::{Recipe, ViewPipeline};
use sce_data::datasets::InMemoryImages;
use sce_data::{
    DataError, DatasetKind, ImageSource, LoaderConfig, Sample, SkipLog, ViewLoader, eval_batches,
};

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
    loader_of(source(n), threads, SkipLog::strict())
}

fn loader_of(source: Arc<dyn ImageSource>, threads: usize, skip: SkipLog) -> ViewLoader {
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
        skip: Arc::new(skip),
    };
    ViewLoader::new(source, pipeline, config, Device::default()).unwrap()
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
        skip: Arc::new(SkipLog::strict()),
    };
    let err = ViewLoader::new(source(10), pipeline, config, Device::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("do not fill one batch"), "{err}");
}

/// A source whose images `bad` cannot be read and whose image `panics` panics when read.
struct Flaky {
    inner: Arc<dyn ImageSource>,
    bad: Vec<usize>,
    panics: Option<usize>,
}

impl ImageSource for Flaky {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        assert_ne!(Some(index), self.panics, "a decoder bug");
        if self.bad.contains(&index) {
            return Err(DataError::Corrupt {
                path: format!("img-{index}.jpg").into(),
                detail: "truncated".into(),
            });
        }
        self.inner.get(index)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn item_name(&self, index: usize) -> String {
        format!("img-{index}.jpg")
    }
}

fn flaky(bad: &[usize], panics: Option<usize>) -> Arc<dyn ImageSource> {
    Arc::new(Flaky {
        inner: source(24),
        bad: bad.to_vec(),
        panics,
    })
}

#[test]
fn unreadable_images_are_skipped_and_reported_once_or_stop_the_epoch() {
    let warnings = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = warnings.clone();
    let skip = SkipLog::new(true, Box::new(move |w| sink.lock().unwrap().push(w.into())));
    let loader = loader_of(flaky(&[3, 4, 17], None), 2, skip);
    for epoch in 0..2 {
        loader.cursor().set(epoch, 0);
        let batches: Vec<_> = loader.iter().map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 3);
        for b in &batches {
            assert_eq!(b.indices.len(), 8, "whole batches");
        }
    }
    let warnings = warnings.lock().unwrap();
    assert_eq!(warnings.len(), 3, "each image once: {warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("img-17.jpg")));

    let strict = loader_of(flaky(&[5], None), 2, SkipLog::strict());
    strict.cursor().set(0, 0);
    let err = strict
        .iter()
        .find_map(|b| b.err())
        .expect("an unreadable image stops the epoch");
    assert!(err.to_string().contains("img-5.jpg"), "{err}");
}

#[test]
fn a_dead_loader_thread_is_an_error_not_the_end_of_the_epoch() {
    let loader = loader_of(flaky(&[], Some(20)), 1, SkipLog::strict());
    loader.cursor().set(0, 0);
    let results: Vec<_> = loader.iter().collect();
    let last = results.last().unwrap();
    let err = last.as_ref().expect_err("the last item is the error");
    assert!(
        err.to_string().contains("data loader stopped after"),
        "{err}"
    );
    assert!(results.len() <= 3);
}

#[test]
fn evaluation_leaves_unreadable_images_out_only_when_allowed() {
    let source = flaky(&[1, 9], None);
    let transform = sce_data::augment::EvalTransform {
        size: 32,
        crop_fraction: 1.0,
        normalization: DatasetKind::Cifar10.normalization(),
    };
    let device = Device::default();
    let skip = SkipLog::new(true, Box::new(|_| {}));
    let kept: Vec<usize> = eval_batches(&source, &transform, 8, &device, &skip)
        .flat_map(|b| b.unwrap().indices)
        .collect();
    assert_eq!(kept.len(), 22);
    assert!(!kept.contains(&1) && !kept.contains(&9));
    assert_eq!(skip.skipped().len(), 2);

    let strict = SkipLog::strict();
    let err = eval_batches(&source, &transform, 8, &device, &strict)
        .find_map(|b| b.err())
        .unwrap();
    assert!(err.to_string().contains("img-1.jpg"), "{err}");
}
