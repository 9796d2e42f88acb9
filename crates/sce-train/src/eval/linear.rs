//! The linear evaluation protocol (spec §5): a linear classifier trained on the frozen trunk's
//! features with SGD (momentum 0.9, no weight decay), then tested on centre crops.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use burn::data::dataloader::DataLoader;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use sce_data::augment::EvalTransform;
use sce_data::{ImageSource, SkipLog, ViewLoader, eval_batches};
use sce_model::ResNet;
use serde::Serialize;

use crate::console::Console;

/// The classifier of the linear protocol: an optional non-affine BatchNorm, then one Linear.
#[derive(Module, Debug)]
pub struct LinearProbe {
    norm: Option<BatchNorm>,
    pub(crate) linear: Linear,
}

impl LinearProbe {
    pub fn new(features: usize, classes: usize, feature_bn: bool, device: &Device) -> Self {
        // Spec §5: weights N(0, 0.01), bias 0.
        let mut linear = LinearConfig::new(features, classes)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.01,
            })
            .init(device);
        // `zeros_like` makes an untracked tensor: the bias must be asked to require gradients
        // again, or it would never train.
        linear.bias = linear
            .bias
            .map(|b| b.map(|t| t.zeros_like().require_grad()));
        let norm = feature_bn.then(|| {
            let mut bn = BatchNormConfig::new(features).init(device);
            bn.gamma = bn.gamma.set_require_grad(false);
            bn.beta = bn.beta.set_require_grad(false);
            bn
        });
        Self { norm, linear }
    }

    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        let x = match &self.norm {
            Some(bn) => bn.forward(features),
            None => features,
        };
        self.linear.forward(x)
    }
}

/// Epochs and learning-rate schedule of the protocol.
#[derive(Clone, Debug)]
pub struct LinearProtocol {
    pub epochs: usize,
    pub base_lr: f64,
    /// Small images: step decay ×0.1 at 60 % and 80 %; otherwise cosine.
    pub step_decay: bool,
    /// A non-affine BatchNorm before the linear layer (MAE's linear probe).
    pub feature_bn: bool,
}

impl LinearProtocol {
    /// Spec §5: 100 epochs at lr 30 with step decay for small images (≤ 64 pixels), else 90
    /// epochs at 0.4 · batch / 1024 with a cosine schedule; either may be overridden.
    pub fn for_size(
        size: usize,
        batch_size: usize,
        epochs: Option<usize>,
        lr: Option<f64>,
        feature_bn: bool,
    ) -> Self {
        let small = size <= 64;
        Self {
            epochs: epochs.unwrap_or(if small { 100 } else { 90 }),
            base_lr: lr.unwrap_or(if small {
                30.0
            } else {
                0.4 * batch_size as f64 / 1024.0
            }),
            step_decay: small,
            feature_bn,
        }
    }

    pub fn lr_at(&self, epoch: usize) -> f64 {
        let f = epoch as f64 / self.epochs as f64;
        if self.step_decay {
            // Epochs 60 and 80 of 100.
            self.base_lr
                * if f >= 0.8 {
                    0.01
                } else if f >= 0.6 {
                    0.1
                } else {
                    1.0
                }
        } else {
            0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * f).cos())
        }
    }

    pub fn schedule_name(&self) -> &'static str {
        if self.step_decay {
            "step x0.1 at 60%/80%"
        } else {
            "cosine"
        }
    }
}

/// One epoch of classifier training.
#[derive(Clone, Debug, Serialize)]
pub struct LinearEpoch {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub train_top1: f64,
}

/// Top-1 and top-5 accuracy (percent) on `images` test images.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TestAccuracy {
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
}

/// Top-1 and top-5 correct counts of `logits` against `labels`.
pub(crate) fn topk_correct(logits: Tensor<2>, labels: &[usize]) -> (usize, usize) {
    let [n, classes] = logits.dims();
    let k = 5.min(classes);
    let top = sce_ops::topk::top_k_rows(logits, k);
    super::note_host_ranking(&top);
    let mut c1 = 0;
    let mut c5 = 0;
    for (i, &label) in labels.iter().enumerate().take(n) {
        let row = top.row_indices(i);
        c1 += usize::from(row[0] == label);
        c5 += usize::from(row.contains(&label));
    }
    (c1, c5)
}

fn labels_of(labels: Vec<Option<usize>>, role: &str) -> anyhow::Result<Vec<usize>> {
    labels
        .into_iter()
        .map(|l| l.with_context(|| format!("the {role} has unlabelled images")))
        .collect()
}

