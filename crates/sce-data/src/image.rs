use std::path::Path;

use crate::DataError;

/// An 8-bit image, rows of interleaved channels (HWC), 1 (gray) or 3 (RGB) channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    pub fn new(width: usize, height: usize, channels: usize, pixels: Vec<u8>) -> Self {
        assert_eq!(
            pixels.len(),
            width * height * channels,
            "pixel buffer does not match {width}x{height}x{channels}"
        );
        Self {
            width,
            height,
            channels,
            pixels,
        }
    }

    /// Decodes a JPEG or PNG file into `channels` (1: luma, 3: RGB) channels.
    pub fn open(path: &Path, channels: usize) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(DataError::io(path))?;
        Self::decode(&bytes, channels).map_err(|detail| DataError::corrupt(path, detail))
    }

    /// Decodes an encoded image held in memory.
    pub fn decode(bytes: &[u8], channels: usize) -> Result<Self, String> {
        let decoded = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
        let (width, height) = (decoded.width() as usize, decoded.height() as usize);
        let pixels = match channels {
            1 => decoded.into_luma8().into_raw(),
            3 => decoded.into_rgb8().into_raw(),
            n => return Err(format!("cannot decode into {n} channels (1 or 3)")),
        };
        Ok(Self::new(width, height, channels, pixels))
    }

    /// The value at row `y`, column `x`, channel `c`.
    pub fn at(&self, x: usize, y: usize, c: usize) -> u8 {
        self.pixels[(y * self.width + x) * self.channels + c]
    }
}
