//! CPU convolution kernels on plain `f32` slices (NCHW, one group, symmetric padding).
//!
//! burn-flex convolves image by image: each image's output positions go to `gemm` on their
//! own, so the small feature maps of a ResNet's later stages (3×3 or 6×6 positions) leave
//! it a matrix of 9–36 columns, and its weight gradient is a convolution whose kernel is
//! the output gradient. Here every pass takes the positions of the *whole batch* at once:
//! the input is turned into rows of im2col (`[B·Ho·Wo, k·k·Cin]`, read from an NHWC copy
//! so each tap is one contiguous run of channels), split into tasks of about 1 MB of rows,
//! and each task builds its rows and multiplies them on one thread (see [`super::gemm`]):
//! - forward: `Y[P, Cout] = col[P, K] · Wᵀ[K, Cout]`, or for 3×3 stride-1 kernels on maps of
//!   4×4 or more, Winograd's F(2×2, 3×3) (`winograd.rs`), 2.25× fewer multiplications;
//! - weight gradient: `dW[Cout, K] = Σ_tasks Gᵀ[Cout, rows] · col[rows, K]`, one partial per
//!   task, summed in task order (so the result does not depend on which thread ran which task);
//! - data gradient (stride 1): the forward pass of the output gradient with the kernel
//!   flipped and its channels swapped, padded by `d·(k−1) − p`;
//! - data gradient (other strides): col2im, `dcol[P, K] = G[P, Cout] · W[Cout, K]`, each
//!   row added back onto the pixels its taps read.
//!
//! The `*_channels_last` entry points take and return NHWC activations as they are (what
//! the extension hands on, see [`super::layout`]); where im2col is the identity (1×1, stride
//! 1, no padding) their products read the input itself. The NCHW entry points transpose on
//! the way in and out; when both gradients are needed, [`conv2d_gradients`] transposes the
//! output gradient to NHWC once for the two of them. 1×1 stride-1 convolutions on larger maps skip all of this:
//! [`super::pointwise`] multiplies them image by image straight from NCHW.
//!
//! Measured effect and the shapes it was measured on: docs/BENCHMARKS.md (issue 9).

use std::borrow::Cow;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv_weights::{flatten_kernel, KernelColumns};
use super::gemm::{gemm_f32_into, rows_per_task, sum_partials_in_order, with_scratch, Parallelism, SharedDestination};
use super::pointwise;
use super::transpose::transpose_each_image;
use super::winograd;

/// Fewest im2col rows a forward task multiplies (gemm's f32 kernels take 64 rows at a time on
/// AVX-512 and 24–48 elsewhere).
const MIN_FORWARD_ROWS: usize = 64;

/// Fewest rows a weight-gradient task reduces over: each task writes a whole partial dW
/// (`Cout × K`, up to 9 MB in ResNet's layer4), which fewer rows would not pay for.
const MIN_WEIGHT_GRADIENT_ROWS: usize = 256;

/// Geometry of one 2-D convolution (one group, symmetric padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride per axis.
    pub stride: [usize; 2],
    /// Zero padding per axis (the same on both sides).
    pub padding: [usize; 2],
    /// Dilation per axis.
    pub dilation: [usize; 2],
}

