//! EDMoCo, Encoder-Decoder MoCo (this project's design notes): MoCo v2 whose "encoder" is
//! the ResNet plus a decoder (any segmentation head without its classifier). The decoder
//! output is average-pooled to one vector per image and projected; keys, queue, momentum
//! and loss are MoCo v2's. Pre-training the decoder too is the point: fine-tuning can then
//! start from a trained encoder *and* a trained head of the same architecture.

use super::moco::{Moco, MocoSettings};
use super::{BuildContext, PretextMethod};
use crate::Result;
use crate::models::heads::HeadConfig;

/// MoCo v2's defaults plus a MoCo-FCN decoder.
pub fn defaults() -> MocoSettings {
    MocoSettings { decoder: Some(HeadConfig::default()), ..MocoSettings::default() }
}

/// Builds `edmoco` from its `[method]` settings (MoCo's, plus `[method.decoder]`).
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    Ok(Box::new(Moco::new("edmoco", defaults(), context)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::segmenter::EncoderConfig;
    use crate::train::optim::OptimConfig;
    use burn::tensor::Device;

    fn context<'a>(encoder: &'a EncoderConfig, optim: &'a OptimConfig, device: &'a Device, settings: toml::Table) -> BuildContext<'a> {
        BuildContext { init: None, encoder, optim, view_size: 32, settings, device }
    }

    #[test]
    fn decoder_is_required_by_edmoco_and_refused_by_moco() {
        let (device, optim) = (Device::flex().autodiff(), OptimConfig::default());
        let encoder = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let small = toml::toml! { queue_size = 16 dim = 8 decoder = { name = "fcn", channels = 8 } };
        let method = build(context(&encoder, &optim, &device, small.clone())).unwrap();
        assert_eq!(method.settings()["decoder"]["name"].as_str(), Some("fcn"));
        let e = super::super::moco::build_v2(context(&encoder, &optim, &device, small)).err().unwrap().to_string();
        assert!(e.contains("edmoco"), "{e}");
    }
}
