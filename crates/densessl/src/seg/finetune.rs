//! The fine-tuning loop: a segmentation model (encoder + head) trained with masked
//! cross-entropy on augmented crops (prepared on a loader thread), SGD with an encoder LR
//! multiplier and optional no-decay group, BN trainable or frozen, optional frozen encoder,
//! then evaluated on the val split. [`run_seeds`] repeats it over seeds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::augment::SegAugmentConfig;
use super::evaluate::evaluate;
use super::inference::InferenceConfig;
use super::loss::masked_cross_entropy;
use super::metrics::SegMetrics;
use crate::data::loader::Prefetcher;
use crate::data::{DataConfig, IGNORE_LABEL, SegSample, Split};
use crate::models::heads::HeadConfig;
use crate::models::resnet::ResNet;
use crate::models::segmenter::{EncoderConfig, Segmenter};
use crate::train::checkpoint::{self, CheckpointInfo};
use crate::train::optim::{OptimConfig, finite_backward};
use crate::train::pretrain::{RunOptions, step_rng};
use crate::train::run_dir::{ManifestInfo, RunDir, write_atomic};
use crate::train::schedule::ScheduleConfig;
use crate::train::state::{self, StateReader};
use crate::views::{FloatImage, batch_tensor};
use crate::{Error, Result};

/// Loop settings (`[train]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneLoop {
    /// Optimisation steps (iterations).
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Write a metrics line every this many steps.
    pub log_every: usize,
    /// Every this many steps, save a model checkpoint and the state `--resume` needs
    /// (0 = only the final model, no resume).
    pub checkpoint_every: usize,
    /// How many of those step checkpoints and states to keep (the newest).
    pub keep_checkpoints: usize,
    /// Steps whose loss or gradient is not finite are skipped (no update); after more than
    /// this many, training stops with an error.
    pub skip_nonfinite: usize,
    /// Images per evaluation batch.
    pub eval_batch_size: usize,
    /// Weight of the auxiliary head's loss (mmseg: 0.4); used when `head.aux_channels > 0`.
    pub aux_weight: f32,
    /// Encoder BatchNorm: `train` (statistics and affine learn) or `frozen` (neither).
    pub bn: String,
    /// Train only the head (linear/head-only evaluation of a frozen encoder).
    pub freeze_encoder: bool,
}

impl Default for FinetuneLoop {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 16,
            log_every: 10,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            skip_nonfinite: 0,
            eval_batch_size: 32,
            aux_weight: 0.4,
            bn: "train".into(),
            freeze_encoder: false,
        }
    }
}

/// A fine-tuning run (`densessl finetune [--protocol NAME] --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// The protocol preset this config started from, if any (recorded, not interpreted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Seed of head initialisation, batch order and augmentation.
    pub seed: u64,
    /// Labelled data (train and val splits).
    pub data: DataConfig,
    /// Encoder settings (architecture and width must match `init`'s).
    pub encoder: EncoderConfig,
    /// Segmentation head.
    pub head: HeadConfig,
    /// Checkpoint to initialise the encoder from (`--init` overrides); none = random init.
    pub init: Option<String>,
    /// Layout of `init`: auto, torchvision, moco, mmselfsup, byol or densessl.
    pub init_from: String,
    /// SGD settings.
    pub optim: OptimConfig,
    /// LR schedule.
    pub schedule: ScheduleConfig,
    /// Training augmentation.
    pub augment: SegAugmentConfig,
    /// Inference for the final evaluation.
    pub inference: InferenceConfig,
    /// Loop settings.
    pub train: FinetuneLoop,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            protocol: None,
            seed: 0,
            data: DataConfig::default(),
            encoder: EncoderConfig::default(),
            head: HeadConfig::default(),
            init: None,
            init_from: "auto".into(),
            optim: OptimConfig { lr: 0.01, ..OptimConfig::default() },
            schedule: ScheduleConfig { kind: "poly".into(), ..ScheduleConfig::default() },
            augment: SegAugmentConfig::default(),
            inference: InferenceConfig::default(),
            train: FinetuneLoop::default(),
        }
    }
}

