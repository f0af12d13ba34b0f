//! PixPro (Xie et al. 2021): pixel-to-propagation consistency. Online: encoder → 1×1-conv
//! projector (with BN) → pixel propagation module (PPM: each cell becomes the sum of every
//! cell's transformed feature, weighted by relu(cos)^γ). Target: a momentum copy of encoder
//! and projector. Positive pairs are cells whose centres, in the *original* image, lie closer
//! than `ratio` (0.7) × the larger cell diagonal — taken from the views' maps
//! ([`crate::views::pair::ViewPair::positive_cells`]). Loss: −2 × the mean cosine over
//! positive pairs per image, both directions summed. The target's momentum rises from
//! `base_momentum` to 1 by a cosine, as in BYOL; BYOL's asymmetric augmentation.

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::byol::target_momentum;
use super::dense::{normalize_cells, views_with_pairs};
use super::momentum::momentum_update;
use super::{BuildContext, PretextMethod, Progress, StepOutput, Trainer, parse_settings};
use crate::train::state::{StateReader, StateWriter};
use crate::models::projector::{ConvMlp, ConvMlpConfig};
use crate::models::resnet::ResNet;
use crate::views::augment::ViewAugment;
use crate::views::batch_tensor;
use crate::views::pair::ViewPair;
use crate::{Error, Result};

/// Settings of PixPro (`[method]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PixProSettings {
    /// Projection dimension per cell (256).
    pub dim: usize,
    /// Hidden width of the projector; 0 = twice C5's channels.
    pub hidden: usize,
    /// Positive when the centres are closer than `ratio` × the larger cell diagonal (0.7).
    pub ratio: f32,
    /// Sharpness γ of the propagation weights relu(cos)^γ (2).
    pub gamma: f64,
    /// Layers of the PPM's value transform: 0 (identity), 1 (1×1 conv) or 2 (conv-BN-ReLU-conv).
    pub transform_layers: usize,
    /// Target momentum at the start; it rises to 1 by a cosine (0.99).
    pub base_momentum: f64,
    /// Augmentation of the first view.
    pub augment_first: ViewAugment,
    /// Augmentation of the second view.
    pub augment_second: ViewAugment,
}

impl Default for PixProSettings {
    fn default() -> Self {
        Self {
            dim: 256,
            hidden: 0,
            ratio: 0.7,
            gamma: 2.0,
            transform_layers: 1,
            base_momentum: 0.99,
            augment_first: ViewAugment::byol(224, false),
            augment_second: ViewAugment::byol(224, true),
        }
    }
}

/// Encoder + projector (what the target network mirrors).
#[derive(Module, Debug)]
pub struct PixProNet {
    /// The encoder.
    pub backbone: ResNet,
    /// 1×1 conv → BN → ReLU → 1×1 conv on every C5 cell.
    pub projector: ConvMlp,
}

impl PixProNet {
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, dim, h, w]`
    pub fn project(&self, x: Tensor<4>) -> Tensor<4> {
        self.projector.forward(self.backbone.forward(x).c5)
    }
}

/// The pixel propagation module.
#[derive(Module, Debug)]
pub struct PixelPropagation {
    /// The value transform g (none = identity).
    pub transform: Option<ConvMlp>,
    /// γ.
    pub gamma: f64,
}

impl PixelPropagation {
    /// y_i = Σ_j relu(cos(x_i, x_j))^γ · g(x_j), over the cells of one image.
    ///
    /// # Shapes
    /// `[B, C, h, w]` → `[B, C, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let unit = normalize_cells(x.clone()).reshape([b, c, h * w]);
        let weights = relu(unit.clone().swap_dims(1, 2).matmul(unit)).powf_scalar(self.gamma); // [B, S, S]
        let values = match &self.transform {
            Some(g) => g.forward(x),
            None => x,
        };
        values.reshape([b, c, h * w]).matmul(weights.swap_dims(1, 2)).reshape([b, c, h, w])
    }
}

/// The trained part.
#[derive(Module, Debug)]
pub struct PixProOnline {
    /// Encoder + projector.
    pub net: PixProNet,
    /// Pixel propagation.
    pub ppm: PixelPropagation,
}

/// PixPro with its state.
pub struct PixPro {
    online: PixProOnline,
    target: PixProNet,
    optim: Trainer,
    settings: PixProSettings,
    device: Device,
}

/// Builds `pixpro` from its `[method]` settings.
pub fn build(context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    Ok(Box::new(PixPro::new(context)?))
}

