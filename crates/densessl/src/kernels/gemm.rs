//! The convolution kernels' matrix products and the memory they work in.
//!
//! Most products run on one thread: the kernels split their work into tasks of a few hundred
//! im2col rows, and each task builds its rows and multiplies them while they are still in
//! cache, one parallel region per convolution (rayon's work stealing balances the tasks).
//! Where the kernel outweighs the rows (ResNet's layer4: 288 positions against 512 output
//! channels), each task would re-read the whole kernel, so those products run as one
//! multithreaded `gemm` instead (docs/BENCHMARKS.md, "Attempt 7").

use std::cell::RefCell;
use std::mem::MaybeUninit;

pub use gemm::Parallelism;
use rayon::prelude::*;

/// About how many floats of im2col rows one task builds and multiplies (1 MB: the rows and
/// the panel of the kernel they meet stay in a core's L2).
pub const TASK_FLOATS: usize = 1 << 18;

/// Rows per task for `positions` rows of `row_len` floats: about [`TASK_FLOATS`] per task, or
/// `min_rows` where that is more (fewer rows make the product too thin to run at speed); then
/// the rows are spread evenly over a number of tasks that is a multiple of the thread count,
/// so no thread is left with one task more (which may take a task below `min_rows`).
pub fn rows_per_task(positions: usize, row_len: usize, min_rows: usize) -> usize {
    if positions == 0 {
        return 1;
    }
    let threads = rayon::current_num_threads().max(1);
    let cap = (TASK_FLOATS / row_len.max(1)).max(min_rows).max(1);
    let tasks = positions.div_ceil(cap).next_multiple_of(threads);
    positions.div_ceil(tasks)
}

/// Floats per parallel chunk when per-task partials are summed.
const SUM_CHUNK: usize = 1 << 14;

/// The element-wise sum of consecutive partials of `size` floats each, added in their order
/// (so the result does not depend on which thread computed which partial).
pub fn sum_partials_in_order(partials: &[f32], size: usize) -> Vec<f32> {
    let mut parts = partials.chunks_exact(size.max(1));
    let mut sum = parts.next().map_or_else(|| vec![0.0; size], <[f32]>::to_vec);
    sum.par_chunks_mut(SUM_CHUNK).enumerate().for_each(|(i, chunk)| {
        for part in parts.clone() {
            chunk.iter_mut().zip(&part[i * SUM_CHUNK..]).for_each(|(s, v)| *s += v);
        }
    });
    sum
}

thread_local! {
    /// Each thread's scratch floats, kept between calls: im2col buffers of a few MB would
    /// otherwise be mapped and faulted in afresh by every task.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` uninitialised floats of this thread's scratch buffer.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [MaybeUninit<f32>]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            buffer.reserve(len);
            f(&mut buffer.spare_capacity_mut()[..len])
        }
        // Only if `f` itself asked for scratch on this thread again: a buffer of its own.
        Err(_) => f(&mut Vec::with_capacity(len).spare_capacity_mut()[..len]),
    })
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]` with explicit (row, column) strides,
/// into memory not yet initialised (gemm does not read a destination it does not
/// accumulate into), which saves zero-filling it first.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_into(
    parallelism: Parallelism,
    dims: [usize; 3],
    dst: &mut [MaybeUninit<f32>],
    dst_strides: [isize; 2],
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
) {
    // SAFETY: `dst` is a live, exclusively borrowed slice of `dst.len()` slots.
    unsafe { gemm_raw(parallelism, dims, dst.as_mut_ptr().cast(), dst.len(), dst_strides, false, [lhs, rhs], [lhs_strides, rhs_strides]) }
}

/// A destination several tasks write at once, each to its own elements, which interleave
/// (columns of one matrix), so no task can hold its part as a slice of its own.
#[derive(Clone, Copy)]
pub struct SharedDestination {
    first: *mut f32,
    len: usize,
}

// SAFETY: a `SharedDestination` is only written through [`SharedDestination::gemm_into`],
// whose callers promise that no two products write one element.
unsafe impl Send for SharedDestination {}
// SAFETY: as above.
unsafe impl Sync for SharedDestination {}

impl SharedDestination {
    /// The slots of `dst`, to be written by several tasks.
    pub fn new(dst: &mut [MaybeUninit<f32>]) -> Self {
        Self { first: dst.as_mut_ptr().cast(), len: dst.len() }
    }

    /// `dst[offset + i·rs + j·cs] = (lhs · rhs)[i, j]` for the `m×n` product on this thread
    /// (see [`gemm_f32_into`]), bounds checked.
    ///
    /// # Safety
    /// No other product may write any element this one writes, and the slots this
    /// destination was made from must still be borrowed by the caller.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_into(
        self,
        dims: [usize; 3],
        offset: usize,
        dst_strides: [isize; 2],
        lhs: &[f32],
        lhs_strides: [isize; 2],
        rhs: &[f32],
        rhs_strides: [isize; 2],
    ) {
        assert!(offset < self.len.max(1), "gemm: destination offset out of bounds");
        // SAFETY: `offset` is inside the buffer (asserted), gemm_raw checks the product's last
        // element against what remains, and the caller guarantees the elements are its own.
        unsafe {
            gemm_raw(Parallelism::None, dims, self.first.add(offset), self.len - offset, dst_strides, false, [lhs, rhs], [lhs_strides, rhs_strides]);
        }
    }
}

/// `dst[m×n] += lhs[m×k] · rhs[k×n]` with explicit (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_add(
    parallelism: Parallelism,
    dims: [usize; 3],
    dst: &mut [f32],
    dst_strides: [isize; 2],
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
) {
    // SAFETY: `dst` is a live, exclusively borrowed slice of `dst.len()` initialised floats.
    unsafe { gemm_raw(parallelism, dims, dst.as_mut_ptr(), dst.len(), dst_strides, true, [lhs, rhs], [lhs_strides, rhs_strides]) }
}

/// The one call into `gemm`, after checking that every element it touches is in bounds.
///
/// # Safety
/// `dst` must point to `dst_len` writable floats that alias neither operand, and hold
/// initialised values when `accumulate` is true.
unsafe fn gemm_raw(
    parallelism: Parallelism,
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
            parallelism,
        );
    }
}
