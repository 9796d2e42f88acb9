//! The numerical cases of `sce-train check`: each runs an operation training depends on, on the
//! device under test, and compares it with a float64 reference computed on the host from the
//! same inputs (never with another Burn backend, so the CPU backend is checked too).

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use sce_loss::golden::{BUNDLED, GoldenFile};
use sce_loss::{QueueObjective, SceLoss, sum_rows};
use sce_model::params::{ema_update, named_tensors};
use sce_model::{Depth, ResNetConfig, Stem};
use sce_ops::check::{
    Case, CheckOutcome, GEMM, TIGHT, download, gemm_error, gemm_tolerance, host_values,
    relative_error, row_reduction, upload,
};
use sce_ops::conv::ConvGeometry;
use sce_ops::conv::reference::{ConvReference, conv2d_f64};
use sce_ops::norm::{AfterNorm, batch_norm_with_statistics, statistics_reduction};

/// Every check, in the order a training step meets the operations.
pub const CASES: &[Case] = &[
    (SHORT_ROWS, short_rows),
    (LONG_ROW, long_row),
    (MATMUL, matmul),
    (CONV, conv_forward_backward),
    (CONV_LARGE, conv_large_batch),
    (CONV_STRIDED, conv_strided),
    (LINEAR, linear_forward_backward),
    (BN_FORWARD, batch_norm_forward),
    (BN_BACKWARD, batch_norm_backward),
    (BN_RESIDUAL_RELU, batch_norm_residual_relu),
    (SCE_LOSS, sce_loss_value),
    (SCE_GRAD, sce_loss_gradient),
    (LARGE_QUEUE, large_queue),
    (LARS_NORM, lars_norm),
    (EMA, ema),
    (SHAPES, trunk_shapes),
    (TOP_K, top_k),
];

const SHORT_ROWS: &str = "sum over many short rows (8,192 × 64)";
const LONG_ROW: &str = "sum over one long row (1 × 300,000), as the losses sum rows";
const MATMUL: &str = "matmul (256 × 96 · 96 × 80)";
const CONV: &str = "conv2d 3×3 forward, input and weight gradients";
const CONV_STRIDED: &str = "conv2d 3×3 and 1×1 stride 2 (downsampling), forward and gradients";
const CONV_LARGE: &str = "conv2d 3×3 forward and gradients over a large batch (128 × 4 × 28 × 28)";
const LINEAR: &str = "linear layer (64 × 96 → 48) forward, input, weight and bias gradients";
const BN_FORWARD: &str = "batch norm training statistics and output (128 × 4 × 28 × 28)";
const BN_BACKWARD: &str = "batch norm input, scale and shift gradients (128 × 4 × 28 × 28)";
const BN_RESIDUAL_RELU: &str =
    "batch norm + shortcut + ReLU (a block's end), output and all gradients (128 × 4 × 28 × 28)";
const SCE_LOSS: &str = "SCE loss against the float64 golden vectors";
const SCE_GRAD: &str = "SCE dL/dq against the float64 golden vectors";
const LARGE_QUEUE: &str = "SCE loss and dL/dq against a 65,536-key queue (ImageNet recipes)";
const LARS_NORM: &str = "norm of a 512 × 512 × 3 × 3 weight (LARS trust ratio)";
const EMA: &str = "momentum (EMA) update of parameters";
const SHAPES: &str = "ResNet-18 CIFAR and ResNet-50 ImageNet trunk output shapes";
const TOP_K: &str = "top-200 of rows of 2,000 (kNN evaluation), values and indices";
const TOP_K_ON_HOST: &str = "top-200 of rows of 2,000 (kNN evaluation), values and indices: \
     the device's one-pass top-k was wrong, ranked on the host";

/// Many rows, each short: a device that runs out of work per invocation on the total, not
/// per row, fails here.
fn short_rows(device: &Device) -> CheckOutcome {
    row_reduction(SHORT_ROWS, [8_192, 64], false, |x| x.sum_dim(1), device)
}

