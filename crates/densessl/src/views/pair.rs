//! Correspondence between two views of one image, through their exact geometric maps.
//! Dense pretext methods get matched feature cells from here and nowhere else.

use super::geometry::ViewGeometry;

/// Two views of the same source image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewPair {
    /// The first view (queries, usually).
    pub a: ViewGeometry,
    /// The second view (keys, usually).
    pub b: ViewGeometry,
}

/// For every cell of A's `h_a`×`w_a` feature grid, the matching cell of B's grid.
/// Cells are indexed row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CellMatches {
    /// A's grid, `(height, width)`.
    pub grid_a: (usize, usize),
    /// B's grid, `(height, width)`.
    pub grid_b: (usize, usize),
    /// Per A cell: the B cell whose centre is nearest to where A's cell centre lands in B
    /// (0 where not valid).
    pub index: Vec<usize>,
    /// Per A cell: whether its centre lies on the source image and inside view B.
    pub valid: Vec<bool>,
    /// Per A cell: where its centre lands in B, in normalised `[-1, 1]` coordinates
    /// (`x`, `y`; PyTorch `grid_sample` with `align_corners = false`), for bilinear matching.
    /// Meaningful only where `valid`.
    pub sample_points: Vec<[f32; 2]>,
}

impl CellMatches {
    /// Number of valid matches.
    pub fn valid_count(&self) -> usize {
        self.valid.iter().filter(|&&v| v).count()
    }
}

/// Centre of cell `(row, col)` of an `h`×`w` grid laid over a view, in view pixels.
pub fn cell_centre(view: &ViewGeometry, (h, w): (usize, usize), row: usize, col: usize) -> (f32, f32) {
    ((col as f32 + 0.5) * view.out_w as f32 / w as f32, (row as f32 + 0.5) * view.out_h as f32 / h as f32)
}

/// Source coordinates of every cell centre of an `h`×`w` grid over a view (row-major),
/// `None` where the centre lies on padding.
pub fn cell_centres_in_source(view: &ViewGeometry, grid: (usize, usize)) -> Vec<Option<(f32, f32)>> {
    (0..grid.0 * grid.1)
        .map(|k| {
            let (x, y) = cell_centre(view, grid, k / grid.1, k % grid.1);
            view.source_point(x, y)
        })
        .collect()
}

/// Diagonal of one cell of an `h`×`w` grid over a view, in source pixels.
pub fn cell_diagonal_in_source(view: &ViewGeometry, (h, w): (usize, usize)) -> f32 {
    (view.width / w as f32).hypot(view.height / h as f32)
}

impl ViewPair {
    /// Pairs two views; they must be views of the same source size.
    pub fn new(a: ViewGeometry, b: ViewGeometry) -> Self {
        assert_eq!((a.src_w, a.src_h), (b.src_w, b.src_h), "views of different sources");
        Self { a, b }
    }

    /// The pair with A and B swapped.
    pub fn swapped(&self) -> Self {
        Self { a: self.b, b: self.a }
    }

    /// Where view A's point `(x, y)` lies in view B, or `None` if it shows padding in A or
    /// falls outside B.
    pub fn a_to_b(&self, x: f32, y: f32) -> Option<(f32, f32)> {
        let (sx, sy) = self.a.source_point(x, y)?;
        let (bx, by) = self.b.from_source(sx, sy);
        self.b.in_view(bx, by).then_some((bx, by))
    }

    /// Matches A's `grid_a` cells to B's `grid_b` cells through the cell centres.
    pub fn match_cells(&self, grid_a: (usize, usize), grid_b: (usize, usize)) -> CellMatches {
        let n = grid_a.0 * grid_a.1;
        let mut matches = CellMatches {
            grid_a,
            grid_b,
            index: vec![0; n],
            valid: vec![false; n],
            sample_points: vec![[0.0; 2]; n],
        };
        let (bw, bh) = (self.b.out_w as f32, self.b.out_h as f32);
        for k in 0..n {
            let (x, y) = cell_centre(&self.a, grid_a, k / grid_a.1, k % grid_a.1);
            let Some((bx, by)) = self.a_to_b(x, y) else { continue };
            let col = ((bx / bw * grid_b.1 as f32) as usize).min(grid_b.1 - 1);
            let row = ((by / bh * grid_b.0 as f32) as usize).min(grid_b.0 - 1);
            matches.index[k] = row * grid_b.1 + col;
            matches.valid[k] = true;
            matches.sample_points[k] = [2.0 * bx / bw - 1.0, 2.0 * by / bh - 1.0];
        }
        matches
    }

