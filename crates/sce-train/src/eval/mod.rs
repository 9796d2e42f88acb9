//! Evaluation of learned representations (spec §5): weighted kNN, the linear protocol,
//! embeddings and retrieval.

mod features;
mod knn;
mod linear;

pub use features::{FeatureSet, extract_features};
pub(crate) use knn::note_host_ranking;
pub use knn::{KnnEvaluation, KnnEvaluator, KnnResult, TestProbe, centred_on_bank, knn_classify};
pub(crate) use linear::topk_correct;
pub use linear::{
    LinearEpoch, LinearProbe, LinearProtocol, TestAccuracy, test_linear, train_linear,
};