/// PixPro's regression loss: −2 × the mean, over images, of the mean cosine between
/// `predicted` and `target` cells over positive pairs (`mask`, per image `[|A|, |B|]`
/// row-major, as [`ViewPair::positive_cells`] gives it).
///
/// # Shapes
/// `[B, D, h, w]`, `[B, D, h', w']`, mask `B·h·w·h'·w'` → `[1]`
pub fn propagation_loss(predicted: Tensor<4>, target: Tensor<4>, mask: &[bool]) -> Tensor<1> {
    let ([b, d, h, w], [_, _, ht, wt]) = (predicted.dims(), target.dims());
    let (sa, sb) = (h * w, ht * wt);
    assert_eq!(mask.len(), b * sa * sb, "mask size");
    let p = normalize_cells(predicted).reshape([b, d, sa]).swap_dims(1, 2); // [B, Sa, D]
    let t = normalize_cells(target).reshape([b, d, sb]); // [B, D, Sb]
    let mask = Tensor::<3>::from_data(
        TensorData::new(mask.iter().map(|&m| f32::from(u8::from(m))).collect::<Vec<f32>>(), [b, sa, sb]),
        &p.device(),
    );
    let count = mask.clone().sum_dim(2).sum_dim(1).reshape([b]); // [B]
    let cosine = (p.matmul(t) * mask).sum_dim(2).sum_dim(1).reshape([b]);
    (cosine / (count + 1e-6)).mean() * -2.0
}

impl PixPro {
    fn new(context: BuildContext) -> Result<Self> {
        let mut settings = parse_settings(PixProSettings::default(), context.settings.clone())?;
        settings.augment_first.size = context.view_size;
        settings.augment_second.size = context.view_size;
        if settings.transform_layers > 2 || settings.dim == 0 || settings.ratio <= 0.0 {
            return Err(Error::Invalid("method.transform_layers must be 0, 1 or 2; dim and ratio positive".into()));
        }
        let device = context.device.clone();
        let resnet = context.encoder.resnet()?;
        let c5 = resnet.channels()[3];
        let hidden = if settings.hidden == 0 { 2 * c5 } else { settings.hidden };
        let projector = || ConvMlpConfig::new(vec![c5, hidden, settings.dim]).with_batch_norm(true).init(&device);
        let transform = match settings.transform_layers {
            0 => None,
            1 => Some(ConvMlpConfig::new(vec![settings.dim, settings.dim]).init(&device)),
            _ => Some(ConvMlpConfig::new(vec![settings.dim; 3]).with_batch_norm(true).init(&device)),
        };
        let ppm = PixelPropagation { transform, gamma: settings.gamma };
        let online = PixProOnline { net: PixProNet { backbone: context.backbone(&resnet), projector: projector() }, ppm };
        let fresh = PixProNet { backbone: resnet.init(&device), projector: projector() };
        let target = momentum_update(fresh.no_grad(), &online.net, 0.0);
        Ok(Self { online, target, optim: Trainer::new(context.optim), settings, device })
    }

    /// The target branch (momentum network, no gradient).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, dim, h, w]`
    pub fn targets(&self, x: Tensor<4>) -> Tensor<4> {
        self.target.project(x).detach()
    }
}

/// Per-image positive masks of a batch, concatenated.
fn positive_masks(pairs: &[ViewPair], grid_a: (usize, usize), grid_b: (usize, usize), ratio: f32) -> Vec<bool> {
    pairs.iter().flat_map(|pair| pair.positive_cells(grid_a, grid_b, ratio)).collect()
}

