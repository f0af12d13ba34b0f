//! Training augmentation for segmentation, as mmsegmentation's pipeline: random rescale,
//! random crop padded with 255 (with `cat_max_ratio`), horizontal flip, photometric
//! distortion. Image and mask go through one [`ViewGeometry`], so they stay aligned exactly.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::{IGNORE_LABEL, SegSample};
use crate::views::geometry::{ViewGeometry, resample, resample_labels};
use crate::views::{FloatImage, photometric};
use crate::{Error, Result};

/// Settings of the training augmentation (`[augment]` in a fine-tune config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SegAugmentConfig {
    /// Side of the square training crop; 0 = whole (rescaled) images, which must then share a size.
    pub crop_size: usize,
    /// Range of the random rescale ratio (mmseg: 0.5–2.0); `[1.0, 1.0]` = no rescale.
    pub scale_range: (f32, f32),
    /// Short side before the ratio applies (mmseg VOC: 512); 0 = the image's own size.
    pub base_size: usize,
    /// Redraw the crop (up to 10 times) while one class covers more than this share of its
    /// labelled pixels (mmseg: 0.75); 1.0 = off.
    pub cat_max_ratio: f32,
    /// Random horizontal flip (p = 0.5).
    pub flip: bool,
    /// mmseg's PhotoMetricDistortion: brightness ±32/255, contrast and saturation 0.5–1.5,
    /// hue ±18°, each with p = 0.5, contrast before or after the HSV steps.
    pub photometric: bool,
}

impl Default for SegAugmentConfig {
    fn default() -> Self {
        Self { crop_size: 0, scale_range: (1.0, 1.0), base_size: 0, cat_max_ratio: 1.0, flip: true, photometric: false }
    }
}

impl SegAugmentConfig {
    /// Checks the settings with a sentence a user can act on.
    pub fn check(&self) -> Result<()> {
        let (lo, hi) = self.scale_range;
        if !(lo > 0.0 && lo <= hi) {
            return Err(Error::Invalid(format!("augment.scale_range must satisfy 0 < lo ≤ hi, got [{lo}, {hi}]")));
        }
        if !(self.cat_max_ratio > 0.0 && self.cat_max_ratio <= 1.0) {
            return Err(Error::Invalid(format!("augment.cat_max_ratio must be in (0, 1], got {}", self.cat_max_ratio)));
        }
        Ok(())
    }

    /// One augmented training pair: the ImageNet-normalised image and its labels (255 on padding).
    pub fn apply(&self, sample: &SegSample, rng: &mut impl Rng) -> (FloatImage, Vec<u8>) {
        let (w, h) = (sample.image.width() as usize, sample.image.height() as usize);
        let ratio = rng.random_range(self.scale_range.0..=self.scale_range.1);
        let factor = if self.base_size == 0 { ratio } else { ratio * self.base_size as f32 / w.min(h) as f32 };
        let scaled = ViewGeometry::rescale(w, h, factor);
        let mask = sample.mask.as_raw();
        let mut geometry = scaled;
        if self.crop_size > 0 {
            for attempt in 0..10 {
                let off_x = rng.random_range(0..=scaled.out_w.saturating_sub(self.crop_size));
                let off_y = rng.random_range(0..=scaled.out_h.saturating_sub(self.crop_size));
                geometry = scaled.crop(off_x, off_y, self.crop_size, self.crop_size);
                if self.cat_max_ratio >= 1.0 || attempt == 9 {
                    break;
                }
                if dominant_share(&resample_labels(mask, &geometry, IGNORE_LABEL)) < self.cat_max_ratio {
                    break;
                }
            }
        }
        let geometry = geometry.flipped(self.flip && rng.random_bool(0.5));
        let source = FloatImage::from_rgb(&sample.image);
        let mut image = FloatImage {
            height: geometry.out_h,
            width: geometry.out_w,
            data: resample(&source.data, 3, &geometry, 0.0),
        };
        if self.photometric {
            photometric_distortion(&mut image, rng);
        }
        // Padding is zero after normalisation, as mmseg pads the normalised image with 0.
        let padded: Vec<bool> = (0..geometry.out_h * geometry.out_w)
            .map(|i| geometry.source_point((i % geometry.out_w) as f32 + 0.5, (i / geometry.out_w) as f32 + 0.5).is_none())
            .collect();
        image.normalize_imagenet();
        let plane = geometry.out_h * geometry.out_w;
        for c in 0..3 {
            for (i, &pad) in padded.iter().enumerate() {
                if pad {
                    image.data[c * plane + i] = 0.0;
                }
            }
        }
        (image, resample_labels(mask, &geometry, IGNORE_LABEL))
    }
}

