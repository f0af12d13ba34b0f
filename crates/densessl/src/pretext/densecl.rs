//! DenseCL (Wang et al. 2021): MoCo v2's global InfoNCE plus a dense InfoNCE between the
//! cells of the two views' C5 maps, weighted `1 − dense_weight` and `dense_weight` (0.5).
//! Unlike PLMoCo, cells are matched by *feature similarity*: each query cell's positive is
//! the key cell whose backbone feature is most similar to its own (argmax of cosine). Dense
//! projection head: 1×1 conv → ReLU → 1×1 conv. The dense queue holds each key image's mean
//! dense embedding, as in the reference. The dense loss can be held at weight 0 for the first
//! `dense_warmup_steps` steps (mmselfsup's `DenseCLHook`).
//!
//! Known trap (lightly's example): keys must come from the momentum network — see
//! [`DenseCl::keys`] and its test.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dense::{cells_as_rows, normalize_cells};
use super::losses::{info_nce, l2_normalize};
use super::momentum::{momentum_update, split_batch_forward};
use super::queue::KeyQueue;
use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings, two_views};
use crate::train::state::{StateReader, StateWriter};
use crate::models::projector::{ConvMlp, ConvMlpConfig, Mlp, MlpConfig};
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;
use crate::{Error, Result};

/// Settings of DenseCL (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DenseClSettings {
    /// Projection dimension (global and dense).
    pub dim: usize,
    /// Hidden width of both projectors; 0 = C5's channels.
    pub hidden: usize,
    /// Rows of each of the two queues.
    pub queue_size: usize,
    /// Softmax temperature τ (both losses).
    pub temperature: f64,
    /// Momentum m of the key network.
    pub momentum: f64,
    /// Chunks of the key batch for BN (shuffle-BN substitute); 1 = off.
    pub key_bn_groups: usize,
    /// λ: loss = (1 − λ)·global + λ·dense.
    pub dense_weight: f64,
    /// Steps at the start during which λ = 0 (global loss only).
    pub dense_warmup_steps: usize,
    /// The augmentation of both views (MoCo v2's; its `size` follows the view size).
    pub augment: ViewAugment,
}

impl Default for DenseClSettings {
    fn default() -> Self {
        Self {
            dim: 128,
            hidden: 0,
            queue_size: 65_536,
            temperature: 0.2,
            momentum: 0.999,
            key_bn_groups: 2,
            dense_weight: 0.5,
            dense_warmup_steps: 0,
            augment: ViewAugment::default(),
        }
    }
}

/// Encoder + global projector + dense projector.
#[derive(Module, Debug)]
pub struct DenseClNet {
    /// The encoder.
    pub backbone: ResNet,
    /// Linear → ReLU → Linear on pooled C5.
    pub projector: Mlp,
    /// 1×1 conv → ReLU → 1×1 conv on every C5 cell.
    pub dense_projector: ConvMlp,
}

/// What one branch computes for a batch.
pub type DenseClOutput = (Tensor<2>, Tensor<4>, Tensor<4>);

impl DenseClNet {
    /// Unit global embeddings, unit dense embeddings and unit backbone cells (for matching).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → (`[B, dim]`, `[B, dim, h, w]`, `[B, C5, h, w]`)
    pub fn forward(&self, x: Tensor<4>) -> DenseClOutput {
        let c5 = self.backbone.forward(x).c5;
        let [b, c, _, _] = c5.dims();
        let pooled = c5.clone().mean_dim(3).mean_dim(2).reshape([b, c]);
        (l2_normalize(self.projector.forward(pooled)), normalize_cells(self.dense_projector.forward(c5.clone())), normalize_cells(c5))
    }
}

/// For every query cell, the key cell of the same image with the most similar backbone
/// feature (cosine; inputs are unit cells). Row-major cell indices.
///
/// # Shapes
/// `[B, C, h, w]`, `[B, C, h', w']` → `[B, h·w]` (values < h'·w')
pub fn match_by_similarity(query_cells: Tensor<4>, key_cells: Tensor<4>) -> Tensor<2, Int> {
    let ([b, c, h, w], [_, _, hk, wk]) = (query_cells.dims(), key_cells.dims());
    let q = query_cells.reshape([b, c, h * w]).swap_dims(1, 2); // [B, S, C]
    let k = key_cells.reshape([b, c, hk * wk]); // [B, C, S']
    q.matmul(k).argmax(2).reshape([b, h * w])
}

