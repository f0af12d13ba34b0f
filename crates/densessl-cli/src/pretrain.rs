use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use densessl::train::pretrain::{self, PretrainConfig, RunOptions};

use crate::RunArgs;

const HELP: &str = "\
Config sections (all optional; defaults in brackets; see configs/pretrain/*.toml):
  seed [0]
  init        encoder checkpoint to continue from [none]; --init overrides; init_from [auto]
  [data]      source [\"procedural\" | \"fashion-scenes\" | VOC root], size [64], train [1000],
              val [200], seed [0], unlabeled [folder of images, used instead of the train split],
              unlabeled_count [4000, fashion-scenes]
  [encoder]   arch [resnet18|34|50|101], base_width [64], output_stride [32|16|8]
  [method]    name [moco-v1 | moco-v2 | simclr | byol | simsiam | rotation | plr | edmoco |
              plmoco | pledmoco | densecl | pixpro] + its settings
              (every default is written to the run's config.toml):
              moco-v1/v2: dim, projector [linear|mlp], queue_size, temperature, momentum,
                          key_bn_groups, [method.augment]
              simclr: dim, hidden, temperature [0.5], [method.augment]
              byol: dim [256], hidden [4096], base_momentum [0.996], [method.augment_first|second]
              simsiam: dim [2048], pred_hidden [512], fix_predictor_lr [true], [method.augment]
              rotation: [method.augment]
              plr: grid [4], copies [1; 4 = every patch at all four turns per batch],
                   [method.decoder] (any [head] settings), [method.augment]
              edmoco: moco-v2's settings + [method.decoder] [moco-fcn]
              plmoco: dim [128], hidden [0 = map channels], queue_size [16384],
                      enqueue_per_image [4], temperature [0.2], momentum [0.999],
                      key_bn_groups [2], layer [c5|c4], [method.augment]
              pledmoco: plmoco's settings + [method.decoder] [moco-fcn]
              densecl: dim, hidden, queue_size, temperature, momentum, key_bn_groups,
                       dense_weight [0.5], dense_warmup_steps [0], [method.augment]
              pixpro: dim [256], hidden [0 = 2·C5], ratio [0.7], gamma [2], transform_layers
                      [1], base_momentum [0.99], [method.augment_first|second]
  [optim]     lr [0.03], momentum [0.9], weight_decay [1e-4], encoder_lr_mult [1.0],
              no_decay_norm_bias [false]
  [schedule]  kind [cosine|step|poly|linear|constant], warmup_steps [0], milestones, gamma, power
  [train]     steps [200] or epochs [0], batch_size [32], view_size [64], log_every [10],
              checkpoint_every [500: encoder checkpoint + resumable state; 0 = final only],
              keep_checkpoints [2], skip_nonfinite [0: stop at the first non-finite loss
              or gradient, naming the step and the last good checkpoint]
  [monitor]   every [0 = off]: weighted kNN accuracy on the labelled splits of [data], k [20],
              temperature [0.07], max_images [1000]

Resuming: `densessl pretrain --resume RUN_DIR` continues an interrupted run from its newest
state (written every train.checkpoint_every steps) with the run's own config.toml; networks,
optimiser, queues, LR schedule and data order are restored, so the result equals an
uninterrupted run's.";

/// `densessl pretrain --config FILE.toml [--init CHECKPOINT] [--set key=value ...]`
#[derive(Args, Debug)]
#[command(after_help = HELP)]
pub struct PretrainArgs {
    /// TOML config (unknown keys are errors); without it, the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue from an encoder checkpoint (any file `densessl import` reads); heads start
    /// fresh. Pair with --set optim.encoder_lr_mult=0.01.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Override a config key, e.g. --set train.steps=500 --set method.temperature=0.1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue the interrupted run in this directory from its newest saved state.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "init", "set", "out"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: PretrainArgs) -> Result<()> {
    let outcome = if let Some(dir) = args.resume {
        let (_, device) = args.run.resolve("pretrain")?;
        pretrain::resume(&RunOptions { out: dir, device, argv: crate::argv() })?
    } else {
        let mut config: PretrainConfig = densessl::config::load(args.config.as_deref(), &args.set)?;
        if let Some(init) = &args.init {
            config.init = Some(init.display().to_string());
        }
        let (out, device) = args.run.resolve("pretrain")?;
        eprintln!("pretrain → {}", out.display());
        pretrain::run(&config, &RunOptions { out, device, argv: crate::argv() })?
    };
    println!(
        "encoder checkpoint: {}\nfinal loss: {:.4}\nwall time: {:.1} s",
        outcome.encoder_checkpoint.display(),
        outcome.final_loss,
        outcome.wall_s
    );
    Ok(())
}
