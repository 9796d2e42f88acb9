use fast_image_resize::Resizer;
use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use super::*;
use crate::{DataError, Image};

/// ColorJitter: each factor drawn uniformly from `[max(0, 1 − x), 1 + x]` (hue from
/// `[−hue, hue]`), the four adjustments applied in a random order, all with probability `p`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitterSpec {
    pub p: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}

/// Gaussian blur with σ uniform in `sigma`, applied with probability `p`. `kernel`: fixed odd
/// size (torchvision recipes use 23); unset: ±3σ, a true Gaussian as PIL's radius-σ blur.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlurSpec {
    pub p: f64,
    pub sigma: [f64; 2],
    #[serde(default)]
    pub kernel: Option<usize>,
}

/// One view: RandomResizedCrop to `size` (or, with `pad_crop`, RandomCrop with that zero
/// padding, the linear-evaluation crop of small images), then the listed photometric ops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    pub size: usize,
    #[serde(default = "default_scale")]
    pub scale: [f64; 2],
    #[serde(default = "default_ratio")]
    pub ratio: [f64; 2],
    #[serde(default)]
    pub pad_crop: Option<usize>,
    #[serde(default = "half")]
    pub flip: f64,
    #[serde(default)]
    pub jitter: Option<JitterSpec>,
    #[serde(default)]
    pub grayscale: f64,
    #[serde(default)]
    pub blur: Option<BlurSpec>,
    #[serde(default)]
    pub solarize: f64,
}

fn default_scale() -> [f64; 2] {
    [0.2, 1.0]
}

fn default_ratio() -> [f64; 2] {
    [0.75, 4.0 / 3.0]
}

fn half() -> f64 {
    0.5
}

/// Per-channel mean and standard deviation for the final `Normalize`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The augmentation recipes of the paper (spec §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// Small datasets: weak view (crop + flip) for the target, strong view (crop, jitter
    /// 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, blur p 0.5, flip) for the online branch.
    SmallAsym,
    /// ImageNet MoCo v3 / BYOL pair: both views jitter (s 0.2) and grayscale; blur p 1.0 vs
    /// p 0.1 (23×23); solarize p 0.2 on the second.
    Imagenet2crop,
    /// The two ImageNet views plus local crops of 192, 160, 128 and 96 pixels, each with scale
    /// (0.2·s/224, s/224), jitter, grayscale, blur p 0.5 and solarize p 0.2.
    ImagenetMulticrop,
}

impl Recipe {
    /// The views of the recipe for a global crop of `size` pixels (local crops scale with it).
    pub fn views(self, size: usize) -> Vec<ViewSpec> {
        let plain = |size: usize, scale: [f64; 2]| ViewSpec {
            size,
            scale,
            ratio: default_ratio(),
            pad_crop: None,
            flip: 0.5,
            jitter: None,
            grayscale: 0.0,
            blur: None,
            solarize: 0.0,
        };
        let jitter = |saturation: f64| {
            Some(JitterSpec {
                p: 0.8,
                brightness: 0.4,
                contrast: 0.4,
                saturation,
                hue: 0.1,
            })
        };
        let blur = |p: f64, kernel: Option<usize>| {
            Some(BlurSpec {
                p,
                sigma: [0.1, 2.0],
                kernel,
            })
        };
        let strong = |size: usize, scale: [f64; 2], blur_p: f64, solarize: f64| ViewSpec {
            jitter: jitter(0.2),
            grayscale: 0.2,
            blur: blur(blur_p, Some(23)),
            solarize,
            ..plain(size, scale)
        };
        match self {
            Recipe::SmallAsym => vec![
                plain(size, [0.2, 1.0]),
                ViewSpec {
                    jitter: jitter(0.4),
                    grayscale: 0.2,
                    blur: blur(0.5, None),
                    ..plain(size, [0.2, 1.0])
                },
            ],
            Recipe::Imagenet2crop => vec![
                strong(size, [0.2, 1.0], 1.0, 0.0),
                strong(size, [0.2, 1.0], 0.1, 0.2),
            ],
            Recipe::ImagenetMulticrop => {
                let mut views = Recipe::Imagenet2crop.views(size);
                for local in [192, 160, 128, 96] {
                    let s = (local * size).div_ceil(224);
                    let f = local as f64 / 224.0;
                    views.push(strong(s, [0.2 * f, f], 0.5, 0.2));
                }
                views
            }
        }
    }
}