impl FinetuneConfig {
    /// Checks every section with a sentence a user can act on.
    pub fn check(&self) -> Result<()> {
        self.schedule.check()?;
        self.augment.check()?;
        self.inference.check()?;
        self.head.check().map_err(|e| Error::Invalid(format!("head: {e}")))?;
        if self.train.batch_size == 0 || self.train.steps == 0 {
            return Err(Error::Invalid("train.steps and train.batch_size must be positive".into()));
        }
        if !matches!(self.train.bn.as_str(), "train" | "frozen") {
            return Err(Error::Invalid(format!("train.bn must be \"train\" or \"frozen\", got \"{}\"", self.train.bn)));
        }
        if self.augment.crop_size == 0 && self.augment.scale_range != (1.0, 1.0) {
            return Err(Error::Invalid(
                "augment.scale_range rescales images to different sizes: set augment.crop_size too".into(),
            ));
        }
        Ok(())
    }
}

/// What a finished fine-tune produced.
#[derive(Debug, Clone)]
pub struct FinetuneOutcome {
    /// Validation metrics.
    pub metrics: SegMetrics,
    /// The final model checkpoint.
    pub checkpoint: PathBuf,
    /// Wall time in seconds.
    pub wall_s: f64,
}

/// A batch prepared on the loader thread: images and their labels.
type Batch = (Vec<FloatImage>, Vec<Vec<u8>>);

/// Freezes the encoder's BatchNorms: running statistics and affine parameters stay fixed.
fn freeze_batchnorm(encoder: ResNet) -> ResNet {
    let group = ParamGroup::from_regex(r"(^|\.)bn\d*(\.|$)").expect("fixed pattern compiles");
    encoder.freeze_group(group)
}

/// Runs a fine-tune to completion and evaluates on the val split.
pub fn run(config: &FinetuneConfig, options: &RunOptions) -> Result<FinetuneOutcome> {
    train(config, options, None)
}

/// Resumes the unfinished fine-tune in `options.out` from its newest saved state (its own
/// `config.toml`; the result equals an uninterrupted run's).
pub fn resume(options: &RunOptions) -> Result<FinetuneOutcome> {
    let (mut config, saved): (FinetuneConfig, _) = state::resume_point(&options.out)?;
    config.init = None;
    train(&config, options, Some(saved))
}

/// What the loop itself carries from step to step (saved with each state).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LoopState {
    step: usize,
    window: Vec<f64>,
    skipped: usize,
}

