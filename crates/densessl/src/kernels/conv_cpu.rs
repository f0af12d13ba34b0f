//! CPU convolution kernels on plain `f32` slices (NCHW, one group, symmetric padding).
//!
//! burn-flex convolves image by image: each image's output positions go to `gemm` on their
//! own, so the small feature maps of a ResNet's later stages (3×3 or 6×6 positions) leave
//! it a matrix of 9–36 columns, and its weight gradient is a convolution whose kernel is
//! the output gradient. Here every pass takes the positions of the *whole batch* at once:
//! the input is turned into rows of im2col (`[B·Ho·Wo, k·k·Cin]`, read from an NHWC copy
//! so each tap is one contiguous run of channels), in chunks that bound the memory, and
//! each chunk is one multithreaded `gemm` call:
//! - forward: `Y[P, Cout] = col[P, K] · Wᵀ[K, Cout]`;
//! - weight gradient: `dW[Cout, K] += Gᵀ[Cout, P] · col[P, K]`, accumulated over chunks;
//! - data gradient (stride 1): the forward pass of the output gradient with the kernel
//!   flipped and its channels swapped, padded by `d·(k−1) − p`;
//! - data gradient (other strides): col2im, `dcol[P, K] = G[P, Cout] · W[Cout, K]`, each
//!   row added back onto the pixels its taps read.
//!
//! When both gradients are needed, [`conv2d_gradients`] transposes the output gradient to
//! NHWC once for the two of them.
//!
//! Measured effect and the shapes it was measured on: docs/BENCHMARKS.md (issue 9).

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::transpose::transpose_each_image;

/// Upper bound on one chunk of im2col rows, in floats (8 MB).
pub const CHUNK_FLOATS: usize = 1 << 21;

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

/// Rows `first..first + col.len() / K` of im2col, each `[(ky, kx, c)]`, from an NHWC input.
fn im2col_rows(x_nhwc: &[f32], g: &ConvGeometry, first: usize, col: &mut [MaybeUninit<f32>]) {
    let [h, w] = g.input;
    let [ho, wo] = g.output();
    let [kh, kw] = g.kernel;
    let cin = g.cin;
    col.par_chunks_mut(g.row_len()).enumerate().for_each(|(i, row)| {
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
    });
}

/// `x [B, C, H, W]` → `[B, H, W, C]`, for a convolution of geometry `g` (C = `g.cin`).
fn to_nhwc(x: &[f32], g: &ConvGeometry) -> Vec<f32> {
    transpose_each_image(x, g.cin, g.input[0] * g.input[1])
}

