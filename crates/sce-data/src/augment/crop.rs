//! Geometry on 8-bit images: torchvision's RandomResizedCrop parameters, antialiased bilinear
//! resizing (Pillow's filter, via fast_image_resize), center crops and horizontal flips.

use fast_image_resize::images::{Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::{Rng, RngExt};

use crate::Image;

/// A crop box in source pixels: top row, left column, height, width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub top: f64,
    pub left: f64,
    pub height: f64,
    pub width: f64,
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at an area fraction in `scale` and a
/// log-uniform aspect ratio in `ratio`, then a central crop clamped to `ratio`.
pub fn random_resized_crop_box(
    width: usize,
    height: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> CropBox {
    let (w_img, h_img) = (width as f64, height as f64);
    let area = w_img * h_img;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale[0]..=scale[1]);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let w = (target_area * aspect).sqrt().round();
        let h = (target_area / aspect).sqrt().round();
        if w > 0.0 && w <= w_img && h > 0.0 && h <= h_img {
            let top = rng.random_range(0..=(height - h as usize)) as f64;
            let left = rng.random_range(0..=(width - w as usize)) as f64;
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < ratio[0] {
        (w_img, (w_img / ratio[0]).round())
    } else if in_ratio > ratio[1] {
        ((h_img * ratio[1]).round(), h_img)
    } else {
        (w_img, h_img)
    };
    CropBox {
        top: ((h_img - h) / 2.0).floor(),
        left: ((w_img - w) / 2.0).floor(),
        height: h,
        width: w,
    }
}

/// The box torchvision's `Resize(s / crop_fraction)` + `CenterCrop(s)` takes from the source,
/// expressed in source pixels (the resize scales the shorter side to `size / crop_fraction`).
pub fn center_crop_box(width: usize, height: usize, crop_fraction: f64) -> CropBox {
    let side = width.min(height) as f64 * crop_fraction;
    CropBox {
        top: (height as f64 - side) / 2.0,
        left: (width as f64 - side) / 2.0,
        height: side,
        width: side,
    }
}

/// Resizes `crop` of `image` to `size`×`size` with Pillow's antialiased bilinear filter.
pub fn resized_crop(image: &Image, crop: CropBox, size: usize, resizer: &mut Resizer) -> Image {
    let pixel_type = match image.channels {
        1 => PixelType::U8,
        3 => PixelType::U8x3,
        n => panic!("images have 1 or 3 channels, not {n}"),
    };
    let identity = crop.top == 0.0
        && crop.left == 0.0
        && crop.width as usize == image.width
        && crop.height as usize == image.height
        && image.width == size
        && image.height == size;
    if identity {
        return image.clone();
    }
    let src = ImageRef::new(
        image.width as u32,
        image.height as u32,
        &image.pixels,
        pixel_type,
    )
    .expect("image buffer matches its size");
    let mut dst = FirImage::new(size as u32, size as u32, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left, crop.top, crop.width, crop.height);
    resizer
        .resize(&src, &mut dst, &options)
        .expect("crop box lies inside the image");
    Image::new(size, size, image.channels, dst.into_vec())
}

/// torchvision's `RandomCrop(size, padding)`: zero-pad every side by `padding`, then cut a
/// `size`×`size` window at a uniformly drawn position.
pub fn random_crop_padded(image: &Image, size: usize, padding: usize, rng: &mut impl Rng) -> Image {
    let (w, h, c) = (image.width, image.height, image.channels);
    let (pw, ph) = (w + 2 * padding, h + 2 * padding);
    let top = rng.random_range(0..=ph.saturating_sub(size));
    let left = rng.random_range(0..=pw.saturating_sub(size));
    let mut pixels = vec![0u8; size * size * c];
    for y in 0..size {
        let sy = (top + y) as isize - padding as isize;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        for x in 0..size {
            let sx = (left + x) as isize - padding as isize;
            if sx < 0 || sx >= w as isize {
                continue;
            }
            let src = (sy as usize * w + sx as usize) * c;
            pixels[(y * size + x) * c..(y * size + x + 1) * c]
                .copy_from_slice(&image.pixels[src..src + c]);
        }
    }
    Image::new(size, size, c, pixels)
}

/// Mirrors the image left to right in place.
pub fn hflip(image: &mut Image) {
    let c = image.channels;
    for row in image.pixels.chunks_exact_mut(image.width * c) {
        let w = row.len() / c;
        for x in 0..w / 2 {
            for ch in 0..c {
                row.swap(x * c + ch, (w - 1 - x) * c + ch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::sample_rng;

    #[test]
    fn crop_boxes_respect_scale_and_ratio() {
        let mut rng = sample_rng(0, 0, 0);
        for _ in 0..500 {
            let b = random_resized_crop_box(64, 48, [0.2, 1.0], [0.75, 4.0 / 3.0], &mut rng);
            assert!(b.width >= 1.0 && b.width <= 64.0 && b.height >= 1.0 && b.height <= 48.0);
            assert!(b.left + b.width <= 64.0 && b.top + b.height <= 48.0);
            let frac = b.width * b.height / (64.0 * 48.0);
            assert!(frac > 0.15 && frac <= 1.0 + 1e-9, "area fraction {frac}");
        }
        // Impossible scale forces the central fallback, clamped to the widest allowed ratio.
        let b = random_resized_crop_box(100, 10, [5.0, 6.0], [0.75, 4.0 / 3.0], &mut rng);
        assert_eq!((b.width, b.height, b.left, b.top), (13.0, 10.0, 43.0, 0.0));
    }

    /// 2×2 image padded by 1 into a 4×4 field; a 2×2 window at every position the RNG picks
    /// must equal the corresponding slice of the hand-padded field.
    #[test]
    fn padded_crop_by_hand() {
        let img = Image::new(2, 2, 1, vec![1, 2, 3, 4]);
        #[rustfmt::skip]
        let field = [
            0, 0, 0, 0,
            0, 1, 2, 0,
            0, 3, 4, 0,
            0, 0, 0, 0,
        ];
        let mut rng = sample_rng(3, 0, 0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let out = random_crop_padded(&img, 2, 1, &mut rng);
            let found = (0..3)
                .flat_map(|t| (0..3).map(move |l| (t, l)))
                .find(|&(t, l)| {
                    (0..2).all(|y| {
                        (0..2).all(|x| out.pixels[y * 2 + x] == field[(t + y) * 4 + l + x])
                    })
                });
            seen.insert(found.expect("window of the padded field"));
        }
        assert_eq!(seen.len(), 9, "every offset is reachable");
    }

    #[test]
    fn flip_and_identity_resize_by_hand() {
        let mut img = Image::new(3, 1, 3, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        hflip(&mut img);
        assert_eq!(img.pixels, vec![7, 8, 9, 4, 5, 6, 1, 2, 3]);
        let mut resizer = Resizer::new();
        let same = Image::new(2, 2, 1, vec![10, 20, 30, 40]);
        let full = CropBox {
            top: 0.0,
            left: 0.0,
            height: 2.0,
            width: 2.0,
        };
        assert_eq!(resized_crop(&same, full, 2, &mut resizer), same);
    }

    /// Downscaling 4×4 → 2×2 with an antialiased bilinear (triangle) filter: each output pixel
    /// is a weighted mean of the 4×4 neighbourhood with weights (1, 3, 3, 1)/8 per axis around
    /// its centre, clipped at the border (Pillow normalises the kept weights).
    #[test]
    fn antialiased_downscale_by_hand() {
        // Columns 0..3 hold 0, 80, 160, 240 in every row.
        let row = [0u8, 80, 160, 240];
        let img = Image::new(4, 4, 1, row.iter().cycle().take(16).copied().collect());
        let mut resizer = Resizer::new();
        let full = CropBox {
            top: 0.0,
            left: 0.0,
            height: 4.0,
            width: 4.0,
        };
        let out = resized_crop(&img, full, 2, &mut resizer);
        // Output x=0 centre at source 1.0: support 2 → taps x=0,1,2 with triangle weights
        // at distances 0.5, 0.5, 1.5 → (0.75, 0.75, 0.25)/1.75: (0·0.75 + 80·0.75 + 160·0.25)/1.75.
        let left = (80.0 * 0.75 + 160.0 * 0.25) / 1.75;
        let right = (240.0 * 0.75 + 160.0 * 0.75 + 80.0 * 0.25) / 1.75;
        for (i, &v) in out.pixels.iter().enumerate() {
            let want = if i % 2 == 0 { left } else { right };
            assert!((v as f64 - want).abs() <= 1.0, "pixel {i}: {v} vs {want}");
        }
    }
}
