//! Evaluation of learned representations (spec §5): weighted kNN, the linear protocol,
//! embeddings and retrieval.

mod features;
mod knn;

pub use features::{FeatureSet, extract_features};
pub use knn::{KnnEvaluator, KnnResult, knn_classify};
