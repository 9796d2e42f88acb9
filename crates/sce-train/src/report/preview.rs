//! The configured augmentation, shown: each of the first images of a dataset beside its views,
//! drawn exactly as the first training epoch draws them (same seed, same per-image RNG).

use anyhow::Context;
use fast_image_resize::Resizer;
use image::RgbImage;
use sce_data::ImageSource;
use sce_data::augment::{Normalization, Planes, Recipe, ViewPipeline};
use sce_data::rng::sample_rng;

use super::grid::{Tile, draw, rgb_of};
use crate::config::TrainConfig;

/// Images (rows) in a preview unless asked otherwise.
pub const DEFAULT_IMAGES: usize = 6;

/// What each view of the configuration is called in the picture: the small-dataset recipe's
/// weak (target) and strong (online) views; otherwise global crops and local crops by size.
pub fn view_names(config: &TrainConfig) -> Vec<String> {
    let views = config.views();
    if config.augment.views.is_none() && config.augment.recipe == Recipe::SmallAsym {
        return vec!["weak view".into(), "strong view".into()];
    }
    let mut global = 0;
    views
        .iter()
        .map(|v| {
            if v.size == config.augment.size {
                global += 1;
                format!("global {global}")
            } else {
                "local".to_string()
            }
        })
        .collect()
}

/// A normalised view back to 8-bit RGB (grey replicated), for looking at.
pub fn planes_to_rgb(planes: &Planes, normalization: &Normalization) -> RgbImage {
    let plane = planes.plane_len();
    let value = |c: usize, p: usize| {
        let v = planes.data[c * plane + p] * normalization.std[c] + normalization.mean[c];
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    RgbImage::from_fn(planes.width as u32, planes.height as u32, |x, y| {
        let p = y as usize * planes.width + x as usize;
        match planes.channels {
            1 => image::Rgb([value(0, p); 3]),
            _ => image::Rgb([value(0, p), value(1, p), value(2, p)]),
        }
    })
}

/// One row per image (`count` at most): the source image, then every view of `pipeline`.
pub fn augmentation_grid(
    source: &dyn ImageSource,
    pipeline: &ViewPipeline,
    names: &[String],
    count: usize,
    seed: u64,
) -> anyhow::Result<RgbImage> {
    let mut resizer = Resizer::new();
    let side = pipeline
        .views
        .iter()
        .map(|v| v.size as u32)
        .max()
        .unwrap_or(96)
        .clamp(96, 160);
    let class_names = source.class_names();
    let mut rows = Vec::new();
    for index in 0..count.min(source.len()) {
        let sample = source
            .get(index)
            .with_context(|| format!("reading {} for the preview", source.item_name(index)))?;
        let mut caption = vec![source.item_name(index)];
        caption.extend(sample.label.map(|l| super::class_label(&class_names, l)));
        let mut row = vec![Tile::new(rgb_of(&sample.image), caption)];
        let mut rng = sample_rng(seed, 0, index as u64);
        let views = pipeline.apply(&sample.image, &mut rng, &mut resizer);
        for ((planes, spec), name) in views.iter().zip(&pipeline.views).zip(names) {
            row.push(Tile::new(
                planes_to_rgb(planes, &pipeline.normalization),
                [name.clone(), format!("{} px", spec.size)],
            ));
        }
        rows.push(row);
    }
    anyhow::ensure!(!rows.is_empty(), "the dataset has no image to preview");
    draw(&rows, side)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sce_data::augment::ViewSpec;

    #[test]
    fn normalisation_is_undone() {
        let normalization = Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        };
        // 0.5 + 0.25 * v: v = -2 → 0 (black), 0 → 0.5, 2 → 1 (white), 10 → clamped white.
        let planes = Planes {
            width: 4,
            height: 1,
            channels: 1,
            data: vec![-2.0, 0.0, 2.0, 10.0],
        };
        let rgb = planes_to_rgb(&planes, &normalization);
        let grey: Vec<u8> = rgb.pixels().map(|p| p.0[0]).collect();
        assert_eq!(grey, vec![0, 128, 255, 255]);
    }

    #[test]
    fn a_view_of_an_identity_pipeline_is_its_image() {
        struct One(sce_data::Image);
        impl ImageSource for One {
            fn len(&self) -> usize {
                1
            }
            fn get(&self, _: usize) -> Result<sce_data::Sample, sce_data::DataError> {
                Ok(sce_data::Sample {
                    image: self.0.clone(),
                    label: Some(3),
                })
            }
            fn num_classes(&self) -> usize {
                10
            }
            fn channels(&self) -> usize {
                3
            }
            fn item_name(&self, _: usize) -> String {
                "one".into()
            }
        }
        let pixels: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let image = sce_data::Image::new(8, 8, 3, pixels);
        let identity = ViewSpec {
            size: 8,
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
            pad_crop: None,
            flip: 0.0,
            jitter: None,
            grayscale: 0.0,
            blur: None,
            solarize: 0.0,
        };
        let normalization = Normalization {
            mean: vec![0.4; 3],
            std: vec![0.2; 3],
        };
        let pipeline = ViewPipeline::new(vec![identity], normalization.clone()).unwrap();
        let mut rng = sample_rng(0, 0, 0);
        let view = &pipeline.apply(&image, &mut rng, &mut Resizer::new())[0];
        assert_eq!(planes_to_rgb(view, &normalization), rgb_of(&image));
        let grid = augmentation_grid(&One(image), &pipeline, &["v".into()], 4, 0).unwrap();
        // One row of two 96-pixel tiles.
        assert_eq!(grid.width(), 2 * 96 + 3 * 6);
    }
}
