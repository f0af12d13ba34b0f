//! PLR, Patch-level Rotation (this project's design notes): each view is cut into g×g
//! patches, each rotated independently by 0/90/180/270°, and an encoder-decoder (encoder +
//! any segmentation head, whose classifier predicts the 4 rotations) labels every pixel with
//! its patch's rotation. The decoder makes the task dense: the label changes at patch borders.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings};
use crate::train::state::{StateReader, StateWriter};
use crate::models::heads::{Head, HeadConfig};
use crate::models::resize::resize_bilinear;
use crate::models::resnet::ResNet;
use crate::seg::loss::masked_cross_entropy;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;
use crate::views::patch_rotation::PatchRotation;
use crate::{Error, Result};

/// Settings of PLR (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlrSettings {
    /// Patches per side (4); the view size must be divisible by it.
    pub grid: usize,
    /// The decoder: a segmentation head predicting 4 rotation classes.
    pub decoder: HeadConfig,
    /// The view augmentation before rotating (geometric, plus MoCo v2's colour steps).
    pub augment: ViewAugment,
    /// Copies of each view in the batch (1–4); copy j turns every patch j quarter turns
    /// further, so with 4 each patch appears at all four rotations in one batch (as RotNet
    /// feeds all four rotations of an image). The batch holds `batch_size × copies` views.
    pub copies: usize,
}

impl Default for PlrSettings {
    fn default() -> Self {
        Self { grid: 4, decoder: HeadConfig::default(), augment: ViewAugment::moco_v2(224), copies: 1 }
    }
}

/// Encoder + decoder.
#[derive(Module, Debug)]
pub struct PlrNet {
    /// The encoder.
    pub backbone: ResNet,
    /// The decoder with its 4-way classifier.
    pub decoder: Head,
}

/// PLR with its state.
pub struct Plr {
    net: PlrNet,
    optim: Trainer,
    settings: PlrSettings,
    device: Device,
}

/// Builds `plr` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let mut settings = parse_settings(PlrSettings::default(), context.settings.clone())?;
    settings.augment.size = context.view_size;
    if settings.grid == 0 || context.view_size % settings.grid != 0 {
        return Err(Error::Invalid(format!(
            "method.grid = {} must divide train.view_size = {}",
            settings.grid, context.view_size
        )));
    }
    if !(1..=4).contains(&settings.copies) {
        return Err(Error::Invalid(format!("method.copies = {} must be 1, 2, 3 or 4", settings.copies)));
    }
    let resnet = context.encoder.resnet()?;
    let decoder = settings.decoder.init(resnet.channels(), 4, context.device).map_err(|e| Error::Invalid(format!("method.decoder: {e}")))?;
    let net = PlrNet { backbone: context.backbone(&resnet), decoder };
    Ok(Box::new(Plr { net, optim: Trainer::new(context.optim), settings, device: context.device.clone() }))
}

/// `copies` rotations of one view: copy j turns every patch of `base` j quarter turns further.
fn turned_copies(base: &PatchRotation, copies: usize) -> Vec<PatchRotation> {
    (0..copies as u8)
        .map(|j| PatchRotation { grid: base.grid, turns: base.turns.iter().map(|t| (t + j) % 4).collect() })
        .collect()
}

impl PretextMethod for Plr {
    fn name(&self) -> &'static str {
        "plr"
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let seeds: Vec<u64> = images.iter().map(|_| rng.random()).collect();
        let (augment, grid, size, copies) =
            (&self.settings.augment, self.settings.grid, self.settings.augment.size, self.settings.copies);
        let (views, labels): (Vec<_>, Vec<Vec<u8>>) = images
            .par_iter()
            .zip(seeds)
            .flat_map_iter(|(image, seed)| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let view = augment.view(image, &mut rng).image;
                let base = PatchRotation::random(&mut rng, grid);
                turned_copies(&base, copies).into_iter().map(move |rotation| (rotation.apply(&view), rotation.labels(size)))
            })
            .unzip();
        let b = views.len();
        let targets: Vec<i64> = labels.iter().flatten().map(|&l| i64::from(l)).collect();
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, size, size]), &self.device);
        let features = self.net.backbone.forward(batch_tensor(&views, &self.device));
        let logits = resize_bilinear(self.net.decoder.forward(&features), size, size);
        let loss = masked_cross_entropy(logits.clone(), targets.clone(), -1);
        let hits = logits.detach().argmax(1).reshape([b, size, size]).equal(targets).int().sum().into_scalar::<i64>();
        let (net, loss_value) = self.optim.minimize(progress.lr, self.net.clone(), loss, |m: &PlrNet| &m.backbone);
        self.net = net;
        Ok(StepOutput { loss: loss_value, metrics: vec![("pixel_acc", hits as f64 / (b * size * size) as f64)] })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::segmenter::EncoderConfig;
    use crate::train::optim::OptimConfig;

    #[test]
    fn four_copies_show_every_patch_at_every_turn() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..20 {
            let base = PatchRotation::random(&mut rng, 3);
            let copies = turned_copies(&base, 4);
            assert_eq!(copies[0], base);
            for patch in 0..9 {
                let mut turns: Vec<u8> = copies.iter().map(|c| c.turns[patch]).collect();
                turns.sort();
                assert_eq!(turns, vec![0, 1, 2, 3], "patch {patch}");
            }
        }
        assert_eq!(turned_copies(&PatchRotation { grid: 1, turns: vec![3] }, 2)[1].turns, vec![0]);
    }

    #[test]
    fn grid_must_divide_the_view() {
        let device = Device::flex().autodiff();
        let encoder = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let optim = OptimConfig::default();
        let context = |view_size| BuildContext {
            init: None,
            encoder: &encoder,
            optim: &optim,
            view_size,
            settings: toml::toml! { grid = 3 },
            device: &device,
        };
        let e = build(context(32)).err().expect("32 is not divisible by 3").to_string();
        assert!(e.contains("method.grid = 3") && e.contains("32"), "{e}");
        assert!(build(context(33)).is_ok());
    }
}