impl ConvGeometry {
    /// Output height and width.
    pub fn output(&self) -> [usize; 2] {
        std::array::from_fn(|i| {
            (self.input[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1) / self.stride[i] + 1
        })
    }

    /// Output positions over the whole batch, `B·Ho·Wo`.
    pub fn positions(&self) -> usize {
        let [ho, wo] = self.output();
        self.batch * ho * wo
    }

    /// Length of one im2col row, `kh·kw·Cin`.
    pub fn row_len(&self) -> usize {
        self.kernel[0] * self.kernel[1] * self.cin
    }

    /// The geometry of the data gradient as a forward convolution (stride 1 only): input
    /// the output gradient, kernel flipped and transposed, padding `d·(k−1) − p`. `None`
    /// when that padding would be negative or the stride is not 1.
    pub fn data_gradient_as_forward(&self) -> Option<ConvGeometry> {
        if self.stride != [1, 1] {
            return None;
        }
        let flipped_padding = |i: usize| (self.dilation[i] * (self.kernel[i] - 1)).checked_sub(self.padding[i]);
        let padding = [flipped_padding(0)?, flipped_padding(1)?];
        Some(ConvGeometry {
            batch: self.batch,
            cin: self.cout,
            input: self.output(),
            cout: self.cin,
            kernel: self.kernel,
            stride: [1, 1],
            padding,
            dilation: self.dilation,
        })
    }
}

/// The input pixel `iy·W + ix` that tap `(ky, kx)` of output position `(oy, ox)` reads, or
/// `None` where the tap falls in the padding.
fn input_pixel(g: &ConvGeometry, [oy, ox]: [usize; 2], [ky, kx]: [usize; 2]) -> Option<usize> {
    let iy = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.padding[0]).filter(|&iy| iy < g.input[0])?;
    let ix = (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.padding[1]).filter(|&ix| ix < g.input[1])?;
    Some(iy * g.input[1] + ix)
}

/// Writes rows `first..first + col.len() / K` of im2col, each `[(ky, kx, c)]`, from an NHWC
/// input into `col`, and returns them.
fn im2col_rows<'a>(x_nhwc: &[f32], g: &ConvGeometry, first: usize, col: &'a mut [MaybeUninit<f32>]) -> &'a [f32] {
    let [h, w] = g.input;
    let [ho, wo] = g.output();
    let [kh, kw] = g.kernel;
    let (cin, k) = (g.cin, g.row_len());
    assert_eq!(col.len() % k.max(1), 0, "im2col: the buffer is not a whole number of rows");
    for (i, row) in col.chunks_exact_mut(k.max(1)).enumerate() {
        let q = first + i;
        let (b, oy, ox) = (q / (ho * wo), q / wo % ho, q % wo);
        let image = &x_nhwc[b * h * w * cin..][..h * w * cin];
        let ix0 = (ox * g.stride[1]) as isize - g.padding[1] as isize;
        // Undilated taps of one kernel row that all fall inside the image are one contiguous
        // run of `kw·Cin` floats in NHWC: one copy instead of `kw` (the stem's Cin is 3).
        let whole_row_inside = g.dilation[1] == 1 && ix0 >= 0 && ix0 as usize + kw <= w;
        for ky in 0..kh {
            if let Some(first_tap) = input_pixel(g, [oy, ox], [ky, 0]).filter(|_| whole_row_inside) {
                row[ky * kw * cin..][..kw * cin].write_copy_of_slice(&image[first_tap * cin..][..kw * cin]);
                continue;
            }
            for kx in 0..kw {
                let dst = &mut row[(ky * kw + kx) * cin..][..cin];
                match input_pixel(g, [oy, ox], [ky, kx]) {
                    Some(pixel) => {
                        dst.write_copy_of_slice(&image[pixel * cin..][..cin]);
                    }
                    None => dst.iter_mut().for_each(|slot| {
                        slot.write(0.0);
                    }),
                }
            }
        }
    }
    // SAFETY: every row of `col` (its length is a whole number of rows) had all K slots
    // written above: each tap's channels copied from the image, or zeros in the padding.
    unsafe { std::slice::from_raw_parts(col.as_ptr().cast::<f32>(), col.len()) }
}

/// `x [B, C, H, W]` → `[B, H, W, C]`, for a convolution of geometry `g` (C = `g.cin`).
fn to_nhwc(x: &[f32], g: &ConvGeometry) -> Vec<f32> {
    transpose_each_image(x, g.cin, g.input[0] * g.input[1])
}

