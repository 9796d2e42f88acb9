//! Batches of augmented views as Burn tensors: samples augmented in parallel with rayon, a
//! producer thread preparing batches ahead of the training step, every random choice drawn from
//! (seed, epoch, sample index).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::{Device, Tensor, TensorData};
use fast_image_resize::Resizer;
use rayon::prelude::*;

use crate::augment::{EvalTransform, Planes, ViewPipeline};
use crate::datasets::{ImageSource, Sample};
use crate::rng::{epoch_order, sample_rng};
use crate::{DataError, SkipLog};

/// One training batch: a `[batch, channels, size, size]` tensor per view.
#[derive(Clone, Debug)]
pub struct ViewBatch {
    pub views: Vec<Tensor<4>>,
    pub labels: Vec<Option<usize>>,
    /// Dataset indices of the samples, in batch order.
    pub indices: Vec<usize>,
    /// The shard of the epoch's batches it comes from (0 unsharded): in multi-device training,
    /// its replica's place, which orders the replicas' keys in the queue.
    pub shard: usize,
}

/// A batch still on the host: per view the floats of a `[batch, c, h, w]` tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    pub views: Vec<(Vec<f32>, [usize; 4])>,
    pub labels: Vec<Option<usize>>,
    pub indices: Vec<usize>,
}

impl HostBatch {
    /// Stacks per-sample view planes (`planes[sample][view]`) into per-view buffers.
    fn stack(planes: Vec<Vec<Planes>>, labels: Vec<Option<usize>>, indices: Vec<usize>) -> Self {
        let n = planes.len();
        let views = (0..planes.first().map_or(0, Vec::len))
            .map(|v| {
                let first = &planes[0][v];
                let shape = [n, first.channels, first.height, first.width];
                let mut data = Vec::with_capacity(shape.iter().product());
                for sample in &planes {
                    data.extend_from_slice(&sample[v].data);
                }
                (data, shape)
            })
            .collect();
        Self {
            views,
            labels,
            indices,
        }
    }

    pub fn into_tensors(self, device: &Device) -> ViewBatch {
        ViewBatch {
            views: self
                .views
                .into_iter()
                .map(|(data, shape)| Tensor::from_data(TensorData::new(data, shape), device))
                .collect(),
            labels: self.labels,
            indices: self.indices,
            shard: 0,
        }
    }
}

/// How batches are formed.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Drop the last incomplete batch (the queue needs a constant number of keys per step).
    pub drop_last: bool,
    pub shuffle: bool,
    pub seed: u64,
    /// Augmentation threads; `None` uses rayon's global pool.
    pub threads: Option<usize>,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Whether an unreadable image stops the epoch or is replaced by the next readable one
    /// (and reported there).
    pub skip: Arc<SkipLog>,
}

/// Which epoch `iter()` produces and from which batch it starts (resumes); set before each
/// pass, shared by all shards.
#[derive(Debug, Default)]
pub struct Cursor {
    epoch: AtomicU64,
    start_batch: AtomicUsize,
}

impl Cursor {
    pub fn set(&self, epoch: u64, start_batch: usize) {
        self.epoch.store(epoch, Ordering::SeqCst);
        self.start_batch.store(start_batch, Ordering::SeqCst);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

struct Shared {
    source: Arc<dyn ImageSource>,
    pipeline: ViewPipeline,
    config: LoaderConfig,
    pool: Option<rayon::ThreadPool>,
    /// Indices already found unreadable: skipped at once, never read again.
    unreadable: Mutex<HashSet<usize>>,
}

/// A Burn [`DataLoader`] of augmented multi-view batches.
///
/// A shard (for multi-device training) yields every `count`-th batch of the epoch starting at
/// `index`, so N devices together see each batch once and the split does not depend on timing.
#[derive(Clone)]
pub struct ViewLoader {
    shared: Arc<Shared>,
    cursor: Arc<Cursor>,
    device: Device,
    shard: (usize, usize),
}

fn pool(threads: Option<usize>) -> Result<Option<rayon::ThreadPool>, DataError> {
    threads
        .map(|n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| {
                    DataError::Config(format!("cannot start {n} augmentation threads: {e}"))
                })
        })
        .transpose()
}

