use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use densessl::seg::finetune::{self, FinetuneConfig};
use densessl::train::pretrain::RunOptions;

use crate::RunArgs;

/// `densessl finetune --config FILE.toml [--init CHECKPOINT] [--set key=value ...]`
///
/// Config sections (defaults in brackets): seed [0]; [data] as for pretrain plus val [200];
/// [encoder]; [head] name ["moco-fcn"], channels [256], dilation [6], dropout [0.1];
/// init [none]; [optim] lr [0.01]; [schedule] kind ["poly"], power [0.9]; [train] steps
/// [300], batch_size [16], crop_size [0 = whole image], flip [true], eval_batch_size [32].
/// See configs/finetune/*.toml.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// TOML config (unknown keys are errors); without it, the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Encoder checkpoint to start from (a `pretrain` output or a fine-tuned model).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Override a config key, e.g. --set train.steps=1000.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    let mut config: FinetuneConfig = densessl::config::load(args.config.as_deref(), &args.set)?;
    if let Some(init) = &args.init {
        config.init = Some(init.display().to_string());
    }
    let (out, device) = args.run.resolve("finetune")?;
    eprintln!("finetune → {}", out.display());
    let outcome = finetune::run(&config, &RunOptions { out, device, argv: crate::argv() })?;
    println!(
        "mIoU {:.4}  aAcc {:.4}  ({:.1} s)\nmodel checkpoint: {}",
        outcome.metrics.miou,
        outcome.metrics.aacc,
        outcome.wall_s,
        outcome.checkpoint.display()
    );
    Ok(())
}
