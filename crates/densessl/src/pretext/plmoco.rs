//! PLMoCo, Patch-level MoCo (this project's design notes): momentum contrast between the
//! *cells* of two views' feature maps. A cell of view A is matched to the cell of view B
//! that shows the same point of the image (through the views' exact maps, see
//! [`crate::views::pair`]); that key cell is its positive, every other key cell of the batch
//! and a queue of past key cells are its negatives. Cells are projected by a 1×1-conv MLP.
//! `pledmoco` is the same task on a decoder's output map instead of the encoder's.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dense::{cells_as_rows, index_tensor, matched_rows, normalize_cells, views_with_pairs};
use super::losses::info_nce_among;
use super::momentum::{momentum_update, split_batch_forward};
use super::queue::KeyQueue;
use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings};
use crate::train::state::{StateReader, StateWriter};
use crate::models::heads::{Head, HeadConfig};
use crate::models::projector::{ConvMlp, ConvMlpConfig};
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;
use crate::views::pair::CellMatches;
use crate::{Error, Result};

/// Settings of PLMoCo and PLEDMoCo (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlMocoSettings {
    /// Projection dimension per cell.
    pub dim: usize,
    /// Hidden width of the 1×1-conv projector; 0 = the feature map's channels.
    pub hidden: usize,
    /// Number of negative key cells kept.
    pub queue_size: usize,
    /// Key cells of each image pushed to the queue per step (drawn at random).
    pub enqueue_per_image: usize,
    /// Softmax temperature τ.
    pub temperature: f64,
    /// Momentum m of the key network.
    pub momentum: f64,
    /// Chunks of the key batch for BN (shuffle-BN substitute); 1 = off.
    pub key_bn_groups: usize,
    /// PLMoCo: the encoder map whose cells are contrasted, `c4` or `c5`.
    pub layer: String,
    /// PLEDMoCo: the decoder whose output cells are contrasted (classifier unused).
    pub decoder: Option<HeadConfig>,
    /// The augmentation of both views (its `size` is set from the training view size).
    pub augment: ViewAugment,
}

impl Default for PlMocoSettings {
    fn default() -> Self {
        Self {
            dim: 128,
            hidden: 0,
            queue_size: 16_384,
            enqueue_per_image: 4,
            temperature: 0.2,
            momentum: 0.999,
            key_bn_groups: 2,
            layer: "c5".into(),
            decoder: None,
            augment: ViewAugment::default(),
        }
    }
}

/// Encoder (+ decoder) + cell projector.
#[derive(Module, Debug)]
pub struct PlMocoNet {
    /// The encoder.
    pub backbone: ResNet,
    /// PLEDMoCo's decoder.
    pub decoder: Option<Head>,
    /// 1×1 conv → ReLU → 1×1 conv.
    pub projector: ConvMlp,
    /// Use C4 instead of C5 (no decoder only).
    pub use_c4: bool,
}

impl PlMocoNet {
    /// Unit embeddings of every cell of the contrasted map.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, dim, h, w]`
    pub fn cells(&self, x: Tensor<4>) -> Tensor<4> {
        let features = self.backbone.forward(x);
        let map = match &self.decoder {
            Some(decoder) => decoder.decode(&features),
            None if self.use_c4 => features.c4,
            None => features.c5,
        };
        normalize_cells(self.projector.forward(map))
    }
}

/// PLMoCo or PLEDMoCo with its state.
pub struct PlMoco {
    name: &'static str,
    online: PlMocoNet,
    key: PlMocoNet,
    queue: KeyQueue,
    optim: Trainer,
    settings: PlMocoSettings,
    device: Device,
}

/// Builds `plmoco` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    Ok(Box::new(PlMoco::new("plmoco", PlMocoSettings::default(), context)?))
}

