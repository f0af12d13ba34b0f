//! `procedural`: the built-in, zero-download dataset. Scenes of textured shapes
//! (5 shape classes + background) with random colours, textures, scales, rotations and
//! overlaps, generated from a seed. Scene `i` depends only on `(seed, i)`, so the same
//! seed gives the same bytes, and training and validation scenes never coincide.

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::SegSample;
use super::texture::{Texture, hash_noise};
use crate::{Error, Result};

/// Background + circle, square, triangle, ring, cross.
pub const NUM_CLASSES: usize = 6;
/// Class names, index = label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] =
    ["background", "circle", "square", "triangle", "ring", "cross"];
/// Validation scenes are drawn from indices starting here, disjoint from training scenes.
pub const VAL_INDEX_OFFSET: u64 = 1 << 40;

/// Generator settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProceduralConfig {
    /// Image side in pixels (32–96).
    pub size: u32,
    /// Seed of the whole dataset.
    pub seed: u64,
}

impl ProceduralConfig {
    /// Checks the settings with a sentence a user can act on.
    pub fn check(&self) -> Result<()> {
        if !(32..=96).contains(&self.size) {
            return Err(Error::Invalid(format!(
                "procedural scenes are 32–96 px, got size {}",
                self.size
            )));
        }
        Ok(())
    }

    /// Scenes `offset .. offset + count`, generated in parallel.
    pub fn scenes(&self, offset: u64, count: usize) -> Vec<SegSample> {
        (0..count as u64).into_par_iter().map(|i| self.scene(offset + i)).collect()
    }

    /// Scene number `index`.
    pub fn scene(&self, index: u64) -> SegSample {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let s = self.size as f32;
        let background = Texture::random(&mut rng, 0.35);
        let mut image = RgbImage::from_fn(self.size, self.size, |x, y| {
            Rgb(background.colour(x as f32 / s, y as f32 / s))
        });
        let mut mask = GrayImage::new(self.size, self.size);
        let count = rng.random_range(2..=4);
        for _ in 0..count {
            let shape = Shape::random(&mut rng);
            let texture = Texture::random(&mut rng, 1.0);
            let noise_seed: u32 = rng.random();
            // Painter's order: later shapes occlude earlier ones, and the label follows.
            for y in 0..self.size {
                for x in 0..self.size {
                    let (u, v) = ((x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
                    if shape.contains(u, v) {
                        let mut c = texture.colour(u, v);
                        let n = hash_noise(noise_seed, x, y) * 24.0 - 12.0;
                        for ch in &mut c {
                            *ch = (*ch as f32 + n).clamp(0.0, 255.0) as u8;
                        }
                        image.put_pixel(x, y, Rgb(c));
                        mask.put_pixel(x, y, Luma([shape.class]));
                    }
                }
            }
        }
        SegSample { image, mask }
    }
}

/// One shape placed in the unit square.
struct Shape {
    class: u8,
    centre: (f32, f32),
    radius: f32,
    cos: f32,
    sin: f32,
}

impl Shape {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        Self {
            class: rng.random_range(1..NUM_CLASSES as u8),
            centre: (rng.random_range(0.15..0.85), rng.random_range(0.15..0.85)),
            radius: rng.random_range(0.13..0.28),
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    /// Whether the point (x, y) of the unit square lies inside the shape.
    fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = ((x - self.centre.0) / self.radius, (y - self.centre.1) / self.radius);
        // Local coordinates: rotate by -angle.
        let (u, v) = (self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy);
        let r2 = u * u + v * v;
        match self.class {
            1 => r2 <= 1.0,
            2 => u.abs() <= 0.8 && v.abs() <= 0.8,
            3 => {
                // Equilateral triangle inscribed in the unit circle.
                let edges = [(0.0f32, -1.0f32), (0.866, 0.5), (-0.866, 0.5)];
                edges.iter().all(|&(a, b)| a * u + b * v <= 0.5)
            }
            4 => (0.3..=1.0).contains(&r2),
            5 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let g = ProceduralConfig { size: 48, seed: 7 };
        let a = g.scenes(0, 4);
        let b = g.scenes(0, 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.image, y.image);
            assert_eq!(x.mask, y.mask);
        }
        let c = ProceduralConfig { size: 48, seed: 8 }.scene(0);
        assert_ne!(a[0].image, c.image);
    }

    #[test]
    fn scenes_hold_several_classes_and_background() {
        let g = ProceduralConfig { size: 64, seed: 1 };
        let mut seen = [0usize; NUM_CLASSES];
        for s in g.scenes(0, 40) {
            assert_eq!(s.image.dimensions(), s.mask.dimensions());
            for p in s.mask.pixels() {
                seen[p.0[0] as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "every class appears: {seen:?}");
        let total: usize = seen.iter().sum();
        let background = seen[0] as f64 / total as f64;
        assert!((0.3..0.9).contains(&background), "background share {background}");
    }

    #[test]
    fn size_is_checked() {
        assert!(ProceduralConfig { size: 16, seed: 0 }.check().is_err());
        assert!(ProceduralConfig { size: 96, seed: 0 }.check().is_ok());
    }

    #[test]
    fn shapes_contain_their_centre_except_rings() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..100 {
            let s = Shape::random(&mut rng);
            let inside = s.contains(s.centre.0, s.centre.1);
            assert_eq!(inside, s.class != 4, "class {}", s.class);
        }
    }
}
