use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use burn::tensor::module::batch_norm_train;

use crate::ModelError;

/// Batch norm that normalises `splits` equal groups of the batch separately, as `splits`
/// devices would (MoCo's SplitBatchNorm, spec §2.5). Without it the target's batch statistics
/// would equal the online branch's on one device, a shortcut the contrastive task can exploit.
///
/// Group `s` holds samples `s, s + splits, s + 2·splits, …` (MoCo's layout, a free reshape;
/// the caller shuffles the batch first, so any equal partition is equivalent). In training the
/// running statistics move towards the mean of the per-group statistics, which is what averaging
/// per-group running statistics gives. In evaluation, or with `splits <= 1`, this is plain
/// batch norm.
pub fn split_batch_norm(
    bn: &BatchNorm,
    x: Tensor<4>,
    splits: usize,
) -> Result<Tensor<4>, ModelError> {
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    if splits <= 1 || !training {
        return Ok(bn.forward(x));
    }
    let [n, c, h, w] = x.dims();
    if !n.is_multiple_of(splits) {
        return Err(ModelError::BatchNotDivisible { batch: n, splits });
    }
    let grouped = x.reshape([n / splits, splits * c, h, w]);
    let result = batch_norm_train(
        grouped,
        bn.gamma.val().repeat_dim(0, splits),
        bn.beta.val().repeat_dim(0, splits),
        bn.epsilon,
    );
    let group_mean = |t: Tensor<1>| t.reshape([splits, c]).mean_dim(0).reshape([c]);
    let device = result.output.device();
    let momentum = bn.momentum;
    let update = |old: Tensor<1>, batch: Tensor<1>| {
        (old.to_device(&device) * (1.0 - momentum) + group_mean(batch.detach()) * momentum).detach()
    };
    bn.running_mean
        .update(update(bn.running_mean.value_sync(), result.mean));
    bn.running_var
        .update(update(bn.running_var.value_sync(), result.variance));
    Ok(result.output.reshape([n, c, h, w]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::module::Module;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

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