/// DenseCL with its state.
pub struct DenseCl {
    online: DenseClNet,
    key: DenseClNet,
    queue: KeyQueue,
    dense_queue: KeyQueue,
    optim: Trainer,
    settings: DenseClSettings,
    device: Device,
}

/// Builds `densecl` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    Ok(Box::new(DenseCl::new(context)?))
}

impl DenseCl {
    fn new(context: BuildContext) -> Result<Self> {
        let mut settings = parse_settings(DenseClSettings::default(), context.settings.clone())?;
        settings.augment.size = context.view_size;
        if settings.queue_size == 0 || settings.key_bn_groups == 0 || settings.dim == 0 {
            return Err(Error::Invalid("method.queue_size, dim and key_bn_groups must be positive".into()));
        }
        if !(0.0..=1.0).contains(&settings.dense_weight) {
            return Err(Error::Invalid(format!("method.dense_weight must be in [0, 1], got {}", settings.dense_weight)));
        }
        let device = context.device.clone();
        let resnet = context.encoder.resnet()?;
        let c5 = resnet.channels()[3];
        let hidden = if settings.hidden == 0 { c5 } else { settings.hidden };
        let heads = || {
            (
                MlpConfig::new(vec![c5, hidden, settings.dim]).with_batch_norm(false).init(&device),
                ConvMlpConfig::new(vec![c5, hidden, settings.dim]).init(&device),
            )
        };
        let (projector, dense_projector) = heads();
        let online = DenseClNet { backbone: context.backbone(&resnet), projector, dense_projector };
        let (projector, dense_projector) = heads();
        let fresh = DenseClNet { backbone: resnet.init(&device), projector, dense_projector };
        let key = momentum_update(fresh.no_grad(), &online, 0.0);
        let queue = KeyQueue::random(settings.queue_size, settings.dim, super::moco::QUEUE_SEED, &device);
        let dense_queue = KeyQueue::random(settings.queue_size, settings.dim, super::moco::QUEUE_SEED + 1, &device);
        Ok(Self { online, key, queue, dense_queue, optim: Trainer::new(context.optim), settings, device })
    }

    /// The key branch: the momentum network with the split-batch BN substitute.
    pub fn keys(&self, x: Tensor<4>, rng: &mut ChaCha8Rng) -> DenseClOutput {
        split_batch_forward(x, self.settings.key_bn_groups, rng, |x| self.key.forward(x))
    }

    /// λ at `step`.
    fn dense_weight(&self, step: usize) -> f64 {
        if step < self.settings.dense_warmup_steps { 0.0 } else { self.settings.dense_weight }
    }
}

impl PretextMethod for DenseCl {
    fn name(&self) -> &'static str {
        "densecl"
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let augment = &self.settings.augment;
        let (v1, v2) = two_views(augment, augment, images, rng);
        let (xq, xk) = (batch_tensor(&v1, &self.device), batch_tensor(&v2, &self.device));
        let (q_global, q_dense, q_cells) = self.online.forward(xq);
        self.key = momentum_update(self.key.clone(), &self.online, self.settings.momentum);
        let (k_global, k_dense, k_cells) = self.keys(xk, rng);
        let tau = self.settings.temperature;
        let (global_loss, global_accuracy) = info_nce(q_global, k_global.clone(), self.queue.rows(), tau);

        // Dense: each query cell's positive is the key cell its backbone feature resembles most.
        let [b, d, hk, wk] = k_dense.dims();
        let [_, _, h, w] = q_dense.dims();
        let nearest = match_by_similarity(q_cells.detach(), k_cells); // [B, S]
        let k_flat = k_dense.clone().reshape([b, d, hk * wk]);
        let positives = k_flat.clone().gather(2, nearest.reshape([b, 1, h * w]).repeat_dim(1, d)); // [B, D, S]
        let positives = cells_as_rows(positives.reshape([b, d, h, w]));
        let (dense_loss, dense_accuracy) = info_nce(cells_as_rows(q_dense), positives, self.dense_queue.rows(), tau);

