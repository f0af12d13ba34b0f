//! Pretext tasks behind one trait. Adding a method: one file implementing
//! [`PretextMethod`] and one line in [`METHODS`].

pub mod losses;
pub mod momentum;
pub mod moco;

use burn::tensor::Device;
use image::RgbImage;
use rand_chacha::ChaCha8Rng;

use crate::models::resnet::ResNet;
use crate::models::segmenter::EncoderConfig;
use crate::Result;
use crate::train::optim::OptimConfig;

/// What one optimisation step reports.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// The loss that was minimised.
    pub loss: f64,
    /// Further named metrics (e.g. contrastive accuracy).
    pub metrics: Vec<(&'static str, f64)>,
}

/// A self-supervised pretext task: owns its networks and its optimiser state.
pub trait PretextMethod {
    /// The name users type (`moco-v2`, ...).
    fn name(&self) -> &'static str;
    /// Draws views of `images`, computes the loss, updates the networks with learning rate
    /// `lr` and runs the after-step hooks (momentum update, queue).
    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, lr: f64) -> Result<StepOutput>;
    /// The online encoder, what fine-tuning starts from.
    fn encoder(&self) -> ResNet;
    /// The method's settings with every default filled in (written to the run's `config.toml`).
    fn settings(&self) -> toml::Table;
    /// Facts the manifest should record (e.g. how shuffle-BN was substituted).
    fn notes(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Everything a method needs to build itself.
pub struct BuildContext<'a> {
    /// Encoder settings.
    pub encoder: &'a EncoderConfig,
    /// Optimiser settings.
    pub optim: &'a OptimConfig,
    /// Side of the views in pixels.
    pub view_size: usize,
    /// Method-specific settings (`[method]` table minus `name`), as TOML.
    pub settings: toml::Table,
    /// Where to build.
    pub device: &'a Device,
}

type Builder = fn(BuildContext) -> Result<Box<dyn PretextMethod>>;

/// The registry: name users type → builder.
pub const METHODS: &[(&str, Builder)] = &[("moco-v2", moco::build_v2)];

/// Builds method `name`, or an error listing the known ones.
pub fn build(name: &str, context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let builder = METHODS.iter().find(|(n, _)| *n == name).map(|(_, b)| b).ok_or_else(|| {
        let names: Vec<&str> = METHODS.iter().map(|(n, _)| *n).collect();
        crate::Error::Invalid(format!("unknown method '{name}': choose one of {}", names.join(", ")))
    })?;
    builder(context)
}
