use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use densessl::data::{DataConfig, Split};
use densessl::device::DeviceSpec;
use densessl::seg::evaluate::evaluate;
use densessl::train::checkpoint::{self, CheckpointInfo};

/// `densessl eval --checkpoint CKPT --dataset procedural|VOC_ROOT [--split val] [--json]`
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A fine-tuned model (`finetune`'s checkpoints/model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// `procedural` or the root of a VOC-format tree.
    #[arg(long, default_value = "procedural")]
    dataset: String,
    /// Split to evaluate (VOC: ImageSets/Segmentation/<split>.txt).
    #[arg(long, default_value = "val")]
    split: String,
    /// Procedural only: image size, number of val scenes and generator seed.
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[arg(long, default_value_t = 200)]
    val: usize,
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print {"miou", "aacc", "iou"} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = DeviceSpec::parse(&args.device)?.init_plain()?;
    let (model, info) = checkpoint::load_segmenter(&args.checkpoint, &device)?;
    let CheckpointInfo::Segmenter { num_classes, .. } = info else { unreachable!("load_segmenter checks the kind") };
    let data = DataConfig {
        source: args.dataset.clone(),
        size: args.size,
        val: args.val,
        seed: args.data_seed,
        val_split: args.split.clone(),
        num_classes: Some(num_classes),
        ..DataConfig::default()
    };
    let dataset = data.load(Split::Val).with_context(|| format!("loading {}", args.dataset))?;
    if dataset.num_classes != num_classes {
        anyhow::bail!(
            "{} has {} classes but the model predicts {num_classes}",
            dataset.name,
            dataset.num_classes
        );
    }
    let metrics = evaluate(&model, &dataset, args.batch_size, &device)?;
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        println!("mIoU {:.4}  aAcc {:.4}  on {} images of {}", metrics.miou, metrics.aacc, dataset.samples.len(), dataset.name);
        for (c, iou) in metrics.iou.iter().enumerate() {
            match iou {
                Some(v) => println!("  class {c:>3}: IoU {v:.4}"),
                None => println!("  class {c:>3}: absent"),
            }
        }
    }
    Ok(())
}
