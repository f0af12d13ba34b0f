//! Fine-tuning a segmentation model: SGD with momentum, an LR schedule, masked cross-entropy,
//! random crop (padding with the ignore label) and flip; evaluation on the val split at the end.

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::evaluate::evaluate;
use super::loss::masked_cross_entropy;
use super::metrics::SegMetrics;
use crate::data::{DataConfig, IGNORE_LABEL, SegSample, Split};
use crate::models::heads::HeadConfig;
use crate::models::segmenter::{EncoderConfig, Segmenter};
use crate::train::optim::OptimConfig;
use crate::train::checkpoint::{self, CheckpointInfo};
use crate::train::pretrain::RunOptions;
use crate::train::run_dir::{ManifestInfo, RunDir};
use crate::train::schedule::ScheduleConfig;
use crate::views::{FloatImage, batch_tensor};
use crate::weights::import::ImportOptions;
use crate::{Error, Result};

/// Loop settings (`[train]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneLoop {
    /// Optimisation steps (iterations).
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Side of the square training crop; 0 = whole images (all must share one size).
    pub crop_size: u32,
    /// Random horizontal flip.
    pub flip: bool,
    /// Write a metrics line every this many steps.
    pub log_every: usize,
    /// Save a checkpoint every this many steps (0 = only the final one).
    pub checkpoint_every: usize,
    /// Images per evaluation batch.
    pub eval_batch_size: usize,
    /// Weight of the auxiliary head's loss (mmseg: 0.4); used when `head.aux_channels > 0`.
    pub aux_weight: f32,
}

impl Default for FinetuneLoop {
    fn default() -> Self {
        Self { steps: 300, batch_size: 16, crop_size: 0, flip: true, log_every: 10, checkpoint_every: 0, eval_batch_size: 32, aux_weight: 0.4 }
    }
}

/// A fine-tuning run (`densessl finetune --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Seed of head initialisation, batch order and augmentation.
    pub seed: u64,
    /// Labelled data (train and val splits).
    pub data: DataConfig,
    /// Encoder settings (must match `init`'s architecture).
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
    /// Loop settings.
    pub train: FinetuneLoop,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            data: DataConfig::default(),
            encoder: EncoderConfig::default(),
            head: HeadConfig::default(),
            init: None,
            init_from: "auto".into(),
            optim: OptimConfig { lr: 0.01, momentum: 0.9, weight_decay: 1e-4 },
            schedule: ScheduleConfig { kind: "poly".into(), ..ScheduleConfig::default() },
            train: FinetuneLoop::default(),
        }
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

/// A random crop of `crop`² (padding images with 0 and masks with the ignore label) and flip.
fn augment(sample: &SegSample, crop: u32, flip: bool, rng: &mut ChaCha8Rng) -> (FloatImage, Vec<u8>) {
    let (w, h) = sample.image.dimensions();
    let (cw, ch) = if crop == 0 { (w, h) } else { (crop, crop) };
    let x0 = if w > cw { rng.random_range(0..=w - cw) } else { 0 };
    let y0 = if h > ch { rng.random_range(0..=h - ch) } else { 0 };
    let mirror = flip && rng.random_bool(0.5);
    let mut image = RgbImage::new(cw, ch);
    let mut mask = GrayImage::from_pixel(cw, ch, image::Luma([IGNORE_LABEL]));
    for y in 0..ch.min(h) {
        for x in 0..cw.min(w) {
            let tx = if mirror { cw.min(w) - 1 - x } else { x };
            image.put_pixel(tx, y, *sample.image.get_pixel(x0 + x, y0 + y));
            mask.put_pixel(tx, y, *sample.mask.get_pixel(x0 + x, y0 + y));
        }
    }
    let mut float = FloatImage::from_rgb(&image);
    float.normalize_imagenet();
    (float, mask.into_raw())
}

