//! Pictures as rows of captioned tiles: the augmentation preview, retrieval results.

use anyhow::anyhow;
use image::RgbImage;
use image::imageops::FilterType;
use plotters::prelude::*;

/// One picture of a grid and the lines of text under it.
pub struct Tile {
    pub image: RgbImage,
    pub caption: Vec<String>,
}

impl Tile {
    pub fn new(image: RgbImage, caption: impl IntoIterator<Item = String>) -> Self {
        Self {
            image,
            caption: caption.into_iter().collect(),
        }
    }
}

const GAP: u32 = 6;
const LINE: u32 = 14;
/// Space between a tile and its caption (glyphs reach a little above their anchor).
const CAPTION_GAP: u32 = 4;
const FONT_SIZE: f64 = 12.0;

/// An 8-bit dataset image as RGB (grey replicated).
pub fn rgb_of(image: &sce_data::Image) -> RgbImage {
    RgbImage::from_fn(image.width as u32, image.height as u32, |x, y| {
        let at = (y as usize * image.width + x as usize) * image.channels;
        match image.channels {
            1 => image::Rgb([image.pixels[at]; 3]),
            _ => image::Rgb([image.pixels[at], image.pixels[at + 1], image.pixels[at + 2]]),
        }
    })
}

/// `image` scaled to fit a `side`-pixel square: nearest neighbour when enlarging (a 28-pixel
/// digit stays sharp), a triangle filter when shrinking.
fn fit(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let scale = side as f64 / w.max(h).max(1) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).clamp(1, side),
        ((h as f64 * scale).round() as u32).clamp(1, side),
    );
    let filter = if scale >= 1.0 {
        FilterType::Nearest
    } else {
        FilterType::Triangle
    };
    image::imageops::resize(image, nw, nh, filter)
}

/// Shortens `text` to about `chars` characters, keeping its end (where a path's file name is).
fn shorten(text: &str, chars: usize) -> String {
    let count = text.chars().count();
    if count <= chars {
        return text.to_string();
    }
    let tail: String = text.chars().skip(count + 1 - chars).collect();
    format!("…{tail}")
}

/// Draws `rows` of tiles, each image fitted to a `side`-pixel square with its caption under it
/// (captions need a font: without one they are left out).
pub fn draw(rows: &[Vec<Tile>], side: u32) -> anyhow::Result<RgbImage> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    if columns == 0 {
        return Err(anyhow!("a picture grid needs at least one image"));
    }
    let labelled = super::font::sans_serif();
    let lines = if labelled {
        rows.iter()
            .flatten()
            .map(|t| t.caption.len())
            .max()
            .unwrap_or(0) as u32
    } else {
        0
    };
    let cell_w = side + GAP;
    let caption_h = if lines > 0 {
        CAPTION_GAP + lines * LINE
    } else {
        0
    };
    let cell_h = side + caption_h + GAP;
    let (width, height) = (columns * cell_w + GAP, rows.len() as u32 * cell_h + GAP);
    let mut canvas = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            let fitted = fit(&tile.image, side);
            let x = GAP + c as u32 * cell_w + (side - fitted.width()) / 2;
            let y = GAP + r as u32 * cell_h + (side - fitted.height()) / 2;
            image::imageops::replace(&mut canvas, &fitted, x as i64, y as i64);
        }
    }
    if lines > 0 {
        let chars = (side as f64 / (FONT_SIZE * 0.55)) as usize;
        let mut buffer = canvas.into_raw();
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
            let style = ("sans-serif", FONT_SIZE).into_font().color(&BLACK);
            for (r, row) in rows.iter().enumerate() {
                for (c, tile) in row.iter().enumerate() {
                    let x = (GAP + c as u32 * cell_w) as i32;
                    let y = (GAP + r as u32 * cell_h + side + CAPTION_GAP) as i32;
                    for (l, text) in tile.caption.iter().enumerate() {
                        root.draw_text(
                            &shorten(text, chars),
                            &style,
                            (x, y + (l as u32 * LINE) as i32),
                        )?;
                    }
                }
            }
            root.present()?;
        }
        canvas = RgbImage::from_raw(width, height, buffer).expect("the buffer keeps its size");
    }
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_fitted_and_placed_in_rows() {
        let red = RgbImage::from_pixel(8, 4, image::Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(50, 50, image::Rgb([0, 0, 255]));
        let rows = vec![
            vec![Tile::new(red.clone(), ["a".to_string()])],
            vec![
                Tile::new(blue, ["b".to_string(), "c".to_string()]),
                Tile::new(red, []),
            ],
        ];
        let picture = draw(&rows, 16).unwrap();
        let caption = if crate::report::font::sans_serif() {
            CAPTION_GAP + 2 * LINE
        } else {
            0
        };
        let cell = (16 + GAP, 16 + caption + GAP);
        assert_eq!(picture.dimensions(), (2 * cell.0 + GAP, 2 * cell.1 + GAP));
        // The 8×4 red image is enlarged to 16×8, centred vertically in its square.
        assert_eq!(*picture.get_pixel(GAP, GAP + 4), image::Rgb([255, 0, 0]));
        assert_eq!(*picture.get_pixel(GAP, GAP), image::Rgb([255, 255, 255]));
        // The 50-pixel blue one is shrunk to the whole square of row 2.
        assert_eq!(
            *picture.get_pixel(GAP + 8, GAP + cell.1 + 8),
            image::Rgb([0, 0, 255])
        );
        assert!(draw(&[], 16).is_err());
    }

    #[test]
    fn long_captions_keep_their_end() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("/a/long/path/img_042.png", 12), "…img_042.png");
    }

    #[test]
    fn grey_images_become_rgb() {
        let grey = sce_data::Image::new(2, 1, 1, vec![10, 200]);
        let rgb = rgb_of(&grey);
        assert_eq!(*rgb.get_pixel(1, 0), image::Rgb([200, 200, 200]));
    }
}
