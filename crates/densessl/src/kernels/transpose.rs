//! Batched 2-D transposes for the convolution kernels' layout changes (NCHW ↔ NHWC, kernel
//! reorders): 32×32 tiles that stay in L1, moved as 8×8 squares through AVX registers where
//! the CPU has AVX (detected at run time), one element at a time elsewhere.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Side of the square tiles [`transpose_each_image`] moves at a time: 32×32 floats read
/// and written stay within L1, where a plain row-by-row transpose misses on every write.
const TRANSPOSE_TILE: usize = 32;

/// Transposes every `[rows, cols]` block of `src` (one per image) into `[cols, rows]`:
/// NCHW → NHWC with `rows = C, cols = H·W`, and back with the two swapped.
pub fn transpose_each_image(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let image = rows * cols;
    if image == 0 {
        return Vec::new();
    }
    assert_eq!(src.len() % image, 0, "transpose: the buffer is not a whole number of images");
    let mut out = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()].par_chunks_mut(image).zip(src.par_chunks(image)).for_each(|(dst, block)| {
        // Each task writes whole rows of the transpose, a band of TRANSPOSE_TILE source
        // columns: a single large block (a kernel turned to column form) is split too.
        dst.par_chunks_mut(TRANSPOSE_TILE * rows).enumerate().for_each(|(band, dst_rows)| {
            let j0 = band * TRANSPOSE_TILE;
            for i0 in (0..rows).step_by(TRANSPOSE_TILE) {
                let tile = [i0..(i0 + TRANSPOSE_TILE).min(rows), j0..(j0 + TRANSPOSE_TILE).min(cols)];
                transpose_tile(dst_rows, block, [rows, cols], tile);
            }
        });
    });
    // SAFETY: `src.len()` is a multiple of `image` (each block is a whole image), and the
    // bands' tiles of every block cover all of its `rows × cols` slots, so every element is
    // written.
    unsafe { out.set_len(src.len()) };
    out
}

/// `dst[(j − js.start)·rows + i] = block[i·cols + j]` for `i, j` in the tile (`dst` holds the
/// transpose's rows `js`): whole 8×8 squares through AVX registers where the CPU has AVX, the
/// rest one element at a time.
fn transpose_tile(dst: &mut [MaybeUninit<f32>], block: &[f32], [rows, cols]: [usize; 2], [is, js]: [std::ops::Range<usize>; 2]) {
    assert!(block.len() >= rows * cols && dst.len() >= rows * js.len() && is.end <= rows && js.end <= cols);
    let band = js.start;
    let (mut i_done, mut j_done) = (is.start, js.start);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        let whole = |r: &std::ops::Range<usize>| r.start + (r.end - r.start) / 8 * 8;
        (i_done, j_done) = (whole(&is), whole(&js));
        for i in (is.start..i_done).step_by(8) {
            for j in (js.start..j_done).step_by(8) {
                // SAFETY: AVX is present; rows i..i+8 and columns j..j+8 lie inside the
                // `[rows, cols]` block, and rows j..j+8 of the transpose inside `dst`
                // (asserted above).
                unsafe { transpose_8x8_avx(block.as_ptr().add(i * cols + j), cols, dst.as_mut_ptr().add((j - band) * rows + i).cast(), rows) };
            }
        }
    }
    // What the squares left: columns past `j_done` for their rows, then rows past `i_done`.
    for i in is.clone() {
        let from = if i < i_done { j_done } else { js.start };
        for j in from..js.end {
            dst[(j - band) * rows + i].write(block[i * cols + j]);
        }
    }
}

/// One 8×8 square: `dst[b·dst_stride + a] = src[a·src_stride + b]`.
///
/// # Safety
/// AVX must be available; `src` must be readable and `dst` writable at 8 rows of 8 floats
/// with the given strides, and the two must not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_8x8_avx(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the 8 rows of 8 floats on both sides.
    unsafe {
        let load = |a: usize| _mm256_loadu_ps(src.add(a * src_stride));
        let r = [load(0), load(1), load(2), load(3), load(4), load(5), load(6), load(7)];
        // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (b, v) in out.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(b * dst_stride), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::transpose_each_image;

    /// Every element lands at its transposed place, for blocks that are and are not whole
    /// tiles or 8×8 squares, one image or several (a single image is split into bands).
    #[test]
    fn transposes_every_block() {
        for (images, rows, cols) in [(1, 1, 1), (1, 7, 300), (1, 512, 97), (3, 33, 65), (2, 64, 64), (4, 9, 1)] {
            let src: Vec<f32> = (0..images * rows * cols).map(|i| i as f32).collect();
            let out = transpose_each_image(&src, rows, cols);
            for b in 0..images {
                for i in 0..rows {
                    for j in 0..cols {
                        let image = b * rows * cols;
                        assert_eq!(out[image + j * rows + i], src[image + i * cols + j], "{images}×[{rows}, {cols}] at image {b}, ({i}, {j})");
                    }
                }
            }
        }
    }
}
