//! The tile transforms of Winograd's F(2×2, 3×3) on channels-last values, each vectorised
//! over channels (compiled for AVX2 where the CPU has it; the crate's baseline is SSE2):
//! input patches `Bᵀ d B`, products back to outputs `Aᵀ M A`, and output gradients
//! `A ∂Y Aᵀ` (the adjoint of the second, for the weight gradient). Tiles are stored
//! tile-major, `[tiles, 16, C]`.

use std::mem::MaybeUninit;

use super::super::conv_cpu::ConvGeometry;
use super::super::vector::with_avx2;
use super::{Tiling, XI};

/// `len` floats of `slots` as four consecutive rows of `len / 4`.
#[inline(always)]
fn four_rows(slots: &mut [MaybeUninit<f32>]) -> [&mut [MaybeUninit<f32>]; 4] {
    let n = slots.len() / 4;
    let (a, rest) = slots.split_at_mut(n);
    let (b, rest) = rest.split_at_mut(n);
    let (c, d) = rest.split_at_mut(n);
    [a, b, c, &mut d[..n]]
}

/// The transforms' two row operations on `n` channels: `(a − c, b + c, c − b, b − d)`
/// (`Bᵀ`'s rows), written to `out`.
#[inline(always)]
fn input_rows(out: &mut [MaybeUninit<f32>], [a, b, c, d]: [&[f32]; 4]) {
    let n = a.len();
    let [o0, o1, o2, o3] = four_rows(&mut out[..4 * n]);
    let (b, c, d) = (&b[..n], &c[..n], &d[..n]);
    for k in 0..n {
        o0[k].write(a[k] - c[k]);
        o1[k].write(b[k] + c[k]);
        o2[k].write(c[k] - b[k]);
        o3[k].write(b[k] - d[k]);
    }
}

/// `V[tile] = Bᵀ d B` for the patches of `tile_rows` into `v` (`[tiles, 16, Cin]`), with
/// `half` (16·Cin floats) for `Bᵀ d`.
pub(super) fn transform_inputs<'a>(
    x_nhwc: &[f32],
    g: &ConvGeometry,
    tiling: &Tiling,
    tile_rows: std::ops::Range<usize>,
    v: &'a mut [MaybeUninit<f32>],
    half: &mut [MaybeUninit<f32>],
) -> &'a [f32] {
    with_avx2(#[inline(always)] move || {
        let cin = g.cin;
        let [h, w] = g.input;
        let zeros = vec![0.0f32; cin];
        let mut tiles = v[..tile_rows.len() * tiling.tiles_x * XI * cin].chunks_exact_mut(XI * cin);
        let half = &mut half[..XI * cin];
        for tile_row in tile_rows.clone() {
            let (b, ty) = (tile_row / tiling.tiles_y, tile_row % tiling.tiles_y);
            let image = &x_nhwc[b * h * w * cin..][..h * w * cin];
            let iy0 = (2 * ty) as isize - g.padding[0] as isize;
            for tx in 0..tiling.tiles_x {
                let ix0 = (2 * tx) as isize - g.padding[1] as isize;
                let d = |i: usize, j: usize| -> &[f32] {
                    let (iy, ix) = (iy0 + i as isize, ix0 + j as isize);
                    if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                        &zeros
                    } else {
                        &image[(iy as usize * w + ix as usize) * cin..][..cin]
                    }
                };
                // Bᵀ d: for each patch column j, its four rows, stored as `half[j][i]`.
                for (j, out) in half.chunks_exact_mut(4 * cin).enumerate() {
                    input_rows(out, [d(0, j), d(1, j), d(2, j), d(3, j)]);
                }
                // SAFETY: all 16 rows of `half` were written just above.
                let t = unsafe { std::slice::from_raw_parts(half.as_ptr().cast::<f32>(), XI * cin) };
                let t = |i: usize, j: usize| &t[(j * 4 + i) * cin..][..cin];
                // (Bᵀ d) B: the same along each row i, into V[4i + j].
                let tile = tiles.next().expect("one chunk per tile");
                for (i, out) in tile.chunks_exact_mut(4 * cin).enumerate() {
                    input_rows(out, [t(i, 0), t(i, 1), t(i, 2), t(i, 3)]);
                }
            }
        }
        let len = tile_rows.len() * tiling.tiles_x * XI * cin;
        // SAFETY: every tile wrote its 16 rows of Cin floats, which tile `v[..len]`.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), len) }
    })
}

/// `Aᵀ`'s rows on `n` channels: `(a + b + c, b − c − d)`, written to `out`.
#[inline(always)]
fn output_rows(out: &mut [MaybeUninit<f32>], [a, b, c, d]: [&[f32]; 4]) {
    let n = a.len();
    let (o0, o1) = out[..2 * n].split_at_mut(n);
    let (b, c, d) = (&b[..n], &c[..n], &d[..n]);
    for k in 0..n {
        o0[k].write(a[k] + b[k] + c[k]);
        o1[k].write(b[k] - c[k] - d[k]);
    }
}

