use std::sync::Arc;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use sce_data::augment::EvalTransform;
use sce_data::{ImageSource, eval_batches};
use sce_model::l2_normalize;

/// Embeds every image of `source` with `embed` (a frozen network in eval mode) and returns the
/// L2-normalised features `[n, d]` with the labels.
pub fn extract_features(
    source: &Arc<dyn ImageSource>,
    transform: &EvalTransform,
    batch_size: usize,
    device: &Device,
    embed: &dyn Fn(Tensor<4>) -> Tensor<2>,
) -> anyhow::Result<(Tensor<2>, Vec<Option<usize>>)> {
    let mut features = Vec::new();
    let mut labels = Vec::with_capacity(source.len());
    for batch in eval_batches(source, transform, batch_size, device) {
        let (images, batch_labels) = batch.context("cannot read an evaluation image")?;
        features.push(l2_normalize(embed(images)));
        labels.extend(batch_labels);
    }
    anyhow::ensure!(!features.is_empty(), "the evaluation split is empty");
    Ok((Tensor::cat(features, 0), labels))
}
