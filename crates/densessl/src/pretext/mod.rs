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
use burn::tensor::{Device, Gradients, Tensor};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::models::heads::{Head, HeadConfig};
use crate::models::resnet::{ResNet, ResNetConfig};
use crate::models::segmenter::EncoderConfig;
use crate::train::optim::{OptimConfig, finite_backward};
use crate::train::state::{StateReader, StateWriter};
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
    /// Saves everything a resumed run needs: networks (online and momentum copies), the
    /// optimiser and queues (`--resume`; keys must not depend on the build's randomness).
    fn save_state(&self, out: &StateWriter) -> Result<()>;
    /// Restores what [`PretextMethod::save_state`] wrote into a method built from the same
    /// config.
    fn load_state(&mut self, from: &StateReader) -> Result<()>;
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

    /// Backward from `loss`, then [`Trainer::step`], unless the loss or a gradient is not
    /// finite: then `model` comes back unchanged (the step is skipped, and the training loop
    /// decides whether to go on). Returns the model and the loss, NaN if a gradient was not
    /// finite.
    pub fn minimize<M: Module, E: Module>(&mut self, lr: f64, model: M, loss: Tensor<1>, encoder: impl Fn(&M) -> &E) -> (M, f64) {
        match finite_backward(&model, loss) {
            (value, Some(grads)) => (self.step(lr, model, grads, encoder), value),
            (value, None) => (model, value),
        }
    }

    /// Saves the optimiser's state (momentum buffers).
    pub fn save_state(&self, out: &StateWriter) -> Result<()> {
        out.optimizer("optimizer", &self.optim)
    }

    /// Restores [`Trainer::save_state`]'s output; the networks must have been loaded first
    /// (the state is keyed by their parameter ids).
    pub fn load_state(&mut self, from: &StateReader) -> Result<()> {
        self.optim = from.optimizer("optimizer", self.config.sgd())?;
        Ok(())
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
    use crate::train::state::StateReader;
    use rand::SeedableRng;

    fn small_context_settings(name: &str) -> toml::Table {
        match name {
            "simclr" | "byol" | "pixpro" => toml::toml! { dim = 16 hidden = 32 },
            "simsiam" => toml::toml! { dim = 32 pred_hidden = 8 },
            // No dropout: it draws from the device's global generator, which tests running in
            // parallel threads share (a training process reseeds it every step).
            "plr" => toml::toml! { decoder = { channels = 16, dropout = 0.0 } },
            "edmoco" | "pledmoco" => toml::toml! { queue_size = 64 dim = 16 decoder = { channels = 16, dilation = 1, dropout = 0.0 } },
            "moco-v1" | "moco-v2" | "plmoco" | "densecl" => toml::toml! { queue_size = 64 dim = 16 },
            _ => toml::Table::new(),
        }
    }

    /// Resuming is exact for every method: saving after two steps and loading into a fresh
    /// build gives the same next losses (networks, momentum copies, queues and optimiser
    /// state all came back).
    #[test]
    fn every_method_resumes_exactly_from_its_saved_state() {
        let device = Device::flex().autodiff();
        let global = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let dense = EncoderConfig { output_stride: 8, ..global.clone() };
        let optim = OptimConfig { lr: 0.1, ..OptimConfig::default() };
        let images: Vec<RgbImage> = (0..8u32)
            .map(|i| RgbImage::from_fn(36, 36, |x, y| image::Rgb([((x * (i + 3)) % 256) as u8, ((y * 5 + i * 40) % 256) as u8, (i * 29) as u8])))
            .collect();
        let batch: Vec<&RgbImage> = images.iter().collect();
        let dir = std::env::temp_dir().join(format!("densessl-resume-methods-{}", std::process::id()));
        for (name, _) in METHODS {
            let encoder = if ["plr", "plmoco", "pledmoco", "densecl", "pixpro"].contains(name) { &dense } else { &global };
            let make = |seed: u64| {
                device.seed(seed);
                let context =
                    BuildContext { init: None, encoder, optim: &optim, view_size: 32, settings: small_context_settings(name), device: &device };
                build(name, context).unwrap()
            };
            let run = |method: &mut Box<dyn PretextMethod>, step: usize| {
                device.seed(100 + step as u64);
                let mut rng = ChaCha8Rng::seed_from_u64(step as u64);
                method.step(&batch, &mut rng, Progress { lr: 0.1, step, total: 4 }).unwrap().loss
            };
            let mut original = make(1);
            run(&mut original, 0);
            run(&mut original, 1);
            let _ = std::fs::remove_dir_all(&dir);
            let saved = crate::train::state::save(&dir, 2, 1, |out| original.save_state(out)).unwrap();
            let expected: Vec<f64> = (2..4).map(|step| run(&mut original, step)).collect();
            // Another seed: nothing may survive from the build but the code.
            let mut resumed = make(2);
            resumed.load_state(&StateReader::open(&saved)).unwrap();
            let got: Vec<f64> = (2..4).map(|step| run(&mut resumed, step)).collect();
            assert_eq!(expected, got, "{name}: the resumed method diverges");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_non_finite_loss_leaves_the_model_as_it_was() {
        use burn::nn::{Linear, LinearConfig};
        let device = Device::flex().autodiff();
        let model: Linear = LinearConfig::new(2, 1).init(&device);
        let before = model.weight.val().into_data();
        let mut trainer = Trainer::new(&OptimConfig::default());
        let x = Tensor::<2>::ones([3, 2], &device);
        let poisoned = model.forward(x.clone()).sum() * f32::NAN;
        let (model, loss) = trainer.minimize(0.1, model, poisoned, |m: &Linear| m);
        assert!(loss.is_nan());
        assert_eq!(model.weight.val().into_data(), before, "no update from a NaN loss");
        let finite = model.forward(x).sum();
        let (model, loss) = trainer.minimize(0.1, model, finite, |m: &Linear| m);
        assert!(loss.is_finite());
        assert_ne!(model.weight.val().into_data(), before, "a finite loss updates");
    }
}
