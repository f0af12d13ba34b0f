//! mmsegmentation's `PSPHead` (Zhao et al. 2017): a pyramid pooling module — for each
//! scale s, adaptive average pooling to s×s, a 1×1 ConvModule, bilinear upsampling back —
//! concatenated with the input, fused by a 3×3 `bottleneck`, dropout, classifier.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::tensor::{Device, Tensor};

use super::channel_dropout::ChannelDropout;
use super::conv_module::{ConvModule, classifier};
use crate::models::resize::resize_bilinear;

/// One pyramid level (`psp_modules.<i>` in mmseg, whose `.1.` is this `conv`).
#[derive(Module, Debug)]
pub struct PoolBranch {
    pool: AdaptiveAvgPool2d,
    /// 1×1 ConvModule after pooling.
    pub conv: ConvModule,
}

/// The PSP head.
#[derive(Module, Debug)]
pub struct PspHead {
    /// One branch per pool scale.
    pub psp_modules: Vec<PoolBranch>,
    /// 3×3 fusion of input and branches.
    pub bottleneck: ConvModule,
    dropout: ChannelDropout,
    /// The classifier.
    pub conv_seg: Conv2d,
}

impl PspHead {
    /// Branches at `pool_scales` (mmseg: 1, 2, 3, 6).
    pub fn new(in_channels: usize, channels: usize, pool_scales: &[usize], dropout: f64, num_classes: usize, device: &Device) -> Self {
        let psp_modules = pool_scales
            .iter()
            .map(|&s| PoolBranch {
                pool: AdaptiveAvgPool2dConfig::new([s, s]).init(),
                conv: ConvModule::new(in_channels, channels, 1, 1, 1, true, device),
            })
            .collect();
        Self {
            psp_modules,
            bottleneck: ConvModule::new(in_channels + pool_scales.len() * channels, channels, 3, 1, 1, true, device),
            dropout: ChannelDropout::new(dropout),
            conv_seg: classifier(channels, num_classes, device),
        }
    }

    /// Features before the classifier.
    ///
    /// # Shapes
    /// `[B, Cin, h, w]` → `[B, channels, h, w]`
    pub fn decode(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let mut outs = vec![x.clone()];
        for branch in &self.psp_modules {
            outs.push(resize_bilinear(branch.conv.forward(branch.pool.forward(x.clone())), h, w));
        }
        self.bottleneck.forward(Tensor::cat(outs, 1))
    }

    /// # Shapes
    /// `[B, Cin, h, w]` → `[B, K, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_seg.forward(self.dropout.forward(self.decode(x)))
    }
}
