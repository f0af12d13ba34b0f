//! PLEDMoCo, Patch-level Encoder-Decoder MoCo (this project's design notes): PLMoCo's
//! cell-level momentum contrast on the output map of a decoder (any segmentation head
//! without its classifier) instead of an encoder stage, so the decoder is pre-trained too.

use super::plmoco::{PlMoco, PlMocoSettings};
use super::{BuildContext, PretextMethod};
use crate::Result;
use crate::models::heads::HeadConfig;

/// PLMoCo's defaults plus a MoCo-FCN decoder.
pub fn defaults() -> PlMocoSettings {
    PlMocoSettings { decoder: Some(HeadConfig::default()), ..PlMocoSettings::default() }
}

/// Builds `pledmoco` from its `[method]` settings (PLMoCo's, plus `[method.decoder]`).
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    Ok(Box::new(PlMoco::new("pledmoco", defaults(), context)?))
}
