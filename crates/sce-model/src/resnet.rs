use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};

use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};
use sce_ops::conv::conv2d;
use serde::{Deserialize, Serialize};

use sce_ops::norm::AfterNorm;

use crate::{ModelError, split_batch_norm, split_batch_norm_then};

/// Which torchvision ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Depth {
    #[serde(rename = "resnet18")]
    R18,
    #[serde(rename = "resnet34")]
    R34,
    #[serde(rename = "resnet50")]
    R50,
}

impl Depth {
    fn blocks(self) -> [usize; 4] {
        match self {
            Depth::R18 => [2, 2, 2, 2],
            Depth::R34 | Depth::R50 => [3, 4, 6, 3],
        }
    }

    /// Bottleneck blocks widen their output 4×.
    fn expansion(self) -> usize {
        match self {
            Depth::R50 => 4,
            Depth::R18 | Depth::R34 => 1,
        }
    }
}

/// The first layers: small inputs keep their resolution, ImageNet inputs are reduced 4×.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 3×3 conv, stride 1, padding 1, no max-pool (CIFAR-style, spec §2.1).
    Cifar,
    /// 7×7 conv, stride 2, padding 3, then 3×3 max-pool stride 2 (torchvision).
    Imagenet,
}

/// A torchvision ResNet trunk without its classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub depth: Depth,
    pub stem: Stem,
    /// 1 for grayscale data such as MNIST, 3 for RGB.
    pub in_channels: usize,
    /// Channels of the first stage; 64 is torchvision's, 16 makes quick CPU runs.
    pub width: usize,
    /// Start every residual branch at zero (last BN gamma = 0), as torchvision's option.
    pub zero_init_residual: bool,
}

impl ResNetConfig {
    pub fn new(depth: Depth, stem: Stem) -> Self {
        Self {
            depth,
            stem,
            in_channels: 3,
            width: 64,
            zero_init_residual: false,
        }
    }

    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    pub fn with_width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    pub fn with_zero_init_residual(mut self, zero: bool) -> Self {
        self.zero_init_residual = zero;
        self
    }

    /// Size of the pooled feature: 8·width for basic blocks, 32·width for bottlenecks.
    pub fn feature_dim(&self) -> usize {
        8 * self.width * self.depth.expansion()
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.in_channels == 0 || self.width == 0 {
            return Err(ModelError::Config(format!(
                "ResNet needs in_channels >= 1 and width >= 1, got {} and {}",
                self.in_channels, self.width
            )));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<ResNet, ModelError> {
        self.validate()?;
        let (kernel, stride, pad) = match self.stem {
            Stem::Cifar => (3, 1, 1),
            Stem::Imagenet => (7, 2, 3),
        };
        let conv1 = conv(self.in_channels, self.width, kernel, stride, pad, device);
        let maxpool = (self.stem == Stem::Imagenet).then(|| {
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init()
        });
        let expansion = self.depth.expansion();
        let mut in_planes = self.width;
        let mut stage = |index: usize, blocks: usize| {
            let planes = self.width << index;
            let stride = if index == 0 { 1 } else { 2 };
            (0..blocks)
                .map(|b| {
                    let block = Block::new(
                        in_planes,
                        planes,
                        if b == 0 { stride } else { 1 },
                        expansion,
                        self.zero_init_residual,
                        device,
                    );
                    in_planes = planes * expansion;
                    block
                })
                .collect::<Vec<_>>()
        };
        let [b1, b2, b3, b4] = self.depth.blocks();
        Ok(ResNet {
            conv1,
            bn1: batch_norm(self.width, false, device),
            maxpool,
            layer1: stage(0, b1),
            layer2: stage(1, b2),
            layer3: stage(2, b3),
            layer4: stage(3, b4),
        })
    }
}

/// A ResNet trunk: conv stem, four stages, global average pool. Field names follow torchvision
/// so state-dict keys map one to one (`layer1.0.conv1.weight`, `bn1.running_mean`, …).
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: Option<MaxPool2d>,
    layer1: Vec<Block>,
    layer2: Vec<Block>,
    layer3: Vec<Block>,
    layer4: Vec<Block>,
}

impl ResNet {
    /// Pooled features `[batch, feature_dim]` of images `[batch, channels, height, width]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_split(x, 1)
            .expect("a single batch-norm group always divides the batch")
    }

    /// As [`forward`](Self::forward), with every batch norm split into `splits` groups
    /// ([`split_batch_norm`]); an error if the batch does not divide.
    pub fn forward_split(&self, x: Tensor<4>, splits: usize) -> Result<Tensor<2>, ModelError> {
        let x =
            split_batch_norm_then(&self.bn1, conv2d(&self.conv1, x), AfterNorm::relu(), splits)?;
        let mut x = match &self.maxpool {
            Some(pool) => pool.forward(x),
            None => x,
        };
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x, splits)?;
        }
        let [n, c, _, _] = x.dims();
        Ok(adaptive_avg_pool2d(x, [1, 1]).reshape([n, c]))
    }
}

/// One residual block: basic (two 3×3 convs) or, with `conv3`, a bottleneck (1×1, 3×3 with the
/// stride as torchvision v1.5, 1×1 widening 4×). One struct for both keeps torchvision's keys.
#[derive(Module, Debug)]
pub struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Option<Conv2d>,
    bn3: Option<BatchNorm>,
    downsample: Option<Downsample>,
}

/// The projection shortcut when a block changes resolution or width.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

