//! Bilinear resize (PyTorch `F.interpolate(mode="bilinear", align_corners=False)`) as two
//! matmuls, `out = A_h · X · A_wᵀ`. Exact, and differentiable on every backend — burn's own
//! bilinear interpolation has no backward on its CubeCL (GPU) backends.

use burn::tensor::{Device, Tensor, TensorData};

/// The `[out, in]` matrix of 1-D linear interpolation with half-pixel centres.
pub fn interpolation_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; output * input];
    let scale = input as f64 / output as f64;
    for i in 0..output {
        // PyTorch's area_pixel_compute_source_index for linear modes, clamped at 0.
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let w1 = (src - i0 as f64) as f32;
        m[i * input + i0] += 1.0 - w1;
        m[i * input + i1] += w1;
    }
    m
}

fn matrix(input: usize, output: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(interpolation_matrix(input, output), [output, input]), device)
}

/// Resizes `[B, C, H, W]` to `[B, C, out_h, out_w]` bilinearly (align_corners = false).
pub fn resize_bilinear(x: Tensor<4>, out_h: usize, out_w: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if (h, w) == (out_h, out_w) {
        return x;
    }
    let device = x.device();
    // [B·C·H, W] · [W, W'] -> [B·C·H, W']
    let a_w = matrix(w, out_w, &device).transpose();
    let x = x.reshape([b * c * h, w]).matmul(a_w);
    // [B·C, H, W'] -> [B·C·W', H] · [H, H'] -> [B·C·W', H']
    let x = x.reshape([b * c, h, out_w]).swap_dims(1, 2).reshape([b * c * out_w, h]);
    let a_h = matrix(h, out_h, &device).transpose();
    let x = x.matmul(a_h);
    x.reshape([b * c, out_w, out_h]).swap_dims(1, 2).reshape([b, c, out_h, out_w])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_identity_when_same_size() {
        for (i, o) in [(4, 9), (9, 4), (7, 7), (1, 5), (33, 8)] {
            let m = interpolation_matrix(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-6);
            }
        }
        let m = interpolation_matrix(3, 3);
        assert_eq!(m, vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    }

    #[test]
    fn upsampling_by_two_matches_closed_form() {
        // PyTorch: interpolate([0, 1, 2, 3], size=8) = [0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3]
        let m = interpolation_matrix(4, 8);
        let x = [0.0f32, 1.0, 2.0, 3.0];
        let y: Vec<f32> = (0..8).map(|r| (0..4).map(|c| m[r * 4 + c] * x[c]).sum()).collect();
        let expected = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }
}
