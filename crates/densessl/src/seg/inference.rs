//! Segmentation inference as mmsegmentation does it: the whole image at once, or sliding
//! windows whose logits are averaged where they overlap; optionally averaged with the
//! horizontally flipped image. Output is at the image's full size.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use crate::models::segmenter::Segmenter;
use crate::{Error, Result};

/// Settings of inference (`[inference]` in a fine-tune config, also used by `eval` and `predict`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `whole` or `slide`.
    pub mode: String,
    /// Slide: window side in pixels (mmseg VOC: 512).
    pub window: usize,
    /// Slide: step between windows (mmseg VOC: 341).
    pub stride: usize,
    /// Average with the horizontally flipped image.
    pub flip: bool,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { mode: "whole".into(), window: 0, stride: 0, flip: false }
    }
}

impl InferenceConfig {
    /// Checks the settings with a sentence a user can act on.
    pub fn check(&self) -> Result<()> {
        match self.mode.as_str() {
            "whole" => Ok(()),
            "slide" if self.window > 0 && self.stride > 0 && self.stride <= self.window => Ok(()),
            "slide" => Err(Error::Invalid(format!(
                "inference.mode = \"slide\" needs 0 < stride ≤ window, got window {} stride {}",
                self.window, self.stride
            ))),
            other => Err(Error::Invalid(format!("inference.mode must be \"whole\" or \"slide\", got \"{other}\""))),
        }
    }

    /// Class probabilities for a batch, at input size (model in eval mode).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, K, H, W]`
    pub fn probabilities(&self, model: &Segmenter, x: Tensor<4>) -> Tensor<4> {
        let probs = softmax(self.logits(model, x.clone()), 1);
        if !self.flip {
            return probs;
        }
        let flipped = softmax(self.logits(model, x.flip([3])), 1).flip([3]);
        (probs + flipped) / 2.0
    }

    fn logits(&self, model: &Segmenter, x: Tensor<4>) -> Tensor<4> {
        if self.mode != "slide" {
            return model.forward(x);
        }
        let [b, _, h, w] = x.dims();
        let grid = |size: usize| (size.saturating_sub(self.window) + self.stride - 1) / self.stride + 1;
        let mut sum: Option<Tensor<4>> = None;
        let mut count = vec![0f32; h * w];
        for gy in 0..grid(h) {
            for gx in 0..grid(w) {
                // As mmseg: windows start on the stride grid, the last one flush with the border.
                let (y2, x2) = ((gy * self.stride + self.window).min(h), (gx * self.stride + self.window).min(w));
                let (y1, x1) = (y2.saturating_sub(self.window), x2.saturating_sub(self.window));
                let logits = model.forward(x.clone().slice([0..b, 0..3, y1..y2, x1..x2]));
                let k = logits.dims()[1];
                let total = sum.take().unwrap_or_else(|| Tensor::zeros([b, k, h, w], &x.device()));
                let region = total.clone().slice([0..b, 0..k, y1..y2, x1..x2]) + logits;
                sum = Some(total.slice_assign([0..b, 0..k, y1..y2, x1..x2], region));
                for y in y1..y2 {
                    count[y * w + x1..y * w + x2].iter_mut().for_each(|c| *c += 1.0);
                }
            }
        }
        let count = Tensor::<1>::from_floats(count.as_slice(), &x.device()).reshape([1, 1, h, w]);
        sum.expect("at least one window") / count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::heads::HeadConfig;
    use crate::models::segmenter::EncoderConfig;
    use burn::module::Module;
    use burn::tensor::{Device, Distribution};

    fn model(device: &Device) -> Segmenter {
        let encoder = EncoderConfig { base_width: 4, output_stride: 8, ..EncoderConfig::default() };
        let head = HeadConfig { name: "fcn".into(), channels: Some(8), ..HeadConfig::default() };
        Segmenter::new(&encoder, &head, 3, device).unwrap().valid()
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn slide_equals_whole_for_one_window_and_tiles_disjoint_windows() {
        let device = Device::flex();
        let model = model(&device);
        let x = Tensor::<4>::random([1, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let whole = InferenceConfig::default();
        let one = InferenceConfig { mode: "slide".into(), window: 48, stride: 16, flip: false };
        let (a, b) = (values(whole.probabilities(&model, x.clone())), values(one.probabilities(&model, x.clone())));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-6));
        // Disjoint 16-px windows: each quadrant is the model's own output on that quadrant.
        let tiles = InferenceConfig { mode: "slide".into(), window: 16, stride: 16, flip: false };
        let slid = tiles.probabilities(&model, x.clone());
        for (y, xx) in [(0, 0), (0, 16), (16, 0), (16, 16)] {
            let quadrant = x.clone().slice([0..1, 0..3, y..y + 16, xx..xx + 16]);
            let expected = values(softmax(model.forward(quadrant), 1));
            let got = values(slid.clone().slice([0..1, 0..3, y..y + 16, xx..xx + 16]));
            assert!(expected.iter().zip(&got).all(|(p, q)| (p - q).abs() < 1e-5), "quadrant ({y}, {xx})");
        }
        // Flip averaging is symmetric: flipping the input flips the output.
        let flip = InferenceConfig { flip: true, ..InferenceConfig::default() };
        let (p, q) = (values(flip.probabilities(&model, x.clone()).flip([3])), values(flip.probabilities(&model, x.flip([3]))));
        assert!(p.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
