//! Encoder weights in and out of PyTorch's world: strict import of torchvision, MoCo,
//! mmselfsup/DenseCL, BYOL/SimSiam and densessl checkpoints, and export in torchvision's
//! key names.
//!
//! Our ResNet's tensor names differ from torchvision's in two ways only: BatchNorm's
//! `gamma`/`beta` are `weight`/`bias` there (burn-store's PyTorch adapters translate), and a
//! block's `downsample.{conv,bn}` is the `nn.Sequential` `downsample.{0,1}` there.

pub mod export;
pub mod import;

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};

use crate::models::resnet::ResNet;

/// torchvision's name for one of our encoder tensors (already in PyTorch naming for BN).
pub fn to_torchvision_name(name: &str) -> String {
    name.replace(".downsample.conv.", ".downsample.0.").replace(".downsample.bn.", ".downsample.1.")
}

/// Our name for a torchvision encoder tensor (BN names stay PyTorch's; the adapter maps them).
pub fn from_torchvision_name(name: &str) -> String {
    name.replace(".downsample.0.", ".downsample.conv.").replace(".downsample.1.", ".downsample.bn.")
}

/// The torchvision state_dict keys an encoder has, without `fc.*` and without
/// `num_batches_tracked` (which burn does not keep), sorted.
pub fn torchvision_keys(encoder: &ResNet) -> Vec<String> {
    let mut keys: Vec<String> = encoder
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| to_torchvision_name(&t.name))
        .collect();
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::resnet::ResNetConfig;

    #[test]
    fn resnet50_keys_are_torchvisions() {
        let net = ResNetConfig::new().with_depth(50).with_base_width(4).init(&burn::tensor::Device::flex());
        let keys = torchvision_keys(&net);
        // torchvision resnet50 has 320 state_dict entries: 2 fc, 53 num_batches_tracked, 265 others.
        assert_eq!(keys.len(), 265);
        for k in ["conv1.weight", "bn1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
                  "layer1.0.downsample.1.bias", "layer4.2.bn3.running_mean", "layer3.5.conv2.weight"] {
            assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
        }
    }
}