/// Forward convolution without bias: `x [B, Cin, H, W]`, `weight [Cout, Cin, kh, kw]` →
/// `[B, Cout, Ho, Wo]`.
pub fn conv2d_forward(x: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.row_len(), "conv2d: kernel length does not match its geometry");
    let [h, w] = g.input;
    assert_eq!(x.len(), g.batch * g.cin * h * w, "conv2d: input length does not match its geometry");
    if pointwise::applies(g) {
        return pointwise::forward(x, weight, g);
    }
    let [ho, wo] = g.output();
    transpose_each_image(&conv2d_forward_channels_last(&to_nhwc(x, g), weight, g), ho * wo, g.cout)
}

/// [`conv2d_forward`] in channels-last order: `x [B, H, W, Cin]` → `[B, Ho, Wo, Cout]`
/// (`weight` as there).
pub fn conv2d_forward_channels_last(x_nhwc: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.row_len(), "conv2d: kernel length does not match its geometry");
    assert_eq!(x_nhwc.len(), g.batch * g.cin * g.input[0] * g.input[1], "conv2d: input length does not match its geometry");
    forward_nhwc(x_nhwc, &KernelColumns::new(weight, g), g)
}

/// The forward product from an NHWC input and a kernel in column form; the output is NHWC.
fn forward_nhwc(x_nhwc: &[f32], kernel: &KernelColumns, g: &ConvGeometry) -> Vec<f32> {
    if winograd::applies(g) && !winograd_disabled() {
        return winograd::forward_nhwc(x_nhwc, kernel, g);
    }
    let (k, cout, positions) = (g.row_len(), g.cout, g.positions());
    let len = positions * cout;
    let mut y = Vec::with_capacity(len);
    let y_slots = &mut y.spare_capacity_mut()[..len];
    if kernel_outweighs_rows(g) {
        let col = im2col_all(x_nhwc, g);
        // Y[P, Cout] in tasks of output channels, each reading all rows and only its own
        // columns of the kernel (the larger operand). Multiples of 16 channels keep gemm's
        // 16-float vectors full.
        let threads = rayon::current_num_threads().max(1);
        let channels = cout.div_ceil(2 * threads).next_multiple_of(16);
        let y_columns = SharedDestination::new(y_slots);
        (0..cout.div_ceil(channels)).into_par_iter().for_each(|task| {
            let first = task * channels;
            let n = channels.min(cout - first);
            // SAFETY: each task writes only its own columns `first..first + n` of Y, and `y`
            // outlives the parallel loop.
            unsafe { y_columns.gemm_into([positions, n, k], first, [cout as isize, 1], &col, [k as isize, 1], &kernel.values[first..], [kernel.stride as isize, 1]) };
        });
    } else {
        // Each task reads the whole kernel: with at least twice as many rows as the kernel has
        // output channels, that costs at most half of building the rows.
        let rows = rows_per_task(positions, k, MIN_FORWARD_ROWS.max(2 * cout));
        y_slots.par_chunks_mut((rows * cout).max(1)).enumerate().for_each(|(task, out)| {
            let n = out.len() / cout.max(1);
            with_rows(x_nhwc, g, task * rows, n, |col| {
                // Y[rows, Cout] = col[rows, K] · kernel[K, Cout]
                gemm_f32_into(Parallelism::None, [n, cout, k], out, [cout as isize, 1], col, [k as isize, 1], &kernel.values, [kernel.stride as isize, 1]);
            });
        });
    }
    // SAFETY: the products wrote all `positions × Cout` slots (the tasks' blocks tile them).
    unsafe { y.set_len(len) };
    y
}

/// Whether `DENSESSL_WINOGRAD=off` asked for im2col products everywhere (A/B measurements).
fn winograd_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("DENSESSL_WINOGRAD").is_ok_and(|v| v == "off"))
}

/// Whether the kernel (`K × Cout`) is the larger operand, by more than the rows (`P × K`)
/// of half a task per thread: then each row task would re-read a kernel bigger than its
/// rows, and one multithreaded product over all rows does better (ResNet's layer4).
fn kernel_outweighs_rows(g: &ConvGeometry) -> bool {
    g.positions() < 2 * g.cout
}

