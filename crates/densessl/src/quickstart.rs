//! `densessl quickstart`: pre-train MoCo v2 briefly on procedural scenes, fine-tune the
//! MoCo-FCN head from it and from random init, and compare mIoU.

use std::path::{Path, PathBuf};

use crate::data::DataConfig;
use crate::device::DeviceSpec;
use crate::models::heads::HeadConfig;
use crate::models::segmenter::EncoderConfig;
use crate::train::optim::OptimConfig;
use crate::seg::finetune::{self, FinetuneConfig, FinetuneLoop};
use crate::train::pretrain::{self, PretrainConfig, PretrainLoop, RunOptions};
use crate::train::schedule::ScheduleConfig;
use crate::Result;

/// One row of the quickstart table.
#[derive(Debug, Clone)]
pub struct Row {
    /// `RandomInit` or `MoCo v2`.
    pub name: String,
    /// Validation mIoU.
    pub miou: f64,
    /// Pixel accuracy.
    pub aacc: f64,
    /// Wall time of pre-training plus fine-tuning, seconds.
    pub wall_s: f64,
}

/// The quickstart's configurations (shared data and encoder; small enough for 2 CPU cores).
pub fn configs(steps_scale: f64) -> (PretrainConfig, FinetuneConfig) {
    let scale = |n: usize| ((n as f64 * steps_scale).round() as usize).max(1);
    let data = DataConfig { size: 64, train: 2000, val: 200, ..DataConfig::default() };
    let encoder = EncoderConfig { base_width: 32, output_stride: 8, ..EncoderConfig::default() };
    let mut pretrain = PretrainConfig {
        data: data.clone(),
        encoder: encoder.clone(),
        optim: OptimConfig { lr: 0.03, momentum: 0.9, weight_decay: 1e-4 },
        train: PretrainLoop { steps: scale(300), batch_size: 64, view_size: 64, log_every: 10, checkpoint_every: 0 },
        ..PretrainConfig::default()
    };
    pretrain.method.insert("queue_size".into(), toml::Value::Integer(4096));
    pretrain.method.insert("momentum".into(), toml::Value::Float(0.99));
    let finetune = FinetuneConfig {
        data: DataConfig { train: 300, ..data },
        encoder,
        head: HeadConfig { channels: 64, ..HeadConfig::default() },
        optim: OptimConfig { lr: 0.02, momentum: 0.9, weight_decay: 1e-4 },
        schedule: ScheduleConfig { kind: "poly".into(), ..ScheduleConfig::default() },
        train: FinetuneLoop { steps: scale(200), batch_size: 16, ..FinetuneLoop::default() },
        ..FinetuneConfig::default()
    };
    (pretrain, finetune)
}

/// Runs the quickstart into `out` (`pretrain/`, `finetune-random/`, `finetune-moco-v2/`).
pub fn run(out: &Path, device: &DeviceSpec, argv: &[String], steps_scale: f64) -> Result<Vec<Row>> {
    let (pretrain_config, finetune_config) = configs(steps_scale);
    let options = |dir: &str| RunOptions { out: out.join(dir), device: device.clone(), argv: argv.to_vec() };

    let random = finetune::run(&finetune_config, &options("finetune-random"))?;
    let pre = pretrain::run(&pretrain_config, &options("pretrain"))?;
    let from_moco = FinetuneConfig {
        init: Some(path_string(&pre.encoder_checkpoint)),
        ..finetune_config
    };
    let moco = finetune::run(&from_moco, &options("finetune-moco-v2"))?;
    Ok(vec![
        Row { name: "RandomInit".into(), miou: random.metrics.miou, aacc: random.metrics.aacc, wall_s: random.wall_s },
        Row { name: "MoCo v2".into(), miou: moco.metrics.miou, aacc: moco.metrics.aacc, wall_s: pre.wall_s + moco.wall_s },
    ])
}

fn path_string(p: &PathBuf) -> String {
    p.display().to_string()
}
