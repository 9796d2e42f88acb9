//! The loss and its gradient against vectors computed independently in float64.
//!
//! Reads `$SCE_GOLDEN` when set, otherwise the fixture copied from `shared/golden/sce_loss.json`,
//! so any file of the same format can be checked without changing code. Tolerances: loss 1e-5
//! relative; dL/dq 1e-4 relative per element (elements below 1% of the largest are compared
//! against that floor, where f32 rounding dominates).

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use sce_loss::golden::GoldenFile;
use sce_loss::{QueueObjective, SceLoss};

fn golden_path() -> PathBuf {
    match std::env::var_os("SCE_GOLDEN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sce_loss.json"),
    }
}

fn tensor(rows: &[Vec<f64>], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

#[test]
fn loss_and_gradient_match_the_golden_vectors() {
    let path = golden_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden vectors {}: {e}", path.display()));
    let golden = GoldenFile::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not a golden vector file: {e}", path.display()));
    assert!(
        !golden.cases.is_empty(),
        "{} holds no cases",
        path.display()
    );

    let device = Device::default().autodiff();
    for (n, case) in golden.cases.iter().enumerate() {
        let loss_fn = SceLoss::new(case.tau, case.tau_m, case.lambda).unwrap();
        let q = tensor(&case.q, &device).require_grad();
        let loss = loss_fn
            .forward(
                q.clone(),
                tensor(&case.k, &device),
                tensor(&case.queue, &device),
            )
            .unwrap();
        let value = loss.to_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0];
        let rel = (value - case.loss).abs() / case.loss.abs();
        assert!(
            rel <= 1e-5,
            "case {n}: loss {value} vs golden {} (relative error {rel:e})",
            case.loss
        );

        let grads = loss.backward();
        let grad: Vec<f64> = q
            .grad(&grads)
            .expect("q receives a gradient")
            .into_data()
            .convert::<f64>()
            .try_to_vec()
            .unwrap();
        let expected: Vec<f64> = case.grad_q.iter().flatten().copied().collect();
        assert_eq!(grad.len(), expected.len(), "case {n}: gradient shape");
        let largest = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (g, e)) in grad.iter().zip(&expected).enumerate() {
            let scale = e.abs().max(1e-2 * largest);
            assert!(
                (g - e).abs() <= 1e-4 * scale,
                "case {n}: dL/dq[{i}] = {g} vs golden {e}"
            );
        }
    }
}
