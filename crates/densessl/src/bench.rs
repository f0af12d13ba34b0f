//! `densessl bench train-step`: the median time of a training step — a supervised ResNet
//! step (SGD with momentum, BN in training mode, cross-entropy over 1,000 classes, as
//! `bench/pytorch_train_step.py` does in PyTorch) or one step of a pretext method — with
//! images per second and the process's peak resident memory.

use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::device::DeviceSpec;
use crate::models::resnet::ResNet;
use crate::models::segmenter::EncoderConfig;
use crate::pretext::{self, BuildContext, Progress, Trainer};
use crate::train::optim::OptimConfig;
use crate::{Error, Result};

/// What to time.
#[derive(Debug, Clone)]
pub struct TrainStepBench {
    /// `resnet18`, `resnet50`, …
    pub arch: String,
    /// Stem width (64 = torchvision).
    pub base_width: usize,
    /// Images per step.
    pub batch: usize,
    /// Image side in pixels.
    pub size: usize,
    /// A pretext method (`moco-v2`, `plmoco`, …) with its default settings; none = the
    /// supervised classification step.
    pub method: Option<String>,
    /// Timed steps (the median is reported).
    pub steps: usize,
    /// Untimed steps first (allocation, autotuning).
    pub warmup: usize,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Median seconds per step.
    pub median_s_per_step: f64,
    /// `batch / median`.
    pub images_per_s: f64,
    /// Peak resident memory of the process in MB (`VmHWM`; null where unknown).
    pub peak_rss_mb: Option<f64>,
    /// Every timed step, in seconds.
    pub step_s: Vec<f64>,
}

/// Peak resident set size of this process in MB, from `/proc/self/status` (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// ResNet + a 1,000-way linear classifier (torchvision's `fc`).
#[derive(Module, Debug)]
struct Classifier {
    backbone: ResNet,
    fc: Linear,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Runs the benchmark on `device`.
pub fn train_step(bench: &TrainStepBench, device: &DeviceSpec) -> Result<BenchResult> {
    if bench.steps == 0 || bench.batch == 0 || bench.size < 32 {
        return Err(Error::Invalid("bench: steps and batch must be positive and size at least 32".into()));
    }
    let device = device.init()?;
    device.seed(0);
    let encoder = EncoderConfig { arch: bench.arch.clone(), base_width: bench.base_width, ..EncoderConfig::default() };
    let optim = OptimConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, ..OptimConfig::default() };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut step: Step = match &bench.method {
        None => supervised_step(bench, &encoder, &optim, &device, &mut rng)?,
        Some(name) => {
            let context = BuildContext {
                init: None,
                encoder: &encoder,
                optim: &optim,
                view_size: bench.size,
                settings: toml::Table::new(),
                device: &device,
            };
            let mut method = pretext::build(name, context)?;
            let side = bench.size as u32 * 8 / 7; // views are crops of somewhat larger images
            let images: Vec<RgbImage> = (0..bench.batch)
                .map(|_| RgbImage::from_fn(side, side, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()])))
                .collect();
            let total = bench.warmup + bench.steps;
            Box::new(move |i| {
                let batch: Vec<&RgbImage> = images.iter().collect();
                method.step(&batch, &mut rng, Progress { lr: 0.03, step: i, total })?;
                Ok(())
            })
        }
    };
    let mut times = Vec::with_capacity(bench.steps);
    let warm = crate::runtime::keep_pool_warm();
    for i in 0..bench.warmup + bench.steps {
        if let Some(warm) = &warm {
            warm.tick();
        }
        let start = Instant::now();
        step(i)?;
        if i >= bench.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let m = median(&times);
    Ok(BenchResult { median_s_per_step: m, images_per_s: bench.batch as f64 / m, peak_rss_mb: peak_rss_mb(), step_s: times })
}

type Step = Box<dyn FnMut(usize) -> Result<()>>;

fn supervised_step(bench: &TrainStepBench, encoder: &EncoderConfig, optim: &OptimConfig, device: &Device, rng: &mut ChaCha8Rng) -> Result<Step> {
    let resnet = encoder.resnet()?;
    let mut model = Classifier { backbone: resnet.init(device), fc: LinearConfig::new(resnet.channels()[3], 1000).init(device) };
    let (b, s) = (bench.batch, bench.size);
    let pixels: Vec<f32> = (0..b * 3 * s * s).map(|_| rng.random_range(-2.0..2.0)).collect();
    let labels: Vec<i64> = (0..b).map(|_| rng.random_range(0..1000)).collect();
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [b, 3, s, s]), device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), device);
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(device);
    let mut trainer = Trainer::new(optim);
    Ok(Box::new(move |_| {
        let logits = model.fc.forward(model.backbone.forward_pooled(x.clone()));
        let loss = loss_fn.forward(logits, y.clone());
        let grads = loss.backward();
        model = trainer.step(0.1, model.clone(), grads, |m: &Classifier| &m.backbone);
        // Reading the loss waits for the step to finish, as PyTorch's loss.item() does.
        let value = loss.into_scalar::<f32>();
        if value.is_finite() { Ok(()) } else { Err(Error::Invalid(format!("bench: loss became {value}"))) }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_tiny_supervised_bench_reports_consistent_numbers() {
        let bench = TrainStepBench { arch: "resnet18".into(), base_width: 4, batch: 2, size: 32, method: None, steps: 3, warmup: 1 };
        let r = train_step(&bench, &DeviceSpec::parse("cpu").unwrap()).unwrap();
        assert_eq!(r.step_s.len(), 3);
        assert!((r.images_per_s - 2.0 / r.median_s_per_step).abs() < 1e-9);
        if cfg!(target_os = "linux") {
            assert!(r.peak_rss_mb.unwrap() > 1.0);
        }
    }
}
