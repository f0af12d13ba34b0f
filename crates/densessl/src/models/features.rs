//! Encoder features of one image, preprocessed exactly as documented so that anyone can
//! reproduce them in PyTorch: `F.interpolate(x, (S, S), mode="bilinear", align_corners=False)`
//! on the [0, 1] RGB tensor (no antialiasing), ImageNet mean/std, eval-mode forward.

use std::str::FromStr;

use burn::module::Module;
use burn::tensor::Device;
use image::RgbImage;

use super::resnet::ResNet;
use crate::views::FloatImage;
use crate::views::geometry::{ViewGeometry, resample};
use crate::{Error, Result};

/// Which encoder stage to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// After `layer1` (stride 4).
    C2,
    /// After `layer2` (stride 8).
    C3,
    /// After `layer3`.
    C4,
    /// After `layer4`.
    C5,
}

impl FromStr for Layer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "c2" => Ok(Self::C2),
            "c3" => Ok(Self::C3),
            "c4" => Ok(Self::C4),
            "c5" => Ok(Self::C5),
            other => Err(Error::Invalid(format!("unknown layer '{other}': use c2|c3|c4|c5"))),
        }
    }
}

/// `image` resized to `size`² and ImageNet-normalised, as a `[3, size, size]` float image.
pub fn preprocess(image: &RgbImage, size: usize) -> FloatImage {
    let source = FloatImage::from_rgb(image);
    let view = ViewGeometry { out_w: size, out_h: size, ..ViewGeometry::identity(source.width, source.height) };
    let mut resized = FloatImage { height: size, width: size, data: resample(&source.data, 3, &view, 0.0) };
    resized.normalize_imagenet();
    resized
}

/// The chosen layer's features of `image` in eval mode: values and shape `[1, C, H, W]`.
pub fn image_features(encoder: &ResNet, image: &RgbImage, size: usize, layer: Layer, device: &Device) -> (Vec<f32>, Vec<usize>) {
    let input = crate::views::batch_tensor(&[preprocess(image, size)], device);
    let f = encoder.valid().forward(input);
    let t = match layer {
        Layer::C2 => f.c2,
        Layer::C3 => f.c3,
        Layer::C4 => f.c4,
        Layer::C5 => f.c5,
    };
    let shape = t.dims().to_vec();
    (t.into_data().try_to_vec().expect("float features"), shape)
}