/// The views of one training sample and how each becomes a normalised float image.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewPipeline {
    pub views: Vec<ViewSpec>,
    pub normalization: Normalization,
}

impl ViewSpec {
    /// Linear-evaluation training view (spec §5): RandomCrop with 4-pixel padding + flip for
    /// small images (after resizing the whole image to `size` when it is larger, e.g. STL-10),
    /// RandomResizedCrop (scale 0.08–1) + flip otherwise.
    pub fn linear_eval(size: usize, small_images: bool) -> Self {
        ViewSpec {
            size,
            scale: [0.08, 1.0],
            ratio: default_ratio(),
            pad_crop: small_images.then_some(4),
            flip: 0.5,
            jitter: None,
            grayscale: 0.0,
            blur: None,
            solarize: 0.0,
        }
    }
}

impl ViewPipeline {
    pub fn new(views: Vec<ViewSpec>, normalization: Normalization) -> Result<Self, DataError> {
        let pipeline = Self {
            views,
            normalization,
        };
        pipeline.validate()?;
        Ok(pipeline)
    }

    fn validate(&self) -> Result<(), DataError> {
        let bad = |what: String| Err(DataError::Config(what));
        if self.views.is_empty() {
            return bad("a pipeline needs at least one view".into());
        }
        let n = &self.normalization;
        if n.mean.len() != n.std.len() || n.std.iter().any(|&s| s <= 0.0) {
            return bad(format!(
                "normalisation needs one mean and one positive std per channel, got {:?} / {:?}",
                n.mean, n.std
            ));
        }
        for (i, v) in self.views.iter().enumerate() {
            let prob = |name: &str, p: f64| {
                if (0.0..=1.0).contains(&p) {
                    Ok(())
                } else {
                    Err(DataError::Config(format!(
                        "view {i}: {name} probability {p} is not in [0, 1]"
                    )))
                }
            };
            if v.size == 0 {
                return bad(format!("view {i}: size must be >= 1"));
            }
            if !(v.scale[0] > 0.0 && v.scale[0] <= v.scale[1] && v.scale[1] <= 1.0) {
                return bad(format!(
                    "view {i}: scale {:?} must satisfy 0 < lo <= hi <= 1",
                    v.scale
                ));
            }
            if !(v.ratio[0] > 0.0 && v.ratio[0] <= v.ratio[1]) {
                return bad(format!(
                    "view {i}: ratio {:?} must satisfy 0 < lo <= hi",
                    v.ratio
                ));
            }
            prob("flip", v.flip)?;
            prob("grayscale", v.grayscale)?;
            prob("solarize", v.solarize)?;
            if let Some(j) = &v.jitter {
                prob("jitter", j.p)?;
                if [j.brightness, j.contrast, j.saturation]
                    .iter()
                    .any(|&x| x < 0.0)
                    || !(0.0..=0.5).contains(&j.hue)
                {
                    return bad(format!(
                        "view {i}: jitter strengths must be >= 0 and hue in [0, 0.5]"
                    ));
                }
            }
            if let Some(b) = &v.blur {
                prob("blur", b.p)?;
                if !(b.sigma[0] > 0.0 && b.sigma[0] <= b.sigma[1]) {
                    return bad(format!(
                        "view {i}: blur sigma {:?} must satisfy 0 < lo <= hi",
                        b.sigma
                    ));
                }
                if b.kernel.is_some_and(|k| k % 2 == 0) {
                    return bad(format!("view {i}: blur kernel size must be odd"));
                }
            }
        }
        Ok(())
    }

    /// All views of `image`, normalised CHW floats, drawn from `rng`.
    pub fn apply(&self, image: &Image, rng: &mut impl Rng, resizer: &mut Resizer) -> Vec<Planes> {
        self.views
            .iter()
            .map(|view| self.apply_view(view, image, rng, resizer))
            .collect()
    }