/// Calls `f(first, n, col)` on consecutive chunks of im2col rows of `x_nhwc [B, H, W, Cin]`:
/// rows `first..first + n` as `col [n, K]`, each chunk at most [`CHUNK_FLOATS`] (one row at least).
fn for_each_im2col_chunk(x_nhwc: &[f32], g: &ConvGeometry, mut f: impl FnMut(usize, usize, &[f32])) {
    let (k, positions) = (g.row_len(), g.positions());
    let rows = (CHUNK_FLOATS / k.max(1)).max(1);
    // Not zero-filled: im2col writes every slot of the rows it is given (taps in the padding
    // as zeros), and zeroing 8 MB per call showed in profiles.
    let mut col: Vec<f32> = Vec::with_capacity(rows.min(positions) * k);
    for first in (0..positions).step_by(rows) {
        let n = rows.min(positions - first);
        let slots = &mut col.spare_capacity_mut()[..n * k];
        im2col_rows(x_nhwc, g, first, slots);
        // SAFETY: `im2col_rows` wrote all `n × K` slots (each row's taps, in bounds or zero).
        let rows_written = unsafe { std::slice::from_raw_parts(slots.as_ptr().cast::<f32>(), n * k) };
        f(first, n, rows_written);
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with explicit (row, column) strides, on all threads.
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    dims: [usize; 3],
    dst: &mut [f32],
    dst_strides: [isize; 2],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
) {
    // SAFETY: `dst` is a live, exclusively borrowed slice of `dst.len()` floats.
    unsafe { gemm_raw(dims, dst.as_mut_ptr(), dst.len(), dst_strides, accumulate, [lhs, rhs], [lhs_strides, rhs_strides]) }
}

/// [`gemm_f32`] writing `dst = lhs · rhs` into memory not yet initialised (gemm does not
/// read the destination when it does not accumulate), which saves zero-filling it first.
fn gemm_f32_into(
    dims: [usize; 3],
    dst: &mut [MaybeUninit<f32>],
    dst_strides: [isize; 2],
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
) {
    // SAFETY: `dst` is a live, exclusively borrowed slice of `dst.len()` slots.
    unsafe { gemm_raw(dims, dst.as_mut_ptr().cast(), dst.len(), dst_strides, false, [lhs, rhs], [lhs_strides, rhs_strides]) }
}

/// The one call into `gemm`, after checking that every element it touches is in bounds.
///
/// # Safety
/// `dst` must point to `dst_len` writable floats that alias neither operand, and hold
/// initialised values when `accumulate` is true.
unsafe fn gemm_raw(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_len: usize,
    dst_strides: [isize; 2],
    accumulate: bool,
    [lhs, rhs]: [&[f32]; 2],
    [lhs_strides, rhs_strides]: [[isize; 2]; 2],
) {
    let last = |[rs, cs]: [isize; 2], rows: usize, cols: usize| {
        (rows.saturating_sub(1) as isize * rs + cols.saturating_sub(1) as isize * cs) as usize
    };
    assert!(last(dst_strides, m, n) < dst_len.max(1));
    assert!(last(lhs_strides, m, k) < lhs.len().max(1) && last(rhs_strides, k, n) < rhs.len().max(1));
    // SAFETY: the asserts above keep every element gemm touches inside the three buffers,
    // and the caller guarantees `dst` is writable and aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_strides[1],
            dst_strides[0],
            accumulate,
            lhs.as_ptr(),
            lhs_strides[1],
            lhs_strides[0],
            rhs.as_ptr(),
            rhs_strides[1],
            rhs_strides[0],
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}

/// Kernel `[Cout, Cin, kh, kw]` → `[Cout, (ky, kx, c)]`, the order of an im2col row.
fn flatten_kernel(weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    transpose_each_image(weight, g.cin, g.kernel[0] * g.kernel[1])
}

/// Forward convolution without bias: `x [B, Cin, H, W]`, `weight [Cout, Cin, kh, kw]` →
/// `[B, Cout, Ho, Wo]`.
pub fn conv2d_forward(x: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.row_len(), "conv2d: kernel length does not match its geometry");
    let [h, w] = g.input;
    assert_eq!(x.len(), g.batch * g.cin * h * w, "conv2d: input length does not match its geometry");
    forward_nhwc(&to_nhwc(x, g), &flatten_kernel(weight, g), g)
}

/// [`conv2d_forward`] from an input already in NHWC order and a kernel already in im2col
/// order, `[Cout, (ky, kx, c)]`; the output is NCHW.
fn forward_nhwc(x_nhwc: &[f32], kernel: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [ho, wo] = g.output();
    let k = g.row_len();
    let len = g.positions() * g.cout;
    let mut y = Vec::with_capacity(len);
    let y_slots = &mut y.spare_capacity_mut()[..len];
    for_each_im2col_chunk(x_nhwc, g, |first, n, col| {
        // Y[first.., Cout] = col[n, K] · kernelᵀ[K, Cout]
        gemm_f32_into(
            [n, g.cout, k],
            &mut y_slots[first * g.cout..(first + n) * g.cout],
            [g.cout as isize, 1],
            col,
            [k as isize, 1],
            kernel,
            [1, k as isize],
        );
    });
    // SAFETY: the chunks cover rows `0..positions`, and each gemm call wrote all of its
    // `n × Cout` block.
    unsafe { y.set_len(len) };
    transpose_each_image(&y, ho * wo, g.cout)
}

/// Weight gradient: `x [B, Cin, H, W]`, output gradient `[B, Cout, Ho, Wo]` →
/// `[Cout, Cin, kh, kw]`.
pub fn conv2d_weight_gradient(x: &[f32], grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    weight_gradient_nhwc(x, &grad_to_nhwc(grad, g), g)
}

/// The output gradient `[B, Cout, Ho, Wo]` → `[B, Ho, Wo, Cout]`: both gradients read it so.
fn grad_to_nhwc(grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [ho, wo] = g.output();
    assert_eq!(grad.len(), g.positions() * g.cout, "conv2d: output gradient length does not match its geometry");
    transpose_each_image(grad, g.cout, ho * wo)
}

/// [`conv2d_weight_gradient`] with the output gradient already NHWC (see [`grad_to_nhwc`]).
fn weight_gradient_nhwc(x: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [h, w] = g.input;
    assert_eq!(x.len(), g.batch * g.cin * h * w, "conv2d: input length does not match its geometry");
    let k = g.row_len();
    let mut flat = vec![0.0f32; g.cout * k];
    for_each_im2col_chunk(&to_nhwc(x, g), g, |first, n, col| {
        // dW[Cout, K] += Gᵀ[Cout, n] · col[n, K]
        gemm_f32(
            [g.cout, k, n],
            &mut flat,
            [k as isize, 1],
            first > 0,
            &grad_nhwc[first * g.cout..(first + n) * g.cout],
            [1, g.cout as isize],
            col,
            [k as isize, 1],
        );
    });
    // [Cout, (ky, kx, c)] → [Cout, c, ky, kx]
    transpose_each_image(&flat, g.kernel[0] * g.kernel[1], g.cin)
}

