//! mmsegmentation's decode-head dropout, `nn.Dropout2d`: during training each channel of each
//! sample is zeroed as a whole with probability `p` (the rest scaled by 1 / (1 − p)), since
//! neighbouring pixels of a feature map are too correlated for element-wise dropout to
//! regularise much. Outside training it is the identity.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::Tensor;

/// Channel-wise dropout (`nn.Dropout2d`).
#[derive(Module, Debug)]
pub struct ChannelDropout {
    /// burn's dropout, applied to a per-channel mask: it owns the training switch and the
    /// device's random stream.
    mask: Dropout,
}

impl ChannelDropout {
    /// Dropout with probability `prob` in [0, 1).
    pub fn new(prob: f64) -> Self {
        Self { mask: DropoutConfig::new(prob).init() }
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.mask.prob == 0.0 || !x.device().is_autodiff() {
            return x;
        }
        let [b, c, _, _] = x.dims();
        let mask = self.mask.forward(Tensor::ones([b, c, 1, 1], &x.device()));
        x * mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn drops_whole_channels_in_training_and_nothing_outside() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let x = Tensor::<4>::random([4, 32, 5, 5], Distribution::Uniform(1.0, 2.0), &device);
        let y: Vec<f32> = ChannelDropout::new(0.25).forward(x.clone()).into_data().try_to_vec().unwrap();
        let x_values: Vec<f32> = x.clone().into_data().try_to_vec().unwrap();
        let mut dropped = 0;
        for plane in 0..4 * 32 {
            let ratios: Vec<f32> = (0..25).map(|i| y[plane * 25 + i] / x_values[plane * 25 + i]).collect();
            let kept = (ratios[0] - 1.0 / 0.75).abs() < 1e-5;
            assert!(kept || ratios[0] == 0.0, "plane {plane}: ratio {}", ratios[0]);
            assert!(ratios.iter().all(|r| (r - ratios[0]).abs() < 1e-5), "plane {plane} is not uniform: {ratios:?}");
            dropped += usize::from(!kept);
        }
        // 128 planes at p = 0.25: 32 expected; [12, 52] is far beyond 3 standard deviations.
        assert!((12..=52).contains(&dropped), "{dropped} of 128 planes dropped");
        let plain = x.clone().inner();
        let z = ChannelDropout::new(0.25).forward(plain.clone());
        assert_eq!(z.into_data(), plain.into_data());
    }
}
