use std::sync::Arc;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use sce_data::ImageSource;
use sce_data::augment::EvalTransform;
use sce_model::ResNet;
use serde::Serialize;

use super::extract_features;

/// Accuracy of a kNN classification, in percent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
}

/// Weighted cosine kNN (InstDisc protocol, as solo-learn): each of the `k` nearest bank
/// features votes for its class with weight `exp(similarity / temperature)`. Features must be
/// L2-normalised. Similarities and top-k run on the device, in chunks of queries; the votes are
/// counted on the host.
pub fn knn_classify(
    bank: Tensor<2>,
    bank_labels: &[usize],
    queries: Tensor<2>,
    query_labels: &[usize],
    k: usize,
    temperature: f64,
    classes: usize,
) -> KnnResult {
    let [n_bank, _] = bank.dims();
    let [n_query, _] = queries.dims();
    let k = k.min(n_bank);
    let bank_t = bank.transpose();
    let (mut top1, mut top5) = (0usize, 0usize);
    let chunk = 256;
    for start in (0..n_query).step_by(chunk) {
        let len = chunk.min(n_query - start);
        let sims = queries.clone().narrow(0, start, len).matmul(bank_t.clone());
        let (values, indices) = sims.topk_with_indices(k, 1);
        let values: Vec<f32> = values.into_data().convert::<f32>().try_to_vec().unwrap();
        let indices: Vec<i64> = indices.into_data().convert::<i64>().try_to_vec().unwrap();
        for q in 0..len {
            let mut scores = vec![0.0f64; classes];
            for j in 0..k {
                let label = bank_labels[indices[q * k + j] as usize];
                scores[label] += (values[q * k + j] as f64 / temperature).exp();
            }
            let truth = query_labels[start + q];
            let better = scores.iter().filter(|&&s| s > scores[truth]).count();
            top1 += usize::from(better == 0);
            top5 += usize::from(better < 5);
        }
    }
    let pct = |c: usize| 100.0 * c as f64 / n_query.max(1) as f64;
    KnnResult {
        top1: pct(top1),
        top5: pct(top5),
    }
}

/// kNN of a frozen trunk: features of a labelled bank (training images) classify a labelled
/// test split.
pub struct KnnEvaluator {
    pub bank: Arc<dyn ImageSource>,
    pub test: Arc<dyn ImageSource>,
    pub transform: EvalTransform,
    pub batch_size: usize,
    pub k: usize,
    pub temperature: f64,
    pub device: Device,
}

fn labels(
    source: &Arc<dyn ImageSource>,
    labels: Vec<Option<usize>>,
    role: &str,
) -> anyhow::Result<Vec<usize>> {
    labels
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            l.with_context(|| format!("{role} image {} has no label", source.item_name(i)))
        })
        .collect()
}

impl KnnEvaluator {
    pub fn classes(&self) -> usize {
        self.bank.num_classes().max(self.test.num_classes())
    }

    /// kNN accuracy of the features produced by `embed`.
    pub fn evaluate_with(
        &self,
        embed: &dyn Fn(Tensor<4>) -> Tensor<2>,
    ) -> anyhow::Result<KnnResult> {
        let (bank, bank_labels) = extract_features(
            &self.bank,
            &self.transform,
            self.batch_size,
            &self.device,
            embed,
        )?;
        let (test, test_labels) = extract_features(
            &self.test,
            &self.transform,
            self.batch_size,
            &self.device,
            embed,
        )?;
        Ok(knn_classify(
            bank,
            &labels(&self.bank, bank_labels, "kNN bank")?,
            test,
            &labels(&self.test, test_labels, "kNN test")?,
            self.k,
            self.temperature,
            self.classes(),
        ))
    }

    /// kNN of a trunk, which must be in evaluation mode on `self.device`.
    pub fn evaluate(&self, trunk: &ResNet) -> anyhow::Result<KnnResult> {
        self.evaluate_with(&|x| trunk.forward(x))
    }

    /// The same protocol on raw (normalised) pixels: the floor a representation should beat.
    pub fn evaluate_pixels(&self) -> anyhow::Result<KnnResult> {
        self.evaluate_with(&|x: Tensor<4>| {
            let [n, c, h, w] = x.dims();
            x.reshape([n, c * h * w])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn rows(v: &[[f32; 2]], device: &Device) -> Tensor<2> {
        let flat: Vec<f32> = v.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [v.len(), 2]), device)
    }

    /// Bank: three points near +x (class 0), two near +y (class 1). A query at +x with k = 5:
    /// class 0 collects exp(≈1/T)·3 against class 1's exp(≈0/T)·2 → class 0.
    #[test]
    fn weighted_vote_by_hand() {
        let device = Device::default();
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let bank = rows(
            &[
                [1.0, 0.0],
                [0.995, 0.0998],
                [0.995, -0.0998],
                [0.0, 1.0],
                [s, s],
            ],
            &device,
        );
        let labels = [0, 0, 0, 1, 1];
        let queries = rows(&[[1.0, 0.0], [0.0, 1.0]], &device);
        let r = knn_classify(bank.clone(), &labels, queries.clone(), &[0, 1], 5, 0.1, 2);
        assert_eq!(r.top1, 100.0);
        // Swapped truth: both wrong at top-1, right at top-5 (only 2 classes).
        let r = knn_classify(bank, &labels, queries, &[1, 0], 5, 0.1, 2);
        assert_eq!((r.top1, r.top5), (0.0, 100.0));
    }
}