/// Data gradient: output gradient `[B, Cout, Ho, Wo]` → `[B, Cin, H, W]`. Stride 1 runs as
/// the forward pass of the gradient with the flipped, channel-swapped kernel (where
/// [`ConvGeometry::data_gradient_as_forward`] allows it); other strides as col2im.
pub fn conv2d_data_gradient(weight: &[f32], grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    data_gradient_nhwc(weight, &grad_to_nhwc(grad, g), g)
}

/// Both gradients, `(dx [B, Cin, H, W], dW [Cout, Cin, kh, kw])`, from one NHWC copy of the
/// output gradient instead of one each.
pub fn conv2d_gradients(x: &[f32], weight: &[f32], grad: &[f32], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
    let grad_nhwc = grad_to_nhwc(grad, g);
    (data_gradient_nhwc(weight, &grad_nhwc, g), weight_gradient_nhwc(x, &grad_nhwc, g))
}

/// [`conv2d_data_gradient`] with the output gradient already NHWC (see [`grad_to_nhwc`]).
fn data_gradient_nhwc(weight: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.row_len(), "conv2d: kernel length does not match its geometry");
    match g.data_gradient_as_forward() {
        Some(backward) => data_gradient_flipped(weight, grad_nhwc, g, &backward),
        None => data_gradient_col2im(weight, grad_nhwc, g),
    }
}

/// Data gradient as col2im, for any stride: per chunk of whole images,
/// `dcol[P, K] = G[P, Cout] · W[Cout, K]` (one gemm), then each row of `dcol` is added back
/// onto the input pixels its taps read (images in parallel, so no two threads add to one pixel).
fn data_gradient_col2im(weight: &[f32], grad_nhwc: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [h, w] = g.input;
    let [ho, wo] = g.output();
    let (k, cin, cout) = (g.row_len(), g.cin, g.cout);
    let kernel = flatten_kernel(weight, g);
    let per_image = ho * wo;
    let images_per_chunk = (CHUNK_FLOATS / (per_image * k).max(1)).clamp(1, g.batch.max(1));
    let mut dx_nhwc = vec![0.0f32; g.batch * h * w * cin];
    let mut dcol: Vec<f32> = Vec::with_capacity(images_per_chunk * per_image * k);
    for b0 in (0..g.batch).step_by(images_per_chunk) {
        let images = images_per_chunk.min(g.batch - b0);
        let n = images * per_image;
        let slots = &mut dcol.spare_capacity_mut()[..n * k];
        // dcol[n, K] = G[n, Cout] · kernel[Cout, K]
        gemm_f32_into(
            [n, k, cout],
            slots,
            [k as isize, 1],
            &grad_nhwc[b0 * per_image * cout..][..n * cout],
            [cout as isize, 1],
            &kernel,
            [k as isize, 1],
        );
        // SAFETY: the gemm call wrote all `n × K` slots.
        let rows = unsafe { std::slice::from_raw_parts(slots.as_ptr().cast::<f32>(), n * k) };
        let images_out = &mut dx_nhwc[b0 * h * w * cin..][..images * h * w * cin];
        images_out
            .par_chunks_mut(h * w * cin)
            .zip(rows.par_chunks(per_image * k))
            .for_each(|(image, image_rows)| add_rows_to_image(image, image_rows, g));
    }
    transpose_each_image(&dx_nhwc, h * w, cin)
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
    // The flipped, channel-swapped kernel in im2col order `[Cin, (ky, kx, o)]`:
    // flipped[c][t′][o] = weight[o][c][t] with tap t′ = taps − 1 − t (both axes reversed).
    // Reversing each run of taps, then one transpose of `[Cout, Cin·taps]`, keeps both
    // passes sequential where a direct build writes with a stride of Cout.
    let taps = g.kernel[0] * g.kernel[1];
    let mut reversed = weight.to_vec();
    reversed.par_chunks_mut(taps).for_each(|run| run.reverse());
    let flipped = transpose_each_image(&reversed, g.cout, g.cin * taps);
    // The output gradient in NHWC is exactly the backward convolution's NHWC input.
    let dx = forward_nhwc(grad_nhwc, &flipped, backward);
    debug_assert_eq!(backward.output(), g.input);
    dx
}