        let lambda = self.dense_weight(progress.step);
        let loss = global_loss.clone() * (1.0 - lambda) + dense_loss.clone() * lambda;
        let parts = [global_loss, dense_loss].map(|t| t.into_scalar::<f32>() as f64);
        let (online, loss_value) = self.optim.minimize(progress.lr, self.online.clone(), loss, |m: &DenseClNet| &m.backbone);
        self.online = online;
        self.queue.push(k_global);
        self.dense_queue.push(l2_normalize(k_flat.mean_dim(2).reshape([b, d])));
        Ok(StepOutput {
            loss: loss_value,
            metrics: vec![
                ("loss_global", parts[0]),
                ("loss_dense", parts[1]),
                ("acc1", global_accuracy),
                ("acc1_dense", dense_accuracy),
            ],
        })
    }

    fn encoder(&self) -> ResNet {
        self.online.backbone.clone()
    }

    fn save_state(&self, out: &StateWriter) -> Result<()> {
        out.module("online", &self.online)?;
        out.module("key", &self.key)?;
        out.queue("queue", &self.queue)?;
        out.queue("dense_queue", &self.dense_queue)?;
        self.optim.save_state(out)
    }

    fn load_state(&mut self, from: &StateReader) -> Result<()> {
        self.online = from.module("online", self.online.clone())?;
        self.key = from.module("key", self.key.clone())?;
        from.queue("queue", &mut self.queue, &self.device)?;
        from.queue("dense_queue", &mut self.dense_queue, &self.device)?;
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
    use rand::SeedableRng;

    fn tiny() -> DenseCl {
        let encoder = EncoderConfig { base_width: 4, output_stride: 8, ..EncoderConfig::default() };
        let device = Device::flex().autodiff();
        let settings = toml::toml! { queue_size = 16 dim = 8 key_bn_groups = 1 };
        let context =
            BuildContext { init: None, encoder: &encoder, optim: &OptimConfig::default(), view_size: 32, settings, device: &device };
        DenseCl::new(context).unwrap()
    }

    #[test]
    fn similarity_matching_recovers_a_permutation_of_cells() {
        // Key cells = query cells permuted within each image: the argmax must undo it.
        let device = Device::flex();
        let (b, c, h, w) = (2, 5, 2, 3);
        let s = h * w;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let q: Vec<f32> = (0..b * c * s).map(|_| rand::Rng::random_range(&mut rng, -1.0..1.0)).collect();
        let perm = [4usize, 0, 5, 1, 3, 2]; // key cell j shows query cell perm[j]
        let mut k = vec![0.0; b * c * s];
        for i in 0..b {
            for ch in 0..c {
                for j in 0..s {
                    k[(i * c + ch) * s + j] = q[(i * c + ch) * s + perm[j]];
                }
            }
        }
        let tensor = |v: Vec<f32>| normalize_cells(Tensor::<4>::from_data(TensorData::new(v, [b, c, h, w]), &device));
        let nearest: Vec<i64> = match_by_similarity(tensor(q), tensor(k)).into_data().convert::<i64>().try_to_vec().unwrap();
        for i in 0..b {
            for cell in 0..s {
                assert_eq!(perm[nearest[i * s + cell] as usize], cell);
            }
        }
    }

    #[test]
    fn keys_come_from_the_momentum_network() {
        let mut m = tiny();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..2 * 3 * 32 * 32).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect::<Vec<f32>>(), [2, 3, 32, 32]),
            &m.device,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let values = |o: DenseClOutput| -> Vec<f32> { o.1.into_data().try_to_vec().unwrap() };
        let before = values(m.keys(x.clone(), &mut rng));
        let other = tiny();
        m.online = other.key.clone();
        assert_eq!(values(m.keys(x.clone(), &mut rng)), before);
        m.key = other.key;
        assert_ne!(values(m.keys(x, &mut rng)), before);
    }

    #[test]
    fn warm_up_holds_the_dense_weight_at_zero() {
        let mut m = tiny();
        m.settings.dense_warmup_steps = 3;
        assert_eq!([m.dense_weight(0), m.dense_weight(2), m.dense_weight(3)], [0.0, 0.0, 0.5]);
    }
}
