//! Geometric view transforms with an exact map between view and source coordinates.
//!
//! Every geometric augmentation here is an axis-aligned window of the source image
//! (which may extend past the source: padding), resized to the output size and optionally
//! mirrored. Coordinates are continuous with pixel centres at `i + 0.5`, PyTorch's
//! `align_corners = false` convention.

use rand::Rng;

/// A window of a `src_w`×`src_h` source resized to `out_w`×`out_h`, optionally flipped
/// horizontally. Window parts outside the source are padding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewGeometry {
    /// Source width in pixels.
    pub src_w: usize,
    /// Source height in pixels.
    pub src_h: usize,
    /// Left edge of the window in source pixels.
    pub x0: f32,
    /// Top edge of the window in source pixels.
    pub y0: f32,
    /// Window width in source pixels.
    pub width: f32,
    /// Window height in source pixels.
    pub height: f32,
    /// Whether the view is mirrored left–right after cropping.
    pub flip: bool,
    /// View width in pixels.
    pub out_w: usize,
    /// View height in pixels.
    pub out_h: usize,
}

impl ViewGeometry {
    /// The identity view of a `w`×`h` image.
    pub fn identity(w: usize, h: usize) -> Self {
        Self { src_w: w, src_h: h, x0: 0.0, y0: 0.0, width: w as f32, height: h as f32, flip: false, out_w: w, out_h: h }
    }

    /// torchvision's `RandomResizedCrop(out_size, scale, ratio)` on a `src_w`×`src_h` image,
    /// plus a horizontal flip with probability `flip_p`.
    pub fn random_resized_crop(
        rng: &mut impl Rng,
        src_w: usize,
        src_h: usize,
        out_size: usize,
        scale: (f32, f32),
        ratio: (f32, f32),
        flip_p: f64,
    ) -> Self {
        let (sw, sh) = (src_w as f32, src_h as f32);
        let area = sw * sh;
        let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
        let mut window = None;
        for _ in 0..10 {
            let target = area * rng.random_range(scale.0..=scale.1);
            let aspect = rng.random_range(log_lo..=log_hi).exp();
            let w = (target * aspect).sqrt().round();
            let h = (target / aspect).sqrt().round();
            if w >= 1.0 && h >= 1.0 && w <= sw && h <= sh {
                let x0 = rng.random_range(0..=(sw - w) as usize) as f32;
                let y0 = rng.random_range(0..=(sh - h) as usize) as f32;
                window = Some((x0, y0, w, h));
                break;
            }
        }
        // Fallback as torchvision: a centre crop clamped to the ratio range.
        let (x0, y0, width, height) = window.unwrap_or_else(|| {
            let in_ratio = sw / sh;
            let (w, h) = if in_ratio < ratio.0 {
                (sw, (sw / ratio.0).round())
            } else if in_ratio > ratio.1 {
                ((sh * ratio.1).round(), sh)
            } else {
                (sw, sh)
            };
            (((sw - w) / 2.0).floor(), ((sh - h) / 2.0).floor(), w, h)
        });
        Self { src_w, src_h, x0, y0, width, height, flip: rng.random_bool(flip_p), out_w: out_size, out_h: out_size }
    }

    /// The whole image rescaled by `factor` (output side rounded, at least 1 pixel).
    pub fn rescale(src_w: usize, src_h: usize, factor: f32) -> Self {
        let out = |s: usize| ((s as f32 * factor).round() as usize).max(1);
        Self { out_w: out(src_w), out_h: out(src_h), ..Self::identity(src_w, src_h) }
    }

    /// mmsegmentation's training geometry: rescale by a ratio drawn from `ratio_range`
    /// (relative to the source), take a random `crop`×`crop` window of the rescaled image
    /// (padding right and bottom where it is smaller), flip with probability `flip_p`.
    pub fn random_rescale_crop(
        rng: &mut impl Rng,
        src_w: usize,
        src_h: usize,
        ratio_range: (f32, f32),
        crop: usize,
        flip_p: f64,
    ) -> Self {
        let scaled = Self::rescale(src_w, src_h, rng.random_range(ratio_range.0..=ratio_range.1));
        let off_x = rng.random_range(0..=scaled.out_w.saturating_sub(crop));
        let off_y = rng.random_range(0..=scaled.out_h.saturating_sub(crop));
        scaled.crop(off_x, off_y, crop, crop).flipped(rng.random_bool(flip_p))
    }

