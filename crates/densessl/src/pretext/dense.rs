//! Shared pieces of the dense methods: two views *with their geometry*, feature-map cells as
//! rows, and matched cells as row indices. Correspondence itself comes only from
//! [`ViewPair`]; nothing here re-derives geometry.

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::views::FloatImage;
use crate::views::augment::ViewAugment;
use crate::views::pair::{CellMatches, ViewPair};

/// Two views of every image of a batch and, per image, how they map onto each other.
pub struct DenseViews {
    /// First views (queries).
    pub first: Vec<FloatImage>,
    /// Second views (keys).
    pub second: Vec<FloatImage>,
    /// Per image: `a` = the first view's geometry, `b` = the second's.
    pub pairs: Vec<ViewPair>,
}

/// Two augmented views of every image with their geometry, each pair drawn from its own
/// seed (in parallel, deterministic for a given `rng`). Draws exactly what
/// [`super::two_views`] draws for the same `rng`.
pub fn views_with_pairs(first: &ViewAugment, second: &ViewAugment, images: &[&RgbImage], rng: &mut ChaCha8Rng) -> DenseViews {
    let seeds: Vec<u64> = images.iter().map(|_| rng.random()).collect();
    let drawn: Vec<_> = images
        .par_iter()
        .zip(seeds)
        .map(|(image, seed)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (first.view(image, &mut rng), second.view(image, &mut rng))
        })
        .collect();
    let mut views = DenseViews { first: Vec::new(), second: Vec::new(), pairs: Vec::new() };
    for (a, b) in drawn {
        views.pairs.push(ViewPair::new(a.geometry, b.geometry));
        views.first.push(a.image);
        views.second.push(b.image);
    }
    views
}

/// Every cell of a feature map as a row; cell `(r, c)` of image `i` becomes row
/// `i·h·w + r·w + c` (the row-major order of [`CellMatches`]).
///
/// # Shapes
/// `[B, C, h, w]` → `[B·h·w, C]`
pub fn cells_as_rows(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.permute([0, 2, 3, 1]).reshape([b * h * w, c])
}

/// Unit vectors along the channel axis of every cell.
///
/// # Shapes
/// `[B, C, h, w]` → `[B, C, h, w]`
pub fn normalize_cells(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// For every valid match of every image, the row of the query cell and the row of its
/// positive key cell in [`cells_as_rows`] order: image `i`, A cell `k`, B cell `j` gives
/// `(i·|A| + k, i·|B| + j)`.
pub fn matched_rows(matches: &[CellMatches]) -> (Vec<i64>, Vec<i64>) {
    let (mut queries, mut keys) = (Vec::new(), Vec::new());
    for (i, m) in matches.iter().enumerate() {
        let (na, nb) = (m.grid_a.0 * m.grid_a.1, m.grid_b.0 * m.grid_b.1);
        for k in (0..na).filter(|&k| m.valid[k]) {
            queries.push((i * na + k) as i64);
            keys.push((i * nb + m.index[k]) as i64);
        }
    }
    (queries, keys)
}

/// A 1-D index tensor.
pub fn index_tensor(index: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = index.len();
    Tensor::from_data(TensorData::new(index, [n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::geometry::ViewGeometry;

    #[test]
    fn cells_become_rows_in_row_major_order() {
        // Value = 1000·b + 100·c + 10·r + col: row i·h·w + r·w + col must hold channel c at column c.
        let (b, c, h, w) = (2, 3, 2, 4);
        let data: Vec<f32> = (0..b * c * h * w)
            .map(|k| {
                let (bi, ci, ri, col) = (k / (c * h * w), k / (h * w) % c, k / w % h, k % w);
                (1000 * bi + 100 * ci + 10 * ri + col) as f32
            })
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(data, [b, c, h, w]), &Device::flex());
        let rows: Vec<f32> = cells_as_rows(x).into_data().try_to_vec().unwrap();
        let row = |bi: usize, ri: usize, col: usize| &rows[((bi * h + ri) * w + col) * c..][..c];
        assert_eq!(row(1, 1, 2), [1012.0, 1112.0, 1212.0]);
        assert_eq!(row(0, 0, 3), [3.0, 103.0, 203.0]);
    }

    #[test]
    fn identical_views_pair_every_cell_with_itself() {
        let v = ViewGeometry::identity(16, 16);
        let m = ViewPair::new(v, v).match_cells((4, 4), (4, 4));
        let (q, k) = matched_rows(&[m.clone(), m]);
        assert_eq!(q, k);
        assert_eq!(q, (0..32).collect::<Vec<i64>>());
    }

    #[test]
    fn known_crop_and_flip_give_the_rows_geometry_dictates() {
        // As in the view-pair test: A = the whole 8×8 image (4×4 cells), B = its top-right
        // quarter mirrored (2×2 cells). A's cells 2, 3, 6, 7 see B's cells 1, 0, 3, 2.
        let a = ViewGeometry::identity(8, 8);
        let b = a.crop(4, 0, 4, 4).flipped(true);
        let m = ViewPair::new(a, b).match_cells((4, 4), (2, 2));
        let (q, k) = matched_rows(&[m.clone(), m]);
        assert_eq!(q, [2, 3, 6, 7, 18, 19, 22, 23]);
        assert_eq!(k, [1, 0, 3, 2, 5, 4, 7, 6]);
    }
}
