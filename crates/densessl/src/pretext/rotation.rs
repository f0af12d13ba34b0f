//! Image rotation prediction (Gidaris et al. 2018, RotNet): every image of the batch is shown
//! at 0°, 90°, 180° and 270° and a linear classifier on the pooled encoder features predicts
//! which. Views are random resized crops with flips (no colour augmentation).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings};
use crate::train::state::{StateReader, StateWriter};
use crate::Result;
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;
use crate::views::patch_rotation::PatchRotation;

/// Settings of rotation prediction (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RotationSettings {
    /// The view augmentation before rotating (geometric only by default).
    pub augment: ViewAugment,
}

impl Default for RotationSettings {
    fn default() -> Self {
        let augment = ViewAugment { jitter_p: 0.0, grayscale_p: 0.0, blur_p: 0.0, ..ViewAugment::moco_v2(224) };
        Self { augment }
    }
}

/// Encoder + 4-way linear classifier.
#[derive(Module, Debug)]
pub struct RotationNet {
    /// The encoder.
    pub backbone: ResNet,
    /// Pooled C5 → 4 rotation logits.
    pub classifier: Linear,
}

/// Rotation prediction with its state.
pub struct Rotation {
    net: RotationNet,
    optim: Trainer,
    settings: RotationSettings,
    device: Device,
}

/// Builds `rotation` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let mut settings = parse_settings(RotationSettings::default(), context.settings.clone())?;
    settings.augment.size = context.view_size;
    let resnet = context.encoder.resnet()?;
    let c5 = resnet.channels()[3];
    let net = RotationNet { backbone: context.backbone(&resnet), classifier: LinearConfig::new(c5, 4).init(context.device) };
    Ok(Box::new(Rotation { net, optim: Trainer::new(context.optim), settings, device: context.device.clone() }))
}

impl PretextMethod for Rotation {
    fn name(&self) -> &'static str {
        "rotation"
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let seeds: Vec<u64> = images.iter().map(|_| rng.random()).collect();
        let augment = &self.settings.augment;
        // Each image's view at the four rotations; label = quarter turns.
        let views: Vec<_> = images
            .par_iter()
            .zip(seeds)
            .flat_map_iter(|(image, seed)| {
                let view = augment.view(image, &mut ChaCha8Rng::seed_from_u64(seed)).image;
                (0..4u8).map(move |k| PatchRotation { grid: 1, turns: vec![k] }.apply(&view))
            })
            .collect();
        let n = views.len();
        let labels: Vec<f32> = (0..n).flat_map(|i| (0..4).map(move |c| if c == i % 4 { 1.0 } else { 0.0 })).collect();
        let one_hot = Tensor::<2>::from_data(TensorData::new(labels, [n, 4]), &self.device);
        let logits = self.net.classifier.forward(self.net.backbone.forward_pooled(batch_tensor(&views, &self.device)));
        let loss = -(log_softmax(logits.clone(), 1) * one_hot).sum_dim(1).mean();
        let targets = Tensor::<1, Int>::from_data(TensorData::new((0..n as i64).map(|i| i % 4).collect::<Vec<_>>(), [n]), &self.device);
        let hits = logits.detach().argmax(1).reshape([n]).equal(targets).int().sum().into_scalar::<i64>();
        let (net, loss_value) = self.optim.minimize(progress.lr, self.net.clone(), loss, |m: &RotationNet| &m.backbone);
        self.net = net;
        Ok(StepOutput { loss: loss_value, metrics: vec![("acc1", hits as f64 / n as f64)] })
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
}