impl PlMoco {
    /// Builds the method from its defaults overridden by the `[method]` settings.
    pub fn new(name: &'static str, defaults: PlMocoSettings, context: BuildContext) -> Result<Self> {
        let mut settings = parse_settings(defaults, context.settings.clone())?;
        settings.augment.size = context.view_size;
        if settings.queue_size == 0 || settings.key_bn_groups == 0 || settings.dim == 0 {
            return Err(Error::Invalid("method.queue_size, dim and key_bn_groups must be positive".into()));
        }
        match (name, &settings.decoder) {
            ("pledmoco", None) => return Err(Error::Invalid("pledmoco needs a [method.decoder] head".into())),
            ("plmoco", Some(_)) => {
                return Err(Error::Invalid("plmoco takes no [method.decoder]: use name = \"pledmoco\"".into()));
            }
            _ => {}
        }
        if !matches!(settings.layer.as_str(), "c4" | "c5") {
            return Err(Error::Invalid(format!("method.layer must be \"c4\" or \"c5\", got \"{}\"", settings.layer)));
        }
        let device = context.device.clone();
        let resnet = context.encoder.resnet()?;
        let channels = match &settings.decoder {
            Some(head) => head.channels(),
            None if settings.layer == "c4" => resnet.channels()[2],
            None => resnet.channels()[3],
        };
        let hidden = if settings.hidden == 0 { channels } else { settings.hidden };
        let decoder = |device: &Device| super::decoder(settings.decoder.as_ref(), resnet.channels(), device);
        let use_c4 = settings.layer == "c4";
        let projector = || ConvMlpConfig::new(vec![channels, hidden, settings.dim]).init(&device);
        let online = PlMocoNet { backbone: context.backbone(&resnet), decoder: decoder(&device)?, projector: projector(), use_c4 };
        let fresh = PlMocoNet { backbone: resnet.init(&device), decoder: decoder(&device)?, projector: projector(), use_c4 };
        // An exact copy that never receives gradients (built apart: a clone would share the
        // online network's lazily initialised parameters).
        let key = momentum_update(fresh.no_grad(), &online, 0.0);
        let queue = KeyQueue::random(settings.queue_size, settings.dim, super::moco::QUEUE_SEED, &device);
        Ok(Self { name, online, key, queue, optim: Trainer::new(context.optim), settings, device })
    }

    /// Key cells from the momentum network, with the split-batch BN substitute.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, dim, h, w]`
    pub fn key_cells(&self, x: Tensor<4>, rng: &mut ChaCha8Rng) -> Tensor<4> {
        split_batch_forward(x, self.settings.key_bn_groups, rng, |x| self.key.cells(x))
    }

    /// `enqueue_per_image` random key cells of every image.
    fn enqueue(&mut self, key_rows: Tensor<2>, images: usize, cells_per_image: usize, rng: &mut ChaCha8Rng) {
        let per_image = self.settings.enqueue_per_image.min(cells_per_image);
        if per_image == 0 {
            return;
        }
        let rows: Vec<i64> = (0..images)
            .flat_map(|i| rand::seq::index::sample(rng, cells_per_image, per_image).into_iter().map(move |c| (i * cells_per_image + c) as i64))
            .collect();
        self.queue.push(key_rows.select(0, index_tensor(rows, &self.device)));
    }
}

