//! The pre-training loop: any [`PretextMethod`] over the training images of a dataset.

use std::path::PathBuf;
use std::time::Instant;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointInfo};
use super::knn::{KnnConfig, KnnMonitor};
use super::run_dir::{ManifestInfo, RunDir};
use super::schedule::ScheduleConfig;
use super::state::{self, StateReader};
use crate::data::DataConfig;
use crate::device::DeviceSpec;
use crate::models::segmenter::EncoderConfig;
use crate::pretext::{self, BuildContext};
use super::optim::OptimConfig;
use crate::{Error, Result};

/// The method used when `[method]` names none.
pub const DEFAULT_METHOD: &str = "moco-v2";

/// Loop settings (`[train]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainLoop {
    /// Optimisation steps.
    pub steps: usize,
    /// If > 0: train this many passes over the images instead (steps = ⌈epochs·N / batch⌉).
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Side of the augmented views in pixels.
    pub view_size: usize,
    /// Write a metrics line every this many steps.
    pub log_every: usize,
    /// Every this many steps, save an encoder checkpoint and the state `--resume` needs
    /// (0 = only the final encoder, no resume).
    pub checkpoint_every: usize,
    /// How many of those step checkpoints and states to keep (the newest).
    pub keep_checkpoints: usize,
    /// Steps whose loss or gradient is not finite are skipped (no update); after more than
    /// this many, training stops with an error.
    pub skip_nonfinite: usize,
}

impl Default for PretrainLoop {
    fn default() -> Self {
        Self {
            steps: 200,
            epochs: 0,
            batch_size: 32,
            view_size: 64,
            log_every: 10,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            skip_nonfinite: 0,
        }
    }
}

/// A pre-training run (`densessl pretrain --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// Seed of initialisation, views and batch order.
    pub seed: u64,
    /// Images to pre-train on (labels unused).
    pub data: DataConfig,
    /// The encoder to train.
    pub encoder: EncoderConfig,
    /// `name` picks the method (`moco-v2`); the other keys are its settings.
    pub method: toml::Table,
    /// SGD settings.
    pub optim: OptimConfig,
    /// LR schedule.
    pub schedule: ScheduleConfig,
    /// Loop settings.
    pub train: PretrainLoop,
    /// Optional kNN accuracy monitor on the labelled splits of `data`.
    pub monitor: KnnConfig,
    /// Encoder checkpoint to continue from (`--init` overrides); the method's other heads
    /// start fresh. Pair with `optim.encoder_lr_mult` (e.g. 0.01).
    pub init: Option<String>,
    /// Layout of `init`: auto, torchvision, moco, mmselfsup, byol or densessl.
    pub init_from: String,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        let mut method = toml::Table::new();
        method.insert("name".into(), toml::Value::String(DEFAULT_METHOD.into()));
        Self {
            seed: 0,
            data: DataConfig::default(),
            encoder: EncoderConfig::default(),
            method,
            optim: OptimConfig::default(),
            schedule: ScheduleConfig::default(),
            train: PretrainLoop::default(),
            monitor: KnnConfig::default(),
            init: None,
            init_from: "auto".into(),
        }
    }
}

/// How a run is started (command-line facts, not science).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory.
    pub out: PathBuf,
    /// The device.
    pub device: DeviceSpec,
    /// The command line, for the manifest.
    pub argv: Vec<String>,
}

/// What a finished pre-training produced.
#[derive(Debug, Clone)]
pub struct PretrainOutcome {
    /// The final encoder checkpoint.
    pub encoder_checkpoint: PathBuf,
    /// Mean loss over the last logged window.
    pub final_loss: f64,
    /// Wall time in seconds.
    pub wall_s: f64,
}

/// Runs a pre-training to completion.
pub fn run(config: &PretrainConfig, options: &RunOptions) -> Result<PretrainOutcome> {
    train(config, options, None)
}

/// Resumes the unfinished run in `options.out` from its newest saved state (its own
/// `config.toml`; the result equals an uninterrupted run's).
pub fn resume(options: &RunOptions) -> Result<PretrainOutcome> {
    let (mut config, saved): (PretrainConfig, _) = state::resume_point(&options.out)?;
    // The saved state holds the encoder; the parent checkpoint is not needed again.
    config.init = None;
    train(&config, options, Some(saved))
}

/// What the loop itself carries from step to step (saved with each state).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LoopState {
    /// Steps done.
    step: usize,
    /// Losses since the last metrics line.
    window: Vec<f64>,
    /// Mean of the last full window.
    last_window_mean: Option<f64>,
    /// Steps skipped for a non-finite loss or gradient.
    skipped: usize,
}

/// The random generator of step `step`: a stream of its own, so a resumed run draws the
/// same batches and views without saving generator state.
pub fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step as u64);
    rng
}

