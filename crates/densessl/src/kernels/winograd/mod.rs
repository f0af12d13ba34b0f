//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2016),
//! on channels-last activations (issue 9, attempt 11).
//!
//! Each 2×2 block of outputs ("tile") is computed from the 4×4 input patch under it: the patch
//! is transformed (`V = Bᵀ d B`), multiplied element by element with the transformed kernel
//! (`U = G g Gᵀ`), summed over input channels, and transformed back (`Y = Aᵀ M A`). Over
//! channels, each of the 16 element-wise products is a matrix product
//! `M[ξ] = V[ξ] · U[ξ]` (`[tiles, Cin] · [Cin, Cout]`), so the 36 multiplications per tile
//! of the direct form become 16: the products take 2.25× fewer operations than im2col's.
//!
//! The transforms' coefficients are 0, ±1 and ±½, exact in binary; the results differ from
//! the direct product by float32 rounding of a few additions more per value.
//!
//! Work runs in tasks of whole rows of tiles: each task transforms its patches into scratch,
//! runs the 16 products there and writes its own rows of the output. The weight gradient is
//! the same computation's adjoint: per task 16 products over its tiles, one partial each,
//! summed in task order. The transforms themselves are in [`tiles`].

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv_cpu::ConvGeometry;
use super::conv_weights::KernelColumns;
use super::gemm::{gemm_f32_into, rows_per_task, sum_partials_in_order, with_scratch, Parallelism};
use super::transpose::transpose_each_image;

mod tiles;
use tiles::{transform_inputs, transform_output_gradients, transform_outputs};

/// Elements of a transformed tile (4×4).
pub(super) const XI: usize = 16;

/// Floats past the end of each row of the transformed kernel (see [`KernelColumns`]).
const ROW_PADDING: usize = 16;

/// Whether a convolution of geometry `g` runs here: a batch, a 3×3 kernel, stride and dilation 1,
/// padding at most 2 (the stride-1 data gradient's is `2 − p`), enough channels for the
/// products to run at speed, and outputs of at least 4×4 (smaller ones waste most of each
/// tile: ResNet's layer4 at 96 px has 3×3).
pub(super) fn applies(g: &ConvGeometry) -> bool {
    let [ho, wo] = g.output();
    g.batch > 0
        && g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.padding[0] <= 2
        && g.padding[1] <= 2
        && g.cin >= 16
        && g.cout >= 16
        && ho >= 4
        && wo >= 4
}

/// The kernel transformed, `U[ξ] = (G g Gᵀ)[ξ]` for each of the 16 tile elements: 16
/// matrices `[Cin, Cout]` one after the other, rows `stride` floats apart.
struct TransformedKernel {
    values: Vec<f32>,
    stride: usize,
    cin: usize,
}

impl TransformedKernel {
    /// From the column form `[(ky, kx, c), Cout]`.
    fn new(kernel: &KernelColumns, g: &ConvGeometry) -> Self {
        let (cin, cout) = (g.cin, g.cout);
        let stride = cout + ROW_PADDING;
        let tap = |t: usize, c: usize| &kernel.values[(t * cin + c) * kernel.stride..][..cout];
        let mut values = vec![0.0f32; XI * cin * stride];
        // Row i of G applied along ky gives h[i][kx], then along kx gives U[4i + j]. One task
        // per i: its four matrices.
        values.par_chunks_mut(4 * cin * stride).enumerate().for_each(|(i, out)| {
            let mut h = vec![0.0f32; 3 * cout];
            for c in 0..cin {
                for kx in 0..3 {
                    let column = [tap(kx, c), tap(3 + kx, c), tap(6 + kx, c)];
                    let hk = &mut h[kx * cout..][..cout];
                    for (o, ((&a, &b), &d)) in hk.iter_mut().zip(column[0].iter().zip(column[1]).zip(column[2])) {
                        *o = g_row(i, a, b, d);
                    }
                }
                let (h0, h1, h2) = (&h[..cout], &h[cout..2 * cout], &h[2 * cout..]);
                for j in 0..4 {
                    let row = &mut out[(j * cin + c) * stride..][..cout];
                    for (o, ((&a, &b), &d)) in row.iter_mut().zip(h0.iter().zip(h1).zip(h2)) {
                        *o = g_row(j, a, b, d);
                    }
                }
            }
        });
        Self { values, stride, cin }
    }

    /// `U[ξ]`, `[Cin, Cout]` with rows [`TransformedKernel::stride`] apart.
    fn matrix(&self, xi: usize) -> &[f32] {
        &self.values[xi * self.cin * self.stride..]
    }
}

