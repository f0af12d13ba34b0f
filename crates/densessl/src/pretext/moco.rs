//! MoCo v1 and v2 (He et al. 2020; Chen et al. 2020): a query encoder trained with InfoNCE
//! against keys from a momentum encoder and a queue of past keys. v1: linear 128-d
//! projection, τ 0.07, no blur; v2: 2-layer MLP projection, τ 0.2, blur (and cosine LR, set
//! in `[schedule]`). Layout after facebookresearch/moco
//! `builder.py`: side effects (momentum update, enqueue) in small named helpers.
//!
//! Shuffle-BN has no meaning on one device; its split-batch substitute is used instead: the
//! key batch is permuted and its BN statistics taken per each of `key_bn_groups` chunks, so a
//! key's BN statistics come from a different set of images than its query's (see [`Moco::keys`]).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::losses::{info_nce, l2_normalize};
use super::momentum::{momentum_update, split_batch_forward};
use super::queue::KeyQueue;
use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer};
use crate::train::state::{StateReader, StateWriter};
use crate::models::heads::{Head, HeadConfig};
use crate::models::projector::{Mlp, MlpConfig};
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;
use crate::{Error, Result};

/// Settings of MoCo (`[method]` in a pre-training config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MocoSettings {
    /// Projection dimension.
    pub dim: usize,
    /// `linear` (MoCo v1) or `mlp` (MoCo v2: Linear → ReLU → Linear).
    pub projector: String,
    /// Number of negative keys kept (65,536 in the paper).
    pub queue_size: usize,
    /// Softmax temperature τ.
    pub temperature: f64,
    /// Momentum m of the key encoder.
    pub momentum: f64,
    /// Number of chunks the key batch is split into for BN (shuffle-BN substitute); 1 = off.
    pub key_bn_groups: usize,
    /// The augmentation (its `size` is set from the training view size).
    pub augment: ViewAugment,
    /// EDMoCo only: the decoder (a segmentation head without its classifier) whose
    /// average-pooled output replaces the encoder's pooled C5.
    pub decoder: Option<HeadConfig>,
}

impl Default for MocoSettings {
    fn default() -> Self {
        Self {
            dim: 128,
            projector: "mlp".into(),
            queue_size: 65_536,
            temperature: 0.2,
            momentum: 0.999,
            key_bn_groups: 2,
            augment: ViewAugment::default(),
            decoder: None,
        }
    }
}

/// Encoder (+ decoder for EDMoCo) + projector: the network MoCo trains.
#[derive(Module, Debug)]
pub struct MocoNet {
    /// The encoder.
    pub backbone: ResNet,
    /// EDMoCo's decoder (its classifier unused).
    pub decoder: Option<Head>,
    /// The projector (one Linear for v1, Linear → ReLU → Linear for v2).
    pub projector: Mlp,
}

impl MocoNet {
    /// # Shapes
    /// `[B, 3, H, W]` → unit vectors `[B, dim]`
    pub fn embed(&self, x: Tensor<4>) -> Tensor<2> {
        let pooled = match &self.decoder {
            None => self.backbone.forward_pooled(x),
            Some(decoder) => {
                let decoded = decoder.decode(&self.backbone.forward(x));
                let [b, c, _, _] = decoded.dims();
                decoded.mean_dim(3).mean_dim(2).reshape([b, c])
            }
        };
        l2_normalize(self.projector.forward(pooled))
    }
}

/// Seed of the random initial queue.
pub const QUEUE_SEED: u64 = 0x5eed;

/// MoCo (v1 or v2) with its state.
pub struct Moco {
    name: &'static str,
    online: MocoNet,
    key: MocoNet,
    queue: KeyQueue,
    optim: Trainer,
    settings: MocoSettings,
    device: Device,
}

/// Builds `moco-v2` from its `[method]` settings.
pub fn build_v2(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    Ok(Box::new(Moco::new("moco-v2", MocoSettings::default(), context)?))
}