fn train(config: &PretrainConfig, options: &RunOptions, resume_from: Option<StateReader>) -> Result<PretrainOutcome> {
    let start = Instant::now();
    config.schedule.check()?;
    if config.train.batch_size == 0 || (config.train.steps == 0 && config.train.epochs == 0) {
        return Err(Error::Invalid("train.steps (or train.epochs) and train.batch_size must be positive".into()));
    }
    let device = options.device.init()?;
    device.seed(config.seed);
    let (dataset_name, owned_images) = config.data.load_pretraining_images()?;
    let images: Vec<&image::RgbImage> = owned_images.iter().collect();
    if images.len() < config.train.batch_size {
        return Err(Error::Invalid(format!(
            "{} has {} images, fewer than train.batch_size = {}",
            dataset_name,
            images.len(),
            config.train.batch_size
        )));
    }
    let name = config
        .method
        .get("name")
        .map(|v| v.as_str().ok_or_else(|| Error::Invalid("method.name must be a string, e.g. \"moco-v2\"".into())))
        .transpose()?
        .unwrap_or(DEFAULT_METHOD)
        .to_string();
    let mut settings = config.method.clone();
    settings.remove("name");
    // Continued pre-training: the parent encoder, strictly imported, and its fingerprint.
    let (init, init_note) = match &config.init {
        Some(init) => {
            let (encoder, note) = crate::weights::import::load_init(init, &config.init_from, &config.encoder, &device)?;
            (Some(encoder), Some(note))
        }
        None => (None, None),
    };
    let mut method = pretext::build(
        &name,
        BuildContext {
            init,
            encoder: &config.encoder,
            optim: &config.optim,
            view_size: config.train.view_size,
            settings,
            device: &device,
        },
    )?;

    let (mut run, mut state) = match &resume_from {
        None => {
            let mut resolved = config.clone();
            resolved.method = method.settings();
            resolved.method.insert("name".into(), toml::Value::String(name.clone()));
            let mut run = RunDir::create(
                &options.out,
                &crate::config::to_toml(&resolved)?,
                &ManifestInfo {
                    command: "pretrain".into(),
                    argv: options.argv.clone(),
                    device: options.device.to_string(),
                    seed: config.seed,
                    dataset: dataset_name.clone(),
                    dataset_fingerprint: crate::train::run_dir::fingerprint(
                        owned_images.iter().flat_map(|im| im.as_raw().iter().copied()),
                    ),
                    init: init_note,
                },
            )?;
            run.log_metrics(&serde_json::json!({"event": "start", "method": name, "notes": method.notes()}))?;
            (run, LoopState::default())
        }
        Some(saved) => {
            method.load_state(saved)?;
            let state: LoopState = saved.json("loop")?;
            let run = RunDir::reopen(&options.out, state.step)?;
            (run, state)
        }
    };

    let total = if config.train.epochs > 0 {
        (config.train.epochs * images.len()).div_ceil(config.train.batch_size)
    } else {
        config.train.steps
    };
    let monitor = if config.monitor.every > 0 {
        Some((KnnMonitor::new(&config.monitor, &config.data, config.train.view_size)?, options.device.init_plain()?))
    } else {
        None
    };
    let bar = super::progress::bar(total, "pretrain");
    bar.inc(state.step as u64);
    let info = CheckpointInfo::Encoder { encoder: config.encoder.clone() };
    let checkpoints = run.root().join("checkpoints");
    let mut tick = Instant::now();
    let warm = crate::runtime::keep_pool_warm();
    for step in state.step..total {
        if let Some(warm) = &warm {
            warm.tick();
        }
        let lr = config.schedule.lr_at(config.optim.lr, step, total);
        let mut rng = step_rng(config.seed ^ 0xA11CE, step);
        // Device randomness (dropout) is reseeded per step too, for exact resumes.
        device.seed(config.seed.wrapping_add(step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let batch: Vec<&image::RgbImage> =
            sample(&mut rng, images.len(), config.train.batch_size).iter().map(|i| images[i]).collect();
        let out = method.step(&batch, &mut rng, crate::pretext::Progress { lr, step, total })?;
        let done = step + 1;
        if !out.loss.is_finite() {
            run.skip_nonfinite(done, out.loss, &mut state.skipped, config.train.skip_nonfinite)?;
        } else {
            state.window.push(out.loss);
        }
        bar.inc(1);
        if (done % config.train.log_every.max(1) == 0 || done == total) && !state.window.is_empty() {
            let secs = tick.elapsed().as_secs_f64();
            let mean = state.window.iter().sum::<f64>() / state.window.len() as f64;
            let mut record = serde_json::json!({
                "step": done, "loss": mean, "lr": lr,
                "images_per_s": (state.window.len() * config.train.batch_size) as f64 / secs,
            });
            for (k, v) in &out.metrics {
                record[*k] = serde_json::json!(v);
            }
            run.log_metrics(&record)?;
            bar.set_message(format!("loss {mean:.3}"));
            state.last_window_mean = Some(mean);
            state.window.clear();
            tick = Instant::now();
        }
        if let Some((monitor, plain)) = &monitor
            && (done % config.monitor.every == 0 || done == total)
        {
            let accuracy = monitor.accuracy(&method.encoder(), plain);
            run.log_metrics(&serde_json::json!({"step": done, "knn_acc": accuracy}))?;
        }
        if config.train.checkpoint_every > 0 && done % config.train.checkpoint_every == 0 && done < total {
            checkpoint::save(&method.encoder(), &info, &run.checkpoint_path(&format!("encoder-step{done}.safetensors")))?;
            state.step = done;
            state::save(&checkpoints, done, config.train.keep_checkpoints, |out| {
                method.save_state(out)?;
                out.json("loop", &state)
            })?;
        }
    }
    drop(warm);
    bar.finish();
    let path = run.checkpoint_path("encoder.safetensors");
    checkpoint::save(&method.encoder(), &info, &path)?;
    let wall_s = start.elapsed().as_secs_f64();
    let final_loss = state.last_window_mean.unwrap_or(f64::NAN);
    run.finish(&serde_json::json!({
        "method": name, "steps": total, "final_loss": final_loss, "wall_s": wall_s,
        "checkpoint": path, "skipped_nonfinite": state.skipped,
    }))?;
    Ok(PretrainOutcome { encoder_checkpoint: path, final_loss, wall_s })
}
