//! Views of an image: geometric transforms with an exact map back to the source image,
//! photometric transforms, and batching into tensors.

pub mod augment;
pub mod geometry;
pub mod pair;
pub mod patch_rotation;
pub mod photometric;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

/// ImageNet channel means (RGB), what torchvision-pretrained encoders expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A float image in channel-major order, values in [0, 1] before normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatImage {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `[3, height, width]`, row-major.
    pub data: Vec<f32>,
}

impl FloatImage {
    /// Converts an 8-bit RGB image to [0, 1].
    pub fn from_rgb(image: &RgbImage) -> Self {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut data = vec![0.0; 3 * h * w];
        for (i, p) in image.pixels().enumerate() {
            for c in 0..3 {
                data[c * h * w + i] = f32::from(p.0[c]) / 255.0;
            }
        }
        Self { height: h, width: w, data }
    }

    /// Channel `c` as a slice.
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    /// Subtracts the ImageNet mean and divides by its std, in place.
    pub fn normalize_imagenet(&mut self) {
        let n = self.height * self.width;
        for c in 0..3 {
            for v in &mut self.data[c * n..(c + 1) * n] {
                *v = (*v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
}

/// Stacks equally sized images into a `[B, 3, H, W]` tensor.
pub fn batch_tensor(images: &[FloatImage], device: &Device) -> Tensor<4> {
    let (h, w) = (images[0].height, images[0].width);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for im in images {
        assert_eq!((im.height, im.width), (h, w), "images in a batch must share one size");
        data.extend_from_slice(&im.data);
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device)
}
