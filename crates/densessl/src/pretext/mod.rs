//! Pretext tasks behind one trait. Adding a method: one file implementing
//! [`PretextMethod`] and one line in [`METHODS`].

pub mod byol;
pub mod dense;
pub mod densecl;
pub mod edmoco;
#[doc = include_str!("../../../../docs/pretext-tasks.md")]
pub mod guide {}
pub mod losses;
pub mod moco;
pub mod momentum;
pub mod pixpro;
pub mod pledmoco;
pub mod plmoco;
pub mod plr;
pub mod queue;
pub mod rotation;
pub mod simclr;
pub mod simsiam;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Gradients};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::models::heads::{Head, HeadConfig};
use crate::models::resnet::{ResNet, ResNetConfig};
use crate::models::segmenter::EncoderConfig;
use crate::train::optim::OptimConfig;
use crate::views::FloatImage;
use crate::views::augment::ViewAugment;
use crate::{Error, Result};

/// Where training stands when a step runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Learning rate of this step (after schedule and warm-up).
    pub lr: f64,
    /// Steps done before this one.
    pub step: usize,
    /// Steps in the whole run.
    pub total: usize,
}

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
    fn step(&mut self, images: &[&RgbImage], rng: &mut ChaCha8Rng, progress: Progress) -> Result<StepOutput>;
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
    /// An encoder to start from (`pretrain --init`); none = random init.
    pub init: Option<ResNet>,
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

impl BuildContext<'_> {
    /// The online encoder: the `init` encoder if given, else a fresh one.
    pub fn backbone(&self, resnet: &ResNetConfig) -> ResNet {
        self.init.clone().unwrap_or_else(|| resnet.init(self.device))
    }
}

/// A method's optimiser: burn's SGD plus the encoder LR multiplier of [`OptimConfig`].
pub struct Trainer {
    optim: ModuleOptimizer,
    config: OptimConfig,
}

impl Trainer {
    /// SGD as `config` describes.
    pub fn new(config: &OptimConfig) -> Self {
        Self { optim: config.sgd(), config: config.clone() }
    }

    /// One step: the encoder `encoder(model)` at `lr × encoder_lr_mult`, the rest at `lr`.
    pub fn step<M: Module, E: Module>(&mut self, lr: f64, model: M, grads: Gradients, encoder: impl Fn(&M) -> &E) -> M {
        self.config.step(&mut self.optim, lr, model, grads, encoder)
    }

    /// One plain step of the given gradients at `lr` (for parameter groups a method fixes).
    pub fn step_params<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        self.optim.step(lr, model, grads)
    }
}

type Builder = fn(BuildContext) -> Result<Box<dyn PretextMethod>>;

/// The registry: name users type → builder.
pub const METHODS: &[(&str, Builder)] = &[
    ("moco-v1", moco::build_v1),
    ("moco-v2", moco::build_v2),
    ("simclr", simclr::build),
    ("byol", byol::build),
    ("simsiam", simsiam::build),
    ("rotation", rotation::build),
    ("plr", plr::build),
    ("edmoco", edmoco::build),
    ("plmoco", plmoco::build),
    ("pledmoco", pledmoco::build),
    ("densecl", densecl::build),
    ("pixpro", pixpro::build),
];

/// Builds method `name`, or an error listing the known ones.
pub fn build(name: &str, context: BuildContext) -> Result<Box<dyn PretextMethod>> {
    let builder = METHODS.iter().find(|(n, _)| *n == name).map(|(_, b)| b).ok_or_else(|| {
        let names: Vec<&str> = METHODS.iter().map(|(n, _)| *n).collect();
        crate::Error::Invalid(format!("unknown method '{name}': choose one of {}", names.join(", ")))
    })?;
    builder(context)
}

/// A method's settings: its defaults, overridden key by key by the user's `[method]` table.
/// Unknown keys are errors (the settings types deny them).
pub fn parse_settings<T: Serialize + DeserializeOwned>(defaults: T, user: toml::Table) -> Result<T> {
    let mut table = toml::Table::try_from(&defaults).expect("settings serialize to TOML");
    crate::config::merge(&mut table, user);
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Config { source_name: "[method]".into(), message: e.to_string() })
}