    /// PixPro's positive pairs (Xie et al. 2021): A cell `i` and B cell `j` are positive when
    /// their centres, mapped to the source image, lie closer than `ratio` × the larger of the
    /// two views' cell diagonals (in source pixels). Cells centred on padding have no
    /// positives. Row-major `[|A|, |B|]`, entry `i·|B| + j`.
    pub fn positive_cells(&self, grid_a: (usize, usize), grid_b: (usize, usize), ratio: f32) -> Vec<bool> {
        let (centres_a, centres_b) = (cell_centres_in_source(&self.a, grid_a), cell_centres_in_source(&self.b, grid_b));
        let limit = ratio * cell_diagonal_in_source(&self.a, grid_a).max(cell_diagonal_in_source(&self.b, grid_b));
        let mut mask = Vec::with_capacity(centres_a.len() * centres_b.len());
        for ca in &centres_a {
            for cb in &centres_b {
                mask.push(matches!((ca, cb), (Some(p), Some(q)) if (p.0 - q.0).hypot(p.1 - q.1) < limit));
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::super::geometry::resample;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A `[2, h, w]` image whose channels hold each pixel centre's source x and y.
    fn coordinate_image(w: usize, h: usize) -> Vec<f32> {
        let mut data = vec![0.0; 2 * h * w];
        for y in 0..h {
            for x in 0..w {
                data[y * w + x] = x as f32 + 0.5;
                data[h * w + y * w + x] = y as f32 + 0.5;
            }
        }
        data
    }

    /// Bilinear sample of a `[C, h, w]` image at a continuous point (no clamping needed:
    /// callers stay half a pixel inside).
    fn sample(data: &[f32], c: usize, w: usize, h: usize, x: f32, y: f32) -> f32 {
        let (fx, fy) = (x - 0.5, y - 0.5);
        let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
        let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
        let p = |xx: usize, yy: usize| data[c * h * w + yy.min(h - 1) * w + xx.min(w - 1)];
        (p(x0, y0) * (1.0 - ax) + p(x0 + 1, y0) * ax) * (1.0 - ay) + (p(x0, y0 + 1) * (1.0 - ax) + p(x0 + 1, y0 + 1) * ax) * ay
    }

    fn random_view(rng: &mut ChaCha8Rng, w: usize, h: usize) -> ViewGeometry {
        let out = rng.random_range(16..64);
        match rng.random_range(0..3) {
            0 => ViewGeometry::random_resized_crop(rng, w, h, out, (0.08, 1.0), (0.75, 1.333), 0.5),
            1 => ViewGeometry::random_rescale_crop(rng, w, h, (0.5, 2.0), out, 0.5),
            _ => ViewGeometry::rescale(w, h, rng.random_range(0.5..1.5)).flipped(rng.random_bool(0.5)),
        }
    }

    /// Property: over thousands of random view pairs (crops, rescales, padding, flips), the
    /// map predicts view B's pixels from view A's on images that encode their coordinates.
    #[test]
    fn map_predicts_view_b_pixels_from_view_a() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut checked, mut outside) = (0, 0);
        for _ in 0..2000 {
            let (w, h) = (rng.random_range(20..90), rng.random_range(20..90));
            let source = coordinate_image(w, h);
            let pair = ViewPair::new(random_view(&mut rng, w, h), random_view(&mut rng, w, h));
            let view_a = resample(&source, 2, &pair.a, -1.0);
            let view_b = resample(&source, 2, &pair.b, -1.0);
            let (aw, ah) = (pair.a.out_w, pair.a.out_h);
            for _ in 0..8 {
                let (ax, ay) = (rng.random_range(0..aw), rng.random_range(0..ah));
                let a_pixel = [view_a[ay * aw + ax], view_a[ah * aw + ay * aw + ax]];
                match pair.a_to_b(ax as f32 + 0.5, ay as f32 + 0.5) {
                    None => {
                        outside += 1;
                        // Either A shows padding there, or the source point is outside B.
                        if a_pixel[0] >= 0.0 {
                            let (bx, by) = pair.b.from_source(a_pixel[0], a_pixel[1]);
                            assert!(!pair.b.in_view(bx, by), "{pair:?} at ({ax}, {ay})");
                        }
                    }
                    Some((bx, by)) => {
                        // Stay clear of border clamping in the source and in B.
                        let inner = |v: f32, n: usize| v > 1.0 && v < n as f32 - 1.0;
                        if !(inner(a_pixel[0], w) && inner(a_pixel[1], h) && inner(bx, pair.b.out_w) && inner(by, pair.b.out_h)) {
                            continue;
                        }
                        let (bw, bh) = (pair.b.out_w, pair.b.out_h);
                        let b_pixel = [sample(&view_b, 0, bw, bh, bx, by), sample(&view_b, 1, bw, bh, bx, by)];
                        // B is itself a bilinear resampling, so the match is exact up to the
                        // interpolation of a linear function: within a few hundredths of a pixel.
                        assert!(
                            (a_pixel[0] - b_pixel[0]).abs() < 0.05 && (a_pixel[1] - b_pixel[1]).abs() < 0.05,
                            "A {a_pixel:?} vs B {b_pixel:?} for {pair:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 5000 && outside > 500, "checked {checked}, outside {outside}");
    }

    /// Cell centres and cell diagonal of a view measured on its pixels, without the geometry's
    /// maps: the view of a coordinate image is rendered, each cell's pixels are averaged (the
    /// mean of a linear function over a cell is its value at the centre), and the cell size
    /// is the distance between neighbouring centres.
    fn measured_cells(view: &ViewGeometry, grid: usize) -> (Vec<(f32, f32)>, f32) {
        let rendered = resample(&coordinate_image(view.src_w, view.src_h), 2, view, -1.0);
        let (w, h) = (view.out_w, view.out_h);
        let (cw, ch) = (w / grid, h / grid);
        let centres: Vec<(f32, f32)> = (0..grid * grid)
            .map(|k| {
                let (row, col) = (k / grid, k % grid);
                let (mut sx, mut sy) = (0.0, 0.0);
                for y in row * ch..(row + 1) * ch {
                    for x in col * cw..(col + 1) * cw {
                        sx += rendered[y * w + x];
                        sy += rendered[h * w + y * w + x];
                    }
                }
                let n = (cw * ch) as f32;
                (sx / n, sy / n)
            })
            .collect();
        let cell_w = (centres[1].0 - centres[0].0).abs();
        let cell_h = (centres[grid].1 - centres[0].1).abs();
        (centres, cell_w.hypot(cell_h))
    }

    /// PixPro's positive mask equals a brute-force computation on rendered coordinate images,
    /// over random crop + flip pairs (pairs within 2 % of the threshold are skipped: rendering
    /// clamps at the source border, which moves measured centres by a fraction of a pixel).
    #[test]
    fn pixpro_positives_equal_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (mut positives, mut compared) = (0, 0);
        for _ in 0..200 {
            let (w, h) = (rng.random_range(48..120), rng.random_range(48..120));
            let grid = rng.random_range(2..8);
            let out = grid * rng.random_range(4..9);
            let view = |rng: &mut ChaCha8Rng| {
                ViewGeometry::random_resized_crop(rng, w, h, out, (0.08, 1.0), (0.75, 1.333), 0.5)
            };
            let pair = ViewPair::new(view(&mut rng), view(&mut rng));
            let mask = pair.positive_cells((grid, grid), (grid, grid), 0.7);
            let ((ca, da), (cb, db)) = (measured_cells(&pair.a, grid), measured_cells(&pair.b, grid));
            let limit = 0.7 * da.max(db);
            for i in 0..grid * grid {
                for j in 0..grid * grid {
                    let d = (ca[i].0 - cb[j].0).hypot(ca[i].1 - cb[j].1);
                    if (d / limit - 1.0).abs() < 0.02 {
                        continue;
                    }
                    assert_eq!(mask[i * grid * grid + j], d < limit, "{pair:?} cells {i}, {j}: {d} vs {limit}");
                    compared += 1;
                    positives += usize::from(d < limit);
                }
            }
        }
        assert!(positives > 500 && compared > 20 * positives / 10, "{positives} of {compared}");
    }

    #[test]
    fn identical_views_have_pixpro_positives_on_the_diagonal_only() {
        // Neighbouring centres are one cell side apart, more than 0.7 × the diagonal.
        let v = ViewGeometry::identity(40, 40);
        let mask = ViewPair::new(v, v).positive_cells((4, 4), (4, 4), 0.7);
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(mask[i * 16 + j], i == j);
            }
        }
    }

    #[test]
    fn identical_views_match_on_the_diagonal() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let v = random_view(&mut rng, 60, 40);
            let m = ViewPair::new(v, v).match_cells((4, 4), (4, 4));
            for k in 0..16 {
                let (x, y) = cell_centre(&v, (4, 4), k / 4, k % 4);
                let on_source = v.source_point(x, y).is_some();
                assert_eq!(m.valid[k], on_source);
                if on_source {
                    assert_eq!(m.index[k], k);
                }
            }
        }
    }

    #[test]
    fn known_crop_and_flip_give_the_cells_geometry_dictates() {
        // A: the whole 8×8 image, 4×4 grid (2 px cells). B: the top-right 4×4 quarter,
        // mirrored, 2×2 grid. A cell (r, c) has source centre (2c + 1, 2r + 1); in B it lands
        // at x = 8 - sx, y = sy.
        let a = ViewGeometry::identity(8, 8);
        let b = a.crop(4, 0, 4, 4).flipped(true);
        let m = ViewPair::new(a, b).match_cells((4, 4), (2, 2));
        let valid: Vec<usize> = (0..16).filter(|&k| m.valid[k]).collect();
        assert_eq!(valid, [2, 3, 6, 7]);
        assert_eq!([m.index[2], m.index[3], m.index[6], m.index[7]], [1, 0, 3, 2]);
        // A cell 2: source (5, 1) → B (3, 1) → normalised (0.5, -0.5).
        assert_eq!(m.sample_points[2], [0.5, -0.5]);
        // And the other way round: B's cells all land in A's top-right quarter.
        let back = ViewPair::new(a, b).swapped().match_cells((2, 2), (4, 4));
        assert_eq!(back.index, [3, 2, 7, 6]);
        assert_eq!(back.valid_count(), 4);
    }
}
