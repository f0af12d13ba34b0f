//! mmsegmentation's `FCNHead` (Long et al. 2015 as configured in mmseg): `num_convs` 3×3
//! ConvModules, optionally concatenated with the input and fused by `conv_cat`, dropout,
//! 1×1 classifier. Also the auxiliary head on C4 (one conv, no concatenation).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use super::channel_dropout::ChannelDropout;
use super::conv_module::{ConvModule, classifier};

/// The FCN head.
#[derive(Module, Debug)]
pub struct FcnHead {
    /// The stacked 3×3 convs.
    pub convs: Vec<ConvModule>,
    /// Fuses input and conv output when `concat_input`.
    pub conv_cat: Option<ConvModule>,
    dropout: ChannelDropout,
    /// The classifier.
    pub conv_seg: Conv2d,
}

impl FcnHead {
    /// `num_convs` ≥ 1 convs of `channels` with `dilation`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        channels: usize,
        num_convs: usize,
        concat_input: bool,
        dilation: usize,
        dropout: f64,
        num_classes: usize,
        device: &Device,
    ) -> Self {
        let convs = (0..num_convs.max(1))
            .map(|i| ConvModule::new(if i == 0 { in_channels } else { channels }, channels, 3, dilation, 1, true, device))
            .collect();
        Self {
            convs,
            conv_cat: concat_input.then(|| ConvModule::new(in_channels + channels, channels, 3, 1, 1, true, device)),
            dropout: ChannelDropout::new(dropout),
            conv_seg: classifier(channels, num_classes, device),
        }
    }

    /// Features before the classifier.
    ///
    /// # Shapes
    /// `[B, Cin, h, w]` → `[B, channels, h, w]`
    pub fn decode(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.convs.iter().fold(x.clone(), |y, c| c.forward(y));
        match &self.conv_cat {
            Some(cat) => cat.forward(Tensor::cat(vec![x, out], 1)),
            None => out,
        }
    }

    /// # Shapes
    /// `[B, Cin, h, w]` → `[B, K, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_seg.forward(self.dropout.forward(self.decode(x)))
    }
}
