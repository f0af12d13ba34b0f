//! MoCo v2's augmentation (Chen et al. 2020, "Improved Baselines with Momentum Contrastive
//! Learning"): RandomResizedCrop(0.2–1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8,
//! RandomGrayscale p = 0.2, GaussianBlur σ ∈ [0.1, 2.0] with p = 0.5, horizontal flip.

use image::RgbImage;
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::geometry::{ViewGeometry, resample};
use super::{FloatImage, photometric};

/// Settings of the MoCo v2 augmentation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV2Augment {
    /// Side of the output views in pixels (224 in the paper).
    pub size: usize,
    /// Range of the crop's share of the image area.
    pub crop_scale: (f32, f32),
    /// Colour jitter strengths: brightness, contrast, saturation, hue.
    pub jitter: [f32; 4],
    /// Probability of applying the colour jitter.
    pub jitter_p: f64,
    /// Probability of converting to greyscale.
    pub grayscale_p: f64,
    /// Probability of blurring.
    pub blur_p: f64,
    /// Blur σ range in pixels *at 224 px*; scaled by `size / 224` so small images blur alike.
    pub blur_sigma: (f32, f32),
    /// Probability of a horizontal flip.
    pub flip_p: f64,
}

impl Default for MocoV2Augment {
    fn default() -> Self {
        Self {
            size: 224,
            crop_scale: (0.2, 1.0),
            jitter: [0.4, 0.4, 0.4, 0.1],
            jitter_p: 0.8,
            grayscale_p: 0.2,
            blur_p: 0.5,
            blur_sigma: (0.1, 2.0),
            flip_p: 0.5,
        }
    }
}

/// One augmented view: the normalised image and where it came from.
#[derive(Debug, Clone)]
pub struct View {
    /// The view, ImageNet-normalised.
    pub image: FloatImage,
    /// Its geometry relative to the source image.
    pub geometry: ViewGeometry,
}

impl MocoV2Augment {
    /// Draws one augmented view of `source`.
    pub fn view(&self, source: &RgbImage, rng: &mut impl Rng) -> View {
        let src = FloatImage::from_rgb(source);
        let geometry = ViewGeometry::random_resized_crop(
            rng,
            src.width,
            src.height,
            self.size,
            self.crop_scale,
            (3.0 / 4.0, 4.0 / 3.0),
            self.flip_p,
        );
        let data = resample(&src.data, 3, src.height, src.width, &geometry);
        let mut image = FloatImage { height: self.size, width: self.size, data };
        if rng.random_bool(self.jitter_p) {
            self.color_jitter(&mut image, rng);
        }
        if rng.random_bool(self.grayscale_p) {
            photometric::grayscale(&mut image);
        }
        if rng.random_bool(self.blur_p) {
            let scale = self.size as f32 / 224.0;
            let sigma = rng.random_range(self.blur_sigma.0..=self.blur_sigma.1) * scale;
            photometric::gaussian_blur(&mut image, sigma.max(0.05));
        }
        image.normalize_imagenet();
        View { image, geometry }
    }

    /// torchvision's ColorJitter: the four adjustments in random order.
    fn color_jitter(&self, image: &mut FloatImage, rng: &mut impl Rng) {
        let [b, c, s, h] = self.jitter;
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        for op in order {
            match op {
                0 if b > 0.0 => photometric::brightness(image, rng.random_range(1.0 - b..=1.0 + b)),
                1 if c > 0.0 => photometric::contrast(image, rng.random_range(1.0 - c..=1.0 + c)),
                2 if s > 0.0 => photometric::saturation(image, rng.random_range(1.0 - s..=1.0 + s)),
                3 if h > 0.0 => photometric::hue(image, rng.random_range(-h..=h)),
                _ => {}
            }
        }
    }
}
