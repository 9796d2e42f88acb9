//! Mixed precision's convolution and linear layer against f32, with the master weights' gradients
//! in f32. (A process of its own: the compute precision is process-wide.)

use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{DType, Device, Distribution, Tensor};
use sce_ops::precision::{Precision, linear, set_precision};

/// One test changes the process-wide switch, so every case runs inside it in turn.
#[test]
fn low_precision_layers_keep_f32_master_weights_and_agree_with_f32() {
    let device = Device::default().autodiff();
    let conv = Conv2dConfig::new([3, 5], [3, 3])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&device);
    let dense = LinearConfig::new(6, 4).init(&device);
    let x = Tensor::<4>::random([2, 3, 7, 7], Distribution::Normal(0.0, 1.0), &device);
    let h = Tensor::<2>::random([3, 6], Distribution::Normal(0.0, 1.0), &device);
    let run = |precision: Precision| {
        set_precision(precision);
        let y = sce_ops::conv::conv2d(&conv, x.clone());
        let z = linear(&dense, h.clone());
        assert_eq!(
            y.dtype(),
            DType::F32,
            "{precision:?}: outputs come back in f32"
        );
        assert_eq!(z.dtype(), DType::F32);
        let grads = (y.clone().sin().sum() + z.clone().cos().sum()).backward();
        let dw = conv.weight.val().grad(&grads).expect("conv weight grad");
        let db = dense.bias.as_ref().unwrap().val().grad(&grads).unwrap();
        let values = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        (
            values(y),
            z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
            dw.dtype(),
            values(dw),
            db.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
        )
    };
    let exact = run(Precision::F32);
    for (precision, tolerance) in [(Precision::F16, 1e-2), (Precision::BF16, 8e-2)] {
        let low = run(precision);
        assert_eq!(low.2, DType::F32, "{precision:?}: master gradients in f32");
        for (what, a, b) in [
            ("conv output", &low.0, &exact.0),
            ("linear output", &low.1, &exact.1),
            ("conv weight gradient", &low.3, &exact.3),
            ("linear bias gradient", &low.4, &exact.4),
        ] {
            let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs() / scale)
                .fold(0.0f32, f32::max);
            assert!(
                worst <= tolerance,
                "{precision:?} {what}: off by {worst:.2e} of its scale (allowed {tolerance})"
            );
            assert!(
                a != b || what.contains("bias"),
                "{precision:?} {what}: rounded, so not bit-equal to f32"
            );
        }
    }
    set_precision(Precision::F32);
}