/// A method's settings as the TOML table [`PretextMethod::settings`] returns.
pub fn settings_table<T: Serialize>(settings: &T) -> toml::Table {
    toml::Table::try_from(settings).expect("settings serialize to TOML")
}

/// The decoder of an encoder-decoder method (`[method.decoder]`), if configured; its
/// classifier has one class and is never used.
pub fn decoder(config: Option<&HeadConfig>, encoder_channels: [usize; 4], device: &Device) -> Result<Option<Head>> {
    config
        .map(|head| head.init(encoder_channels, 1, device).map_err(|e| Error::Invalid(format!("method.decoder: {e}"))))
        .transpose()
}

/// Two augmented views of every image, each pair drawn from its own seed (in parallel, but
/// deterministic for a given `rng`).
pub fn two_views(
    first: &ViewAugment,
    second: &ViewAugment,
    images: &[&RgbImage],
    rng: &mut ChaCha8Rng,
) -> (Vec<FloatImage>, Vec<FloatImage>) {
    let views = dense::views_with_pairs(first, second, images, rng);
    (views.first, views.second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Every registered method builds from defaults plus small sizes, and a few steps on one
    /// fixed batch with fixed views lower its loss. (MoCo's own test resets the queue between
    /// measurements: with fixed views, last step's keys come back as hard negatives; the other
    /// queue methods use a long queue at τ = 1 here for the same reason.)
    #[test]
    fn every_method_lowers_its_loss_on_a_fixed_batch() {
        let device = Device::flex().autodiff();
        // Dense methods see 4×4 C5 maps (output stride 8), the others a pooled C5.
        let global = EncoderConfig { base_width: 8, ..EncoderConfig::default() };
        let dense = EncoderConfig { output_stride: 8, ..global.clone() };
        let optim = OptimConfig { lr: 0.1, weight_decay: 0.0, ..OptimConfig::default() };
        let images: Vec<RgbImage> = (0..8u32)
            .map(|i| RgbImage::from_fn(40, 40, |x, y| image::Rgb([((x * (i + 1)) % 256) as u8, ((y * 7 + i * 30) % 256) as u8, (i * 31) as u8])))
            .collect();
        let batch: Vec<&RgbImage> = images.iter().collect();
        for (name, _) in METHODS.iter().filter(|(n, _)| !n.starts_with("moco")) {
            let settings: toml::Table = match *name {
                "simclr" => toml::toml! { dim = 16 hidden = 32 },
                "byol" => toml::toml! { dim = 16 hidden = 32 },
                "simsiam" => toml::toml! { dim = 32 pred_hidden = 8 },
                "plr" => toml::toml! { decoder = { channels = 16 } },
                // Queue methods: a long queue at τ = 1, so that last step's keys (the same
                // views again) weigh like any other negative.
                "edmoco" | "pledmoco" => toml::toml! {
                    queue_size = 65536 dim = 16 temperature = 1.0 decoder = { channels = 16, dilation = 1 }
                },
                "plmoco" | "densecl" => toml::toml! { queue_size = 65536 dim = 16 temperature = 1.0 },
                "pixpro" => toml::toml! { dim = 16 hidden = 32 },
                _ => toml::Table::new(),
            };
            let encoder = if ["plr", "plmoco", "pledmoco", "densecl", "pixpro"].contains(name) { &dense } else { &global };
            let context = BuildContext { init: None, encoder, optim: &optim, view_size: 32, settings, device: &device };
            device.seed(7);
            let mut method = build(name, context).unwrap();
            let losses: Vec<f64> = (0..10)
                .map(|step| {
                    // The same views every step: only the networks change.
                    let mut rng = ChaCha8Rng::seed_from_u64(3);
                    method.step(&batch, &mut rng, Progress { lr: 0.1, step, total: 10 }).unwrap().loss
                })
                .collect();
            assert!(losses.iter().all(|l| l.is_finite()), "{name}: {losses:?}");
            // Mean of the last three against the first: single steps are noisy (batch BN).
            let last = losses[7..].iter().sum::<f64>() / 3.0;
            assert!(last < losses[0], "{name}: loss did not fall: {losses:?}");
        }
    }
}