/// Whether im2col's rows are the NHWC input's own pixels (1×1 kernel, stride 1, no padding).
fn im2col_is_identity(g: &ConvGeometry) -> bool {
    g.kernel == [1, 1] && g.stride == [1, 1] && g.padding == [0, 0]
}

/// Runs `f` on im2col rows `first..first + n` (`[n, K]`): the input's own pixels where
/// im2col is the identity, else built in this thread's scratch.
fn with_rows<R>(x_nhwc: &[f32], g: &ConvGeometry, first: usize, n: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    let k = g.row_len();
    if im2col_is_identity(g) {
        return f(&x_nhwc[first * k..][..n * k]);
    }
    with_scratch(n * k, |col| f(im2col_rows(x_nhwc, g, first, col)))
}

/// All `P` rows of im2col, `[P, K]`, built in parallel (or the input itself where im2col is
/// the identity).
fn im2col_all<'a>(x_nhwc: &'a [f32], g: &ConvGeometry) -> Cow<'a, [f32]> {
    if im2col_is_identity(g) {
        return Cow::Borrowed(x_nhwc);
    }
    let (k, positions) = (g.row_len(), g.positions());
    let mut col = Vec::with_capacity(positions * k);
    let rows = rows_per_task(positions, k, 1);
    col.spare_capacity_mut()[..positions * k].par_chunks_mut((rows * k).max(1)).enumerate().for_each(|(task, chunk)| {
        im2col_rows(x_nhwc, g, task * rows, chunk);
    });
    // SAFETY: the chunks tile all `P × K` slots and `im2col_rows` wrote each of them.
    unsafe { col.set_len(positions * k) };
    Cow::Owned(col)
}

/// Weight gradient: `x [B, Cin, H, W]`, output gradient `[B, Cout, Ho, Wo]` →
/// `[Cout, Cin, kh, kw]`.
pub fn conv2d_weight_gradient(x: &[f32], grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    if pointwise::applies(g) {
        return pointwise::weight_gradient(x, grad, g);
    }
    weight_gradient_nhwc(&to_nhwc(x, g), &grad_to_nhwc(grad, g), g)
}

/// [`conv2d_weight_gradient`] in channels-last order: `x [B, H, W, Cin]`, output gradient
/// `[B, Ho, Wo, Cout]` → `[Cout, Cin, kh, kw]`.
pub fn conv2d_weight_gradient_channels_last(x_nhwc: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(grad_nhwc.len(), g.positions() * g.cout, "conv2d: output gradient length does not match its geometry");
    weight_gradient_nhwc(x_nhwc, grad_nhwc, g)
}

/// The output gradient `[B, Cout, Ho, Wo]` → `[B, Ho, Wo, Cout]`: both gradients read it so.
fn grad_to_nhwc(grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [ho, wo] = g.output();
    assert_eq!(grad.len(), g.positions() * g.cout, "conv2d: output gradient length does not match its geometry");
    transpose_each_image(grad, g.cout, ho * wo)
}

