//! Random two-colour textures and per-pixel hash noise shared by the synthetic datasets.

use rand::Rng;

/// A two-colour pattern: solid, stripes, checks or blobs.
pub(crate) struct Texture {
    a: [f32; 3],
    b: [f32; 3],
    kind: u8,
    frequency: f32,
    cos: f32,
    sin: f32,
    phase: f32,
}

impl Texture {
    /// `contrast` scales the difference between the two colours (backgrounds are calmer).
    pub(crate) fn random(rng: &mut impl Rng, contrast: f32) -> Self {
        let a: [f32; 3] = [rng.random_range(0.0..255.0), rng.random_range(0.0..255.0), rng.random_range(0.0..255.0)];
        let b0: [f32; 3] = [rng.random_range(0.0..255.0), rng.random_range(0.0..255.0), rng.random_range(0.0..255.0)];
        let b = [0, 1, 2].map(|i| a[i] + (b0[i] - a[i]) * contrast);
        let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
        Self {
            a,
            b,
            kind: rng.random_range(0..4),
            frequency: rng.random_range(3.0..12.0),
            cos: angle.cos(),
            sin: angle.sin(),
            phase: rng.random_range(0.0..std::f32::consts::TAU),
        }
    }

    pub(crate) fn colour(&self, x: f32, y: f32) -> [u8; 3] {
        let f = self.frequency;
        let t = match self.kind {
            0 => 0.0,
            1 => 0.5 + 0.5 * ((self.cos * x + self.sin * y) * f * std::f32::consts::TAU + self.phase).sin(),
            2 => (((x * f).floor() + (y * f).floor()) as i32 & 1) as f32,
            _ => 0.5 + 0.25 * ((x * f + self.phase).sin() + (y * f * 0.7 - self.phase).cos()),
        };
        [0, 1, 2].map(|i| (self.a[i] + (self.b[i] - self.a[i]) * t).clamp(0.0, 255.0) as u8)
    }
}

/// Uniform noise in [0, 1) from a pixel position, without RNG state.
pub(crate) fn hash_noise(seed: u32, x: u32, y: u32) -> f32 {
    let mut h = seed ^ x.wrapping_mul(0x27d4_eb2d) ^ y.wrapping_mul(0x1656_67b1);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    (h >> 8) as f32 / (1u32 << 24) as f32
}
