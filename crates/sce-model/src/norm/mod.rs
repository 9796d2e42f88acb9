//! Training batch norm split into groups for the target trunk (MoCo's SplitBatchNorm) or
//! synchronised across the ranks of a distributed run (SyncBatchNorm), over
//! sce-ops' batch norm (statistics reduced the way the device gets right, fused with what
//! follows it on `flex`).

mod split;

pub use split::{split_batch_norm, split_batch_norm_then, synced_batch_norm};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::module::Module;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;
    use burn::tensor::Tensor;
    #[cfg(feature = "flex")]
    use sce_ops::norm::fused_batch_norm;
    use sce_ops::norm::{
        AfterNorm, StatisticsReduction, batch_norm_with_statistics, composed_batch_norm,
        fused_kernels_apply,
    };

    /// Each group's output must equal a plain batch norm run on that group alone, and the running
    /// mean must be the average of the per-group updates.
    #[test]
    fn matches_per_group_batch_norm() {
        let ad = device().autodiff();
        let (n, c, splits) = (8, 3, 4);
        let x = Tensor::<4>::random([n, c, 2, 2], Distribution::Normal(1.0, 2.0), &ad);
        let make_bn = || {
            let mut bn = BatchNormConfig::new(c).init(&ad);
            bn.gamma = bn.gamma.map(|g| g * 1.5);
            bn.beta = bn.beta.map(|b| b + 0.25);
            bn
        };
        let split_bn = make_bn();
        let out = split_batch_norm(&split_bn, x.clone(), splits).unwrap();

        let mut running = vec![0.0f64; c];
        for s in 0..splits {
            let idx: Vec<i64> = (0..n / splits).map(|r| (r * splits + s) as i64).collect();
            let idx = Tensor::<1, burn::tensor::Int>::from_data(idx.as_slice(), &ad);
            let group = x.clone().select(0, idx.clone());
            let bn = make_bn();
            let expected = bn.forward(group);
            assert_tensors_close(out.clone().select(0, idx), expected, 1e-5);
            let mean = flat(bn.valid().running_mean.value().reshape([c, 1]));
            for (r, m) in running.iter_mut().zip(mean) {
                *r += m / splits as f64;
            }
        }
        let got = flat(split_bn.valid().running_mean.value().reshape([c, 1]));
        for (g, e) in got.iter().zip(&running) {
            assert!((g - e).abs() < 1e-5, "running mean {g} vs {e}");
        }
    }

    /// The short-reduction statistics give Burn's fused batch norm: output, statistics and the
    /// gradients of input, γ and β.
    #[test]
    fn short_reductions_match_the_fused_operation() {
        let ad = device().autodiff();
        let x =
            Tensor::<4>::random([6, 3, 5, 4], Distribution::Normal(1.0, 2.0), &ad).require_grad();
        let gamma = Tensor::<1>::from_data([1.5f32, 0.5, -1.0], &ad).require_grad();
        let beta = Tensor::<1>::from_data([0.25f32, -0.5, 0.0], &ad).require_grad();
        let g = Tensor::<4>::random([6, 3, 5, 4], Distribution::Normal(0.0, 1.0), &ad);
        let run = |reduction| {
            let (out, mean, var) = batch_norm_with_statistics(
                x.clone(),
                gamma.clone(),
                beta.clone(),
                1e-5,
                reduction,
                AfterNorm::none(),
            );
            let grads = (out.clone() * g.clone()).sum().backward();
            let grad = |t: &Tensor<1>| t.grad(&grads).unwrap();
            (
                out.without_autodiff(),
                mean.without_autodiff(),
                var.without_autodiff(),
                x.grad(&grads).unwrap(),
                grad(&gamma),
                grad(&beta),
            )
        };
        let fused = run(StatisticsReduction::Fused);
        let short = run(StatisticsReduction::Short);
        assert_tensors_close(short.0, fused.0, 1e-5);
        assert_tensors_close(short.3, fused.3, 1e-4);
        for (a, b) in [
            (short.1, fused.1),
            (short.2, fused.2),
            (short.4, fused.4),
            (short.5, fused.5),
        ] {
            assert_tensors_close(a, b, 1e-4);
        }
    }

    /// Through Burn's autodiff, the fused kernels give what Burn's operations give: output,
    /// statistics and the gradients of x, γ, β and the residual, for each epilogue, on planes
    /// of 1, 9 and 30 values, batch 1 and odd channel counts.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_kernels_match_burns_operations_through_autodiff() {
        let ad = burn::tensor::Device::flex().autodiff();
        for dims in [[1, 3, 5, 6], [4, 5, 3, 3], [6, 7, 1, 1]] {
            let c = dims[1];
            let random =
                |mean, std| Tensor::<4>::random(dims, Distribution::Normal(mean, std), &ad);
            let x = random(1.0, 2.0).require_grad();
            let residual = random(0.0, 1.0).require_grad();
            let g = random(0.0, 1.0);
            let gamma =
                Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &ad).require_grad();
            let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &ad).require_grad();
            let afters = [
                AfterNorm::none(),
                AfterNorm::relu(),
                AfterNorm::residual_relu(residual.clone()),
                AfterNorm {
                    residual: Some(residual.clone()),
                    relu: false,
                },
            ];
            for after in afters {
                let what = format!(
                    "{dims:?} residual {} relu {}",
                    after.residual.is_some(),
                    after.relu
                );
                let run = |fused: bool| {
                    let inputs = (x.clone(), gamma.clone(), beta.clone());
                    let (out, mean, var) = if fused {
                        fused_batch_norm(inputs.0, inputs.1, inputs.2, 1e-5, after.clone())
                    } else {
                        composed_batch_norm(
                            inputs.0,
                            inputs.1,
                            inputs.2,
                            1e-5,
                            StatisticsReduction::Fused,
                            after.clone(),
                        )
                    };
                    let grads = (out.clone() * g.clone()).sum().backward();
                    let grad4 = |t: &Tensor<4>| t.grad(&grads).map(|t| flat(t.reshape([-1, 1])));
                    let grad1 = |t: &Tensor<1>| flat(t.grad(&grads).unwrap().reshape([-1, 1]));
                    [
                        flat(out.without_autodiff().reshape([-1, 1])),
                        flat(mean.without_autodiff().reshape([-1, 1])),
                        flat(var.without_autodiff().reshape([-1, 1])),
                        grad4(&x).unwrap(),
                        grad1(&gamma),
                        grad1(&beta),
                        grad4(&residual).unwrap_or_default(),
                    ]
                };
                let (fused, burn) = (run(true), run(false));
                let names = ["y", "mean", "var", "dx", "dγ", "dβ", "dresidual"];
                for ((name, a), b) in names.iter().zip(&fused).zip(&burn) {
                    assert_eq!(a.len(), b.len(), "{what}: {name}");
                    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    for (p, q) in a.iter().zip(b) {
                        assert!((p - q).abs() <= 1e-5 * scale, "{what}: {name} {p} vs {q}");
                    }
                }
            }
        }
    }

    /// In evaluation on a device without autodiff, the fused kernels give what Burn's
    /// `BatchNorm::forward` (running statistics) followed by the add and the ReLU gives.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_inference_matches_burns_batch_norm() {
        let device = burn::tensor::Device::flex();
        let c = 5;
        let mut bn = BatchNormConfig::new(c).init(&device);
        let stats = |m| Tensor::<1>::random([c], Distribution::Normal(m, 0.3), &device);
        bn.gamma = bn.gamma.map(|_| stats(1.0));
        bn.beta = bn.beta.map(|_| stats(0.0));
        bn.running_mean.update(stats(0.5));
        bn.running_var.update(stats(1.0).abs());
        let x = Tensor::<4>::random([3, c, 4, 7], Distribution::Normal(0.5, 1.0), &device);
        let r = Tensor::<4>::random([3, c, 4, 7], Distribution::Normal(0.0, 1.0), &device);
        assert!(
            fused_kernels_apply(&x),
            "the fused kernels must take this case"
        );
        for after in [
            AfterNorm::none(),
            AfterNorm::relu(),
            AfterNorm::residual_relu(r.clone()),
        ] {
            let fused = split_batch_norm_then(&bn, x.clone(), after.clone(), 1).unwrap();
            let burn = after.apply(bn.forward(x.clone()));
            assert_tensors_close(fused, burn, 1e-5);
        }
    }

    #[test]
    fn indivisible_batch_is_an_error() {
        let ad = device().autodiff();
        let bn = BatchNormConfig::new(2).init(&ad);
        let x = Tensor::<4>::zeros([6, 2, 1, 1], &ad);
        let err = split_batch_norm(&bn, x, 4).unwrap_err();
        assert!(err.to_string().contains("batch of 6"), "{err}");
    }

    #[test]
    fn evaluation_mode_is_plain_batch_norm() {
        let device = device();
        let bn = BatchNormConfig::new(2).init(&device);
        let x = Tensor::<4>::random([6, 2, 2, 2], Distribution::Default, &device);
        let out = split_batch_norm(&bn, x.clone(), 4).unwrap();
        assert_tensors_close(out, bn.forward(x), 1e-6);
    }
}