/// [`conv2d_weight_gradient`] with the input and the output gradient in NHWC order.
fn weight_gradient_nhwc(x_nhwc: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [h, w] = g.input;
    assert_eq!(x_nhwc.len(), g.batch * g.cin * h * w, "conv2d: input length does not match its geometry");
    if winograd::applies(g) && !winograd_disabled() {
        return winograd::weight_gradient_nhwc(x_nhwc, grad_nhwc, g);
    }
    let (k, cout, positions) = (g.row_len(), g.cout, g.positions());
    let size = cout * k;
    if kernel_outweighs_rows(g) {
        let col = im2col_all(x_nhwc, g);
        let mut flat = Vec::with_capacity(size);
        // dW[Cout, K] = Gᵀ[Cout, P] · col[P, K]
        gemm_f32_into(Parallelism::Rayon(0), [cout, k, positions], &mut flat.spare_capacity_mut()[..size], [k as isize, 1], grad_nhwc, [1, cout as isize], &col, [k as isize, 1]);
        // SAFETY: the gemm call wrote all `Cout × K` slots.
        unsafe { flat.set_len(size) };
        return transpose_each_image(&flat, g.kernel[0] * g.kernel[1], g.cin);
    }
    // Each task's rows give one partial dW; the partials are summed in task order, so the
    // result does not depend on which thread ran which task.
    let rows = rows_per_task(positions, k, MIN_WEIGHT_GRADIENT_ROWS);
    let tasks = positions.div_ceil(rows).max(1);
    // gemm writes along whichever side of dW is contiguous, and packs the operand it reads
    // along that side unless it comes in whole 16-float vectors. K of the stem (7·7·3 = 147)
    // does not, Cout does: there each partial is dWᵀ[K, Cout] instead, and turned at the end.
    let kernel_major = k % 16 != 0 && cout % 16 == 0;
    let mut partials: Vec<f32> = Vec::with_capacity(tasks * size);
    partials.spare_capacity_mut()[..tasks * size].par_chunks_mut(size.max(1)).enumerate().for_each(|(task, partial)| {
        let first = (task * rows).min(positions);
        let n = rows.min(positions - first);
        let grad_rows = &grad_nhwc[first * cout..][..n * cout];
        with_rows(x_nhwc, g, first, n, |col| {
            if kernel_major {
                // dWᵀ_task[K, Cout] = colᵀ[K, rows] · G[rows, Cout]
                gemm_f32_into(Parallelism::None, [k, cout, n], partial, [cout as isize, 1], col, [1, k as isize], grad_rows, [cout as isize, 1]);
            } else {
                // dW_task[Cout, K] = Gᵀ[Cout, rows] · col[rows, K]
                gemm_f32_into(Parallelism::None, [cout, k, n], partial, [k as isize, 1], grad_rows, [1, cout as isize], col, [k as isize, 1]);
            }
        });
    });
    // SAFETY: the tasks' blocks tile all `tasks × size` slots and each gemm call wrote its block.
    unsafe { partials.set_len(tasks * size) };
    let mut flat = sum_partials_in_order(&partials, size);
    if kernel_major {
        // [K, Cout] → [Cout, K]
        flat = transpose_each_image(&flat, k, cout);
    }
    // [Cout, (ky, kx, c)] → [Cout, c, ky, kx]
    transpose_each_image(&flat, g.kernel[0] * g.kernel[1], g.cin)
}

/// Data gradient: output gradient `[B, Cout, Ho, Wo]` → `[B, Cin, H, W]`. Stride 1 runs as
/// the forward pass of the gradient with the flipped, channel-swapped kernel (where
/// [`ConvGeometry::data_gradient_as_forward`] allows it); other strides as col2im.
pub fn conv2d_data_gradient(weight: &[f32], grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    if pointwise::applies(g) {
        return pointwise::data_gradient(weight, grad, g);
    }
    input_to_nchw(data_gradient_nhwc(weight, &grad_to_nhwc(grad, g), g), g)
}

/// [`conv2d_data_gradient`] in channels-last order: output gradient `[B, Ho, Wo, Cout]` →
/// `[B, H, W, Cin]`.
pub fn conv2d_data_gradient_channels_last(weight: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(grad_nhwc.len(), g.positions() * g.cout, "conv2d: output gradient length does not match its geometry");
    data_gradient_nhwc(weight, grad_nhwc, g)
}

/// An input-shaped `[B, H, W, Cin]` buffer → `[B, Cin, H, W]`.
fn input_to_nchw(x_nhwc: Vec<f32>, g: &ConvGeometry) -> Vec<f32> {
    transpose_each_image(&x_nhwc, g.input[0] * g.input[1], g.cin)
}