    fn apply_view(
        &self,
        view: &ViewSpec,
        image: &Image,
        rng: &mut impl Rng,
        resizer: &mut Resizer,
    ) -> Planes {
        let mut cropped = match view.pad_crop {
            // The CIFAR protocol at the training resolution: an image larger than the view
            // (STL-10's 96 pixels for 64-pixel training) is first resized whole, so the
            // classifier sees what pretraining saw, not a 64-pixel window of it.
            Some(padding) if image.width != view.size || image.height != view.size => {
                let whole = CropBox {
                    top: 0.0,
                    left: 0.0,
                    height: image.height as f64,
                    width: image.width as f64,
                };
                let resized = resized_crop(image, whole, view.size, resizer);
                random_crop_padded(&resized, view.size, padding, rng)
            }
            Some(padding) => random_crop_padded(image, view.size, padding, rng),
            None => {
                let crop =
                    random_resized_crop_box(image.width, image.height, view.scale, view.ratio, rng);
                resized_crop(image, crop, view.size, resizer)
            }
        };
        if rng.random_bool(view.flip) {
            hflip(&mut cropped);
        }
        let mut planes = Planes::from_image(&cropped);
        if let Some(jitter) = &view.jitter
            && rng.random_bool(jitter.p)
        {
            color_jitter(&mut planes, jitter, rng);
        }
        if rng.random_bool(view.grayscale) {
            grayscale(&mut planes);
        }
        if let Some(blur) = &view.blur
            && rng.random_bool(blur.p)
        {
            let sigma = rng.random_range(blur.sigma[0]..=blur.sigma[1]) as f32;
            let size = blur.kernel.unwrap_or_else(|| auto_kernel_size(sigma));
            gaussian_blur(&mut planes, size, sigma);
        }
        if rng.random_bool(view.solarize) {
            solarize(&mut planes, 0.5);
        }
        normalize(
            &mut planes,
            &self.normalization.mean,
            &self.normalization.std,
        );
        planes
    }
}

fn factor(rng: &mut impl Rng, strength: f64) -> Option<f32> {
    (strength > 0.0).then(|| rng.random_range((1.0 - strength).max(0.0)..=1.0 + strength) as f32)
}

/// torchvision's `ColorJitter.forward`: a random order of the four adjustments.
fn color_jitter(planes: &mut Planes, spec: &JitterSpec, rng: &mut impl Rng) {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let brightness = factor(rng, spec.brightness);
    let contrast = factor(rng, spec.contrast);
    let saturation = factor(rng, spec.saturation);
    let hue = (spec.hue > 0.0).then(|| rng.random_range(-spec.hue..=spec.hue) as f32);
    for op in order {
        match op {
            0 => brightness
                .into_iter()
                .for_each(|f| adjust_brightness(planes, f)),
            1 => contrast
                .into_iter()
                .for_each(|f| adjust_contrast(planes, f)),
            2 => saturation
                .into_iter()
                .for_each(|f| adjust_saturation(planes, f)),
            _ => hue.into_iter().for_each(|h| adjust_hue(planes, h)),
        }
    }
}

/// Evaluation preprocessing: resize the shorter side to `size / crop_fraction`, center-crop
/// `size` (torchvision's Resize 256 + CenterCrop 224 at 0.875), normalise. Small images whose
/// side already equals `size` pass through unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalTransform {
    pub size: usize,
    pub crop_fraction: f64,
    pub normalization: Normalization,
}

