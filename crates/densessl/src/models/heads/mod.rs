//! Segmentation heads, with mmsegmentation's layouts, tensor names and defaults.
//! A head maps encoder features to per-class logits (at C5's resolution, or C2's for
//! DeepLabv3+); [`Head::decode`] gives the features before the classifier, which
//! encoder-decoder pretext tasks use.
//!
//! Adding a head: one file with its `Module`, a variant in [`Head`], a match arm in
//! [`HeadConfig::init`] and in [`Head::decode`]/[`Head::forward`].

pub mod channel_dropout;
pub mod conv_module;
pub mod deeplabv3plus;
pub mod fcn;
pub mod moco_fcn;
pub mod nonlocal;
pub mod pspnet;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::resnet::Features;

/// Head names users can type.
pub const HEAD_NAMES: [&str; 5] = ["moco-fcn", "fcn", "pspnet", "deeplabv3plus", "nonlocal"];

/// Settings of a segmentation head (`[head]` in a config). Unset sizes take the head's
/// published default (see [`HeadConfig::channels`] and [`HeadConfig::dilation`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Which head: `moco-fcn`, `fcn`, `pspnet`, `deeplabv3plus` or `nonlocal`.
    pub name: String,
    /// Channels of the head's convs (moco-fcn 256, mmseg heads 512).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// Dilation of the 3×3 convs of moco-fcn (6) and fcn (1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dilation: Option<usize>,
    /// Channel dropout before the classifier (`nn.Dropout2d`, 0.1 in mmsegmentation).
    pub dropout: f64,
    /// fcn: number of 3×3 convs (2).
    pub num_convs: usize,
    /// fcn: concatenate the input with the convs' output before `conv_cat` (true).
    pub concat_input: bool,
    /// pspnet: pyramid pooling scales (1, 2, 3, 6).
    pub pool_scales: Vec<usize>,
    /// deeplabv3plus: ASPP dilations (1, 12, 24, 36 at output stride 8; halve them at 16).
    pub dilations: Vec<usize>,
    /// deeplabv3plus: channels of the C2 projection (48).
    pub c1_channels: usize,
    /// nonlocal: channel reduction inside the block (2).
    pub reduction: usize,
    /// Channels of an auxiliary FCN head on C4 (mmseg: 256); 0 = none.
    pub aux_channels: usize,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            name: "moco-fcn".into(),
            channels: None,
            dilation: None,
            dropout: 0.1,
            num_convs: 2,
            concat_input: true,
            pool_scales: vec![1, 2, 3, 6],
            dilations: vec![1, 12, 24, 36],
            c1_channels: 48,
            reduction: 2,
            aux_channels: 0,
        }
    }
}

/// A segmentation head.
#[derive(Module, Debug)]
pub enum Head {
    /// MoCo's FCN head.
    MocoFcn(moco_fcn::MocoFcnHead),
    /// mmseg's FCN head.
    Fcn(fcn::FcnHead),
    /// PSPNet.
    Psp(pspnet::PspHead),
    /// DeepLabv3+.
    DeepLabV3Plus(deeplabv3plus::DeepLabV3PlusHead),
    /// Non-local network.
    NonLocal(nonlocal::NonLocalHead),
}

impl HeadConfig {
    /// Conv channels: as set, else 256 for moco-fcn and 512 for the mmseg heads.
    pub fn channels(&self) -> usize {
        self.channels.unwrap_or(if self.name == "moco-fcn" { 256 } else { 512 })
    }

    /// 3×3 dilation: as set, else 6 for moco-fcn and 1 otherwise.
    pub fn dilation(&self) -> usize {
        self.dilation.unwrap_or(if self.name == "moco-fcn" { 6 } else { 1 })
    }