/// Both gradients, `(dx [B, Cin, H, W], dW [Cout, Cin, kh, kw])`, from one NHWC copy of the
/// output gradient instead of one each.
pub fn conv2d_gradients(x: &[f32], weight: &[f32], grad: &[f32], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
    if pointwise::applies(g) {
        return (pointwise::data_gradient(weight, grad, g), pointwise::weight_gradient(x, grad, g));
    }
    let grad_nhwc = grad_to_nhwc(grad, g);
    (input_to_nchw(data_gradient_nhwc(weight, &grad_nhwc, g), g), weight_gradient_nhwc(&to_nhwc(x, g), &grad_nhwc, g))
}

/// [`conv2d_data_gradient`] with the output gradient already NHWC (see [`grad_to_nhwc`]);
/// the result is NHWC too.
fn data_gradient_nhwc(weight: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.row_len(), "conv2d: kernel length does not match its geometry");
    match g.data_gradient_as_forward() {
        Some(backward) => data_gradient_flipped(weight, grad_nhwc, g, &backward),
        None => data_gradient_col2im(weight, grad_nhwc, g),
    }
}

/// Data gradient as col2im, for any stride: per task of whole images,
/// `dcol[P, K] = G[P, Cout] · W[Cout, K]`, then each row of `dcol` is added back onto the
/// input pixels its taps read (a task owns its images, so no two threads add to one pixel).
fn data_gradient_col2im(weight: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [h, w] = g.input;
    let [ho, wo] = g.output();
    let (k, cin, cout) = (g.row_len(), g.cin, g.cout);
    let kernel = flatten_kernel(weight, g);
    let (per_image, pixels) = (ho * wo, h * w * cin);
    let images_per_task = rows_per_task(g.batch, per_image * k, 1);
    let mut dx_nhwc = vec![0.0f32; g.batch * pixels];
    dx_nhwc.par_chunks_mut((images_per_task * pixels).max(1)).enumerate().for_each(|(task, images)| {
        let first = task * images_per_task * per_image;
        let n = images.len() / pixels.max(1) * per_image;
        with_scratch(n * k, |dcol| {
            // dcol[n, K] = G[n, Cout] · kernel[Cout, K]
            gemm_f32_into(Parallelism::None, [n, k, cout], dcol, [k as isize, 1], &grad_nhwc[first * cout..][..n * cout], [cout as isize, 1], &kernel, [k as isize, 1]);
            // SAFETY: the gemm call wrote all `n × K` slots.
            let rows = unsafe { std::slice::from_raw_parts(dcol.as_ptr().cast::<f32>(), n * k) };
            for (image, image_rows) in images.chunks_exact_mut(pixels).zip(rows.chunks_exact(per_image * k)) {
                add_rows_to_image(image, image_rows, g);
            }
        });
    });
    dx_nhwc
}

/// col2im for one image: adds each tap of every `dcol` row `[(ky, kx, c)]` onto the NHWC
/// pixel it was read from (taps in the padding are dropped).
fn add_rows_to_image(image: &mut [f32], rows: &[f32], g: &ConvGeometry) {
    let kw = g.kernel[1];
    let wo = g.output()[1];
    for (p, row) in rows.chunks_exact(g.row_len()).enumerate() {
        for (tap, values) in row.chunks_exact(g.cin).enumerate() {
            if let Some(pixel) = input_pixel(g, [p / wo, p % wo], [tap / kw, tap % kw]) {
                for (d, v) in image[pixel * g.cin..][..g.cin].iter_mut().zip(values) {
                    *d += v;
                }
            }
        }
    }
}

/// Stride-1 data gradient as a forward convolution of geometry `backward` (the flipped form).
fn data_gradient_flipped(weight: &[f32], grad_nhwc: &[f32], g: &ConvGeometry, backward: &ConvGeometry) -> Vec<f32> {
    let flipped = KernelColumns::flipped(weight, g);
    // The output gradient in NHWC is exactly the backward convolution's NHWC input.
    let dx = forward_nhwc(grad_nhwc, &flipped, backward);
    debug_assert_eq!(backward.output(), g.input);
    dx
}
