//! The online linear probe (spec §5.3; solo-learn's headline metric during pretraining): a
//! linear classifier trained step by step on the *detached* trunk features of the labelled
//! training batches, with its own Adam optimizer. It reads the features the step computed
//! anyway, so it costs one small matrix product per step, and it can never change the trunk:
//! its loss has no path to the trunk's parameters, and its gradients go to its own optimizer.

use anyhow::anyhow;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::eval::{LinearProbe, topk_correct};
use crate::model::ProbeInput;

/// Names of the probe's records in a checkpoint, beside Burn's three.
pub const PROBE_RECORDS: [&str; 2] = ["probe", "probe_optim"];

pub struct OnlineProbe {
    /// `None` only while an optimizer step holds it.
    classifier: Option<LinearProbe>,
    optim: ModuleOptimizer,
    lr: f64,
    /// The training device (autodiff) the classifier lives on.
    device: Device,
}

impl OnlineProbe {
    /// A fresh classifier (weights N(0, 0.01), bias 0, as the linear protocol) on `device`,
    /// which must be an autodiff device.
    pub fn new(features: usize, classes: usize, lr: f64, device: &Device) -> Self {
        Self {
            classifier: Some(LinearProbe::new(features, classes, false, device)),
            optim: AdamConfig::new().init(),
            lr,
            device: device.clone(),
        }
    }

    fn classifier(&self) -> &LinearProbe {
        self.classifier
            .as_ref()
            .expect("the classifier is back after each step")
    }

    /// One Adam step on the labelled rows of `input`; returns how many of them the classifier
    /// got right *before* the step (solo-learn's training accuracy) and how many were labelled.
    pub fn train_step(&mut self, input: ProbeInput) -> (usize, usize) {
        let rows: Vec<i64> = (0..input.labels.len())
            .filter(|&i| input.labels[i].is_some())
            .map(|i| i as i64)
            .collect();
        if rows.is_empty() {
            return (0, 0);
        }
        let labels: Vec<usize> = input.labels.iter().flatten().copied().collect();
        let mut features = input.features.detach().to_device(&self.device);
        if rows.len() < input.labels.len() {
            let index =
                Tensor::<1, Int>::from_data(TensorData::new(rows, [labels.len()]), &self.device);
            features = features.select(0, index);
        }
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(
                labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                [labels.len()],
            ),
            &self.device,
        );
        let classifier = self.classifier.take().expect("not inside a step");
        let logits = classifier.forward(features);
        let correct = topk_correct(logits.clone().detach(), &labels).0;
        let loss = CrossEntropyLossConfig::new()
            .init(&self.device)
            .forward(logits, targets);
        let grads = GradientsParams::from_grads(loss.backward(), &classifier);
        self.classifier = Some(self.optim.step(self.lr, classifier, grads));
        (correct, labels.len())
    }

    /// Top-1 accuracy (percent) on unnormalised trunk features of held-out images, on the
    /// plain (non-autodiff) device. Non-finite outputs are an error, never a score.
    pub fn accuracy(&self, features: Tensor<2>, labels: &[usize]) -> anyhow::Result<f64> {
        anyhow::ensure!(!labels.is_empty(), "the probe's test set is empty");
        let logits = self.classifier().valid().forward(features);
        let non_finite = logits.clone().is_finite().bool_not().any();
        anyhow::ensure!(
            !non_finite.into_scalar::<bool>(),
            "the online probe's outputs hold NaN or infinite values"
        );
        Ok(100.0 * topk_correct(logits, labels).0 as f64 / labels.len() as f64)
    }

    /// The path of the classifier's first tensor holding NaN or an infinity, if any.
    pub fn first_non_finite(&self) -> Option<String> {
        sce_model::params::first_non_finite(self.classifier())
    }

    /// The classifier's weights and its optimizer's state, to be checkpointed.
    pub fn records(&self) -> (ModuleRecord, OptimizerRecord) {
        (
            self.classifier().clone().into_record(),
            self.optim.to_record(),
        )
    }

    /// Continues from checkpointed records (see [`records`](Self::records)).
    pub fn load(
        mut self,
        classifier: ModuleRecord,
        optim: OptimizerRecord,
    ) -> anyhow::Result<Self> {
        let loaded = self
            .classifier()
            .clone()
            .try_load_record(classifier)
            .map_err(|e| anyhow!("the probe record does not fit the probe: {e}"))?;
        self.classifier = Some(loaded);
        self.optim = self.optim.load_record(optim);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Four classes, each a noisy direction of a 16-dimensional space, as trunk features.
    fn separable(n: usize, seed: u64, device: &Device) -> (Tensor<2>, Vec<usize>) {
        device.seed(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let mut centres = vec![0.0f32; n * 16];
        for (i, &l) in labels.iter().enumerate() {
            centres[i * 16 + l * 4] = 3.0;
        }
        let noise = Tensor::<2>::random([n, 16], Distribution::Normal(0.0, 1.0), device);
        let x = Tensor::<2>::from_data(TensorData::new(centres, [n, 16]), device) + noise;
        (x, labels)
    }

    #[test]
    fn it_learns_from_labelled_rows_only() {
        let ad = Device::default().autodiff();
        let mut probe = OnlineProbe::new(16, 4, 1e-2, &ad);
        let (test, test_labels) = separable(256, 1, &Device::default());
        let before = probe.accuracy(test.clone(), &test_labels).unwrap();
        let mut last = (0, 0);
        for step in 0..60 {
            let (x, labels) = separable(64, 100 + step, &ad);
            // Every fifth image unlabelled (an unlabelled split mixed in): skipped.
            let labels: Vec<Option<usize>> = labels
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i % 5 != 4).then_some(l))
                .collect();
            last = probe.train_step(ProbeInput {
                features: x,
                labels,
            });
        }
        assert_eq!(last.1, 52, "only the labelled rows are counted");
        let after = probe.accuracy(test, &test_labels).unwrap();
        assert!(
            after > 90.0 && after > before + 30.0,
            "{before}% → {after}%"
        );
        assert_eq!(
            probe.train_step(ProbeInput {
                features: Tensor::zeros([2, 16], &ad),
                labels: vec![None, None],
            }),
            (0, 0)
        );
    }

    /// Restoring the records continues the same trajectory as never stopping.
    #[test]
    fn records_restore_the_classifier_and_adam() {
        let ad = Device::default().autodiff();
        let batch = |seed| {
            let (x, labels) = separable(32, seed, &ad);
            ProbeInput {
                features: x,
                labels: labels.into_iter().map(Some).collect(),
            }
        };
        ad.seed(5);
        let mut a = OnlineProbe::new(16, 4, 1e-2, &ad);
        for s in 0..3 {
            a.train_step(batch(s));
        }
        let (classifier, optim) = a.records();
        ad.seed(6);
        let mut b = OnlineProbe::new(16, 4, 1e-2, &ad)
            .load(classifier, optim)
            .unwrap();
        for s in 3..6 {
            assert_eq!(a.train_step(batch(s)), b.train_step(batch(s)), "step {s}");
        }
        let (test, labels) = separable(64, 9, &Device::default());
        let logits = |p: &OnlineProbe| {
            p.classifier()
                .valid()
                .forward(test.clone())
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(logits(&a), logits(&b));
        assert!(a.accuracy(test, &labels).is_ok());
    }
}