/// One row longer than 2^16 elements, summed the way the losses sum their softmax rows (in
/// blocks on a device that fails [`sce_ops::check::one_pass_reductions`]).
fn long_row(device: &Device) -> CheckOutcome {
    row_reduction(LONG_ROW, [1, 300_000], false, sum_rows, device)
}

fn matmul(device: &Device) -> CheckOutcome {
    let (m, k, n) = (256, 96, 80);
    let a = host_values(m * k, 2);
    let b = host_values(k * n, 3);
    let mut expected = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let left = a[i * k + p] as f64;
            for j in 0..n {
                expected[i * n + j] += left * b[p * n + j] as f64;
            }
        }
    }
    let got = download(upload(&a, [m, k], device).matmul(upload(&b, [k, n], device)));
    CheckOutcome::new(MATMUL, relative_error(&got, &expected), GEMM)
}

/// A 3×3, padding-1, stride-1 convolution and both its gradients for the loss `Σ y·g`.
fn conv_forward_backward(device: &Device) -> CheckOutcome {
    conv_case(CONV, [4, 3, 5, 10, 10], [3, 1, 1], device)
}

/// The same at the size of a small-image recipe's first layers: each weight gradient sums over
/// batch × height × width = 100,352 positions, a long reduction inside the kernel.
fn conv_large_batch(device: &Device) -> CheckOutcome {
    conv_case(CONV_LARGE, [128, 4, 4, 28, 28], [3, 1, 1], device)
}

/// A ResNet stage's downsampling: the 3×3 stride-2 convolution and the 1×1 stride-2 shortcut,
/// on channel counts off the SIMD width.
fn conv_strided(device: &Device) -> CheckOutcome {
    let a = conv_case(CONV_STRIDED, [3, 5, 7, 9, 9], [3, 2, 1], device);
    let b = conv_case(CONV_STRIDED, [3, 5, 7, 9, 9], [1, 2, 0], device);
    if a.max_error >= b.max_error { a } else { b }
}