impl PretextMethod for PlMoco {
    fn name(&self) -> &'static str {
        self.name
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let augment = &self.settings.augment;
        let views = views_with_pairs(augment, augment, images, rng);
        let (xq, xk) = (batch_tensor(&views.first, &self.device), batch_tensor(&views.second, &self.device));
        let queries = self.online.cells(xq);
        self.key = momentum_update(self.key.clone(), &self.online, self.settings.momentum);
        let keys = self.key_cells(xk, rng);
        let ([_, _, ha, wa], [_, _, hb, wb]) = (queries.dims(), keys.dims());
        let matches: Vec<CellMatches> = views.pairs.iter().map(|pair| pair.match_cells((ha, wa), (hb, wb))).collect();
        let (query_rows, key_rows) = matched_rows(&matches);
        let matched = query_rows.len() as f64 / (images.len() * ha * wa) as f64;
        let key_cells = cells_as_rows(keys);
        if query_rows.is_empty() {
            // No cell of any first view lies in its second view: nothing to learn from.
            return Ok(StepOutput { loss: 0.0, metrics: vec![("matched", 0.0)] });
        }
        let queries = cells_as_rows(queries).select(0, index_tensor(query_rows, &self.device));
        let positive = index_tensor(key_rows, &self.device);
        let (loss, acc) = info_nce_among(queries, key_cells.clone(), positive, self.queue.rows(), self.settings.temperature);
        let (online, loss_value) = self.optim.minimize(progress.lr, self.online.clone(), loss, |m: &PlMocoNet| &m.backbone);
        self.online = online;
        self.enqueue(key_cells, images.len(), hb * wb, rng);
        Ok(StepOutput { loss: loss_value, metrics: vec![("acc1", acc), ("matched", matched)] })
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
    use crate::models::segmenter::EncoderConfig;
    use crate::train::optim::OptimConfig;
    use burn::tensor::TensorData;
    use rand::{Rng, SeedableRng};

    /// Random-noise images.
    fn random_images(count: u32, side: u32, rng: &mut impl Rng) -> Vec<RgbImage> {
        (0..count).map(|_| RgbImage::from_fn(side, side, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()]))).collect()
    }

    fn tiny(name: &'static str, settings: toml::Table) -> Result<PlMoco> {
        let encoder = EncoderConfig { base_width: 4, output_stride: 8, ..EncoderConfig::default() };
        let device = Device::flex().autodiff();
        let context =
            BuildContext { init: None, encoder: &encoder, optim: &OptimConfig::default(), view_size: 32, settings, device: &device };
        PlMoco::new(name, PlMocoSettings::default(), context)
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn keys_come_from_the_momentum_network() {
        let mut m = tiny("plmoco", toml::toml! { queue_size = 16 dim = 8 key_bn_groups = 1 }).unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..2 * 3 * 32 * 32).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect::<Vec<f32>>(), [2, 3, 32, 32]),
            &m.device,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let before = values(m.key_cells(x.clone(), &mut rng));
        // Replacing the online network changes nothing on the key side ...
        let other = tiny("plmoco", toml::toml! { queue_size = 16 dim = 8 }).unwrap();
        m.online = other.key.clone();
        assert_eq!(values(m.key_cells(x.clone(), &mut rng)), before);
        // ... replacing the key network does.
        m.key = other.key;
        assert_ne!(values(m.key_cells(x, &mut rng)), before);
    }

    #[test]
    fn decoder_and_layer_are_checked() {
        let e = tiny("plmoco", toml::toml! { decoder = { name = "fcn" } }).err().unwrap().to_string();
        assert!(e.contains("pledmoco"), "{e}");
        let e = tiny("pledmoco", toml::Table::new()).err().unwrap().to_string();
        assert!(e.contains("[method.decoder]"), "{e}");
        let e = tiny("plmoco", toml::toml! { layer = "c3" }).err().unwrap().to_string();
        assert!(e.contains("method.layer"), "{e}");
    }

    #[test]
    fn a_step_on_c4_reports_matches_and_fills_the_queue() {
        let mut m = tiny("plmoco", toml::toml! { queue_size = 64 dim = 8 layer = "c4" enqueue_per_image = 3 }).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let images = random_images(4, 40, &mut rng);
        let batch: Vec<&RgbImage> = images.iter().collect();
        let out = m.step(&batch, &mut rng, Progress { lr: 0.01, step: 0, total: 1 }).unwrap();
        assert!(out.loss.is_finite() && out.loss > 0.0);
        let matched = out.metrics.iter().find(|(k, _)| *k == "matched").unwrap().1;
        assert!(matched > 0.0 && matched <= 1.0, "{matched}");
        assert_eq!(m.queue.position(), 4 * 3);
    }
}
