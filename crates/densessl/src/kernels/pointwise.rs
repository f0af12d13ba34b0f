//! 1×1, stride-1 convolutions straight from NCHW, in tasks of whole images.
//!
//! Such a convolution is a matrix product per image with no im2col at all:
//! - forward: `Y_b[Cout, HW] = W[Cout, Cin] · X_b[Cin, HW]`;
//! - data gradient: `dX_b[Cin, HW] = Wᵀ[Cin, Cout] · G_b[Cout, HW]`;
//! - weight gradient: `dW[Cout, Cin] = Σ_b G_b[Cout, HW] · X_bᵀ[HW, Cin]`, one partial per
//!   task, summed in task order.
//!
//! Each task runs its images' products on one thread (see [`super::gemm`]). Only maps of at
//! least [`MIN_PIXELS`] positions come here: on smaller ones (ResNet-50's layer3 and layer4
//! at 96 px) a product per image is too thin and re-reads the whole kernel for a few
//! columns, and the batch-wide NHWC kernels of [`super::conv_cpu`] do better.

use rayon::prelude::*;

use super::conv_cpu::ConvGeometry;
use super::gemm::{gemm_f32_add, gemm_f32_into, rows_per_task, sum_partials_in_order, Parallelism};

/// Fewest positions per image for the per-image products.
pub const MIN_PIXELS: usize = 64;

/// Whether `g` is a 1×1, stride-1, unpadded convolution on maps of at least [`MIN_PIXELS`].
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == [1, 1] && g.stride == [1, 1] && g.padding == [0, 0] && g.input[0] * g.input[1] >= MIN_PIXELS
}

/// Images per task for images of `floats_per_image` floats (at least one).
fn images_per_task(g: &ConvGeometry, floats_per_image: usize) -> usize {
    rows_per_task(g.batch, floats_per_image, 1)
}

/// For each task of whole images, `out_b[m, HW] = A[m, k] · in_b[k, HW]` per image, where
/// `A` is `a` read with the given strides; returns all images' outputs, `[B, m, HW]`.
fn per_image_products(a: &[f32], a_strides: [isize; 2], input: &[f32], [m, k]: [usize; 2], g: &ConvGeometry) -> Vec<f32> {
    let hw = g.input[0] * g.input[1];
    let len = g.batch * m * hw;
    assert_eq!(input.len(), g.batch * k * hw, "conv2d 1×1: input length does not match its geometry");
    let mut out = Vec::with_capacity(len);
    let images = images_per_task(g, (m + k) * hw);
    out.spare_capacity_mut()[..len].par_chunks_mut((images * m * hw).max(1)).enumerate().for_each(|(task, chunk)| {
        for (i, image_out) in chunk.chunks_exact_mut((m * hw).max(1)).enumerate() {
            let b = task * images + i;
            let image_in = &input[b * k * hw..][..k * hw];
            gemm_f32_into(Parallelism::None, [m, hw, k], image_out, [hw as isize, 1], a, a_strides, image_in, [hw as isize, 1]);
        }
    });
    // SAFETY: the tasks' chunks tile all `B × m × HW` slots and each gemm call wrote its image.
    unsafe { out.set_len(len) };
    out
}

/// Forward: `x [B, Cin, H, W]`, `weight [Cout, Cin, 1, 1]` → `[B, Cout, H, W]`.
pub fn forward(x: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.cin, "conv2d 1×1: kernel length does not match its geometry");
    per_image_products(weight, [g.cin as isize, 1], x, [g.cout, g.cin], g)
}

/// Data gradient: output gradient `[B, Cout, H, W]` → `[B, Cin, H, W]`.
pub fn data_gradient(weight: &[f32], grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.cin, "conv2d 1×1: kernel length does not match its geometry");
    // Wᵀ[Cin, Cout]: the kernel read column by column.
    per_image_products(weight, [1, g.cin as isize], grad, [g.cin, g.cout], g)
}

/// Weight gradient: `x [B, Cin, H, W]`, output gradient `[B, Cout, H, W]` → `[Cout, Cin, 1, 1]`.
pub fn weight_gradient(x: &[f32], grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let hw = g.input[0] * g.input[1];
    let (cin, cout) = (g.cin, g.cout);
    assert_eq!(x.len(), g.batch * cin * hw, "conv2d 1×1: input length does not match its geometry");
    assert_eq!(grad.len(), g.batch * cout * hw, "conv2d 1×1: output gradient length does not match its geometry");
    let size = cout * cin;
    let images = images_per_task(g, (cin + cout) * hw);
    let tasks = g.batch.div_ceil(images).max(1);
    let mut partials: Vec<f32> = vec![0.0; tasks * size];
    partials.par_chunks_mut(size.max(1)).enumerate().for_each(|(task, partial)| {
        let first = task * images;
        for b in first..(first + images).min(g.batch) {
            let (g_b, x_b) = (&grad[b * cout * hw..][..cout * hw], &x[b * cin * hw..][..cin * hw]);
            // partial[Cout, Cin] += G_b[Cout, HW] · X_bᵀ[HW, Cin]
            gemm_f32_add(Parallelism::None, [cout, cin, hw], partial, [cin as isize, 1], g_b, [hw as isize, 1], x_b, [1, hw as isize]);
        }
    });
    sum_partials_in_order(&partials, size)
}