/// A `kernel`×`kernel` convolution (`[kernel, stride, padding]`) of `[n, ci, h, w]` into `co`
/// channels, run as training runs it (`sce_ops::conv::conv2d`: the GEMM kernels on `flex`,
/// Burn's elsewhere), and both its gradients for the loss `Σ y·g`, against float64.
fn conv_case(
    name: &'static str,
    [n, ci, co, h, w]: [usize; 5],
    [k, stride, pad]: [usize; 3],
    device: &Device,
) -> CheckOutcome {
    let (oh, ow) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    let x = host_values(n * ci * h * w, 4);
    let weight = host_values(co * ci * k * k, 5);
    // The last image's upstream gradient dominates: a weight-gradient reduction that stops
    // before the end of the batch is far off, not a rounding error.
    let mut g = host_values(n * co * oh * ow, 6);
    let last = (n - 1) * co * oh * ow;
    g[last..].iter_mut().for_each(|v| *v *= 50.0);
    let geometry = ConvGeometry::new([n, ci, h, w], [co, ci, k, k], [stride; 2], [pad; 2])
        .expect("the cases' shapes fit");
    let ConvReference { y, dx, dw } = conv2d_f64(&geometry, &x, &weight, Some(&g));
    let ad = device.clone().autodiff();
    let mut conv = Conv2dConfig::new([ci, co], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(&ad);
    conv.weight = Param::from_tensor(upload(&weight, [co, ci, k, k], &ad));
    let xt = upload(&x, [n, ci, h, w], &ad).require_grad();
    let out = sce_ops::conv::conv2d(&conv, xt.clone());
    let got_y = download(out.clone());
    let grads = (out * upload(&g, [n, co, oh, ow], &ad)).sum().backward();
    let got_dx = xt.grad(&grads).map(download).unwrap_or_default();
    let got_dw = conv
        .weight
        .val()
        .grad(&grads)
        .map(download)
        .unwrap_or_default();
    let error = gemm_error(&got_y, &y)
        .max(gemm_error(&got_dx, &dx))
        .max(gemm_error(&got_dw, &dw));
    CheckOutcome::new(name, error, gemm_tolerance())
}

/// A linear layer as the projector and predictor run it (`sce_ops::precision::linear`: in the
/// process's compute precision), `y = x·W + b`, and its three gradients for the loss `Σ y·g`.
fn linear_forward_backward(device: &Device) -> CheckOutcome {
    let (n, d_in, d_out) = (64, 96, 48);
    let x = host_values(n * d_in, 7);
    let weight = host_values(d_in * d_out, 8);
    let bias = host_values(d_out, 9);
    let g = host_values(n * d_out, 10);
    let mut y = vec![0.0f64; n * d_out];
    let mut dx = vec![0.0f64; n * d_in];
    let mut dw = vec![0.0f64; d_in * d_out];
    let mut db = vec![0.0f64; d_out];
    for i in 0..n {
        for o in 0..d_out {
            let upstream = g[i * d_out + o] as f64;
            y[i * d_out + o] = bias[o] as f64;
            db[o] += upstream;
            for k in 0..d_in {
                let (xv, wv) = (x[i * d_in + k] as f64, weight[k * d_out + o] as f64);
                y[i * d_out + o] += xv * wv;
                dx[i * d_in + k] += upstream * wv;
                dw[k * d_out + o] += upstream * xv;
            }
        }
    }
    let ad = device.clone().autodiff();
    let mut layer = LinearConfig::new(d_in, d_out).init(&ad);
    layer.weight = Param::from_tensor(upload(&weight, [d_in, d_out], &ad));
    layer.bias = Some(Param::from_tensor(upload(&bias, [d_out], &ad)));
    let xt = upload(&x, [n, d_in], &ad).require_grad();
    let out = sce_ops::precision::linear(&layer, xt.clone());
    let got_y = download(out.clone());
    let grads = (out * upload(&g, [n, d_out], &ad)).sum().backward();
    let grad = |t: Option<Tensor<2>>| t.map(download).unwrap_or_default();
    let got_dx = grad(xt.grad(&grads));
    let got_dw = grad(layer.weight.val().grad(&grads));
    let got_db = layer
        .bias
        .as_ref()
        .and_then(|b| b.val().grad(&grads))
        .map(download)
        .unwrap_or_default();
    let error = gemm_error(&got_y, &y)
        .max(gemm_error(&got_dx, &dx))
        .max(gemm_error(&got_dw, &dw))
        .max(gemm_error(&got_db, &db));
    CheckOutcome::new(LINEAR, error, gemm_tolerance())
}

/// Inputs of the batch-norm checks: `[128, 4, 28, 28]`, 401,408 elements, more than 2^18.
struct BatchNormCase {
    shape: [usize; 4],
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// Upstream gradient for the backward check.
    g: Vec<f32>,
}

const BN_EPSILON: f64 = 1e-5;

impl BatchNormCase {
    fn new() -> Self {
        let shape = [128, 4, 28, 28];
        let len = shape.iter().product();
        let spatial = shape[2] * shape[3];
        let mut x = host_values(len, 7);
        for (i, v) in x.iter_mut().enumerate() {
            let c = (i / spatial) % shape[1];
            *v = *v * (1.0 + c as f32) + c as f32;
        }
        Self {
            shape,
            x,
            gamma: vec![1.5, 0.5, 1.0, 2.0],
            beta: vec![0.25, -0.5, 0.0, 1.0],
            g: host_values(len, 8),
        }
    }

    fn channel(&self, i: usize) -> usize {
        (i / (self.shape[2] * self.shape[3])) % self.shape[1]
    }

    /// Per-channel mean and biased variance, in float64.
    fn statistics(&self) -> (Vec<f64>, Vec<f64>) {
        let c = self.shape[1];
        let count = (self.x.len() / c) as f64;
        let mut mean = vec![0.0; c];
        for (i, &v) in self.x.iter().enumerate() {
            mean[self.channel(i)] += v as f64 / count;
        }
        let mut var = vec![0.0; c];
        for (i, &v) in self.x.iter().enumerate() {
            let ch = self.channel(i);
            var[ch] += (v as f64 - mean[ch]).powi(2) / count;
        }
        (mean, var)
    }

    /// `(x − mean) / sqrt(var + ε)` for every element.
    fn normalized(&self, mean: &[f64], var: &[f64]) -> Vec<f64> {
        self.x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = self.channel(i);
                (v as f64 - mean[ch]) / (var[ch] + BN_EPSILON).sqrt()
            })
            .collect()
    }

    fn tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        (
            upload(&self.x, self.shape, device),
            upload(&self.gamma, [self.shape[1]], device),
            upload(&self.beta, [self.shape[1]], device),
        )
    }
}