impl PretextMethod for PixPro {
    fn name(&self) -> &'static str {
        "pixpro"
    }

    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput> {
        let views = views_with_pairs(&self.settings.augment_first, &self.settings.augment_second, images, rng);
        let (x1, x2) = (batch_tensor(&views.first, &self.device), batch_tensor(&views.second, &self.device));
        let (p1, p2) = (self.online.net.project(x1.clone()), self.online.net.project(x2.clone()));
        let (y1, y2) = (self.online.ppm.forward(p1), self.online.ppm.forward(p2));
        let momentum = target_momentum(self.settings.base_momentum, progress.step, progress.total);
        self.target = momentum_update(self.target.clone(), &self.online.net, momentum);
        let (t1, t2) = (self.targets(x1), self.targets(x2));
        let ([_, _, h1, w1], [_, _, h2, w2]) = (y1.dims(), y2.dims());
        let swapped: Vec<ViewPair> = views.pairs.iter().map(ViewPair::swapped).collect();
        let mask12 = positive_masks(&views.pairs, (h1, w1), (h2, w2), self.settings.ratio);
        let mask21 = positive_masks(&swapped, (h2, w2), (h1, w1), self.settings.ratio);
        let positives = mask12.iter().filter(|&&m| m).count() as f64 / images.len() as f64;
        let loss = propagation_loss(y1, t2, &mask12) + propagation_loss(y2, t1, &mask21);
        let (online, loss_value) = self.optim.minimize(progress.lr, self.online.clone(), loss, |m: &PixProOnline| &m.net.backbone);
        self.online = online;
        Ok(StepOutput { loss: loss_value, metrics: vec![("positives_per_image", positives), ("momentum", momentum)] })
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
    use crate::models::segmenter::EncoderConfig;
    use crate::train::optim::OptimConfig;
    use crate::views::geometry::ViewGeometry;

    fn tensor(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    #[test]
    fn loss_is_minus_two_on_aligned_positives_and_ignores_negatives() {
        // Two cells per view; cell 0 ↔ cell 0 positive only. Predicted cell 0 equals target
        // cell 0 (cos 1); cell 1 differs but is not positive: loss = −2.
        let predicted = tensor(vec![1.0, 0.0, 0.0, 1.0], [1, 2, 1, 2]); // cells (1,0) and (0,1)
        let target = tensor(vec![3.0, -1.0, 0.0, 0.0], [1, 2, 1, 2]); // cells (3,0) and (-1,0)
        let loss = propagation_loss(predicted.clone(), target.clone(), &[true, false, false, false]);
        assert!((loss.into_scalar::<f32>() + 2.0).abs() < 1e-5);
        // Positive pairs (0,1) and (1,0): cos −1 and 0 → mean −0.5 → loss 1.
        let loss = propagation_loss(predicted, target, &[false, true, true, false]);
        assert!((loss.into_scalar::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn propagation_with_sharp_weights_and_identity_keeps_orthogonal_cells() {
        // Orthogonal cells: relu(cos) is the identity matrix, so y = x.
        let ppm = PixelPropagation { transform: None, gamma: 2.0 };
        let x = tensor(vec![2.0, 0.0, 0.0, 5.0], [1, 2, 1, 2]);
        let y: Vec<f32> = ppm.forward(x).into_data().try_to_vec().unwrap();
        assert_eq!(y, vec![2.0, 0.0, 0.0, 5.0]);
        // Two equal cells: each becomes the sum of both.
        let x = tensor(vec![1.0, 1.0, 2.0, 2.0], [1, 2, 1, 2]);
        let y: Vec<f32> = ppm.forward(x).into_data().try_to_vec().unwrap();
        for (a, b) in y.iter().zip([2.0, 2.0, 4.0, 4.0]) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
    }

    #[test]
    fn targets_come_from_the_momentum_network() {
        let encoder = EncoderConfig { base_width: 4, output_stride: 8, ..EncoderConfig::default() };
        let device = Device::flex().autodiff();
        let new = || {
            let context = BuildContext {
                init: None,
                encoder: &encoder,
                optim: &OptimConfig::default(),
                view_size: 32,
                settings: toml::toml! { dim = 8 hidden = 8 },
                device: &device,
            };
            PixPro::new(context).unwrap()
        };
        let mut m = new();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..2 * 3 * 32 * 32).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect::<Vec<f32>>(), [2, 3, 32, 32]),
            &device,
        );
        let values = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
        let before = values(m.targets(x.clone()));
        let other = new();
        m.online.net = other.target.clone();
        assert_eq!(values(m.targets(x.clone())), before);
        m.target = other.target;
        assert_ne!(values(m.targets(x)), before);
    }

    #[test]
    fn batch_masks_follow_each_pair() {
        let a = ViewGeometry::identity(16, 16);
        let pairs = [ViewPair::new(a, a), ViewPair::new(a, a.crop(8, 8, 8, 8))];
        let mask = positive_masks(&pairs, (2, 2), (2, 2), 0.7);
        assert_eq!(mask.len(), 2 * 16);
        assert_eq!(mask[..16].iter().filter(|&&m| m).count(), 4); // the diagonal
        // B = the bottom-right quarter: B's 4 px cells are centred at (10|14, 10|14), A's 8 px
        // cells at (4|12, 4|12); the limit is 0.7 × √(8² + 8²) = 7.92 px. A3 (12, 12) is 2.83 px
        // from every B cell; A1 (12, 4) and A2 (4, 12) are 6.32 px from the two nearest B
        // cells; A0 (4, 4) is 8.49 px from B0. Entry = A cell × 4 + B cell.
        let second: Vec<usize> = (0..16).filter(|&k| mask[16 + k]).collect();
        assert_eq!(second, [4, 5, 8, 10, 12, 13, 14, 15]);
    }
}
