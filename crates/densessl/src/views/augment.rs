//! The contrastive view augmentation: RandomResizedCrop and flip (geometric, recorded in the
//! view's [`ViewGeometry`]), then colour jitter, greyscale, Gaussian blur and solarize
//! (photometric, which leave the geometry untouched). Presets:
//! - MoCo v2 (Chen et al. 2020): crop 0.2–1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
//!   greyscale p 0.2, blur σ ∈ [0.1, 2] p 0.5, flip;
//! - BYOL (Grill et al. 2020), asymmetric: crop 0.08–1, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
//!   greyscale p 0.2, blur p 1.0 / 0.1, solarize p 0 / 0.2 for the first / second view.

use image::RgbImage;
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::geometry::{ViewGeometry, resample};
use super::{FloatImage, photometric};

/// Settings of one view's augmentation (defaults: MoCo v2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ViewAugment {
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
    /// Probability of solarizing (pixels ≥ 0.5 become 1 − value).
    pub solarize_p: f64,
}

impl Default for ViewAugment {
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
            solarize_p: 0.0,
        }
    }
}

impl ViewAugment {
    /// MoCo v2's augmentation at `size` pixels.
    pub fn moco_v2(size: usize) -> Self {
        Self { size, ..Self::default() }
    }

    /// MoCo v1's augmentation (He et al. 2020): crop 0.2–1, greyscale p 0.2, ColorJitter(0.4,
    /// 0.4, 0.4, 0.4) always, flip; no blur.
    pub fn moco_v1(size: usize) -> Self {
        Self { size, jitter: [0.4, 0.4, 0.4, 0.4], jitter_p: 1.0, blur_p: 0.0, ..Self::default() }
    }

    /// SimCLR's augmentation (Chen et al. 2020): crop 0.08–1, flip, ColorJitter(0.8, 0.8, 0.8,
    /// 0.2) p 0.8, greyscale p 0.2, blur p 0.5.
    pub fn simclr(size: usize) -> Self {
        Self { size, crop_scale: (0.08, 1.0), jitter: [0.8, 0.8, 0.8, 0.2], ..Self::default() }
    }

    /// BYOL's augmentation of the first (`second = false`) or second view.
    pub fn byol(size: usize, second: bool) -> Self {
        Self {
            size,
            crop_scale: (0.08, 1.0),
            jitter: [0.4, 0.4, 0.2, 0.1],
            blur_p: if second { 0.1 } else { 1.0 },
            solarize_p: if second { 0.2 } else { 0.0 },
            ..Self::default()
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

impl ViewAugment {
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
        let data = resample(&src.data, 3, &geometry, 0.0);
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
        if self.solarize_p > 0.0 && rng.random_bool(self.solarize_p) {
            photometric::solarize(&mut image, 0.5);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The geometry a view records is the one applied: with photometric steps off, the view
    /// is exactly the source resampled through it; turning them on leaves it unchanged.
    #[test]
    fn recorded_geometry_is_the_applied_one_and_photometric_steps_keep_it() {
        let source = RgbImage::from_fn(37, 29, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 77]));
        let plain = ViewAugment { jitter_p: 0.0, grayscale_p: 0.0, blur_p: 0.0, ..ViewAugment::moco_v2(24) };
        let full = ViewAugment { jitter_p: 1.0, grayscale_p: 1.0, blur_p: 1.0, solarize_p: 1.0, ..ViewAugment::byol(24, true) };
        for seed in 0..50 {
            let view = plain.view(&source, &mut ChaCha8Rng::seed_from_u64(seed));
            let mut expected = FloatImage::from_rgb(&source);
            expected.data = resample(&expected.data, 3, &view.geometry, 0.0);
            (expected.height, expected.width) = (24, 24);
            expected.normalize_imagenet();
            assert_eq!(view.image, expected);
            let a = ViewAugment { crop_scale: full.crop_scale, ..plain.clone() }.view(&source, &mut ChaCha8Rng::seed_from_u64(seed));
            let b = full.view(&source, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(a.geometry, b.geometry);
            assert_ne!(a.image, b.image);
        }
    }

    #[test]
    fn solarize_inverts_bright_values_only() {
        let mut im = FloatImage { height: 1, width: 3, data: vec![0.2, 0.5, 0.9, 0.0, 1.0, 0.49, 0.3, 0.3, 0.3] };
        photometric::solarize(&mut im, 0.5);
        let expected = [0.2, 0.5, 0.1, 0.0, 0.0, 0.49, 0.3, 0.3, 0.3];
        assert!(im.data.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{:?}", im.data);
    }
}
