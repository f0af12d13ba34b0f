//! Encoder + head = a segmentation model, and the `[encoder]` settings users write.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::heads::fcn::FcnHead;
use super::heads::{Head, HeadConfig};
use super::resize::resize_bilinear;
use super::resnet::{ResNet, ResNetConfig};
use crate::{Error, Result};

/// Settings of the encoder (`[encoder]` in a config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// `resnet18`, `resnet34`, `resnet50` or `resnet101`.
    pub arch: String,
    /// Stem width; 64 is torchvision's, smaller values give a narrow ResNet for CPU work.
    pub base_width: usize,
    /// 32, 16 or 8 (dilated stages).
    pub output_stride: usize,
    /// Zero-init the last BN γ of each residual block.
    pub zero_init_residual: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self { arch: "resnet18".into(), base_width: 64, output_stride: 32, zero_init_residual: false }
    }
}

impl EncoderConfig {
    /// The burn module configuration, or an error naming the bad setting.
    pub fn resnet(&self) -> Result<ResNetConfig> {
        let depth = self
            .arch
            .strip_prefix("resnet")
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("encoder.arch '{}': use resnet18|34|50|101", self.arch)))?;
        let config = ResNetConfig::new()
            .with_depth(depth)
            .with_base_width(self.base_width)
            .with_output_stride(self.output_stride)
            .with_zero_init_residual(self.zero_init_residual);
        config.check().map_err(|e| Error::Invalid(format!("encoder: {e}")))?;
        Ok(config)
    }
}

/// A segmentation model: encoder features → head → logits at input resolution, plus an
/// optional auxiliary FCN head on C4 used in training only.
#[derive(Module, Debug)]
pub struct Segmenter {
    /// The encoder.
    pub encoder: ResNet,
    /// The head.
    pub head: Head,
    /// The auxiliary head on C4 (mmseg's `auxiliary_head`), if configured.
    pub aux: Option<FcnHead>,
}

impl Segmenter {
    /// Builds a model with a freshly initialised encoder and head.
    pub fn new(encoder: &EncoderConfig, head: &HeadConfig, num_classes: usize, device: &Device) -> Result<Self> {
        let resnet = encoder.resnet()?;
        let channels = resnet.channels();
        Ok(Self {
            encoder: resnet.init(device),
            head: head.init(channels, num_classes, device).map_err(|e| Error::Invalid(format!("head: {e}")))?,
            aux: head.init_aux(channels, num_classes, device),
        })
    }

    /// # Shapes
    /// `[B, 3, H, W]` → logits `[B, K, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let logits = self.head.forward(&self.encoder.forward(x));
        resize_bilinear(logits, h, w)
    }

    /// Main and auxiliary logits, both at input resolution (training).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → (`[B, K, H, W]`, optional `[B, K, H, W]`)
    pub fn forward_with_aux(&self, x: Tensor<4>) -> (Tensor<4>, Option<Tensor<4>>) {
        let [_, _, h, w] = x.dims();
        let features = self.encoder.forward(x);
        let aux = self.aux.as_ref().map(|a| resize_bilinear(a.forward(features.c4.clone()), h, w));
        (resize_bilinear(self.head.forward(&features), h, w), aux)
    }
}
