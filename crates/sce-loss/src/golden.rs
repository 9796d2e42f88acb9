//! The golden-vector format of `shared/golden/sce_loss.json`: SCE losses and dL/dq computed
//! independently in float64. The unit tests and `sce-train check` both judge the loss with it.

use serde::Deserialize;

/// The vectors shipped with the crate (a copy of `shared/golden/sce_loss.json`).
pub const BUNDLED: &str = include_str!("../tests/fixtures/sce_loss.json");

#[derive(Debug, Deserialize)]
pub struct GoldenFile {
    pub cases: Vec<GoldenCase>,
}

/// One case: L2-normalised rows `q`, `k`, `queue`; the batch-mean `loss` and `grad_q = dL/dq`.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub tau: f64,
    pub tau_m: f64,
    pub lambda: f64,
    pub q: Vec<Vec<f64>>,
    pub k: Vec<Vec<f64>>,
    pub queue: Vec<Vec<f64>>,
    pub loss: f64,
    pub grad_q: Vec<Vec<f64>>,
}

impl GoldenFile {
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_vectors_parse_and_are_consistent() {
        let golden = GoldenFile::parse(BUNDLED).unwrap();
        assert!(!golden.cases.is_empty());
        for case in &golden.cases {
            assert_eq!(case.q.len(), case.grad_q.len());
            assert_eq!(case.q.len(), case.k.len());
            assert!(case.loss.is_finite());
        }
    }
}
