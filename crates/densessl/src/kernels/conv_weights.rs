//! The memory orders in which the convolution kernels' products read a kernel
//! `[Cout, Cin, kh, kw]`: im2col order per output channel (col2im's data gradient), and the
//! column form of the forward product and of the stride-1 data gradient's flipped kernel.

use rayon::prelude::*;

use super::conv_cpu::ConvGeometry;
use super::transpose::transpose_each_image;

/// Kernel `[Cout, Cin, kh, kw]` → `[Cout, (ky, kx, c)]`, the order of an im2col row.
pub(super) fn flatten_kernel(weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    transpose_each_image(weight, g.cin, g.kernel[0] * g.kernel[1])
}

/// A convolution kernel in column form: `[(ky, kx, c), Cout]`, rows in im2col order, one
/// column per output channel, each row `stride` floats apart.
///
/// The forward product reads it along Cout, which is how gemm's microkernel walks that
/// operand, so gemm multiplies it as it is instead of packing it in every call (ResNet's layer-4
/// product: 8.5 → 6.5 ms, docs/BENCHMARKS.md "Attempt 10"). Unpacked, rows a power of two
/// apart would land in the same few cache sets; the stride is one cache line longer.
pub(super) struct KernelColumns {
    pub(super) values: Vec<f32>,
    pub(super) stride: usize,
}

impl KernelColumns {
    /// Kernel `[Cout, Cin, kh, kw]` → column form.
    pub(super) fn new(weight: &[f32], g: &ConvGeometry) -> Self {
        let (taps, cin) = (g.kernel[0] * g.kernel[1], g.cin);
        // [Cout, (c, tap)] → [(c, tap), Cout], then the rows put in (tap, c) order.
        let by_channel = transpose_each_image(weight, g.cout, cin * taps);
        Self::from_rows(&by_channel, g.cout, |row| {
            let (tap, c) = (row / cin, row % cin);
            c * taps + tap
        })
    }

    /// The flipped, channel-swapped kernel of the stride-1 data gradient, `[(ky, kx, o), Cin]`:
    /// `flipped[t′][o][c] = weight[o][c][t]` with tap `t′ = taps − 1 − t` (both axes reversed).
    pub(super) fn flipped(weight: &[f32], g: &ConvGeometry) -> Self {
        let (taps, cout) = (g.kernel[0] * g.kernel[1], g.cout);
        // Each output channel's `[Cin, taps]` block turned to `[taps, Cin]`, then the rows
        // reordered: both passes stay sequential.
        let by_output = flatten_kernel(weight, g);
        Self::from_rows(&by_output, g.cin, |row| {
            let (flipped_tap, o) = (row / cout, row % cout);
            o * taps + taps - 1 - flipped_tap
        })
    }

    /// Row `r` is row `source_of(r)` of `src` (rows of `columns` floats), then zeros up to
    /// the stride.
    fn from_rows(src: &[f32], columns: usize, source_of: impl Fn(usize) -> usize + Sync) -> Self {
        let rows = src.len() / columns.max(1);
        let stride = columns + COLUMN_PADDING;
        let rows_per_task = (REORDER_TASK_FLOATS / stride).max(1);
        let mut values = Vec::with_capacity(rows * stride);
        values.spare_capacity_mut()[..rows * stride].par_chunks_mut(rows_per_task * stride).enumerate().for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_exact_mut(stride).enumerate() {
                let (head, padding) = row.split_at_mut(columns);
                head.write_copy_of_slice(&src[source_of(task * rows_per_task + i) * columns..][..columns]);
                padding.iter_mut().for_each(|slot| _ = slot.write(0.0));
            }
        });
        // SAFETY: the chunks are whole rows of `stride` slots, and each row was written above.
        unsafe { values.set_len(rows * stride) };
        Self { values, stride }
    }
}

/// Floats past the end of each row of [`KernelColumns`]: one cache line.
const COLUMN_PADDING: usize = 16;

/// Floats per task when rows are reordered.
const REORDER_TASK_FLOATS: usize = 1 << 14;