fn batch_norm_forward(device: &Device) -> CheckOutcome {
    let case = BatchNormCase::new();
    let (mean, var) = case.statistics();
    let expected: Vec<f64> = case
        .normalized(&mean, &var)
        .iter()
        .enumerate()
        .map(|(i, xhat)| {
            let ch = case.channel(i);
            xhat * case.gamma[ch] as f64 + case.beta[ch] as f64
        })
        .collect();
    let (x, gamma, beta) = case.tensors(device);
    let (output, batch_mean, batch_var) = batch_norm_with_statistics(
        x,
        gamma,
        beta,
        BN_EPSILON,
        statistics_reduction(),
        AfterNorm::none(),
    );
    let error = relative_error(&download(batch_mean), &mean)
        .max(relative_error(&download(batch_var), &var))
        .max(relative_error(&download(output), &expected));
    CheckOutcome::new(BN_FORWARD, error, TIGHT)
}

/// `dL/dx = γ/σ · (g − mean(g) − x̂ · mean(g · x̂))`, `dL/dγ = Σ g·x̂` and `dL/dβ = Σ g` per
/// channel, for the loss `Σ y·g`.
fn batch_norm_backward(device: &Device) -> CheckOutcome {
    let case = BatchNormCase::new();
    let (mean, var) = case.statistics();
    let xhat = case.normalized(&mean, &var);
    let c = case.shape[1];
    let count = (case.x.len() / c) as f64;
    let (mut mean_g, mut mean_gx) = (vec![0.0; c], vec![0.0; c]);
    for (i, &g) in case.g.iter().enumerate() {
        let ch = case.channel(i);
        mean_g[ch] += g as f64 / count;
        mean_gx[ch] += g as f64 * xhat[i] / count;
    }
    let expected: Vec<f64> = case
        .g
        .iter()
        .enumerate()
        .map(|(i, &g)| {
            let ch = case.channel(i);
            let scale = case.gamma[ch] as f64 / (var[ch] + BN_EPSILON).sqrt();
            scale * (g as f64 - mean_g[ch] - xhat[i] * mean_gx[ch])
        })
        .collect();
    let (mut d_gamma, mut d_beta) = (vec![0.0; c], vec![0.0; c]);
    for (i, &g) in case.g.iter().enumerate() {
        let ch = case.channel(i);
        d_gamma[ch] += g as f64 * xhat[i];
        d_beta[ch] += g as f64;
    }
    let ad = device.clone().autodiff();
    let (x, gamma, beta) = case.tensors(&ad);
    let (x, gamma, beta) = (x.require_grad(), gamma.require_grad(), beta.require_grad());
    let out = batch_norm_with_statistics(
        x.clone(),
        gamma.clone(),
        beta.clone(),
        BN_EPSILON,
        statistics_reduction(),
        AfterNorm::none(),
    )
    .0;
    let grads = (out * upload(&case.g, case.shape, &ad)).sum().backward();
    let got = |t: &Tensor<4>| t.grad(&grads).map(download).unwrap_or_default();
    let got_1d = |t: &Tensor<1>| t.grad(&grads).map(download).unwrap_or_default();
    let error = relative_error(&got(&x), &expected)
        .max(relative_error(&got_1d(&gamma), &d_gamma))
        .max(relative_error(&got_1d(&beta), &d_beta));
    CheckOutcome::new(BN_BACKWARD, error, TIGHT)
}

