//! Segmentation heads. A head maps encoder features to per-class logits at the input's size.
//!
//! Adding a head: one file with a `Module` + its settings, one variant in [`Head`] and
//! one line in [`HeadConfig::init`].

pub mod moco_fcn;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::resnet::Features;

/// Head names users can type.
pub const HEAD_NAMES: [&str; 1] = ["moco-fcn"];

/// Settings of a segmentation head (`[head]` in a config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Which head: `moco-fcn`.
    pub name: String,
    /// Channels of the head's convs (256 in the papers).
    pub channels: usize,
    /// Dilation of the head's 3×3 convs (6 in MoCo's VOC protocol).
    pub dilation: usize,
    /// Dropout before the classifier (0.1 in mmsegmentation).
    pub dropout: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { name: "moco-fcn".into(), channels: 256, dilation: 6, dropout: 0.1 }
    }
}

/// A segmentation head.
#[derive(Module, Debug)]
pub enum Head {
    /// MoCo's FCN head.
    MocoFcn(moco_fcn::MocoFcnHead),
}

impl HeadConfig {
    /// Builds the head on C5 with `in_channels`, predicting `num_classes`.
    pub fn init(&self, in_channels: usize, num_classes: usize, device: &Device) -> Result<Head, String> {
        match self.name.as_str() {
            "moco-fcn" => Ok(Head::MocoFcn(moco_fcn::MocoFcnHead::new(self, in_channels, num_classes, device))),
            other => Err(format!("unknown head '{other}': choose one of {}", HEAD_NAMES.join(", "))),
        }
    }
}

impl Head {
    /// Per-class logits at the features' resolution.
    ///
    /// # Shapes
    /// features → `[B, K, h, w]`
    pub fn forward(&self, features: &Features) -> Tensor<4> {
        match self {
            Head::MocoFcn(h) => h.forward(features),
        }
    }
}
