//! Geometric view transforms with an exact map from view pixels to source pixels.
//!
//! Coordinates are continuous, pixel centres at `i + 0.5`, matching PyTorch's
//! `align_corners = false` convention.

use rand::Rng;

/// A crop of the source image resized to `out_size`², optionally flipped horizontally.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewGeometry {
    /// Left edge of the crop in source pixels.
    pub x0: f32,
    /// Top edge of the crop in source pixels.
    pub y0: f32,
    /// Crop width in source pixels.
    pub width: f32,
    /// Crop height in source pixels.
    pub height: f32,
    /// Whether the view is mirrored left–right after cropping.
    pub flip: bool,
    /// Side of the square view in pixels.
    pub out_size: usize,
}

impl ViewGeometry {
    /// The identity view of a `size`² image.
    pub fn identity(size: usize) -> Self {
        Self { x0: 0.0, y0: 0.0, width: size as f32, height: size as f32, flip: false, out_size: size }
    }

    /// torchvision's `RandomResizedCrop(scale, ratio)` on a `src_w`×`src_h` image, plus a
    /// horizontal flip with probability `flip_p`.
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
        let mut geometry = None;
        for _ in 0..10 {
            let target = area * rng.random_range(scale.0..=scale.1);
            let aspect = rng.random_range(log_lo..=log_hi).exp();
            let w = (target * aspect).sqrt().round();
            let h = (target / aspect).sqrt().round();
            if w >= 1.0 && h >= 1.0 && w <= sw && h <= sh {
                let x0 = rng.random_range(0..=(sw - w) as usize) as f32;
                let y0 = rng.random_range(0..=(sh - h) as usize) as f32;
                geometry = Some((x0, y0, w, h));
                break;
            }
        }
        // Fallback as torchvision: a centre crop clamped to the ratio range.
        let (x0, y0, width, height) = geometry.unwrap_or_else(|| {
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
        Self { x0, y0, width, height, flip: rng.random_bool(flip_p), out_size }
    }

    /// Maps a continuous view coordinate to the source image.
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let n = self.out_size as f32;
        let x = if self.flip { n - x } else { x };
        (self.x0 + x * self.width / n, self.y0 + y * self.height / n)
    }

    /// Maps a continuous source coordinate into the view (may fall outside `[0, out_size)`).
    pub fn from_source(&self, sx: f32, sy: f32) -> (f32, f32) {
        let n = self.out_size as f32;
        let x = (sx - self.x0) * n / self.width;
        let y = (sy - self.y0) * n / self.height;
        (if self.flip { n - x } else { x }, y)
    }
}

/// Bilinear resampling of a `[C, H, W]` float image through a view's geometry
/// (pixel centres mapped exactly; samples outside the source clamp to the border).
pub fn resample(data: &[f32], channels: usize, src_h: usize, src_w: usize, view: &ViewGeometry) -> Vec<f32> {
    let n = view.out_size;
    let mut out = vec![0.0; channels * n * n];
    for oy in 0..n {
        for ox in 0..n {
            let (sx, sy) = view.to_source(ox as f32 + 0.5, oy as f32 + 0.5);
            let (fx, fy) = ((sx - 0.5).clamp(0.0, (src_w - 1) as f32), (sy - 0.5).clamp(0.0, (src_h - 1) as f32));
            let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(src_w - 1), (y0 + 1).min(src_h - 1));
            let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
            for c in 0..channels {
                let p = &data[c * src_h * src_w..(c + 1) * src_h * src_w];
                let top = p[y0 * src_w + x0] * (1.0 - ax) + p[y0 * src_w + x1] * ax;
                let bottom = p[y1 * src_w + x0] * (1.0 - ax) + p[y1 * src_w + x1] * ax;
                out[c * n * n + oy * n + ox] = top * (1.0 - ay) + bottom * ay;
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
        let data: Vec<f32> = (0..2 * 5 * 5).map(|v| v as f32).collect();
        assert_eq!(resample(&data, 2, 5, 5, &ViewGeometry::identity(5)), data);
    }

    #[test]
    fn flip_mirrors_columns() {
        let data: Vec<f32> = (0..4 * 4).map(|v| v as f32).collect();
        let view = ViewGeometry { flip: true, ..ViewGeometry::identity(4) };
        let out = resample(&data, 1, 4, 4, &view);
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(out[y * 4 + x], data[y * 4 + 3 - x]);
            }
        }
    }

    /// Property: for random crops and flips, to_source and from_source are inverse, and a
    /// pixel-aligned crop at scale 1 samples exactly the source pixel that to_source names.
    #[test]
    fn maps_are_inverse_and_sampling_follows_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..200 {
            let g = ViewGeometry::random_resized_crop(&mut rng, 64, 48, 32, (0.2, 1.0), (0.75, 1.333), 0.5);
            assert!(g.x0 >= 0.0 && g.y0 >= 0.0 && g.x0 + g.width <= 64.0 && g.y0 + g.height <= 48.0);
            for _ in 0..10 {
                let (x, y) = (rng.random_range(0.0..32.0), rng.random_range(0.0..32.0));
                let (sx, sy) = g.to_source(x, y);
                let (bx, by) = g.from_source(sx, sy);
                assert!((bx - x).abs() < 1e-3 && (by - y).abs() < 1e-3);
            }
        }
        // A 1:1 crop (no scaling) samples source pixels exactly.
        let data: Vec<f32> = (0..20 * 20).map(|v| v as f32).collect();
        for flip in [false, true] {
            let g = ViewGeometry { x0: 3.0, y0: 5.0, width: 8.0, height: 8.0, flip, out_size: 8 };
            let out = resample(&data, 1, 20, 20, &g);
            for oy in 0..8 {
                for ox in 0..8 {
                    let (sx, sy) = g.to_source(ox as f32 + 0.5, oy as f32 + 0.5);
                    let expected = data[(sy - 0.5) as usize * 20 + (sx - 0.5) as usize];
                    assert_eq!(out[oy * 8 + ox], expected);
                }
            }
        }
    }
}
