use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use densessl::seg::finetune::{self, FinetuneConfig};
use densessl::train::pretrain::RunOptions;

use crate::RunArgs;

const HELP: &str = "\
Config sections (all optional; defaults in brackets; see configs/finetune/*.toml):
  seed [0]
  init        encoder checkpoint: densessl, torchvision .pth, MoCo .pth.tar, mmselfsup/DenseCL,
              BYOL/SimSiam [none = random init]; --init overrides
  init_from   its layout: auto|torchvision|moco|mmselfsup|byol|densessl [auto]
  [data]      source [\"procedural\" | VOC root], size [64], train [1000], val [200], seed [0],
              train_split [train], val_split [val], num_classes [classes.txt, else 21]
  [encoder]   arch [resnet18], base_width [64], output_stride [32] (arch/width must match init)
  [head]      name [moco-fcn | fcn | pspnet | deeplabv3plus | nonlocal], channels [256 moco-fcn,
              512 others], dilation [6 moco-fcn, 1 fcn], dropout [0.1], num_convs [2],
              concat_input [true], pool_scales [[1,2,3,6]], dilations [[1,12,24,36]],
              c1_channels [48], reduction [2], aux_channels [0 = no auxiliary head on C4]
  [optim]     lr [0.01], momentum [0.9], weight_decay [1e-4]
  [schedule]  kind [poly], power [0.9], warmup_steps [0], milestones, gamma
  [train]     steps [300], batch_size [16], crop_size [0 = whole image], flip [true],
              log_every [10], checkpoint_every [0], eval_batch_size [32], aux_weight [0.4]";

/// `densessl finetune --config FILE.toml [--init CHECKPOINT] [--set key=value ...]`
#[derive(Args, Debug)]
#[command(after_help = HELP)]
pub struct FinetuneArgs {
    /// TOML config (unknown keys are errors); without it, the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Encoder checkpoint to start from: any file `densessl import` reads (densessl, torchvision,
    /// MoCo, mmselfsup/DenseCL, BYOL/SimSiam).
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
