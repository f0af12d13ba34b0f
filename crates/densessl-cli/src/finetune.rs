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
  [optim]     lr [0.01], momentum [0.9], weight_decay [1e-4], encoder_lr_mult [1.0],
              no_decay_norm_bias [false]
  [schedule]  kind [poly | step | cosine | linear | constant], power [0.9], milestones, gamma,
              warmup_steps [0], warmup_ratio, min_ratio [0]
  [augment]   crop_size [0 = whole image], scale_range [[1.0, 1.0]], base_size [0 = own size],
              cat_max_ratio [1.0 = off], flip [true], photometric [false]
  [inference] mode [whole | slide], window, stride, flip [false]
  [train]     steps [300], batch_size [16], log_every [10], checkpoint_every [500: model
              checkpoint + resumable state; 0 = final only], keep_checkpoints [2],
              skip_nonfinite [0: stop at the first non-finite loss or gradient],
              eval_batch_size [32], aux_weight [0.4], bn [train | frozen], freeze_encoder [false]

Resuming: `densessl finetune --resume RUN_DIR` continues an interrupted fine-tune from its
newest state with the run's own config.toml (model, optimiser, schedule, data order).

Protocols (--protocol NAME, a layer under the config file and --set):
  moco-fcn-513-30k  R50 OS16, moco-fcn, 513 crops, lr 0.003, step ×0.1 at 21k/27k, 30k × 16
  mmseg-512-20k     R50 OS8, fcn + aux, 512 crops, rescale 0.5-2, photometric, lr 0.01 poly, 20k × 16
  mini              FashionScenes (in memory), R18 w16 OS8, 64 crops, lr 0.1 poly, 500 × 16";

/// `densessl finetune [--protocol NAME] [--config FILE.toml] [--init CHECKPOINT] [--set key=value ...]`
#[derive(Args, Debug)]
#[command(after_help = HELP)]
pub struct FinetuneArgs {
    /// Protocol preset under the config: moco-fcn-513-30k, mmseg-512-20k or mini.
    #[arg(long)]
    protocol: Option<String>,
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
    /// Repeat with seeds seed, seed+1, …: one run per seed under OUT/seed-<s>/, mean ± std in OUT/summary.json.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Continue the interrupted run in this directory from its newest saved state.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["protocol", "config", "init", "set", "out", "seeds"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    if let Some(dir) = args.resume {
        let (_, device) = args.run.resolve("finetune")?;
        let outcome = finetune::resume(&RunOptions { out: dir, device, argv: crate::argv() })?;
        return report(&outcome);
    }
    let preset = match &args.protocol {
        Some(name) => Some((name.as_str(), densessl::seg::protocol::preset(name)?)),
        None => None,
    };
    let mut config: FinetuneConfig = densessl::config::load_with_preset(preset, args.config.as_deref(), &args.set)?;
    if let Some(init) = &args.init {
        config.init = Some(init.display().to_string());
    }
    let (out, device) = args.run.resolve("finetune")?;
    eprintln!("finetune → {}", out.display());
    let options = RunOptions { out, device, argv: crate::argv() };
    if args.seeds > 1 {
        let outcome = finetune::run_seeds(&config, &options, args.seeds)?;
        println!(
            "mIoU {:.4} ± {:.4}  aAcc {:.4} ± {:.4}  over {} seeds ({})",
            outcome.miou.0,
            outcome.miou.1,
            outcome.aacc.0,
            outcome.aacc.1,
            outcome.runs.len(),
            outcome.runs.iter().map(|(s, o)| format!("{s}: {:.4}", o.metrics.miou)).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    report(&finetune::run(&config, &options)?)
}

fn report(outcome: &finetune::FinetuneOutcome) -> Result<()> {
    println!(
        "mIoU {:.4}  aAcc {:.4}  ({:.1} s)\nmodel checkpoint: {}",
        outcome.metrics.miou,
        outcome.metrics.aacc,
        outcome.wall_s,
        outcome.checkpoint.display()
    );
    Ok(())
}
