//! MoCo's FCN head for PASCAL VOC (He et al. 2020, appendix): two 3×3 convs of 256
//! channels with dilation 6, each followed by BN and ReLU, then a 1×1 classifier on C5.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::channel_dropout::ChannelDropout;
use crate::kernels::conv2d_module;
use crate::kernels::batch_norm_relu::batch_norm_relu_module;
use super::HeadConfig;
use crate::models::resnet::Features;

/// The MoCo-FCN head.
#[derive(Module, Debug)]
pub struct MocoFcnHead {
    /// First 3×3 conv (C5 → channels).
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm,
    /// Second 3×3 conv.
    pub conv2: Conv2d,
    /// BN after `conv2`.
    pub bn2: BatchNorm,
    dropout: ChannelDropout,
    /// The 1×1 classifier (`conv_seg` in mmsegmentation).
    pub classifier: Conv2d,
}

fn conv3x3(cin: usize, cout: usize, dilation: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_dilation([dilation, dilation])
        .with_padding(PaddingConfig2d::Explicit(dilation, dilation, dilation, dilation))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true })
        .init(device)
}

impl MocoFcnHead {
    /// Builds the head; `config.channels` and `config.dilation` as in [`HeadConfig`].
    pub fn new(config: &HeadConfig, in_channels: usize, num_classes: usize, device: &Device) -> Self {
        let (ch, dilation) = (config.channels(), config.dilation());
        Self {
            conv1: conv3x3(in_channels, ch, dilation, device),
            bn1: BatchNormConfig::new(ch).init(device),
            conv2: conv3x3(ch, ch, dilation, device),
            bn2: BatchNormConfig::new(ch).init(device),
            dropout: ChannelDropout::new(config.dropout),
            // mmsegmentation: normal_init(conv_seg, std=0.01).
            classifier: Conv2dConfig::new([ch, num_classes], [1, 1])
                .with_initializer(Initializer::Normal { mean: 0.0, std: 0.01 })
                .init(device),
        }
    }

    /// Decoder features before the classifier (what encoder-decoder pretext tasks use).
    ///
    /// # Shapes
    /// C5 `[B, Cin, h, w]` → `[B, channels, h, w]`
    pub fn decode(&self, features: &Features) -> Tensor<4> {
        let x = batch_norm_relu_module(&self.bn1, conv2d_module(&self.conv1, features.c5.clone()), None);
        batch_norm_relu_module(&self.bn2, conv2d_module(&self.conv2, x), None)
    }

    /// # Shapes
    /// C5 `[B, Cin, h, w]` → `[B, K, h, w]`
    pub fn forward(&self, features: &Features) -> Tensor<4> {
        self.classifier.forward(self.dropout.forward(self.decode(features)))
    }
}