/// Row `i` of `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]` applied to `(a, b, d)`.
#[inline(always)]
fn g_row(i: usize, a: f32, b: f32, d: f32) -> f32 {
    match i {
        0 => a,
        1 => 0.5 * (a + b + d),
        2 => 0.5 * (a - b + d),
        _ => d,
    }
}

/// The three rows of `Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]]` applied to
/// `(a, b, c, d)` on `n` values each, written to `out[first + r·step..][..n]` for row `r`.
#[inline(always)]
fn g_transposed_rows(out: &mut [f32], first: usize, step: usize, [a, b, c, d]: [&[f32]; 4]) {
    for k in 0..a.len() {
        out[first + k] = a[k] + 0.5 * (b[k] + c[k]);
        out[first + step + k] = 0.5 * (b[k] - c[k]);
        out[first + 2 * step + k] = 0.5 * (b[k] + c[k]) + d[k];
    }
}

/// The forward product of a 3×3 stride-1 convolution ([`applies`]): NHWC input, kernel in
/// column form, NHWC output `[B, Ho, Wo, Cout]`.
pub(super) fn forward_nhwc(x_nhwc: &[f32], kernel: &KernelColumns, g: &ConvGeometry) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let [ho, wo] = g.output();
    let tiling = Tiling::new(g);
    let kernel = TransformedKernel::new(kernel, g);
    let len = g.batch * ho * wo * cout;
    let mut y = Vec::with_capacity(len);
    // Tasks of whole tile rows; a tile row is one or two output rows of one image, so each
    // task's outputs are one run of Y.
    let tile_rows = g.batch * tiling.tiles_y;
    let per_task = rows_per_task(tile_rows, tiling.tiles_x * XI * (cin + cout), 64usize.div_ceil(tiling.tiles_x)).max(1);
    let mut tasks: Vec<(std::ops::Range<usize>, &mut [MaybeUninit<f32>])> = Vec::new();
    let mut rest = &mut y.spare_capacity_mut()[..len];
    for first in (0..tile_rows).step_by(per_task) {
        let rows = first..(first + per_task).min(tile_rows);
        let (mine, others) = rest.split_at_mut(tiling.output_start(rows.end) - tiling.output_start(rows.start));
        tasks.push((rows, mine));
        rest = others;
    }
    tasks.into_par_iter().for_each(|(rows, out)| {
        let tiles = rows.len() * tiling.tiles_x;
        with_scratch(XI * tiles * (cin + cout) + XI * cin.max(cout), |scratch| {
            let (v, rest) = scratch.split_at_mut(XI * tiles * cin);
            let (m, half) = rest.split_at_mut(XI * tiles * cout);
            let v = transform_inputs(x_nhwc, g, &tiling, rows.clone(), v, half);
            // V and M are tile-major, `[tiles, 16, C]`: each ξ's matrix has rows 16·C apart.
            for xi in 0..XI {
                // M[ξ][tiles, Cout] = V[ξ][tiles, Cin] · U[ξ][Cin, Cout]
                let (dst, lhs) = (&mut m[xi * cout..], &v[xi * cin..]);
                let strides = ([(XI * cout) as isize, 1], [(XI * cin) as isize, 1], [kernel.stride as isize, 1]);
                gemm_f32_into(Parallelism::None, [tiles, cout, cin], dst, strides.0, lhs, strides.1, kernel.matrix(xi), strides.2);
            }
            // SAFETY: the 16 products above wrote all `tiles × 16 × Cout` slots of `m`.
            let m = unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<f32>(), m.len()) };
            transform_outputs(m, g, &tiling, rows, out, half);
        });
    });
    // SAFETY: the tasks' runs tile all of Y, and each task wrote every output of its tiles.
    unsafe { y.set_len(len) };
    y
}

/// How the output is cut into 2×2 tiles.
struct Tiling {
    /// Tiles per column and row of an image.
    pub(super) tiles_y: usize,
    pub(super) tiles_x: usize,
    /// Output height, width and channels.
    pub(super) ho: usize,
    pub(super) wo: usize,
    pub(super) cout: usize,
}

impl Tiling {
    fn new(g: &ConvGeometry) -> Self {
        let [ho, wo] = g.output();
        Self { tiles_y: ho.div_ceil(2), tiles_x: wo.div_ceil(2), ho, wo, cout: g.cout }
    }

