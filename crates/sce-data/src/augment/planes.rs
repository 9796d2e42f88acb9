/// A float image in [0, 1], channel planes one after the other (CHW), the layout tensors take.
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl Planes {
    /// From an 8-bit HWC image: `ToTensor` (divide by 255, move channels first).
    pub fn from_image(image: &crate::Image) -> Self {
        let (w, h, c) = (image.width, image.height, image.channels);
        let mut data = vec![0.0f32; w * h * c];
        let plane = w * h;
        for (p, px) in image.pixels.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                data[ch * plane + p] = f32::from(v) * (1.0 / 255.0);
            }
        }
        Self {
            width: w,
            height: h,
            channels: c,
            data,
        }
    }

    pub fn plane_len(&self) -> usize {
        self.width * self.height
    }

    /// The planes of a 3-channel image as (r, g, b) slices.
    pub fn rgb_mut(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        let n = self.plane_len();
        let (r, rest) = self.data.split_at_mut(n);
        let (g, b) = rest.split_at_mut(n);
        (r, g, b)
    }
}
