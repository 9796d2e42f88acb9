//! Multi-view augmentation on 8-bit images with torchvision's semantics (spec §4).
//!
//! Geometry (random resized crop, flip) works on u8 pixels; colour, blur, solarize and
//! normalisation on float planes, as torchvision's tensor transforms do.

mod blur;
mod color;
mod crop;
mod planes;
mod recipe;

pub use blur::{auto_kernel_size, gaussian_blur, gaussian_kernel};
pub use color::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, grayscale, normalize,
    solarize,
};
pub use crop::{
    CropBox, center_crop_box, hflip, random_crop_padded, random_resized_crop_box, resized_crop,
};
pub use planes::Planes;
pub use recipe::{
    BlurSpec, EvalTransform, JitterSpec, Normalization, Recipe, ViewPipeline, ViewSpec,
};
