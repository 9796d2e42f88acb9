use std::sync::Arc;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use sce_data::augment::EvalTransform;
use sce_data::{ImageSource, SkipLog, eval_batches};
use sce_model::l2_normalize;

/// Features of a split, with the labels and dataset indices of the images (unreadable images
/// skipped under `data.skip_corrupt` are absent).
pub struct FeatureSet {
    pub features: Tensor<2>,
    pub labels: Vec<Option<usize>>,
    pub indices: Vec<usize>,
}

impl FeatureSet {
    /// The same set with L2-normalised features, as kNN and retrieval compare them.
    pub fn normalized(self) -> Self {
        Self {
            features: l2_normalize(self.features),
            ..self
        }
    }
}

/// Embeds every image of `source` with `embed` (a frozen network in eval mode), unnormalised.
/// Features holding NaN or infinite values are an error naming the images: nothing downstream
/// may score them.
pub fn extract_features(
    source: &Arc<dyn ImageSource>,
    transform: &EvalTransform,
    batch_size: usize,
    device: &Device,
    skip: &SkipLog,
    embed: &dyn Fn(Tensor<4>) -> Tensor<2>,
) -> anyhow::Result<FeatureSet> {
    let mut features = Vec::new();
    let mut labels = Vec::with_capacity(source.len());
    let mut indices = Vec::with_capacity(source.len());
    for batch in eval_batches(source, transform, batch_size, device, skip) {
        let batch = batch.context("cannot read an evaluation image")?;
        let batch_features = embed(batch.images);
        let non_finite = batch_features.clone().is_finite().bool_not().any();
        if non_finite.into_scalar::<bool>() {
            anyhow::bail!(
                "the features of images {} to {} hold NaN or infinite values (a diverged \
                 network or degenerate images)",
                source.item_name(batch.indices[0]),
                source.item_name(*batch.indices.last().unwrap())
            );
        }
        features.push(batch_features);
        labels.extend(batch.labels);
        indices.extend(batch.indices);
    }
    anyhow::ensure!(!features.is_empty(), "the evaluation split is empty");
    Ok(FeatureSet {
        features: Tensor::cat(features, 0),
        labels,
        indices,
    })
}