/// The largest share one class has among the labelled (non-255) pixels; 1.0 if there are
/// fewer than two classes (mmseg accepts such crops only when nothing better is found).
fn dominant_share(labels: &[u8]) -> f32 {
    let mut counts = [0usize; 256];
    labels.iter().filter(|&&l| l != IGNORE_LABEL).for_each(|&l| counts[l as usize] += 1);
    let present = counts.iter().filter(|&&c| c > 0).count();
    let total: usize = counts.iter().sum();
    if present < 2 || total == 0 {
        return 1.0;
    }
    *counts.iter().max().unwrap() as f32 / total as f32
}

/// mmseg's PhotoMetricDistortion on a [0, 1] image (its 0–255 deltas scaled by 1/255).
pub fn photometric_distortion(image: &mut FloatImage, rng: &mut impl Rng) {
    if rng.random_bool(0.5) {
        let delta = rng.random_range(-32.0f32..=32.0) / 255.0;
        image.data.iter_mut().for_each(|v| *v = (*v + delta).clamp(0.0, 1.0));
    }
    let contrast_first = rng.random_bool(0.5);
    let contrast = |image: &mut FloatImage, rng: &mut dyn rand::RngCore| {
        if rng.random_bool(0.5) {
            let alpha = rng.random_range(0.5f32..=1.5);
            // mmseg's contrast is a plain scale of pixel values, not a blend with the mean.
            image.data.iter_mut().for_each(|v| *v = (*v * alpha).clamp(0.0, 1.0));
        }
    };
    if contrast_first {
        contrast(image, rng);
    }
    if rng.random_bool(0.5) {
        photometric::saturation(image, rng.random_range(0.5..=1.5));
    }
    if rng.random_bool(0.5) {
        photometric::hue(image, rng.random_range(-18.0f32..=18.0) / 360.0);
    }
    if !contrast_first {
        contrast(image, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// An image whose red channel encodes x and green encodes y, labels = (x + y) % 7.
    fn coordinate_sample(w: u32, h: u32) -> SegSample {
        SegSample {
            image: image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])),
            mask: image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x + y) % 7) as u8])),
        }
    }

    /// Property: over many random rescales, crops with padding and flips, every labelled
    /// pixel's label is the one of the source pixel its image value came from.
    #[test]
    fn image_and_labels_stay_aligned() {
        let sample = coordinate_sample(50, 40);
        let config = SegAugmentConfig { crop_size: 32, scale_range: (0.5, 2.0), ..SegAugmentConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (mut padded, mut checked, mut exact) = (0, 0, 0);
        for _ in 0..300 {
            let (image, labels) = config.apply(&sample, &mut rng);
            assert_eq!((image.width, image.height, labels.len()), (32, 32, 32 * 32));
            let n = 32 * 32;
            for i in 0..n {
                // Undo the ImageNet normalisation of red and green.
                let r = image.data[i] * crate::views::IMAGENET_STD[0] + crate::views::IMAGENET_MEAN[0];
                let g = image.data[n + i] * crate::views::IMAGENET_STD[1] + crate::views::IMAGENET_MEAN[1];
                if labels[i] == IGNORE_LABEL {
                    padded += 1;
                    assert_eq!((image.data[i], image.data[n + i]), (0.0, 0.0), "padding is zero");
                    continue;
                }
                // Bilinear pixel values encode continuous source coordinates minus ½, so the
                // nearest source pixel is their rounding; labels are nearest-neighbour.
                let (sx, sy) = ((r * 255.0 / 4.0).round() as i32, (g * 255.0 / 4.0).round() as i32);
                if ((sx + sy).rem_euclid(7)) as u8 == labels[i] {
                    exact += 1;
                }
                checked += 1;
            }
        }
        assert!(padded > 0 && checked > 100_000, "padded {padded}, checked {checked}");
        // Only ties at exact half-pixel positions may round the other way.
        assert!(exact as f64 > 0.98 * checked as f64, "{exact} of {checked} labels match their pixel");
    }

    #[test]
    fn cat_max_ratio_avoids_single_class_crops() {
        // Left half class 1, right half class 2; 32-px crops are mixed enough at 15 of 33 offsets.
        let mut sample = coordinate_sample(64, 32);
        sample.mask = image::GrayImage::from_fn(64, 32, |x, _| image::Luma([if x < 32 { 1 } else { 2 }]));
        let strict = SegAugmentConfig { crop_size: 32, flip: false, cat_max_ratio: 0.75, ..SegAugmentConfig::default() };
        let loose = SegAugmentConfig { cat_max_ratio: 1.0, ..strict.clone() };
        let share = |config: &SegAugmentConfig| {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            (0..200).filter(|_| dominant_share(&config.apply(&sample, &mut rng).1) >= 0.75).count()
        };
        assert!(share(&loose) > 90, "more than half the crops are dominated without the rule");
        assert!(share(&strict) < 10, "the rule redraws them");
    }

    #[test]
    fn photometric_distortion_keeps_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..50 {
            let mut im = FloatImage::from_rgb(&coordinate_sample(12, 9).image);
            photometric_distortion(&mut im, &mut rng);
            assert!(im.data.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }
}