    /// Checks the name and sizes with a sentence a user can act on.
    pub fn check(&self) -> Result<(), String> {
        if !HEAD_NAMES.contains(&self.name.as_str()) {
            return Err(format!("unknown head '{}': choose one of {}", self.name, HEAD_NAMES.join(", ")));
        }
        if self.channels() == 0 || self.dilation() == 0 || self.num_convs == 0 || self.reduction == 0 {
            return Err("head.channels, dilation, num_convs and reduction must be positive".into());
        }
        if self.name == "pspnet" && (self.pool_scales.is_empty() || self.pool_scales.contains(&0)) {
            return Err("head.pool_scales must be non-empty and positive".into());
        }
        if self.name == "deeplabv3plus" && (self.dilations.is_empty() || self.dilations.contains(&0)) {
            return Err("head.dilations must be non-empty and positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("head.dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Builds the head for encoder stage channels `[C2, C3, C4, C5]`, predicting `num_classes`.
    pub fn init(&self, encoder_channels: [usize; 4], num_classes: usize, device: &Device) -> Result<Head, String> {
        self.check()?;
        let (c2, c5, ch) = (encoder_channels[0], encoder_channels[3], self.channels());
        Ok(match self.name.as_str() {
            "moco-fcn" => Head::MocoFcn(moco_fcn::MocoFcnHead::new(self, c5, num_classes, device)),
            "fcn" => Head::Fcn(fcn::FcnHead::new(
                c5, ch, self.num_convs, self.concat_input, self.dilation(), self.dropout, num_classes, device,
            )),
            "pspnet" => Head::Psp(pspnet::PspHead::new(c5, ch, &self.pool_scales, self.dropout, num_classes, device)),
            "deeplabv3plus" => Head::DeepLabV3Plus(deeplabv3plus::DeepLabV3PlusHead::new(
                c5, c2, ch, self.c1_channels, &self.dilations, self.dropout, num_classes, device,
            )),
            "nonlocal" => {
                Head::NonLocal(nonlocal::NonLocalHead::new(c5, ch, self.reduction, self.dropout, num_classes, device))
            }
            _ => unreachable!("checked"),
        })
    }

    /// The auxiliary FCN head on C4 (one conv, no concatenation), if `aux_channels > 0`.
    pub fn init_aux(&self, encoder_channels: [usize; 4], num_classes: usize, device: &Device) -> Option<fcn::FcnHead> {
        (self.aux_channels > 0).then(|| {
            fcn::FcnHead::new(encoder_channels[2], self.aux_channels, 1, false, 1, self.dropout, num_classes, device)
        })
    }
}

impl Head {
    /// Features before the classifier.
    ///
    /// # Shapes
    /// features → `[B, channels, h, w]` (C5's size; C2's for DeepLabv3+)
    pub fn decode(&self, features: &Features) -> Tensor<4> {
        match self {
            Head::MocoFcn(h) => h.decode(features),
            Head::Fcn(h) => h.decode(features.c5.clone()),
            Head::Psp(h) => h.decode(features.c5.clone()),
            Head::DeepLabV3Plus(h) => h.decode(features),
            Head::NonLocal(h) => h.decode(features.c5.clone()),
        }
    }

    /// Per-class logits at the head's resolution.
    ///
    /// # Shapes
    /// features → `[B, K, h, w]`
    pub fn forward(&self, features: &Features) -> Tensor<4> {
        match self {
            Head::MocoFcn(h) => h.forward(features),
            Head::Fcn(h) => h.forward(features.c5.clone()),
            Head::Psp(h) => h.forward(features.c5.clone()),
            Head::DeepLabV3Plus(h) => h.forward(features),
            Head::NonLocal(h) => h.forward(features.c5.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn features(device: &Device, b: usize) -> Features {
        let t = |c, s| Tensor::<4>::random([b, c, s, s], Distribution::Normal(0.0, 1.0), device);
        Features { c2: t(8, 16), c3: t(16, 8), c4: t(32, 4), c5: t(64, 4) }
    }

    #[test]
    fn every_head_builds_and_gives_logits_and_gradients() {
        let device = Device::flex().autodiff();
        for name in HEAD_NAMES {
            let config = HeadConfig {
                name: name.into(),
                channels: Some(16),
                dilations: vec![1, 2, 3],
                c1_channels: 4,
                aux_channels: 8,
                ..HeadConfig::default()
            };
            let head = config.init([8, 16, 32, 64], 5, &device).unwrap();
            let f = features(&device, 2);
            let logits = head.forward(&f);
            let expected = if name == "deeplabv3plus" { [2, 5, 16, 16] } else { [2, 5, 4, 4] };
            assert_eq!(logits.dims(), expected, "{name}");
            assert_eq!(head.decode(&f).dims()[1], 16, "{name}");
            let grads = logits.sum().backward();
            let classifier_grad = match &head {
                Head::MocoFcn(h) => h.classifier.weight.grad(&grads),
                Head::Fcn(h) => h.conv_seg.weight.grad(&grads),
                Head::Psp(h) => h.conv_seg.weight.grad(&grads),
                Head::DeepLabV3Plus(h) => h.conv_seg.weight.grad(&grads),
                Head::NonLocal(h) => h.conv_seg.weight.grad(&grads),
            };
            assert!(classifier_grad.is_some(), "{name}");
            let aux = config.init_aux([8, 16, 32, 64], 5, &device).unwrap();
            assert_eq!(aux.forward(f.c4.clone()).dims(), [2, 5, 4, 4]);
        }
    }

    #[test]
    fn unknown_head_and_bad_sizes_are_named() {
        let e = HeadConfig { name: "unet".into(), ..HeadConfig::default() }.check().unwrap_err();
        assert!(e.contains("unet") && e.contains("deeplabv3plus"), "{e}");
        assert!(HeadConfig { name: "pspnet".into(), pool_scales: vec![], ..HeadConfig::default() }.check().is_err());
        assert_eq!(HeadConfig::default().channels(), 256);
        assert_eq!(HeadConfig { name: "fcn".into(), ..HeadConfig::default() }.dilation(), 1);
    }
}