impl EvalTransform {
    pub fn apply(&self, image: &Image, resizer: &mut Resizer) -> Planes {
        let crop = if image.width == self.size && image.height == self.size {
            CropBox {
                top: 0.0,
                left: 0.0,
                height: image.height as f64,
                width: image.width as f64,
            }
        } else {
            center_crop_box(image.width, image.height, self.crop_fraction)
        };
        let mut planes = Planes::from_image(&resized_crop(image, crop, self.size, resizer));
        normalize(
            &mut planes,
            &self.normalization.mean,
            &self.normalization.std,
        );
        planes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::sample_rng;

    fn gray_norm() -> Normalization {
        Normalization {
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    #[test]
    fn recipes_match_the_spec() {
        let small = Recipe::SmallAsym.views(32);
        assert_eq!(small.len(), 2);
        assert!(small[0].jitter.is_none() && small[0].blur.is_none());
        assert_eq!(small[1].jitter.as_ref().unwrap().saturation, 0.4);
        assert_eq!(small[1].blur.as_ref().unwrap().p, 0.5);
        let two = Recipe::Imagenet2crop.views(224);
        assert_eq!(two[0].blur.as_ref().unwrap().p, 1.0);
        assert_eq!(two[1].blur.as_ref().unwrap().p, 0.1);
        assert_eq!((two[0].solarize, two[1].solarize), (0.0, 0.2));
        let multi = Recipe::ImagenetMulticrop.views(224);
        let sizes: Vec<usize> = multi.iter().map(|v| v.size).collect();
        assert_eq!(sizes, vec![224, 224, 192, 160, 128, 96]);
        assert!((multi[2].scale[0] - 0.2 * 192.0 / 224.0).abs() < 1e-12);
        assert!((multi[5].scale[1] - 96.0 / 224.0).abs() < 1e-12);
    }

    #[test]
    fn views_have_the_configured_sizes_and_are_reproducible() {
        let pipeline = ViewPipeline::new(Recipe::SmallAsym.views(16), gray_norm()).unwrap();
        let image = Image::new(28, 28, 1, (0..784).map(|i| (i % 251) as u8).collect());
        let mut resizer = Resizer::new();
        let a = pipeline.apply(&image, &mut sample_rng(1, 0, 5), &mut resizer);
        let b = pipeline.apply(&image, &mut sample_rng(1, 0, 5), &mut resizer);
        let c = pipeline.apply(&image, &mut sample_rng(1, 1, 5), &mut resizer);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(
            a.iter()
                .all(|v| v.width == 16 && v.height == 16 && v.channels == 1)
        );
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_view_named() {
        let mut views = Recipe::SmallAsym.views(32);
        views[1].blur.as_mut().unwrap().kernel = Some(4);
        let err = ViewPipeline::new(views, gray_norm()).unwrap_err();
        assert!(err.to_string().contains("view 1"), "{err}");
        let mut views = Recipe::SmallAsym.views(32);
        views[0].scale = [0.5, 0.2];
        assert!(ViewPipeline::new(views, gray_norm()).is_err());
    }

    /// A linear-evaluation view of an image larger than its size sees the whole image (resized),
    /// not a window: a 96-pixel image with marked 16-pixel left and right edges keeps both in
    /// every 64-pixel view (a padded 64-pixel window covers at most 60 columns, never both).
    #[test]
    fn linear_eval_views_of_larger_images_see_the_whole_image() {
        let pipeline =
            ViewPipeline::new(vec![ViewSpec::linear_eval(64, true)], gray_norm()).unwrap();
        let pixels: Vec<u8> = (0..96 * 96)
            .map(|i| match i % 96 {
                0..16 => 250,
                80.. => 100,
                _ => 0,
            })
            .collect();
        let image = Image::new(96, 96, 1, pixels);
        let mut resizer = Resizer::new();
        for index in 0..20 {
            let view = &pipeline.apply(&image, &mut sample_rng(3, 0, index), &mut resizer)[0];
            assert_eq!((view.width, view.height), (64, 64));
            let near = |v: f32| view.data.iter().any(|&x| (x - v / 255.0).abs() < 0.02);
            assert!(
                near(250.0) && near(100.0),
                "view {index} lost a third of the image"
            );
        }
    }

    #[test]
    fn eval_transform_center_crops() {
        let t = EvalTransform {
            size: 2,
            crop_fraction: 0.5,
            normalization: gray_norm(),
        };
        // 4×4 image whose central 2×2 block is 200, border 0; crop fraction 0.5 keeps the centre.
        let mut pixels = vec![0u8; 16];
        for (x, y) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            pixels[y * 4 + x] = 200;
        }
        let out = t.apply(&Image::new(4, 4, 1, pixels), &mut Resizer::new());
        assert!(
            out.data.iter().all(|&v| (v - 200.0 / 255.0).abs() < 1e-6),
            "{:?}",
            out.data
        );
    }
}
