//! SimCLR (Chen et al. 2020): two views per image through encoder + MLP projector, NT-Xent
//! over the 2N embeddings of a batch (τ 0.5 by default).
//!
//! SimCLR's LARS optimiser for very large batches is left out: plain SGD with momentum and
//! warm-up is used (the manifest notes it); results at small batch sizes are what SimCLR's
//! ablations report for SGD.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::losses::nt_xent;
use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings, two_views};
use crate::train::state::{StateReader, StateWriter};
use crate::Result;
use crate::models::projector::{Mlp, MlpConfig};
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;

/// Settings of SimCLR (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimclrSettings {
    /// Projection dimension (128).
    pub dim: usize,
    /// Hidden width of the projector; 0 = the encoder's C5 channels (2048 for R50).
    pub hidden: usize,
    /// NT-Xent temperature (0.5 in the paper's default; 0.1 to 0.2 for large batches).
    pub temperature: f64,
    /// The augmentation (its `size` is set from the training view size).
    pub augment: ViewAugment,
}

impl Default for SimclrSettings {
    fn default() -> Self {
        Self { dim: 128, hidden: 0, temperature: 0.5, augment: ViewAugment::simclr(224) }
    }
}

/// Encoder + projector.
#[derive(Module, Debug)]
pub struct SimclrNet {
    /// The encoder.
    pub backbone: ResNet,
    /// Linear → BN → ReLU → Linear.
    pub projector: Mlp,
}

/// SimCLR with its state.
pub struct Simclr {
    net: SimclrNet,
    optim: Trainer,
    settings: SimclrSettings,
    device: Device,
}

/// Builds `simclr` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let mut settings = parse_settings(SimclrSettings::default(), context.settings.clone())?;
    settings.augment.size = context.view_size;
    let resnet = context.encoder.resnet()?;
    let c5 = resnet.channels()[3];
    let hidden = if settings.hidden == 0 { c5 } else { settings.hidden };
    let net = SimclrNet {
        backbone: context.backbone(&resnet),
        projector: MlpConfig::new(vec![c5, hidden, settings.dim]).init(context.device),
    };
    Ok(Box::new(Simclr { net, optim: Trainer::new(context.optim), settings, device: context.device.clone() }))
}

impl PretextMethod for Simclr {
    fn name(&self) -> &'static str {
        "simclr"
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let augment = &self.settings.augment;
        let (v1, v2) = two_views(augment, augment, images, rng);
        let embed = |x: Tensor<4>| self.net.projector.forward(self.net.backbone.forward_pooled(x));
        let (z1, z2) = (embed(batch_tensor(&v1, &self.device)), embed(batch_tensor(&v2, &self.device)));
        let (loss, acc) = nt_xent(z1, z2, self.settings.temperature);
        let (net, loss_value) = self.optim.minimize(progress.lr, self.net.clone(), loss, |m: &SimclrNet| &m.backbone);
        self.net = net;
        Ok(StepOutput { loss: loss_value, metrics: vec![("acc1", acc)] })
    }

    fn encoder(&self) -> ResNet {
        self.net.backbone.clone()
    }

    fn save_state(&self, out: &StateWriter) -> Result<()> {
        out.module("net", &self.net)?;
        self.optim.save_state(out)
    }

    fn load_state(&mut self, from: &StateReader) -> Result<()> {
        self.net = from.module("net", self.net.clone())?;
        self.optim.load_state(from)
    }

    fn settings(&self) -> toml::Table {
        super::settings_table(&self.settings)
    }

    fn notes(&self) -> serde_json::Value {
        serde_json::json!({"optimizer": "SGD with momentum; SimCLR's LARS is not implemented"})
    }
}