    /// Where tile row `tile_row` (over the batch) starts in the NHWC output.
    pub(super) fn output_start(&self, tile_row: usize) -> usize {
        let (b, ty) = (tile_row / self.tiles_y, tile_row % self.tiles_y);
        (b * self.ho + (2 * ty).min(self.ho)) * self.wo * self.cout
    }
}

/// Fewest tiles a weight-gradient task reduces over: each task writes a whole partial of 16
/// matrices `[Cin, Cout]` (4 MB in ResNet's layer 3), which fewer tiles would not pay for.
const MIN_WEIGHT_GRADIENT_TILES: usize = 256;

/// The weight gradient of a 3×3 stride-1 convolution ([`applies`]) from the NHWC input and
/// output gradient: `[Cout, Cin, 3, 3]`.
///
/// The forward pass is `Y = Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A` per tile, so
/// `∂L/∂g = Gᵀ [Σ_tiles (Bᵀ d B) ⊙ (A ∂Y Aᵀ)] G`: per tile element ξ a product
/// `dU[ξ][Cin, Cout] = V[ξ]ᵀ · dM[ξ]` over the tiles, 2.25× fewer operations than im2col's.
/// Each task's tiles give one partial; the partials are summed in task order.
pub(super) fn weight_gradient_nhwc(x_nhwc: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let tiling = Tiling::new(g);
    let tile_rows = g.batch * tiling.tiles_y;
    let min_rows = MIN_WEIGHT_GRADIENT_TILES.div_ceil(tiling.tiles_x);
    let per_task = rows_per_task(tile_rows, tiling.tiles_x * XI * (cin + cout), min_rows).max(1);
    let tasks = tile_rows.div_ceil(per_task).max(1);
    let size = XI * cin * cout;
    let mut partials: Vec<f32> = Vec::with_capacity(tasks * size);
    partials.spare_capacity_mut()[..tasks * size].par_chunks_mut(size.max(1)).enumerate().for_each(|(task, partial)| {
        let rows = (task * per_task).min(tile_rows)..((task + 1) * per_task).min(tile_rows);
        let tiles = rows.len() * tiling.tiles_x;
        with_scratch(XI * tiles * (cin + cout) + XI * cin.max(cout), |scratch| {
            let (v, rest) = scratch.split_at_mut(XI * tiles * cin);
            let (dm, half) = rest.split_at_mut(XI * tiles * cout);
            let v = transform_inputs(x_nhwc, g, &tiling, rows.clone(), v, half);
            let dm = transform_output_gradients(grad_nhwc, g, &tiling, rows, dm, half);
            for xi in 0..XI {
                // dU[ξ][Cin, Cout] = V[ξ]ᵀ[Cin, tiles] · dM[ξ][tiles, Cout]
                let dst = &mut partial[xi * cin * cout..][..cin * cout];
                let strides = ([cout as isize, 1], [1, (XI * cin) as isize], [(XI * cout) as isize, 1]);
                gemm_f32_into(Parallelism::None, [cin, cout, tiles], dst, strides.0, &v[xi * cin..], strides.1, &dm[xi * cout..], strides.2);
            }
        });
    });
    // SAFETY: the tasks' blocks tile all `tasks × size` slots, and each task (at least one
    // tile row: the batch is not empty, see `applies`) wrote its block in its 16 products.
    unsafe { partials.set_len(tasks * size) };
    let du = sum_partials_in_order(&partials, size);
    // dW[o][c][ky][kx] = Σ_ij G[i][ky] G[j][kx] dU[4i + j][c][o], built as [(c, tap), Cout]
    // and turned to [Cout, (c, tap)] at the end.
    let mut by_channel = vec![0.0f32; cin * 9 * cout];
    by_channel.par_chunks_mut(9 * cout).enumerate().for_each_init(|| vec![0.0f32; 12 * cout], |e, (c, out)| {
        let du = |i: usize, j: usize| &du[((i * 4 + j) * cin + c) * cout..][..cout];
        // Gᵀ along i: e[ky][j]…
        for j in 0..4 {
            g_transposed_rows(e, j * cout, 4 * cout, [du(0, j), du(1, j), du(2, j), du(3, j)]);
        }
        // …then along j, into tap (ky, kx).
        for ky in 0..3 {
            let row = |j: usize| &e[(ky * 4 + j) * cout..][..cout];
            g_transposed_rows(out, ky * 3 * cout, cout, [row(0), row(1), row(2), row(3)]);
        }
    });
    transpose_each_image(&by_channel, cin * 9, cout)
}