impl ViewLoader {
    pub fn new(
        source: Arc<dyn ImageSource>,
        pipeline: ViewPipeline,
        config: LoaderConfig,
        device: Device,
    ) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::Config("batch size must be >= 1".into()));
        }
        if config.drop_last && source.len() < config.batch_size {
            return Err(DataError::Config(format!(
                "the {} training images do not fill one batch of {}",
                source.len(),
                config.batch_size
            )));
        }
        if source.channels() != pipeline.normalization.mean.len() {
            return Err(DataError::Config(format!(
                "images have {} channels but the normalisation has {} values",
                source.channels(),
                pipeline.normalization.mean.len()
            )));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                pool: pool(config.threads)?,
                source,
                pipeline,
                config,
                unreadable: Mutex::new(HashSet::new()),
            }),
            cursor: Arc::new(Cursor::default()),
            device,
            shard: (0, 1),
        })
    }

    /// Shard `index` of `count` on `device`, sharing this loader's data, pipeline and cursor.
    pub fn shard(&self, index: usize, count: usize, device: &Device) -> Self {
        assert!(index < count, "shard {index} of {count}");
        Self {
            shard: (index, count),
            device: device.clone(),
            ..self.clone()
        }
    }

    /// Handle to choose the epoch (and first batch) of the next pass.
    pub fn cursor(&self) -> Arc<Cursor> {
        self.cursor.clone()
    }

    /// Batches this loader (or shard) yields per epoch; shards all get the same count.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.shared.source.len(), self.shared.config.batch_size);
        let all = if self.shared.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        };
        all / self.shard.1
    }

    /// Dataset indices of batch `batch` of `epoch`.
    pub fn batch_indices(&self, epoch: u64, batch: usize) -> Vec<usize> {
        let c = &self.shared.config;
        let n = self.shared.source.len();
        let order: Vec<usize> = if c.shuffle {
            epoch_order(c.seed, epoch, n)
        } else {
            (0..n).collect()
        };
        let start = batch * c.batch_size;
        order[start.min(n)..(start + c.batch_size).min(n)].to_vec()
    }

    /// Sample `index`, or with skipping on, the next readable one after it.
    fn sample(&self, index: usize) -> Result<Sample, DataError> {
        let source = &self.shared.source;
        let unreadable = |i: usize| self.shared.unreadable.lock().unwrap().contains(&i);
        let mut first_error = None;
        for i in (0..source.len()).map(|step| (index + step) % source.len()) {
            if unreadable(i) {
                continue;
            }
            match source.get(i) {
                Ok(sample) => return Ok(sample),
                Err(e) if self.shared.config.skip.skip(&source.item_name(i), &e) => {
                    self.shared.unreadable.lock().unwrap().insert(i);
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or_else(|| {
            DataError::Config(format!(
                "every image of {} is unreadable",
                source.item_name(index)
            ))
        }))
    }

    /// Augments batch `batch` of `epoch` on the host; the same call always gives the same
    /// floats, whatever the number of threads.
    pub fn host_batch(&self, epoch: u64, batch: usize) -> Result<HostBatch, DataError> {
        let indices = self.batch_indices(epoch, batch);
        let seed = self.shared.config.seed;
        let work = || {
            indices
                .par_iter()
                .map_init(Resizer::new, |resizer, &i| {
                    let sample = self.sample(i)?;
                    let mut rng = sample_rng(seed, epoch, i as u64);
                    let views = self.shared.pipeline.apply(&sample.image, &mut rng, resizer);
                    Ok((views, sample.label))
                })
                .collect::<Result<Vec<_>, DataError>>()
        };
        let results = match &self.shared.pool {
            Some(pool) => pool.install(work)?,
            None => work()?,
        };
        let (planes, labels): (Vec<_>, Vec<_>) = results.into_iter().unzip();
        Ok(HostBatch::stack(planes, labels, indices))
    }
}

struct ViewIter {
    receiver: Receiver<Result<ViewBatch, DataError>>,
    done: usize,
    total: usize,
    batch_size: usize,
}

impl Iterator for ViewIter {
    type Item = Result<ViewBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.receiver.recv() {
            Ok(item) => {
                self.done += 1;
                Some(item.map_err(DatasetError::new))
            }
            // The producer ended early without sending an error: it died (a panic while
            // augmenting). That is no end of epoch.
            Err(_) if self.done < self.total => {
                let done = std::mem::replace(&mut self.done, self.total);
                Some(Err(DatasetError::new(DataError::Config(format!(
                    "the data loader stopped after {done} of {} batches (its thread died)",
                    self.total
                )))))
            }
            Err(_) => None,
        }
    }
}

