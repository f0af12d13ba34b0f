//! mmcv's building blocks with its tensor names: `ConvModule` (conv → BN → ReLU, conv
//! without bias) and `DepthwiseSeparableConvModule`, plus the classifier init.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::kernels::conv2d_module;
use crate::kernels::batch_norm::batch_norm_module;
use crate::kernels::batch_norm_relu::batch_norm_relu_module;

/// mmcv `kaiming_init(conv, mode="fan_out", nonlinearity="relu")`, what ConvModule uses.
pub(crate) fn kaiming_fan_out() -> Initializer {
    Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true }
}

/// A `k`×`k` convolution with "same" padding for its dilation.
pub(crate) fn conv(cin: usize, cout: usize, k: usize, dilation: usize, groups: usize, bias: bool, device: &Device) -> Conv2d {
    let pad = dilation * (k - 1) / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_dilation([dilation, dilation])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(bias)
        .with_initializer(kaiming_fan_out())
        .init(device)
}

/// The 1×1 classifier (`conv_seg`), mmseg's `normal_init(std=0.01)`.
pub(crate) fn classifier(cin: usize, num_classes: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, num_classes], [1, 1])
        .with_initializer(Initializer::Normal { mean: 0.0, std: 0.01 })
        .init(device)
}

/// Conv (no bias) → BatchNorm → optional ReLU.
#[derive(Module, Debug)]
pub struct ConvModule {
    /// The convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
    relu: bool,
}

impl ConvModule {
    /// A `k`×`k` ConvModule with "same" padding; `relu = false` leaves out the activation.
    pub fn new(cin: usize, cout: usize, k: usize, dilation: usize, groups: usize, relu: bool, device: &Device) -> Self {
        Self { conv: conv(cin, cout, k, dilation, groups, false, device), bn: BatchNormConfig::new(cout).init(device), relu }
    }

    /// # Shapes
    /// `[B, cin, h, w]` → `[B, cout, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = conv2d_module(&self.conv, x);
        if self.relu { batch_norm_relu_module(&self.bn, y, None) } else { batch_norm_module(&self.bn, y) }
    }
}

/// Depthwise 3×3 ConvModule (groups = channels) then pointwise 1×1 ConvModule.
#[derive(Module, Debug)]
pub struct SeparableConvModule {
    /// Depthwise part.
    pub depthwise_conv: ConvModule,
    /// Pointwise part.
    pub pointwise_conv: ConvModule,
}

impl SeparableConvModule {
    /// A 3×3 depthwise-separable block with `dilation`.
    pub fn new(cin: usize, cout: usize, dilation: usize, device: &Device) -> Self {
        Self {
            depthwise_conv: ConvModule::new(cin, cin, 3, dilation, cin, true, device),
            pointwise_conv: ConvModule::new(cin, cout, 1, 1, 1, true, device),
        }
    }

    /// # Shapes
    /// `[B, cin, h, w]` → `[B, cout, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pointwise_conv.forward(self.depthwise_conv.forward(x))
    }
}
