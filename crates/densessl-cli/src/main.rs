//! The `densessl` command: a thin layer over the library, one file per subcommand.

mod bench;
mod data;
mod eval;
mod experiment;
mod finetune;
mod plot;
mod predict;
mod pretrain;
mod quickstart;
mod weights;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use densessl::device::DeviceSpec;

/// Self-supervised pre-training for dense prediction: pretext task → encoder → segmentation mIoU.
#[derive(Parser)]
#[command(name = "densessl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-train an encoder with a pretext task (e.g. moco-v2).
    Pretrain(pretrain::PretrainArgs),
    /// Fine-tune a segmentation model, optionally from a pre-trained encoder.
    Finetune(finetune::FinetuneArgs),
    /// Evaluate a fine-tuned model, or saved predictions: mIoU, pixel accuracy, per-class IoU.
    Eval(eval::EvalArgs),
    /// Write a fine-tuned model's predictions as VOC-palette PNGs (and overlays).
    Predict(predict::PredictArgs),
    /// Pre-train MoCo v2 briefly on built-in scenes and compare fine-tuning from it vs random init.
    Quickstart(quickstart::QuickstartArgs),
    /// Dataset tools: generate, check.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Import a PyTorch checkpoint (torchvision, MoCo, mmselfsup/DenseCL, BYOL/SimSiam) strictly.
    Import(weights::ImportArgs),
    /// Export an encoder in torchvision's key names (safetensors).
    Export(weights::ExportArgs),
    /// Write one image's encoder features as .npy, for parity checks against PyTorch.
    Features(weights::FeaturesArgs),
    /// Speed: median train-step time, images/s and peak memory (compare with bench/compare.sh).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run a grid of pre-trainings × heads × seeds (resumable) and write the results table and plots.
    Experiment(experiment::ExperimentArgs),
    /// Draw runs' training curves (loss, kNN accuracy, …) into one PNG.
    Plot(plot::PlotArgs),
}

/// Options every run command shares.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Run directory (default: runs/<command>-<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compute device: cpu, vulkan[:N] or cuda[:N] (the latter two need the matching Cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl RunArgs {
    /// The run directory and device.
    pub fn resolve(&self, command: &str) -> Result<(PathBuf, DeviceSpec)> {
        let out = self.out.clone().unwrap_or_else(|| densessl::train::run_dir::default_run_dir(command));
        Ok((out, DeviceSpec::parse(&self.device)?))
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = densessl::runtime::configure();
    tracing::debug!("runtime: {runtime:?}");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pretrain(args) => pretrain::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Data(command) => data::run(command),
        Command::Import(args) => weights::import(args),
        Command::Export(args) => weights::export(args),
        Command::Features(args) => weights::features(args),
        Command::Plot(args) => plot::run(args),
        Command::Experiment(args) => experiment::run(args),
        Command::Bench(command) => bench::run(command),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The command line, for manifests.
pub fn argv() -> Vec<String> {
    std::env::args().collect()
}