/// Builds `moco-v1`: linear projection, τ 0.07, MoCo v1's augmentation.
pub fn build_v1(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let defaults = MocoSettings {
        projector: "linear".into(),
        temperature: 0.07,
        augment: ViewAugment::moco_v1(224),
        ..MocoSettings::default()
    };
    Ok(Box::new(Moco::new("moco-v1", defaults, context)?))
}

impl Moco {
    /// Builds MoCo from its defaults overridden by the `[method]` settings.
    pub fn new(name: &'static str, defaults: MocoSettings, context: BuildContext) -> Result<Self> {
        let mut settings = super::parse_settings(defaults, context.settings.clone())?;
        settings.augment.size = context.view_size;
        if !matches!(settings.projector.as_str(), "linear" | "mlp") {
            return Err(Error::Invalid(format!("method.projector must be \"linear\" or \"mlp\", got \"{}\"", settings.projector)));
        }
        if settings.queue_size == 0 || settings.key_bn_groups == 0 {
            return Err(Error::Invalid("method.queue_size and method.key_bn_groups must be positive".into()));
        }
        match (name, &settings.decoder) {
            ("edmoco", None) => return Err(Error::Invalid("edmoco needs a [method.decoder] head".into())),
            (name, Some(_)) if name != "edmoco" => {
                return Err(Error::Invalid(format!("{name} takes no [method.decoder]: use name = \"edmoco\"")));
            }
            _ => {}
        }
        let device = context.device.clone();
        let resnet = context.encoder.resnet()?;
        let decoder = |device: &Device| super::decoder(settings.decoder.as_ref(), resnet.channels(), device);
        let c = settings.decoder.as_ref().map_or(resnet.channels()[3], HeadConfig::channels);
        let dims = if settings.projector == "linear" { vec![c, settings.dim] } else { vec![c, c, settings.dim] };
        let projector = || MlpConfig::new(dims.clone()).with_batch_norm(false).init(&device);
        let online = MocoNet { backbone: context.backbone(&resnet), decoder: decoder(&device)?, projector: projector() };
        let net = || -> Result<MocoNet> {
            Ok(MocoNet { backbone: resnet.init(&device), decoder: decoder(&device)?, projector: projector() })
        };
        // The key encoder starts as an exact copy (m = 0) and never receives gradients. It is
        // built separately: a clone would share the online network's lazily initialised params.
        let key = momentum_update(net()?.no_grad(), &online, 0.0);
        let queue = KeyQueue::random(settings.queue_size, settings.dim, QUEUE_SEED, &device);
        let optim = Trainer::new(context.optim);
        Ok(Moco { name, online, key, queue, optim, settings, device })
    }
}

impl Moco {
    /// Keys of the momentum encoder, with the split-batch substitute for shuffle-BN.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, dim]`
    fn keys(&self, x: Tensor<4>, rng: &mut ChaCha8Rng) -> Tensor<2> {
        split_batch_forward(x, self.settings.key_bn_groups, rng, |x| self.key.embed(x))
    }
}

