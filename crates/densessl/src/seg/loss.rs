//! Pixel-wise cross-entropy with an ignore label (burn's has none).

use burn::tensor::{Int, Tensor};

use crate::kernels::pixel_cross_entropy::pixel_cross_entropy;

/// Mean cross-entropy over pixels whose label is not `ignore`, through the CPU kernel of
/// [`pixel_cross_entropy`] (burn's operations on other backends).
///
/// # Shapes
/// logits `[B, K, H, W]`, labels `[B, H, W]` → `[1]`
pub fn masked_cross_entropy(logits: Tensor<4>, labels: Tensor<3, Int>, ignore: i64) -> Tensor<1> {
    let valid = labels.clone().not_equal_elem(ignore); // [B, H, W]
    // The kernel's targets: the class, or −1 to ignore the pixel.
    let targets = labels.mask_fill(valid.clone().bool_not(), -1).float();
    let count = valid.float().sum().clamp_min(1.0);
    pixel_cross_entropy(logits, targets).sum() / count
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn matches_hand_computation_and_ignores() {
        let device = Device::flex();
        // One image 1×2, two classes. Pixel 0 logits (0, ln 3): p(1) = 3/4. Pixel 1 ignored.
        let logits = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 5.0, 3f32.ln(), -2.0], [1, 2, 1, 2]), &device);
        let labels = Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 255], [1, 1, 2]), &device);
        let loss = masked_cross_entropy(logits, labels, 255).into_scalar::<f32>();
        assert!((loss - (-(0.75f32).ln())).abs() < 1e-6, "{loss}");
    }
}
