//! Per-patch rotation (the PLR pretext task's augmentation): a square view is cut into
//! g×g square patches and each is rotated by its own multiple of 90°, with an exact map from
//! the rotated image back to the unrotated one and per-pixel rotation labels.

use rand::Rng;

use super::FloatImage;

/// Quarter turns per patch of a g×g grid, counter-clockwise as `torch.rot90(x, k, (H, W))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchRotation {
    /// Patches per side.
    pub grid: usize,
    /// Quarter turns (0–3) per patch, row-major.
    pub turns: Vec<u8>,
}

/// Where the point `(x, y)` of a `side`² patch rotated by `turns` quarter turns comes from
/// in the unrotated patch (continuous coordinates, pixel centres at `i + 0.5`).
fn unrotate(turns: u8, side: f32, x: f32, y: f32) -> (f32, f32) {
    // One counter-clockwise quarter turn: out(x, y) = in(side - y, x).
    (0..turns % 4).fold((x, y), |(x, y), _| (side - y, x))
}

impl PatchRotation {
    /// Draws every patch's rotation uniformly and independently.
    pub fn random(rng: &mut impl Rng, grid: usize) -> Self {
        Self { grid, turns: (0..grid * grid).map(|_| rng.random_range(0..4)).collect() }
    }

    fn patch_side(&self, image_side: usize) -> usize {
        assert!(
            image_side % self.grid == 0,
            "image side {image_side} is not divisible by the patch grid {}",
            self.grid
        );
        image_side / self.grid
    }

    /// Where point `(x, y)` of the rotated `side`² image comes from in the unrotated one.
    pub fn to_unrotated(&self, side: usize, x: f32, y: f32) -> (f32, f32) {
        let p = self.patch_side(side) as f32;
        let (col, row) = (((x / p) as usize).min(self.grid - 1), ((y / p) as usize).min(self.grid - 1));
        let (ox, oy) = (col as f32 * p, row as f32 * p);
        let (ux, uy) = unrotate(self.turns[row * self.grid + col], p, x - ox, y - oy);
        (ox + ux, oy + uy)
    }

    /// Rotates every patch of a square image.
    pub fn apply(&self, image: &FloatImage) -> FloatImage {
        assert_eq!(image.height, image.width, "patch rotation needs a square view");
        let n = image.width;
        self.patch_side(n);
        let channels = image.data.len() / (n * n);
        let mut data = vec![0.0; image.data.len()];
        for y in 0..n {
            for x in 0..n {
                let (ux, uy) = self.to_unrotated(n, x as f32 + 0.5, y as f32 + 0.5);
                let src = (uy - 0.5).round() as usize * n + (ux - 0.5).round() as usize;
                for c in 0..channels {
                    data[c * n * n + y * n + x] = image.data[c * n * n + src];
                }
            }
        }
        FloatImage { height: n, width: n, data }
    }

    /// Per-pixel rotation class (quarter turns) of a `side`² image, row-major.
    pub fn labels(&self, side: usize) -> Vec<u8> {
        let p = self.patch_side(side);
        (0..side * side).map(|i| self.turns[(i / side / p) * self.grid + (i % side) / p]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn coordinate_image(n: usize) -> FloatImage {
        let mut data = vec![0.0; 2 * n * n];
        for i in 0..n * n {
            data[i] = (i % n) as f32;
            data[n * n + i] = (i / n) as f32;
        }
        FloatImage { height: n, width: n, data }
    }

    #[test]
    fn one_turn_is_torch_rot90() {
        // torch.rot90(torch.arange(4).view(2, 2), 1, (0, 1)) == [[1, 3], [0, 2]].
        let image = FloatImage { height: 2, width: 2, data: vec![0.0, 1.0, 2.0, 3.0] };
        let r = PatchRotation { grid: 1, turns: vec![1] };
        assert_eq!(r.apply(&image).data, [1.0, 3.0, 0.0, 2.0]);
    }

    /// Property: the map predicts every rotated pixel, four turns are the identity, and
    /// the labels name each pixel's patch rotation.
    #[test]
    fn map_predicts_rotated_pixels_and_labels_undo_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..300 {
            let grid = rng.random_range(1..5);
            let n = grid * rng.random_range(1..9);
            let source = coordinate_image(n);
            let r = PatchRotation::random(&mut rng, grid);
            let rotated = r.apply(&source);
            for y in 0..n {
                for x in 0..n {
                    let (ux, uy) = r.to_unrotated(n, x as f32 + 0.5, y as f32 + 0.5);
                    assert_eq!(rotated.data[y * n + x], ux - 0.5);
                    assert_eq!(rotated.data[n * n + y * n + x], uy - 0.5);
                    // Pixels never leave their patch.
                    let p = (n / grid) as f32;
                    assert_eq!(((ux / p) as usize, (uy / p) as usize), (x / (n / grid), y / (n / grid)));
                }
            }
            // Rotating each patch by 4 - label more turns restores the source.
            let labels = r.labels(n);
            let inverse = PatchRotation { grid, turns: r.turns.iter().map(|t| (4 - t) % 4).collect() };
            assert_eq!(inverse.apply(&rotated), source);
            assert_eq!(labels.len(), n * n);
            assert_eq!(labels[0], r.turns[0]);
            assert_eq!(labels[n * n - 1], r.turns[grid * grid - 1]);
        }
    }
}
