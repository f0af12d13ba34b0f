//! mmsegmentation's `DepthwiseSeparableASPPHead` (DeepLabv3+, Chen et al. 2018): image
//! pooling plus atrous branches (1×1 for dilation 1, depthwise-separable 3×3 otherwise) on
//! C5, fused by a 3×3 `bottleneck`; upsampled to C2, concatenated with a 1×1 projection of C2
//! (`c1_bottleneck`), refined by two separable 3×3 convs, dropout, classifier.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::tensor::{Device, Tensor};

use super::channel_dropout::ChannelDropout;
use super::conv_module::{ConvModule, SeparableConvModule, classifier};
use crate::models::resize::resize_bilinear;
use crate::models::resnet::Features;

/// One ASPP branch.
#[derive(Module, Debug)]
pub enum AsppBranch {
    /// Dilation 1: a 1×1 ConvModule.
    Point(ConvModule),
    /// Dilation > 1: a separable 3×3 ConvModule.
    Separable(SeparableConvModule),
}

/// The DeepLabv3+ head.
#[derive(Module, Debug)]
pub struct DeepLabV3PlusHead {
    image_pool_avg: AdaptiveAvgPool2d,
    /// 1×1 ConvModule after global pooling (`image_pool.1` in mmseg).
    pub image_pool: ConvModule,
    /// Atrous branches, one per dilation.
    pub aspp_modules: Vec<AsppBranch>,
    /// 3×3 fusion of the branches.
    pub bottleneck: ConvModule,
    /// 1×1 projection of C2.
    pub c1_bottleneck: ConvModule,
    /// Two separable 3×3 refinements.
    pub sep_bottleneck: Vec<SeparableConvModule>,
    dropout: ChannelDropout,
    /// The classifier.
    pub conv_seg: Conv2d,
}

impl DeepLabV3PlusHead {
    /// Branches at `dilations` (mmseg at output stride 8: 1, 12, 24, 36).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        c1_in_channels: usize,
        channels: usize,
        c1_channels: usize,
        dilations: &[usize],
        dropout: f64,
        num_classes: usize,
        device: &Device,
    ) -> Self {
        let aspp_modules = dilations
            .iter()
            .map(|&d| {
                if d == 1 {
                    AsppBranch::Point(ConvModule::new(in_channels, channels, 1, 1, 1, true, device))
                } else {
                    AsppBranch::Separable(SeparableConvModule::new(in_channels, channels, d, device))
                }
            })
            .collect();
        Self {
            image_pool_avg: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            image_pool: ConvModule::new(in_channels, channels, 1, 1, 1, true, device),
            aspp_modules,
            bottleneck: ConvModule::new((dilations.len() + 1) * channels, channels, 3, 1, 1, true, device),
            c1_bottleneck: ConvModule::new(c1_in_channels, c1_channels, 1, 1, 1, true, device),
            sep_bottleneck: vec![
                SeparableConvModule::new(channels + c1_channels, channels, 1, device),
                SeparableConvModule::new(channels, channels, 1, device),
            ],
            dropout: ChannelDropout::new(dropout),
            conv_seg: classifier(channels, num_classes, device),
        }
    }

    /// Features before the classifier, at C2's resolution.
    ///
    /// # Shapes
    /// C5 `[B, Cin, h, w]`, C2 `[B, C1in, 4h', 4w']` → `[B, channels, h2, w2]` (C2's size)
    pub fn decode(&self, features: &Features) -> Tensor<4> {
        let x = features.c5.clone();
        let [_, _, h, w] = x.dims();
        let mut outs = vec![resize_bilinear(self.image_pool.forward(self.image_pool_avg.forward(x.clone())), h, w)];
        for branch in &self.aspp_modules {
            outs.push(match branch {
                AsppBranch::Point(c) => c.forward(x.clone()),
                AsppBranch::Separable(c) => c.forward(x.clone()),
            });
        }
        let out = self.bottleneck.forward(Tensor::cat(outs, 1));
        let c1 = self.c1_bottleneck.forward(features.c2.clone());
        let [_, _, h2, w2] = c1.dims();
        let out = Tensor::cat(vec![resize_bilinear(out, h2, w2), c1], 1);
        self.sep_bottleneck.iter().fold(out, |y, c| c.forward(y))
    }

    /// # Shapes
    /// → `[B, K, h2, w2]` at C2's resolution
    pub fn forward(&self, features: &Features) -> Tensor<4> {
        self.conv_seg.forward(self.dropout.forward(self.decode(features)))
    }
}