/// Runs a fine-tune to completion and evaluates on the val split. `init` overrides `config.init`.
pub fn run(config: &FinetuneConfig, options: &RunOptions) -> Result<FinetuneOutcome> {
    let start = Instant::now();
    config.schedule.check()?;
    if config.train.batch_size == 0 || config.train.steps == 0 {
        return Err(Error::Invalid("train.steps and train.batch_size must be positive".into()));
    }
    let device = options.device.init()?;
    device.seed(config.seed);
    let train = config.data.load(Split::Train)?;
    let val = config.data.load(Split::Val)?;
    if config.train.crop_size == 0 {
        let dims = train.samples[0].image.dimensions();
        if let Some(i) = train.samples.iter().position(|s| s.image.dimensions() != dims) {
            return Err(Error::Invalid(format!(
                "{}: training images differ in size (sample {i}); set train.crop_size",
                train.name
            )));
        }
    }
    let mut model = Segmenter::new(&config.encoder, &config.head, train.num_classes, &device)?;
    let mut init_note = None;
    if let Some(init) = &config.init {
        let path = PathBuf::from(init);
        let options = ImportOptions { format: config.init_from.parse()?, ..ImportOptions::default() };
        let (encoder, report) = crate::weights::import::load_encoder(&path, &config.encoder, &options, &device)?;
        tracing::info!("{report}");
        model.encoder = encoder;
        init_note = Some(format!(
            "{} ({:?}, prefix '{}', {} tensors; fingerprint {})",
            path.display(),
            report.format,
            report.prefix,
            report.mapped,
            checkpoint::file_fingerprint(&path)?
        ));
    }
    let mut run = RunDir::create(
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

    let mut optim = config.optim.sgd();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xF17E);
    let total = config.train.steps;
    let batch_size = config.train.batch_size.min(train.samples.len());
    let info = CheckpointInfo::Segmenter {
        encoder: config.encoder.clone(),
        head: config.head.clone(),
        num_classes: train.num_classes,
    };
    let bar = crate::train::progress::bar(total, "finetune");
    let mut window = Vec::new();
    let mut tick = Instant::now();
    for step in 0..total {
        let lr = config.schedule.lr_at(config.optim.lr, step, total);
        let picks = sample(&mut rng, train.samples.len(), batch_size);
        let (images, masks): (Vec<FloatImage>, Vec<Vec<u8>>) = picks
            .iter()
            .map(|i| augment(&train.samples[i], config.train.crop_size, config.train.flip, &mut rng))
            .unzip();
        let (h, w) = (images[0].height, images[0].width);
        let labels: Vec<i64> = masks.iter().flatten().map(|&l| i64::from(l)).collect();
        let labels = Tensor::<3, Int>::from_data(TensorData::new(labels, [batch_size, h, w]), &device);
        let (logits, aux_logits) = model.forward_with_aux(batch_tensor(&images, &device));
        let mut loss = masked_cross_entropy(logits, labels.clone(), i64::from(IGNORE_LABEL));
        if let Some(aux_logits) = aux_logits {
            loss = loss + masked_cross_entropy(aux_logits, labels, i64::from(IGNORE_LABEL)) * config.train.aux_weight;
        }
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        if !loss_value.is_finite() {
            return Err(Error::Training { step, message: format!("loss is {loss_value}") });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        window.push(loss_value);
        bar.inc(1);
        let done = step + 1;
        if done % config.train.log_every.max(1) == 0 || done == total {
            let mean = window.iter().sum::<f64>() / window.len() as f64;
            let ips = (window.len() * batch_size) as f64 / tick.elapsed().as_secs_f64();
            run.log_metrics(&serde_json::json!({"step": done, "loss": mean, "lr": lr, "images_per_s": ips}))?;
            bar.set_message(format!("loss {mean:.3}"));
            window.clear();
            tick = Instant::now();
        }
        if config.train.checkpoint_every > 0 && done % config.train.checkpoint_every == 0 && done < total {
            checkpoint::save(&model, &info, &run.checkpoint_path(&format!("model-step{done}.safetensors")))?;
        }
    }
    bar.finish();
    let path = run.checkpoint_path("model.safetensors");
    checkpoint::save(&model, &info, &path)?;
    let metrics = evaluate(&model, &val, config.train.eval_batch_size, &options.device.init_plain()?)?;
    let wall_s = start.elapsed().as_secs_f64();
    run.finish(&serde_json::json!({
        "miou": metrics.miou, "aacc": metrics.aacc, "iou": metrics.iou,
        "steps": total, "wall_s": wall_s, "checkpoint": path, "val": val.name,
    }))?;
    Ok(FinetuneOutcome { metrics, checkpoint: path, wall_s })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property: crop + flip keep every image pixel aligned with its label.
    #[test]
    fn augmentation_keeps_pixels_and_labels_aligned() {
        // Encode each pixel's position in both the image and the mask.
        let image = RgbImage::from_fn(20, 12, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 0]));
        let mask = GrayImage::from_fn(20, 12, |x, y| image::Luma([(x + 20 * y) as u8]));
        let sample = SegSample { image, mask };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for crop in [8u32, 16] {
            for _ in 0..20 {
                let (im, labels) = augment(&sample, crop, true, &mut rng);
                for (i, &l) in labels.iter().enumerate() {
                    if l == IGNORE_LABEL {
                        assert_eq!(im.data[i], (0.0 - crate::views::IMAGENET_MEAN[0]) / crate::views::IMAGENET_STD[0]);
                        continue;
                    }
                    let (x, y) = (u32::from(l) % 20, u32::from(l) / 20);
                    let r = im.data[i] * crate::views::IMAGENET_STD[0] + crate::views::IMAGENET_MEAN[0];
                    let g = im.data[labels.len() + i] * crate::views::IMAGENET_STD[1] + crate::views::IMAGENET_MEAN[1];
                    assert!((r * 255.0 - (x * 10) as f32).abs() < 0.01 && (g * 255.0 - (y * 10) as f32).abs() < 0.01);
                }
            }
        }
    }
}
