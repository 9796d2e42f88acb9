use std::path::Path;

use crate::DataError;

/// Memory all decoders running at once may use together. The image crate's limit applies per
/// decoder, and each rayon thread decodes one image at a time.
const DECODE_BUDGET: u64 = 2 << 30;

/// The memory one decoder may allocate when `threads` decode at once: a share of
/// [`DECODE_BUDGET`], but at least 64 MiB (a 4K RGB photo) and at most the image crate's
/// default of 512 MiB.
pub fn decode_limit(threads: usize) -> u64 {
    (DECODE_BUDGET / threads.max(1) as u64).clamp(64 << 20, 512 << 20)
}

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

    /// Decodes an encoded image held in memory, within [`decode_limit`] bytes of memory.
    pub fn decode(bytes: &[u8], channels: usize) -> Result<Self, String> {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(decode_limit(rayon::current_num_threads()));
        reader.limits(limits);
        let decoded = reader.decode().map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_share_one_memory_budget() {
        assert_eq!(decode_limit(1), 512 << 20);
        assert_eq!(decode_limit(8), 256 << 20);
        assert_eq!(decode_limit(64), 64 << 20, "64 threads: 4 GiB, not 32");
        // A PNG announcing 20000×20000 RGB (1.2 GB) is refused, not allocated.
        let mut png = Vec::new();
        image::RgbImage::new(1, 1)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        let err = Image::decode(&png, 3).unwrap_err();
        assert!(err.to_lowercase().contains("limit"), "{err}");
    }
}
