use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use densessl::data::labels::read_label_png;
use densessl::data::{DataConfig, Split};
use densessl::device::DeviceSpec;
use densessl::seg::evaluate::evaluate;
use densessl::seg::inference::InferenceConfig;
use densessl::seg::metrics::{ConfusionMatrix, SegMetrics};
use densessl::train::checkpoint::{self, CheckpointInfo};

/// How to run inference (shared by `eval` and `predict`).
#[derive(Args, Debug, Clone)]
pub struct InferenceArgs {
    /// `whole` or `slide`.
    #[arg(long, default_value = "whole")]
    mode: String,
    /// Slide: window side in pixels.
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Slide: step between windows.
    #[arg(long, default_value_t = 0)]
    stride: usize,
    /// Average with the horizontally flipped image.
    #[arg(long)]
    flip: bool,
}

impl InferenceArgs {
    pub fn config(&self) -> InferenceConfig {
        InferenceConfig { mode: self.mode.clone(), window: self.window, stride: self.stride, flip: self.flip }
    }
}

/// `densessl eval --checkpoint CKPT --dataset procedural|VOC_ROOT [--split val] [--json]`
/// or `densessl eval --pred DIR --gt DIR --num-classes C [--ignore 255] [--json]`
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A fine-tuned model (`finetune`'s checkpoints/model.safetensors).
    #[arg(long, conflicts_with_all = ["pred", "gt"])]
    checkpoint: Option<PathBuf>,
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
    #[command(flatten)]
    inference: InferenceArgs,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Folder of predicted label PNGs (e.g. from `densessl predict`), matched to --gt by file name.
    #[arg(long, requires = "gt")]
    pred: Option<PathBuf>,
    /// Folder of ground-truth label PNGs (palette or grey).
    #[arg(long, requires = "pred")]
    gt: Option<PathBuf>,
    /// Number of classes, for --pred/--gt.
    #[arg(long, default_value_t = 21)]
    num_classes: usize,
    /// Ground-truth label to ignore, for --pred/--gt.
    #[arg(long, default_value_t = 255)]
    ignore: u8,
    /// Print {"miou", "aacc", "iou"} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (metrics, what) = match (&args.checkpoint, &args.pred, &args.gt) {
        (Some(checkpoint), None, None) => evaluate_checkpoint(&args, checkpoint)?,
        (None, Some(pred), Some(gt)) => evaluate_predictions(pred, gt, args.num_classes, args.ignore)?,
        _ => bail!("give either --checkpoint, or --pred and --gt"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        println!("mIoU {:.4}  aAcc {:.4}  on {what}", metrics.miou, metrics.aacc);
        for (c, iou) in metrics.iou.iter().enumerate() {
            match iou {
                Some(v) => println!("  class {c:>3}: IoU {v:.4}"),
                None => println!("  class {c:>3}: absent"),
            }
        }
    }
    Ok(())
}

fn evaluate_checkpoint(args: &EvalArgs, path: &std::path::Path) -> Result<(SegMetrics, String)> {
    let device = DeviceSpec::parse(&args.device)?.init_plain()?;
    let (model, info) = checkpoint::load_segmenter(path, &device)?;
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
        bail!("{} has {} classes but the model predicts {num_classes}", dataset.name, dataset.num_classes);
    }
    let metrics = evaluate(&model, &dataset, &args.inference.config(), args.batch_size, &device)?;
    Ok((metrics, format!("{} images of {}", dataset.samples.len(), dataset.name)))
}

/// Metrics of saved predictions: every ground-truth PNG needs a prediction of the same name
/// and size; all problems are listed together.
fn evaluate_predictions(pred: &std::path::Path, gt: &std::path::Path, num_classes: usize, ignore: u8) -> Result<(SegMetrics, String)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(gt)
        .with_context(|| format!("reading {}", gt.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("{}: no ground-truth PNGs", gt.display());
    }
    let mut matrix = ConfusionMatrix::new(num_classes);
    let mut problems = Vec::new();
    for gt_path in &names {
        let pred_path = pred.join(gt_path.file_name().expect("file"));
        let result = (|| -> Result<()> {
            let truth = read_label_png(gt_path)?;
            let prediction = read_label_png(&pred_path)?;
            if truth.dimensions() != prediction.dimensions() {
                bail!("{}: prediction is {:?}, ground truth {:?}", pred_path.display(), prediction.dimensions(), truth.dimensions());
            }
            matrix.update(prediction.as_raw(), truth.as_raw(), ignore).map_err(|e| anyhow::anyhow!("{}: {e}", pred_path.display()))
        })();
        if let Err(e) = result {
            problems.push(format!("{e:#}"));
        }
    }
    if !problems.is_empty() {
        bail!("{} bad prediction(s):\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok((matrix.metrics(), format!("{} predictions in {}", names.len(), pred.display())))
}