impl Block {
    fn new(
        in_planes: usize,
        planes: usize,
        stride: usize,
        expansion: usize,
        zero_init_residual: bool,
        device: &Device,
    ) -> Self {
        let out_planes = planes * expansion;
        let downsample = (stride != 1 || in_planes != out_planes).then(|| Downsample {
            conv: conv(in_planes, out_planes, 1, stride, 0, device),
            bn: batch_norm(out_planes, false, device),
        });
        if expansion == 1 {
            Self {
                conv1: conv(in_planes, planes, 3, stride, 1, device),
                bn1: batch_norm(planes, false, device),
                conv2: conv(planes, planes, 3, 1, 1, device),
                bn2: batch_norm(planes, zero_init_residual, device),
                conv3: None,
                bn3: None,
                downsample,
            }
        } else {
            Self {
                conv1: conv(in_planes, planes, 1, 1, 0, device),
                bn1: batch_norm(planes, false, device),
                conv2: conv(planes, planes, 3, stride, 1, device),
                bn2: batch_norm(planes, false, device),
                conv3: Some(conv(planes, out_planes, 1, 1, 0, device)),
                bn3: Some(batch_norm(out_planes, zero_init_residual, device)),
                downsample,
            }
        }
    }

    fn forward(&self, x: Tensor<4>, splits: usize) -> Result<Tensor<4>, ModelError> {
        let identity = match &self.downsample {
            Some(ds) => split_batch_norm(&ds.bn, conv2d(&ds.conv, x.clone()), splits)?,
            None => x.clone(),
        };
        let out =
            split_batch_norm_then(&self.bn1, conv2d(&self.conv1, x), AfterNorm::relu(), splits)?;
        let out = conv2d(&self.conv2, out);
        // The last batch norm of the block takes the shortcut and the ReLU with it.
        let end = AfterNorm::residual_relu(identity);
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = split_batch_norm_then(&self.bn2, out, AfterNorm::relu(), splits)?;
                split_batch_norm_then(bn3, conv2d(conv3, out), end, splits)
            }
            _ => split_batch_norm_then(&self.bn2, out, end, splits),
        }
    }
}

/// Bias-free conv with torchvision's init: Kaiming normal, fan-out, ReLU gain.
fn conv(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

/// BN with weight 1 and bias 0, or weight 0 to zero-initialise a residual branch.
fn batch_norm(channels: usize, zero_gamma: bool, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(channels).init(device);
    if zero_gamma {
        bn.gamma = bn.gamma.map(|g| g.zeros_like());
    }
    bn
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::count_parameters;
    use crate::test_util::*;
    use burn::tensor::Distribution;

    #[test]
    fn parameter_counts_equal_torchvision() {
        let device = device();
        let count = |cfg: ResNetConfig| count_parameters(&cfg.init(&device).unwrap());
        // torchvision totals minus the fc layer.
        assert_eq!(
            count(ResNetConfig::new(Depth::R18, Stem::Imagenet)),
            11_176_512
        );
        assert_eq!(
            count(ResNetConfig::new(Depth::R50, Stem::Imagenet)),
            23_508_032
        );
        assert_eq!(
            count(ResNetConfig::new(Depth::R18, Stem::Cifar)),
            11_168_832
        );
        // resnet34: 21,797,672 - 513,000.
        assert_eq!(
            count(ResNetConfig::new(Depth::R34, Stem::Imagenet)),
            21_284_672
        );
    }

    #[test]
    fn output_shapes_for_every_variant_and_stem() {
        let device = device();
        for depth in [Depth::R18, Depth::R34, Depth::R50] {
            for (stem, size) in [(Stem::Cifar, 12), (Stem::Imagenet, 40)] {
                for channels in [1, 3] {
                    let cfg = ResNetConfig::new(depth, stem)
                        .with_in_channels(channels)
                        .with_width(4);
                    let net = cfg.init(&device).unwrap();
                    let x = Tensor::<4>::random(
                        [2, channels, size, size],
                        Distribution::Default,
                        &device,
                    );
                    let out = net.forward(x);
                    assert_eq!(
                        out.dims(),
                        [2, cfg.feature_dim()],
                        "{depth:?} {stem:?} {channels}"
                    );
                }
            }
        }
        assert_eq!(
            ResNetConfig::new(Depth::R50, Stem::Imagenet).feature_dim(),
            2048
        );
        assert_eq!(
            ResNetConfig::new(Depth::R18, Stem::Cifar).feature_dim(),
            512
        );
    }

    #[test]
    fn zero_init_residual_zeroes_the_last_bn_of_each_block() {
        let device = device();
        let net = ResNetConfig::new(Depth::R50, Stem::Imagenet)
            .with_width(4)
            .with_zero_init_residual(true)
            .init(&device)
            .unwrap();
        for block in net.layer1.iter().chain(&net.layer4) {
            let gamma = flat(block.bn3.as_ref().unwrap().gamma.val().reshape([-1, 1]));
            assert!(gamma.iter().all(|&g| g == 0.0));
            let gamma = flat(block.bn1.gamma.val().reshape([-1, 1]));
            assert!(gamma.iter().all(|&g| g == 1.0));
        }
    }

    #[test]
    fn invalid_config_is_an_error() {
        let err = ResNetConfig::new(Depth::R18, Stem::Cifar)
            .with_in_channels(0)
            .init(&device())
            .unwrap_err();
        assert!(err.to_string().contains("in_channels"), "{err}");
    }
}