/// Trains the classifier on the frozen `trunk` (eval mode, plain device) with batches of
/// `loader` (one augmented view each); the classifier trains on `device.autodiff()`.
pub fn train_linear(
    trunk: &ResNet,
    loader: &ViewLoader,
    feature_dim: usize,
    classes: usize,
    protocol: &LinearProtocol,
    device: &Device,
    console: &Console,
) -> anyhow::Result<(LinearProbe, Vec<LinearEpoch>)> {
    let ad = device.clone().autodiff();
    let mut head = LinearProbe::new(feature_dim, classes, protocol.feature_bn, &ad);
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }))
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let epochs = protocol.epochs;
    let mut rows = Vec::with_capacity(epochs);
    for epoch in 0..epochs {
        loader.cursor().set(epoch as u64, 0);
        let lr = protocol.lr_at(epoch);
        let bar = console.bar(
            loader.batches_per_epoch(),
            format!("linear {}/{epochs}", epoch + 1),
        );
        let (mut loss_sum, mut batches, mut correct, mut seen) = (0.0, 0, 0, 0);
        for batch in DataLoader::iter(loader) {
            let batch = batch.map_err(|e| anyhow!("reading training data: {e}"))?;
            let labels = labels_of(batch.labels, "training split")?;
            // Frozen trunk on the plain device; the probe trains on the autodiff one.
            let features = trunk.forward(batch.views[0].clone()).autodiff();
            let logits = head.forward(features);
            let targets = Tensor::<1, Int>::from_data(
                TensorData::new(
                    labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                    [labels.len()],
                ),
                &ad,
            );
            let loss = loss_fn.forward(logits.clone(), targets);
            correct += topk_correct(logits.detach(), &labels).0;
            seen += labels.len();
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                bar.finish_and_clear();
                anyhow::bail!(
                    "the linear classifier diverged (loss {value}) in epoch {}; lower --lr \
                     (now {lr}) or pass --feature-bn",
                    epoch + 1
                );
            }
            loss_sum += value;
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(lr, head, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let row = LinearEpoch {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / batches.max(1) as f64,
            train_top1: 100.0 * correct as f64 / seen.max(1) as f64,
        };
        console.line(format!(
            "linear epoch {}/{epochs}: loss {:.4}  train top-1 {:.2}%  lr {lr}",
            row.epoch, row.loss, row.train_top1
        ));
        rows.push(row);
    }
    Ok((head, rows))
}

/// Accuracy of the trained classifier on `test` (centre crops through `transform`). Non-finite
/// outputs and an empty test split are errors: no accuracy is computed from them.
pub fn test_linear(
    trunk: &ResNet,
    head: &LinearProbe,
    test: &Arc<dyn ImageSource>,
    transform: &EvalTransform,
    batch_size: usize,
    device: &Device,
    skip: &SkipLog,
) -> anyhow::Result<TestAccuracy> {
    let head = head.valid();
    let (mut c1, mut c5, mut n) = (0, 0, 0);
    for batch in eval_batches(test, transform, batch_size, device, skip) {
        let batch = batch.context("cannot read a test image")?;
        let labels = labels_of(batch.labels, "test split")?;
        let logits = head.forward(trunk.forward(batch.images));
        let non_finite = logits.clone().is_finite().bool_not().any();
        anyhow::ensure!(
            !non_finite.into_scalar::<bool>(),
            "the linear classifier's outputs on test images hold NaN or infinite values"
        );
        let (a, b) = topk_correct(logits, &labels);
        c1 += a;
        c5 += b;
        n += labels.len();
    }
    anyhow::ensure!(n > 0, "the test split is empty");
    Ok(TestAccuracy {
        top1: 100.0 * c1 as f64 / n as f64,
        top5: 100.0 * c5 as f64 / n as f64,
        images: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_protocol() {
        let small = LinearProtocol::for_size(32, 256, None, None, false);
        assert_eq!((small.epochs, small.base_lr), (100, 30.0));
        assert_eq!(small.lr_at(59), 30.0);
        assert!((small.lr_at(60) - 3.0).abs() < 1e-12);
        assert!((small.lr_at(80) - 0.3).abs() < 1e-12);
        let large = LinearProtocol::for_size(224, 256, None, None, false);
        assert_eq!((large.epochs, large.base_lr), (90, 0.1));
        assert_eq!(large.lr_at(0), 0.1);
        assert!(large.lr_at(89) < 1e-3);
    }

    /// Both the weights and the bias of the classifier train (a zero-initialised bias once
    /// silently did not).
    #[test]
    fn every_parameter_of_the_classifier_trains() {
        let ad = Device::default().autodiff();
        let head = LinearProbe::new(3, 2, false, &ad);
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.5, 0.0, 1.0, -0.5], [2, 3]),
            &ad,
        );
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &ad);
        let loss = CrossEntropyLossConfig::new()
            .init(&ad)
            .forward(head.forward(x), targets);
        let grads = GradientsParams::from_grads(loss.backward(), &head);
        let values = |head: &LinearProbe| {
            let flat = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            (
                flat(head.linear.weight.val().flatten(0, 1)),
                flat(head.linear.bias.as_ref().unwrap().val()),
            )
        };
        let before = values(&head);
        let after = values(&SgdConfig::new().init().step(0.1, head, grads));
        assert_ne!(before.0, after.0, "the weights moved");
        assert_ne!(before.1, after.1, "the bias moved");
    }

    #[test]
    fn ties_and_top5_are_counted_from_the_ranking() {
        let device = Device::default();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![0.1f32, 0.9, 0.0, 0.8, 0.1, 0.1], [2, 3]),
            &device,
        );
        assert_eq!(topk_correct(logits, &[1, 2]), (1, 2));
    }
}