fn train(config: &FinetuneConfig, options: &RunOptions, resume_from: Option<StateReader>) -> Result<FinetuneOutcome> {
    let start = Instant::now();
    config.check()?;
    let device = options.device.init()?;
    device.seed(config.seed);
    let train = config.data.load(Split::Train)?;
    let val = config.data.load(Split::Val)?;
    if config.augment.crop_size == 0 {
        let dims = train.samples[0].image.dimensions();
        if let Some(i) = train.samples.iter().position(|s| s.image.dimensions() != dims) {
            return Err(Error::Invalid(format!(
                "{}: training images differ in size (sample {i}); set augment.crop_size",
                train.name
            )));
        }
    }
    let mut model = Segmenter::new(&config.encoder, &config.head, train.num_classes, &device)?;
    let mut init_note = None;
    if let Some(init) = &config.init {
        let (encoder, note) = crate::weights::import::load_init(init, &config.init_from, &config.encoder, &device)?;
        model.encoder = encoder;
        init_note = Some(note);
    }
    let mut optim = config.optim.sgd();
    let (mut run, mut state) = match &resume_from {
        None => {
            let run = RunDir::create(
                &options.out,
                &crate::config::to_toml(config)?,
                &ManifestInfo {
                    command: "finetune".into(),
                    argv: options.argv.clone(),
                    device: options.device.to_string(),
                    seed: config.seed,
                    dataset: train.name.clone(),
                    dataset_fingerprint: train.fingerprint(),
                    init: init_note,
                },
            )?;
            (run, LoopState::default())
        }
        Some(saved) => {
            model = saved.module("model", model)?;
            optim = saved.optimizer("optimizer", optim)?;
            let state: LoopState = saved.json("loop")?;
            (RunDir::reopen(&options.out, state.step)?, state)
        }
    };
    if config.train.freeze_encoder {
        model.encoder = model.encoder.freeze();
    } else if config.train.bn == "frozen" {
        model.encoder = freeze_batchnorm(model.encoder);
    }

    let total = config.train.steps;
    let batch_size = config.train.batch_size.min(train.samples.len());
    let info = CheckpointInfo::Segmenter {
        encoder: config.encoder.clone(),
        head: config.head.clone(),
        num_classes: train.num_classes,
    };
    let loader = {
        let samples: Arc<Vec<SegSample>> = Arc::new(train.samples.clone());
        let augment = config.augment.clone();
        let (seed, mut next_step) = (config.seed ^ 0xF17E, state.step);
        Prefetcher::new(2, move || -> Batch {
            // Each step's batch from its own stream: a resumed run sees the same data order.
            let mut rng = step_rng(seed, next_step);
            next_step += 1;
            let picks = sample(&mut rng, samples.len(), batch_size);
            let seeds: Vec<u64> = (0..batch_size).map(|_| rng.random()).collect();
            picks
                .iter()
                .zip(seeds)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|(i, seed)| augment.apply(&samples[i], &mut ChaCha8Rng::seed_from_u64(seed)))
                .unzip()
        })
    };
    let bar = crate::train::progress::bar(total, "finetune");
    bar.inc(state.step as u64);
    let checkpoints = run.root().join("checkpoints");
    let mut tick = Instant::now();
    // Seconds the loop waited for the loader in this log window: near 0 when input keeps up.
    let mut input_wait_s = 0.0;
    let warm = crate::runtime::keep_pool_warm();
    for step in state.step..total {
        if let Some(warm) = &warm {
            warm.tick();
        }
        let lr = config.schedule.lr_at(config.optim.lr, step, total);
        device.seed(config.seed.wrapping_add(step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let waiting = Instant::now();
        let (images, masks) = loader.next();
        input_wait_s += waiting.elapsed().as_secs_f64();
        let (h, w) = (images[0].height, images[0].width);
        let labels: Vec<i64> = masks.iter().flatten().map(|&l| i64::from(l)).collect();
        let labels = Tensor::<3, Int>::from_data(TensorData::new(labels, [batch_size, h, w]), &device);
        let (logits, aux_logits) = model.forward_with_aux(batch_tensor(&images, &device));
        let mut loss = masked_cross_entropy(logits, labels.clone(), i64::from(IGNORE_LABEL));
        if let Some(aux_logits) = aux_logits {
            loss = loss + masked_cross_entropy(aux_logits, labels, i64::from(IGNORE_LABEL)) * config.train.aux_weight;
        }
        let done = step + 1;
        match finite_backward(&model, loss) {
            (loss_value, Some(grads)) => {
                model = config.optim.step(&mut optim, lr, model, grads, |m: &Segmenter| &m.encoder);
                state.window.push(loss_value);
            }
            (loss_value, None) => run.skip_nonfinite(done, loss_value, &mut state.skipped, config.train.skip_nonfinite)?,
        }
        bar.inc(1);
        if (done % config.train.log_every.max(1) == 0 || done == total) && !state.window.is_empty() {
            let mean = state.window.iter().sum::<f64>() / state.window.len() as f64;
            let ips = (state.window.len() * batch_size) as f64 / tick.elapsed().as_secs_f64();
            run.log_metrics(&serde_json::json!({
                "step": done, "loss": mean, "lr": lr, "images_per_s": ips, "input_wait_s": input_wait_s,
            }))?;
            bar.set_message(format!("loss {mean:.3}"));
            state.window.clear();
            tick = Instant::now();
            input_wait_s = 0.0;
        }
        if config.train.checkpoint_every > 0 && done % config.train.checkpoint_every == 0 && done < total {
            checkpoint::save(&model, &info, &run.checkpoint_path(&format!("model-step{done}.safetensors")))?;
            state.step = done;
            state::save(&checkpoints, done, config.train.keep_checkpoints, |out| {
                out.module("model", &model)?;
                out.optimizer("optimizer", &optim)?;
                out.json("loop", &state)
            })?;
        }
    }
    drop((loader, warm));
    bar.finish();
    let path = run.checkpoint_path("model.safetensors");
    checkpoint::save(&model, &info, &path)?;
    let plain = options.device.init_plain()?;
    let metrics = evaluate(&model, &val, &config.inference, config.train.eval_batch_size, &plain)?;
    let wall_s = start.elapsed().as_secs_f64();
    run.finish(&serde_json::json!({
        "miou": metrics.miou, "aacc": metrics.aacc, "iou": metrics.iou,
        "steps": total, "wall_s": wall_s, "checkpoint": path, "val": val.name,
        "skipped_nonfinite": state.skipped,
    }))?;
    Ok(FinetuneOutcome { metrics, checkpoint: path, wall_s })
}

/// Mean and (sample) standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// What [`run_seeds`] produced.
#[derive(Debug, Clone)]
pub struct SeedsOutcome {
    /// One outcome per seed, in order.
    pub runs: Vec<(u64, FinetuneOutcome)>,
    /// mIoU mean and sample standard deviation over seeds.
    pub miou: (f64, f64),
    /// Pixel accuracy mean and sample standard deviation.
    pub aacc: (f64, f64),
}

/// Repeats the fine-tune with seeds `seed, seed + 1, …` (one run directory each under
/// `out/seed-<s>/`) and writes `out/summary.json` with mean ± std.
pub fn run_seeds(config: &FinetuneConfig, options: &RunOptions, seeds: usize) -> Result<SeedsOutcome> {
    if seeds == 0 {
        return Err(Error::Invalid("--seeds must be at least 1".into()));
    }
    let summary_path = options.out.join("summary.json");
    if summary_path.exists() {
        return Err(Error::Invalid(format!("{} holds a finished run; choose another --out", options.out.display())));
    }
    let mut runs = Vec::new();
    for k in 0..seeds as u64 {
        let seed = config.seed + k;
        let seeded = FinetuneConfig { seed, ..config.clone() };
        let out = options.out.join(format!("seed-{seed}"));
        let outcome = run(&seeded, &RunOptions { out, ..options.clone() })?;
        eprintln!("seed {seed}: mIoU {:.4}", outcome.metrics.miou);
        runs.push((seed, outcome));
    }
    let mious: Vec<f64> = runs.iter().map(|(_, o)| o.metrics.miou).collect();
    let aaccs: Vec<f64> = runs.iter().map(|(_, o)| o.metrics.aacc).collect();
    let (miou, aacc) = (mean_std(&mious), mean_std(&aaccs));
    let summary = serde_json::json!({
        "miou": miou.0, "miou_std": miou.1, "aacc": aacc.0, "aacc_std": aacc.1,
        "seeds": runs.iter().map(|(s, o)| serde_json::json!({
            "seed": s, "miou": o.metrics.miou, "aacc": o.metrics.aacc, "iou": o.metrics.iou,
            "checkpoint": o.checkpoint,
        })).collect::<Vec<_>>(),
    });
    write_atomic(&summary_path, serde_json::to_string_pretty(&summary).expect("json").as_bytes())?;
    Ok(SeedsOutcome { runs, miou, aacc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
    }

    #[test]
    fn frozen_batchnorm_keeps_statistics_and_affine() {
        let device = Device::flex().autodiff();
        let config = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let encoder = freeze_batchnorm(config.resnet().unwrap().init(&device));
        let before: Vec<f32> = encoder.bn1.running_mean.value().into_data().try_to_vec().unwrap();
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Normal(0.5, 1.0), &device);
        let grads = encoder.forward_pooled(x).sum().backward();
        let after: Vec<f32> = encoder.bn1.running_mean.value().into_data().try_to_vec().unwrap();
        assert_eq!(before, after, "running statistics do not move");
        assert!(encoder.bn1.gamma.grad(&grads).is_none(), "γ gets no gradient");
        assert!(encoder.conv1.weight.grad(&grads).is_some(), "convolutions still train");
    }

    #[test]
    fn whole_image_rescale_without_crop_is_refused() {
        let config = FinetuneConfig {
            augment: SegAugmentConfig { scale_range: (0.5, 2.0), ..SegAugmentConfig::default() },
            ..FinetuneConfig::default()
        };
        assert!(config.check().unwrap_err().to_string().contains("crop_size"));
    }
}
