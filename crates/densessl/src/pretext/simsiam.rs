//! SimSiam (Chen & He 2021): encoder + 3-layer projector (BN after every layer), a 2-layer
//! bottleneck predictor, loss −½(cos(p₁, sg(z₂)) + cos(p₂, sg(z₁))). No momentum encoder, no
//! negatives; the stop-gradient is what prevents collapse. The predictor's LR stays at the
//! base LR (`fix_predictor_lr`, as the paper does) while the rest follows the schedule.
//!
//! The last BN of the projector keeps its affine parameters (the paper's has none): burn's
//! BatchNorm is always affine; γ and β start at 1 and 0, so it starts identical.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::losses::mean_cosine;
use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings, two_views};
use crate::train::state::{StateReader, StateWriter};
use crate::Result;
use crate::train::optim::finite_backward;
use crate::models::projector::{Mlp, MlpConfig};
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;

/// Settings of SimSiam (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimsiamSettings {
    /// Projection dimension (2048); 0 = the C5 channels.
    pub dim: usize,
    /// Predictor bottleneck width (512); 0 = dim / 4.
    pub pred_hidden: usize,
    /// Keep the predictor's LR at the base LR instead of scheduling it.
    pub fix_predictor_lr: bool,
    /// The augmentation (MoCo v2's).
    pub augment: ViewAugment,
}

impl Default for SimsiamSettings {
    fn default() -> Self {
        Self { dim: 2048, pred_hidden: 512, fix_predictor_lr: true, augment: ViewAugment::moco_v2(224) }
    }
}

/// Encoder, projector and predictor.
#[derive(Module, Debug)]
pub struct SimsiamNet {
    /// The encoder.
    pub backbone: ResNet,
    /// Three Linear layers, BN after each.
    pub projector: Mlp,
    /// Linear → BN → ReLU → Linear.
    pub predictor: Mlp,
}

/// SimSiam with its state.
pub struct Simsiam {
    net: SimsiamNet,
    optim: Trainer,
    base_lr: f64,
    settings: SimsiamSettings,
    device: Device,
}

/// Builds `simsiam` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let mut settings = parse_settings(SimsiamSettings::default(), context.settings.clone())?;
    settings.augment.size = context.view_size;
    let resnet = context.encoder.resnet()?;
    let c5 = resnet.channels()[3];
    let dim = if settings.dim == 0 { c5 } else { settings.dim };
    let hidden = if settings.pred_hidden == 0 { (dim / 4).max(1) } else { settings.pred_hidden };
    let device = context.device;
    let net = SimsiamNet {
        backbone: context.backbone(&resnet),
        projector: MlpConfig::new(vec![c5, c5, c5, dim]).with_last_batch_norm(true).init(device),
        predictor: MlpConfig::new(vec![dim, hidden, dim]).init(device),
    };
    Ok(Box::new(Simsiam { net, optim: Trainer::new(context.optim), base_lr: context.optim.lr, settings, device: device.clone() }))
}

impl PretextMethod for Simsiam {
    fn name(&self) -> &'static str {
        "simsiam"
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let augment = &self.settings.augment;
        let (v1, v2) = two_views(augment, augment, images, rng);
        let project = |x: Tensor<4>| self.net.projector.forward(self.net.backbone.forward_pooled(x));
        let (z1, z2) = (project(batch_tensor(&v1, &self.device)), project(batch_tensor(&v2, &self.device)));
        let (p1, p2) = (self.net.predictor.forward(z1.clone()), self.net.predictor.forward(z2.clone()));
        let loss = (mean_cosine(p1, z2.detach()) + mean_cosine(p2, z1.detach())) * -0.5;
        let (loss_value, grads) = finite_backward(&self.net, loss);
        let Some(mut grads) = grads else {
            return Ok(StepOutput { loss: loss_value, metrics: Vec::new() });
        };
        if self.settings.fix_predictor_lr {
            let predictor_grads = GradientsParams::from_module(&mut grads, &self.net.predictor);
            self.net = self.optim.step_params(self.base_lr, self.net.clone(), predictor_grads);
        }
        self.net = self.optim.step(progress.lr, self.net.clone(), grads, |m: &SimsiamNet| &m.backbone);
        Ok(StepOutput { loss: loss_value, metrics: Vec::new() })
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
        serde_json::json!({"projector_last_bn": "affine (burn BatchNorm); the paper's has no affine parameters"})
    }
}