impl PretextMethod for Moco {
    fn name(&self) -> &'static str {
        self.name
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let augment = &self.settings.augment;
        let (v1, v2) = super::two_views(augment, augment, images, rng);
        let (xq, xk) = (batch_tensor(&v1, &self.device), batch_tensor(&v2, &self.device));
        let queries = self.online.embed(xq);
        // MoCo updates the key encoder before computing this step's keys.
        self.key = momentum_update(self.key.clone(), &self.online, self.settings.momentum);
        let keys = self.keys(xk, rng);
        let (loss, accuracy) = info_nce(queries, keys.clone(), self.queue.rows(), self.settings.temperature);
        let (online, loss_value) = self.optim.minimize(progress.lr, self.online.clone(), loss, |m: &MocoNet| &m.backbone);
        self.online = online;
        self.queue.push(keys);
        Ok(StepOutput { loss: loss_value, metrics: vec![("acc1", accuracy)] })
    }

    fn encoder(&self) -> ResNet {
        self.online.backbone.clone()
    }

    fn save_state(&self, out: &StateWriter) -> Result<()> {
        out.module("online", &self.online)?;
        out.module("key", &self.key)?;
        out.queue("queue", &self.queue)?;
        self.optim.save_state(out)
    }

    fn load_state(&mut self, from: &StateReader) -> Result<()> {
        self.online = from.module("online", self.online.clone())?;
        self.key = from.module("key", self.key.clone())?;
        from.queue("queue", &mut self.queue, &self.device)?;
        self.optim.load_state(from)
    }

    fn settings(&self) -> toml::Table {
        super::settings_table(&self.settings)
    }

    fn notes(&self) -> serde_json::Value {
        super::momentum::split_batch_note(self.settings.key_bn_groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use rand::SeedableRng;
    use crate::models::segmenter::EncoderConfig;
    use crate::train::optim::OptimConfig;

    fn tiny(queue_size: usize) -> Moco {
        let encoder = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let mut settings = toml::Table::new();
        settings.insert("queue_size".into(), toml::Value::Integer(queue_size as i64));
        settings.insert("dim".into(), toml::Value::Integer(8));
        let device = Device::flex().autodiff();
        let context = BuildContext { init: None, encoder: &encoder, optim: &OptimConfig::default(), view_size: 32, settings, device: &device };
        Moco::new("moco-v2", MocoSettings::default(), context).unwrap()
    }

    #[test]
    fn split_batch_keys_come_back_in_input_order() {
        // With BN in eval mode grouping cannot change a key, so any mismatch is a permutation bug.
        let mut m = tiny(16);
        m.key = m.key.valid();
        m.device = Device::flex();
        let data: Vec<f32> = (0..6 * 3 * 32 * 32).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let x = Tensor::<4>::from_data(TensorData::new(data, [6, 3, 32, 32]), &m.device);
        let expected: Vec<f32> = m.key.embed(x.clone()).into_data().try_to_vec().unwrap();
        m.settings.key_bn_groups = 3;
        let got: Vec<f32> = m.keys(x, &mut ChaCha8Rng::seed_from_u64(1)).into_data().try_to_vec().unwrap();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn keys_come_from_the_momentum_network() {
        // EDMoCo's too: a decoder makes no difference to where keys come from.
        let mut m = tiny(16);
        let x = Tensor::<4>::from_data(
            TensorData::new((0..4 * 3 * 32 * 32).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect::<Vec<f32>>(), [4, 3, 32, 32]),
            &m.device,
        );
        let values = |t: Tensor<2>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
        let before = values(m.keys(x.clone(), &mut ChaCha8Rng::seed_from_u64(1)));
        let other = tiny(16);
        m.online = other.key.clone();
        assert_eq!(values(m.keys(x.clone(), &mut ChaCha8Rng::seed_from_u64(1))), before);
        m.key = other.key;
        assert_ne!(values(m.keys(x, &mut ChaCha8Rng::seed_from_u64(1))), before);
    }

    #[test]
    fn steps_on_a_fixed_batch_lower_the_loss_against_a_fixed_queue() {
        for (name, defaults) in [("moco-v1", ViewAugment::moco_v1(32)), ("moco-v2", ViewAugment::moco_v2(32))] {
            let mut m = tiny(64);
            m.name = name;
            m.settings.augment = defaults;
            m.settings.momentum = 0.0; // keys follow the online network at once
            let images: Vec<RgbImage> = (0..8u32)
                .map(|i| RgbImage::from_fn(40, 40, |x, y| image::Rgb([((x * (i + 1)) % 256) as u8, ((y * 7 + i * 30) % 256) as u8, (i * 31) as u8])))
                .collect();
            let batch: Vec<&RgbImage> = images.iter().collect();
            let initial_queue = m.queue.clone();
            let mut losses = Vec::new();
            for step in 0..6 {
                m.queue = initial_queue.clone();
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                losses.push(m.step(&batch, &mut rng, Progress { lr: 0.05, step, total: 6 }).unwrap().loss);
            }
            assert!(losses[5] < losses[0], "{name}: {losses:?}");
        }
    }
}
