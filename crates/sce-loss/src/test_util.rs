//! Small helpers for the unit tests: host-side tensors and f64 comparisons.

use burn::tensor::{Device, Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The default device of the build (flex in CI; `BURN_DEVICE` picks another).
pub fn device() -> Device {
    Device::default()
}

pub fn tensor2_vec(rows: &[Vec<f64>], device: &Device) -> Tensor<2> {
    let (n, d) = (rows.len(), rows[0].len());
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [n, d]), device)
}

pub fn tensor2<const D: usize>(rows: &[[f64; D]], device: &Device) -> Tensor<2> {
    let rows: Vec<Vec<f64>> = rows.iter().map(|r| r.to_vec()).collect();
    tensor2_vec(&rows, device)
}

/// `n` seeded random unit rows of dimension `d`.
pub fn random_unit_rows(n: usize, d: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|_| {
            let v: Vec<f64> = (0..d).map(|_| rng.random::<f64>() - 0.5).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect();
    tensor2_vec(&rows, device)
}

pub fn rows(t: Tensor<2>) -> Vec<Vec<f64>> {
    let [_, d] = t.dims();
    let flat: Vec<f32> = t.into_data().convert::<f32>().try_to_vec().unwrap();
    flat.chunks(d)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect()
}

pub fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn assert_close(got: f64, expected: f64, rel: f64) {
    let tol = rel * expected.abs().max(1e-3);
    assert!(
        (got - expected).abs() <= tol,
        "got {got}, expected {expected} (relative tolerance {rel})"
    );
}