impl DataLoaderIterator<ViewBatch> for ViewIter {
    fn progress(&self) -> Progress {
        Progress::new(
            self.done * self.batch_size,
            self.total * self.batch_size,
            None,
        )
    }
}

impl DataLoader<ViewBatch> for ViewLoader {
    /// Starts a producer thread for the cursor's epoch and first batch, `prefetch` batches
    /// ahead.
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ViewBatch> + 'a> {
        let epoch = self.cursor.epoch();
        let start = self.cursor.start_batch.load(Ordering::SeqCst);
        let total = self.batches_per_epoch();
        let (sender, receiver) = sync_channel(self.shared.config.prefetch.max(1));
        let loader = self.clone();
        let (index, count) = self.shard;
        std::thread::spawn(move || {
            for batch in start..total {
                let item = loader
                    .host_batch(epoch, batch * count + index)
                    .map(|host| ViewBatch {
                        shard: index,
                        ..host.into_tensors(&loader.device)
                    });
                let failed = item.is_err();
                if sender.send(item).is_err() || failed {
                    break;
                }
            }
        });
        Box::new(ViewIter {
            receiver,
            done: start,
            total,
            batch_size: self.shared.config.batch_size,
        })
    }

    fn num_items(&self) -> usize {
        self.batches_per_epoch() * self.shared.config.batch_size
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<ViewBatch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<ViewBatch>> {
        // Every device sees the whole epoch order; multi-device training splits each batch
        // instead (see sce-train's scale-out notes).
        Arc::new(self.clone())
    }
}

/// Deterministic evaluation batches (no augmentation): `(images, labels, indices)` per
/// batch. Unreadable images are left out when `skip` allows it (the indices say which images
/// a batch holds), else they are an error.
pub fn eval_batches<'a>(
    source: &'a Arc<dyn ImageSource>,
    transform: &'a EvalTransform,
    batch_size: usize,
    device: &'a Device,
    skip: &'a SkipLog,
) -> impl Iterator<Item = Result<EvalBatch, DataError>> + 'a {
    let n = source.len();
    (0..n.div_ceil(batch_size.max(1)))
        .map(move |b| {
            let indices: Vec<usize> = (b * batch_size..((b + 1) * batch_size).min(n)).collect();
            let results = indices
                .par_iter()
                .map_init(Resizer::new, |resizer, &i| match source.get(i) {
                    Ok(sample) => Ok(Some((
                        vec![transform.apply(&sample.image, resizer)],
                        sample.label,
                        i,
                    ))),
                    Err(e) if skip.skip(&source.item_name(i), &e) => Ok(None),
                    Err(e) => Err(e),
                })
                .collect::<Result<Vec<_>, DataError>>()?;
            let kept: Vec<_> = results.into_iter().flatten().collect();
            if kept.is_empty() {
                return Ok(None);
            }
            let mut planes = Vec::with_capacity(kept.len());
            let mut labels = Vec::with_capacity(kept.len());
            let mut indices = Vec::with_capacity(kept.len());
            for (p, l, i) in kept {
                planes.push(p);
                labels.push(l);
                indices.push(i);
            }
            let mut batch = HostBatch::stack(planes, labels, indices).into_tensors(device);
            Ok(Some(EvalBatch {
                images: batch.views.remove(0),
                labels: batch.labels,
                indices: batch.indices,
            }))
        })
        .filter_map(Result::transpose)
}

/// One batch of evaluation images.
pub struct EvalBatch {
    pub images: Tensor<4>,
    pub labels: Vec<Option<usize>>,
    /// Dataset indices of the images, in batch order.
    pub indices: Vec<usize>,
}