/// `Y = Aᵀ M A` for the tiles of `tile_rows` (`m`: `[tiles, 16, Cout]`), written to `out`,
/// those rows' run of the output, with `half` (8·Cout floats) for `Aᵀ M`.
pub(super) fn transform_outputs(
    m: &[f32],
    g: &ConvGeometry,
    tiling: &Tiling,
    tile_rows: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    half: &mut [MaybeUninit<f32>],
) {
    with_avx2(#[inline(always)] move || {
        let cout = g.cout;
        let (ho, wo) = (tiling.ho, tiling.wo);
        let half = &mut half[..8 * cout];
        let run_start = tiling.output_start(tile_rows.start);
        let mut tiles = m.chunks_exact(XI * cout);
        for tile_row in tile_rows {
            let oy0 = 2 * (tile_row % tiling.tiles_y);
            let row_start = tiling.output_start(tile_row) - run_start;
            for tx in 0..tiling.tiles_x {
                let tile = tiles.next().expect("one chunk per tile");
                let mi = |i: usize, j: usize| &tile[(i * 4 + j) * cout..][..cout];
                // Aᵀ M: for each column j, its two rows, stored as `half[j][dy]`.
                for (j, out) in half.chunks_exact_mut(2 * cout).enumerate() {
                    output_rows(out, [mi(0, j), mi(1, j), mi(2, j), mi(3, j)]);
                }
                // SAFETY: all 8 rows of `half` were written just above.
                let s = unsafe { std::slice::from_raw_parts(half.as_ptr().cast::<f32>(), 8 * cout) };
                let s = |dy: usize, j: usize| &s[(j * 2 + dy) * cout..][..cout];
                let ox0 = 2 * tx;
                for dy in 0..2.min(ho - oy0) {
                    // (Aᵀ M) A along the row: the two outputs, the second only inside the image.
                    let pixel = row_start + (dy * wo + ox0) * cout;
                    if ox0 + 1 < wo {
                        output_rows(&mut out[pixel..][..2 * cout], [s(dy, 0), s(dy, 1), s(dy, 2), s(dy, 3)]);
                    } else {
                        let (a, b, c) = (s(dy, 0), s(dy, 1), s(dy, 2));
                        for (k, o) in out[pixel..][..cout].iter_mut().enumerate() {
                            o.write(a[k] + b[k] + c[k]);
                        }
                    }
                }
            }
        }
    })
}

/// `A`'s rows on `n` channels: `(a, a + b, a − b, −b)`, written to `out`.
#[inline(always)]
fn gradient_rows(out: &mut [MaybeUninit<f32>], [a, b]: [&[f32]; 2]) {
    let n = a.len();
    let [o0, o1, o2, o3] = four_rows(&mut out[..4 * n]);
    let b = &b[..n];
    for k in 0..n {
        o0[k].write(a[k]);
        o1[k].write(a[k] + b[k]);
        o2[k].write(a[k] - b[k]);
        o3[k].write(-b[k]);
    }
}

/// `dM[tile] = A ∂Y Aᵀ` for the output-gradient tiles of `tile_rows` into `dm`
/// (`[tiles, 16, Cout]`; outputs past the image's edge count as 0), with `half` (8·Cout
/// floats) for `A ∂Y`.
pub(super) fn transform_output_gradients<'a>(
    grad_nhwc: &[f32],
    g: &ConvGeometry,
    tiling: &Tiling,
    tile_rows: std::ops::Range<usize>,
    dm: &'a mut [MaybeUninit<f32>],
    half: &mut [MaybeUninit<f32>],
) -> &'a [f32] {
    with_avx2(#[inline(always)] move || {
        let cout = g.cout;
        let (ho, wo) = (tiling.ho, tiling.wo);
        let zeros = vec![0.0f32; cout];
        let len = tile_rows.len() * tiling.tiles_x * XI * cout;
        let mut tiles = dm[..len].chunks_exact_mut(XI * cout);
        let half = &mut half[..8 * cout];
        for tile_row in tile_rows {
            let (b, ty) = (tile_row / tiling.tiles_y, tile_row % tiling.tiles_y);
            let image = &grad_nhwc[b * ho * wo * cout..][..ho * wo * cout];
            for tx in 0..tiling.tiles_x {
                let dy = |dy: usize, dx: usize| -> &[f32] {
                    let (oy, ox) = (2 * ty + dy, 2 * tx + dx);
                    if oy >= ho || ox >= wo {
                        &zeros
                    } else {
                        &image[(oy * wo + ox) * cout..][..cout]
                    }
                };
                // A ∂Y: for each column dx, its four rows, stored as `half[dx][i]`.
                for (dx, out) in half.chunks_exact_mut(4 * cout).enumerate() {
                    gradient_rows(out, [dy(0, dx), dy(1, dx)]);
                }
                // SAFETY: all 8 rows of `half` were written just above.
                let r = unsafe { std::slice::from_raw_parts(half.as_ptr().cast::<f32>(), 8 * cout) };
                let r = |i: usize, dx: usize| &r[(dx * 4 + i) * cout..][..cout];
                // (A ∂Y) Aᵀ: the same along each row i, into dM[4i + j] at this tile.
                let tile = tiles.next().expect("one chunk per tile");
                for (i, out) in tile.chunks_exact_mut(4 * cout).enumerate() {
                    gradient_rows(out, [r(i, 0), r(i, 1)]);
                }
            }
        }
        // SAFETY: every tile wrote its 16 rows of Cout floats, which tile `dm[..len]`.
        unsafe { std::slice::from_raw_parts(dm.as_ptr().cast::<f32>(), len) }
    })
}