/// `y = relu(γ·x̂ + β + r)`, as a residual block ends (one fused operation on `flex`), and its
/// gradients for the loss `Σ y·g`: with `dz = g` where `y > 0`, `dL/dx = γ/σ · (dz − mean(dz)
/// − x̂ · mean(dz · x̂))`, `dL/dγ = Σ dz·x̂`, `dL/dβ = Σ dz`, `dL/dr = dz`.
fn batch_norm_residual_relu(device: &Device) -> CheckOutcome {
    let case = BatchNormCase::new();
    let residual = host_values(case.x.len(), 9);
    let (mean, var) = case.statistics();
    let xhat = case.normalized(&mean, &var);
    let c = case.shape[1];
    let count = (case.x.len() / c) as f64;
    let output: Vec<f64> = xhat
        .iter()
        .enumerate()
        .map(|(i, xh)| {
            let ch = case.channel(i);
            (xh * case.gamma[ch] as f64 + case.beta[ch] as f64 + residual[i] as f64).max(0.0)
        })
        .collect();
    let dz: Vec<f64> = case
        .g
        .iter()
        .zip(&output)
        .map(|(&g, &y)| if y > 0.0 { g as f64 } else { 0.0 })
        .collect();
    let (mut d_gamma, mut d_beta) = (vec![0.0; c], vec![0.0; c]);
    for (i, dz) in dz.iter().enumerate() {
        let ch = case.channel(i);
        d_gamma[ch] += dz * xhat[i];
        d_beta[ch] += dz;
    }
    let expected_dx: Vec<f64> = dz
        .iter()
        .enumerate()
        .map(|(i, dz)| {
            let ch = case.channel(i);
            let scale = case.gamma[ch] as f64 / (var[ch] + BN_EPSILON).sqrt();
            scale * (dz - d_beta[ch] / count - xhat[i] * d_gamma[ch] / count)
        })
        .collect();
    let ad = device.clone().autodiff();
    let (x, gamma, beta) = case.tensors(&ad);
    let (x, gamma, beta) = (x.require_grad(), gamma.require_grad(), beta.require_grad());
    let r = upload(&residual, case.shape, &ad).require_grad();
    let (out, _, _) = batch_norm_with_statistics(
        x.clone(),
        gamma.clone(),
        beta.clone(),
        BN_EPSILON,
        statistics_reduction(),
        AfterNorm::residual_relu(r.clone()),
    );
    let grads = (out.clone() * upload(&case.g, case.shape, &ad))
        .sum()
        .backward();
    let got = |t: &Tensor<4>| t.grad(&grads).map(download).unwrap_or_default();
    let got_1d = |t: &Tensor<1>| t.grad(&grads).map(download).unwrap_or_default();
    let error = relative_error(&download(out.without_autodiff()), &output)
        .max(relative_error(&got(&x), &expected_dx))
        .max(relative_error(&got_1d(&gamma), &d_gamma))
        .max(relative_error(&got_1d(&beta), &d_beta))
        .max(relative_error(&got(&r), &dz));
    CheckOutcome::new(BN_RESIDUAL_RELU, error, TIGHT)
}

fn matrix(rows: &[Vec<f64>], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    upload(
        &flat,
        [rows.len(), rows.first().map_or(0, Vec::len)],
        device,
    )
}

/// The largest relative errors of the loss value and of dL/dq over all golden cases.
fn golden_errors(device: &Device) -> (f64, f64) {
    let Ok(golden) = GoldenFile::parse(BUNDLED) else {
        return (f64::INFINITY, f64::INFINITY);
    };
    let ad = device.clone().autodiff();
    let (mut loss_error, mut grad_error) = (0.0f64, 0.0f64);
    for case in &golden.cases {
        let Ok(objective) = SceLoss::new(case.tau, case.tau_m, case.lambda) else {
            return (f64::INFINITY, f64::INFINITY);
        };
        let q = matrix(&case.q, &ad).require_grad();
        let Ok(loss) = objective.forward(q.clone(), matrix(&case.k, &ad), matrix(&case.queue, &ad))
        else {
            return (f64::INFINITY, f64::INFINITY);
        };
        loss_error = loss_error.max(relative_error(&download(loss.clone()), &[case.loss]));
        let grads = loss.backward();
        let expected: Vec<f64> = case.grad_q.iter().flatten().copied().collect();
        let got = q.grad(&grads).map(download).unwrap_or_default();
        grad_error = grad_error.max(relative_error(&got, &expected));
    }
    (loss_error, grad_error)
}