    /// The `w`×`h` window at `(left, top)` of this view, in view pixels (may extend past it).
    pub fn crop(&self, left: usize, top: usize, w: usize, h: usize) -> Self {
        assert!(!self.flip, "crop before flipping");
        let (sx, sy) = (self.width / self.out_w as f32, self.height / self.out_h as f32);
        Self {
            x0: self.x0 + left as f32 * sx,
            y0: self.y0 + top as f32 * sy,
            width: w as f32 * sx,
            height: h as f32 * sy,
            out_w: w,
            out_h: h,
            ..*self
        }
    }

    /// This view, mirrored if `flip`.
    pub fn flipped(self, flip: bool) -> Self {
        Self { flip: self.flip ^ flip, ..self }
    }

    /// Maps a continuous view coordinate to the source (possibly outside it: padding).
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let x = if self.flip { self.out_w as f32 - x } else { x };
        (self.x0 + x * self.width / self.out_w as f32, self.y0 + y * self.height / self.out_h as f32)
    }

    /// Maps a continuous source coordinate into the view (possibly outside it).
    pub fn from_source(&self, sx: f32, sy: f32) -> (f32, f32) {
        let x = (sx - self.x0) * self.out_w as f32 / self.width;
        let y = (sy - self.y0) * self.out_h as f32 / self.height;
        (if self.flip { self.out_w as f32 - x } else { x }, y)
    }

    /// Whether a source coordinate lies on the source image (not padding).
    pub fn in_source(&self, sx: f32, sy: f32) -> bool {
        (0.0..self.src_w as f32).contains(&sx) && (0.0..self.src_h as f32).contains(&sy)
    }

    /// Whether a view coordinate lies inside the view.
    pub fn in_view(&self, x: f32, y: f32) -> bool {
        (0.0..self.out_w as f32).contains(&x) && (0.0..self.out_h as f32).contains(&y)
    }

    /// The source point under view point `(x, y)`, or `None` over padding.
    pub fn source_point(&self, x: f32, y: f32) -> Option<(f32, f32)> {
        let (sx, sy) = self.to_source(x, y);
        self.in_source(sx, sy).then_some((sx, sy))
    }
}

/// Bilinear resampling of a `[C, src_h, src_w]` float image through a view: pixel centres
/// map exactly, samples near the border clamp to it, and padding is `fill`.
/// Returns `[C, out_h, out_w]`.
pub fn resample(data: &[f32], channels: usize, view: &ViewGeometry, fill: f32) -> Vec<f32> {
    let (src_w, src_h, out_w, out_h) = (view.src_w, view.src_h, view.out_w, view.out_h);
    assert_eq!(data.len(), channels * src_h * src_w, "image does not match the view's source size");
    let mut out = vec![fill; channels * out_h * out_w];
    for oy in 0..out_h {
        for ox in 0..out_w {
            let Some((sx, sy)) = view.source_point(ox as f32 + 0.5, oy as f32 + 0.5) else { continue };
            let (fx, fy) = ((sx - 0.5).clamp(0.0, (src_w - 1) as f32), (sy - 0.5).clamp(0.0, (src_h - 1) as f32));
            // Truncation is the floor here (both are clamped to ≥ 0), and unlike `floor` on
            // the crate's SSE2 baseline it is not a libm call per pixel.
            let (x0, y0) = (fx as usize, fy as usize);
            let (x1, y1) = ((x0 + 1).min(src_w - 1), (y0 + 1).min(src_h - 1));
            let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
            for c in 0..channels {
                let p = &data[c * src_h * src_w..(c + 1) * src_h * src_w];
                let top = p[y0 * src_w + x0] * (1.0 - ax) + p[y0 * src_w + x1] * ax;
                let bottom = p[y1 * src_w + x0] * (1.0 - ax) + p[y1 * src_w + x1] * ax;
                out[c * out_h * out_w + oy * out_w + ox] = top * (1.0 - ay) + bottom * ay;
            }
        }
    }
    out
}

