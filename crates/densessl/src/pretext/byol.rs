//! BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) predicts the
//! projection a target network (an EMA of encoder and projector) makes of the other view.
//! Loss 2 − 2·cos per direction, summed over both directions; the target's EMA rate rises
//! from `base_momentum` to 1 by a cosine over training; asymmetric augmentation.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::losses::mean_cosine;
use super::momentum::momentum_update;
use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings, two_views};
use crate::train::state::{StateReader, StateWriter};
use crate::Result;
use crate::models::projector::{Mlp, MlpConfig};
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;

/// Settings of BYOL (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ByolSettings {
    /// Projection (and prediction) dimension (256).
    pub dim: usize,
    /// Hidden width of projector and predictor (4096); 0 = twice the C5 channels.
    pub hidden: usize,
    /// EMA rate τ at the start; it rises to 1 by a cosine (0.996).
    pub base_momentum: f64,
    /// Augmentation of the first view (blur always, no solarize).
    pub augment_first: ViewAugment,
    /// Augmentation of the second view (blur p 0.1, solarize p 0.2).
    pub augment_second: ViewAugment,
}

impl Default for ByolSettings {
    fn default() -> Self {
        Self {
            dim: 256,
            hidden: 4096,
            base_momentum: 0.996,
            augment_first: ViewAugment::byol(224, false),
            augment_second: ViewAugment::byol(224, true),
        }
    }
}

/// Encoder + projector (the part the target network mirrors).
#[derive(Module, Debug)]
pub struct ByolNet {
    /// The encoder.
    pub backbone: ResNet,
    /// Linear → BN → ReLU → Linear.
    pub projector: Mlp,
}

impl ByolNet {
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, dim]`
    pub fn project(&self, x: Tensor<4>) -> Tensor<2> {
        self.projector.forward(self.backbone.forward_pooled(x))
    }
}

/// The trained part: encoder, projector and predictor.
#[derive(Module, Debug)]
pub struct ByolOnline {
    /// Encoder + projector.
    pub net: ByolNet,
    /// Linear → BN → ReLU → Linear.
    pub predictor: Mlp,
}

/// BYOL with its state.
pub struct Byol {
    online: ByolOnline,
    target: ByolNet,
    optim: Trainer,
    settings: ByolSettings,
    device: Device,
}

/// τ at `step` of `total`: 1 − (1 − τ₀)·(cos(π·step/total) + 1)/2.
pub fn target_momentum(base: f64, step: usize, total: usize) -> f64 {
    let t = if total == 0 { 0.0 } else { step as f64 / total as f64 };
    1.0 - (1.0 - base) * ((std::f64::consts::PI * t).cos() + 1.0) / 2.0
}

/// Builds `byol` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let mut settings = parse_settings(ByolSettings::default(), context.settings.clone())?;
    settings.augment_first.size = context.view_size;
    settings.augment_second.size = context.view_size;
    let resnet = context.encoder.resnet()?;
    let c5 = resnet.channels()[3];
    let hidden = if settings.hidden == 0 { 2 * c5 } else { settings.hidden };
    let device = context.device;
    let projector = || MlpConfig::new(vec![c5, hidden, settings.dim]).init(device);
    let online_net = ByolNet { backbone: context.backbone(&resnet), projector: projector() };
    let online = ByolOnline { net: online_net, predictor: MlpConfig::new(vec![settings.dim, hidden, settings.dim]).init(device) };
    let net = || ByolNet { backbone: resnet.init(device), projector: projector() };
    // Built separately and copied (m = 0): a clone would share lazily initialised params.
    let target = momentum_update(net().no_grad(), &online.net, 0.0);
    Ok(Box::new(Byol { online, target, optim: Trainer::new(context.optim), settings, device: device.clone() }))
}

impl PretextMethod for Byol {
    fn name(&self) -> &'static str {
        "byol"
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let (v1, v2) = two_views(&self.settings.augment_first, &self.settings.augment_second, images, rng);
        let (x1, x2) = (batch_tensor(&v1, &self.device), batch_tensor(&v2, &self.device));
        let predict = |x: Tensor<4>| self.online.predictor.forward(self.online.net.project(x));
        let (p1, p2) = (predict(x1.clone()), predict(x2.clone()));
        let (z1, z2) = (self.target.project(x1).detach(), self.target.project(x2).detach());
        let (c12, c21) = (mean_cosine(p1, z2), mean_cosine(p2, z1));
        let loss = (c12 + c21) * -2.0 + 4.0;
        let (online, loss_value) = self.optim.minimize(progress.lr, self.online.clone(), loss, |m: &ByolOnline| &m.net.backbone);
        self.online = online;
        let tau = target_momentum(self.settings.base_momentum, progress.step, progress.total);
        self.target = momentum_update(self.target.clone(), &self.online.net, tau);
        Ok(StepOutput { loss: loss_value, metrics: vec![("target_momentum", tau)] })
    }

    fn encoder(&self) -> ResNet {
        self.online.net.backbone.clone()
    }

    fn save_state(&self, out: &StateWriter) -> Result<()> {
        out.module("online", &self.online)?;
        out.module("target", &self.target)?;
        self.optim.save_state(out)
    }

    fn load_state(&mut self, from: &StateReader) -> Result<()> {
        self.online = from.module("online", self.online.clone())?;
        self.target = from.module("target", self.target.clone())?;
        self.optim.load_state(from)
    }

    fn settings(&self) -> toml::Table {
        super::settings_table(&self.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_momentum_rises_from_base_to_one_by_cosine() {
        assert!((target_momentum(0.996, 0, 100) - 0.996).abs() < 1e-12);
        assert!((target_momentum(0.996, 50, 100) - 0.998).abs() < 1e-12);
        assert!((target_momentum(0.996, 100, 100) - 1.0).abs() < 1e-12);
    }
}