/// Looser than the CPU unit test's 1e-5: the similarity matmuls may run in TF32 on a GPU.
fn sce_loss_value(device: &Device) -> CheckOutcome {
    CheckOutcome::new(SCE_LOSS, golden_errors(device).0, TIGHT)
}

fn sce_loss_gradient(device: &Device) -> CheckOutcome {
    CheckOutcome::new(SCE_GRAD, golden_errors(device).1, GEMM)
}

/// `rows` unit vectors of dimension `dim`, in float32 as the device gets them.
fn unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut values = host_values(rows * dim, seed);
    for row in values.chunks_mut(dim) {
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
    }
    values
}

/// `Σ_j a_j · b_j` of two rows in float64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `log Σ exp(l_j)`, stably, in float64.
fn log_sum_exp(logits: &[f64]) -> f64 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln()
}

/// The softmax rows of the ImageNet recipes are 65,537 long: longer than a shader invocation
/// of some devices may loop (docs/backends.md), so the key that matters most sits at the end. Reference: the paper's SCE loss in float64,
/// `L = −mean_b Σ_j w_j log p_j` and `dL/dq_b = Σ_j (p_j − w_j) c_j / (B τ)`, where
/// `c = [k_b, Q]`, `p = softmax(q_b·c / τ)` and `w = λ e_0 + (1 − λ) [0, softmax(k_b·Q / τ_m)]`.
fn large_queue(device: &Device) -> CheckOutcome {
    let (batch, dim, size) = (4, 16, 65_536);
    let (tau, tau_m, lambda) = (0.2, 0.05, 0.5);
    let q = unit_rows(batch, dim, 10);
    // Every anchor's key is the queue's last entry, which so holds most of each target row: a
    // reduction that stops before the end of a row is far off, not a rounding error.
    let key = unit_rows(1, dim, 11);
    let k = key.repeat(batch);
    let mut queue = unit_rows(size, dim, 12);
    queue[(size - 1) * dim..].copy_from_slice(&key);
    let mut expected_loss = 0.0;
    let mut expected_grad = vec![0.0f64; batch * dim];
    for b in 0..batch {
        let (qb, kb) = (&q[b * dim..(b + 1) * dim], &k[b * dim..(b + 1) * dim]);
        let candidates: Vec<&[f32]> = std::iter::once(kb).chain(queue.chunks(dim)).collect();
        let logits: Vec<f64> = candidates.iter().map(|c| dot(qb, c) / tau).collect();
        let log_norm = log_sum_exp(&logits);
        let target_logits: Vec<f64> = queue.chunks(dim).map(|c| dot(kb, c) / tau_m).collect();
        let target_norm = log_sum_exp(&target_logits);
        let weights: Vec<f64> = std::iter::once(lambda)
            .chain(
                target_logits
                    .iter()
                    .map(|t| (1.0 - lambda) * (t - target_norm).exp()),
            )
            .collect();
        for ((logit, weight), candidate) in logits.iter().zip(&weights).zip(&candidates) {
            let log_p = logit - log_norm;
            expected_loss -= weight * log_p / batch as f64;
            let coefficient = (log_p.exp() - weight) / (batch as f64 * tau);
            for (g, &c) in expected_grad[b * dim..(b + 1) * dim]
                .iter_mut()
                .zip(*candidate)
            {
                *g += coefficient * c as f64;
            }
        }
    }
    let ad = device.clone().autodiff();
    let Ok(objective) = SceLoss::new(tau, tau_m, lambda) else {
        return CheckOutcome::new(LARGE_QUEUE, f64::INFINITY, GEMM);
    };
    let qt = upload(&q, [batch, dim], &ad).require_grad();
    let Ok(loss) = objective.forward(
        qt.clone(),
        upload(&k, [batch, dim], &ad),
        upload(&queue, [size, dim], &ad),
    ) else {
        return CheckOutcome::new(LARGE_QUEUE, f64::INFINITY, GEMM);
    };
    let loss_error = relative_error(&download(loss.clone()), &[expected_loss]);
    let grads = loss.backward();
    let got = qt.grad(&grads).map(download).unwrap_or_default();
    let error = loss_error.max(relative_error(&got, &expected_grad));
    CheckOutcome::new(LARGE_QUEUE, error, GEMM)
}