/// Nearest-neighbour resampling of a `src_h`×`src_w` label map through a view (labels are
/// never blended); padding is `fill` (255, ignored, for segmentation masks).
pub fn resample_labels(labels: &[u8], view: &ViewGeometry, fill: u8) -> Vec<u8> {
    assert_eq!(labels.len(), view.src_h * view.src_w, "labels do not match the view's source size");
    let mut out = vec![fill; view.out_h * view.out_w];
    for oy in 0..view.out_h {
        for ox in 0..view.out_w {
            if let Some((sx, sy)) = view.source_point(ox as f32 + 0.5, oy as f32 + 0.5) {
                out[oy * view.out_w + ox] = labels[sy as usize * view.src_w + sx as usize];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn identity_resample_is_exact() {
        let data: Vec<f32> = (0..2 * 5 * 6).map(|v| v as f32).collect();
        assert_eq!(resample(&data, 2, &ViewGeometry::identity(6, 5), 0.0), data);
    }

    #[test]
    fn flip_mirrors_columns() {
        let data: Vec<f32> = (0..4 * 4).map(|v| v as f32).collect();
        let view = ViewGeometry::identity(4, 4).flipped(true);
        let out = resample(&data, 1, &view, 0.0);
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(out[y * 4 + x], data[y * 4 + 3 - x]);
            }
        }
    }

    /// Property: for random crops, rescales and flips, to_source and from_source are inverse,
    /// and windows stay inside the source where the augmentation says so.
    #[test]
    fn maps_are_inverse() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for i in 0..400 {
            let g = if i % 2 == 0 {
                let g = ViewGeometry::random_resized_crop(&mut rng, 64, 48, 32, (0.2, 1.0), (0.75, 1.333), 0.5);
                assert!(g.x0 >= 0.0 && g.y0 >= 0.0 && g.x0 + g.width <= 64.0 && g.y0 + g.height <= 48.0);
                g
            } else {
                ViewGeometry::random_rescale_crop(&mut rng, 64, 48, (0.5, 2.0), 40, 0.5)
            };
            for _ in 0..10 {
                let (x, y) = (rng.random_range(0.0..g.out_w as f32), rng.random_range(0.0..g.out_h as f32));
                let (sx, sy) = g.to_source(x, y);
                let (bx, by) = g.from_source(sx, sy);
                assert!((bx - x).abs() < 1e-3 && (by - y).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn unscaled_crop_samples_source_pixels_exactly_and_pads() {
        let data: Vec<f32> = (0..20 * 20).map(|v| v as f32).collect();
        let labels: Vec<u8> = (0..20 * 20).map(|v| (v % 251) as u8).collect();
        for flip in [false, true] {
            // Window from (14, 5), 8 wide: its last 2 columns are padding.
            let g = ViewGeometry::identity(20, 20).crop(14, 5, 8, 8).flipped(flip);
            let out = resample(&data, 1, &g, -1.0);
            let out_labels = resample_labels(&labels, &g, 255);
            for oy in 0..8 {
                for ox in 0..8 {
                    let (sx, sy) = g.to_source(ox as f32 + 0.5, oy as f32 + 0.5);
                    let k = oy * 8 + ox;
                    if sx < 20.0 {
                        let expected = (sy - 0.5) as usize * 20 + (sx - 0.5) as usize;
                        assert_eq!(out[k], data[expected]);
                        assert_eq!(out_labels[k], labels[expected]);
                    } else {
                        assert_eq!((out[k], out_labels[k]), (-1.0, 255));
                    }
                }
            }
        }
    }

    #[test]
    fn rescale_crop_matches_mmseg_sizes() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..100 {
            let g = ViewGeometry::random_rescale_crop(&mut rng, 50, 30, (0.5, 2.0), 32, 0.5);
            assert_eq!((g.out_w, g.out_h), (32, 32));
            // The crop starts on the rescaled image, and pads only right and bottom.
            assert!(g.x0 >= 0.0 && g.y0 >= 0.0);
            assert!(g.x0 < 50.0 && g.y0 < 30.0);
        }
        let g = ViewGeometry::rescale(50, 30, 0.5);
        assert_eq!((g.out_w, g.out_h), (25, 15));
    }
}