/// LARS scales each weight's gradient by `‖w‖ / ‖g‖`: one reduction over a whole weight tensor,
/// 2,359,296 elements for ResNet-50's largest 3×3 convolution.
fn lars_norm(device: &Device) -> CheckOutcome {
    let len = 512 * 512 * 3 * 3;
    let w = host_values(len, 13);
    let expected = w.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let got = download(upload(&w, [512, 512, 3, 3], device).square().sum().sqrt());
    CheckOutcome::new(LARS_NORM, relative_error(&got, &[expected]), TIGHT)
}

/// `target ← m·target + (1 − m)·online` over every parameter of a small layer.
fn ema(device: &Device) -> CheckOutcome {
    let momentum = 0.99;
    let online = LinearConfig::new(16, 8).init(device);
    let target = LinearConfig::new(16, 8).init(device);
    let values = |m: &burn::nn::Linear| -> Vec<f64> {
        named_tensors(m)
            .into_iter()
            .flat_map(|(_, t)| download(t))
            .collect()
    };
    let (before_online, before_target) = (values(&online), values(&target));
    let expected: Vec<f64> = before_target
        .iter()
        .zip(&before_online)
        .map(|(t, o)| momentum * t + (1.0 - momentum) * o)
        .collect();
    let updated = ema_update(&online, target, momentum);
    let got = values(&updated);
    CheckOutcome::new(EMA, relative_error(&got, &expected), 1e-6)
}

/// Both stems and both block kinds produce `[batch, feature_dim]` of finite values.
fn trunk_shapes(device: &Device) -> CheckOutcome {
    let cases = [
        (ResNetConfig::new(Depth::R18, Stem::Cifar), [2, 3, 32, 32]),
        (
            ResNetConfig::new(Depth::R50, Stem::Imagenet),
            [1, 3, 64, 64],
        ),
    ];
    let all_right = cases.into_iter().all(|(config, shape)| {
        let config = config.with_width(8);
        let Ok(trunk) = config.init(device) else {
            return false;
        };
        let input = upload(&host_values(shape.iter().product(), 9), shape, device);
        let features = trunk.forward(input);
        features.dims() == [shape[0], config.feature_dim()]
            && download(features).iter().all(|v| v.is_finite())
    });
    CheckOutcome::new(SHAPES, if all_right { 0.0 } else { f64::INFINITY }, 0.0)
}

/// kNN evaluation's ranking as evaluation computes it ([`sce_ops::topk::top_k_rows`]): the
/// values against a float64 sort, and each index pointing at its value. The name says when the
/// device's own top-k failed and the host ranked instead (lavapipe, from k ≈ 64 on: `check`
/// prints where).
fn top_k(device: &Device) -> CheckOutcome {
    let (rows, len, k) = (64, 2000, 200);
    let values = host_values(rows * len, 31);
    let top = sce_ops::topk::top_k_rows(upload(&values, [rows, len], device), k);
    let name = if top.recomputed_on_host {
        TOP_K_ON_HOST
    } else {
        TOP_K
    };
    let mut expected = Vec::with_capacity(rows * k);
    let mut pointed = Vec::with_capacity(rows * k);
    for (r, row) in values.chunks(len).enumerate() {
        let mut sorted: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        expected.extend_from_slice(&sorted[..k]);
        pointed.extend(top.row_indices(r).iter().map(|&i| row[i] as f64));
    }
    let got: Vec<f64> = top.values.iter().map(|&v| v as f64).collect();
    let error = relative_error(&got, &expected).max(relative_error(&pointed, &got));
    CheckOutcome::new(name, error, TIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_passes_on_the_default_device() {
        let device = Device::default();
        for (name, case) in CASES {
            let outcome = case(&device);
            assert_eq!(outcome.name, *name);
            assert!(outcome.passed, "{outcome:?}");
            assert!(outcome.max_error.is_finite(), "{outcome:?}");
        }
    }
}
