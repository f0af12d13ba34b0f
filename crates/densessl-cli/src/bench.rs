//! `densessl bench`: speed measurements to compare against PyTorch (see bench/compare.sh).

use anyhow::Result;
use clap::{Args, Subcommand};
use densessl::bench::{TrainStepBench, train_step};
use densessl::device::DeviceSpec;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Median time of a training step (supervised ResNet, or a pretext method's step).
    TrainStep(TrainStepArgs),
}

/// Arguments of `densessl bench train-step`.
#[derive(Args, Debug)]
pub struct TrainStepArgs {
    /// resnet18 | resnet34 | resnet50 | resnet101.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Stem width (64 = torchvision).
    #[arg(long, default_value_t = 64)]
    pub base_width: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 96)]
    pub size: usize,
    /// Time one step of this pretext method (default settings) instead of the supervised
    /// step: moco-v2, plmoco, densecl, …
    #[arg(long)]
    pub method: Option<String>,
    /// Timed steps; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Print one JSON object: {"median_s_per_step", "images_per_s", "peak_rss_mb", "step_s"}.
    #[arg(long)]
    pub json: bool,
    /// Compute device: cpu, vulkan[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `densessl bench …`.
pub fn run(command: BenchCommand) -> Result<()> {
    let BenchCommand::TrainStep(args) = command;
    let bench = TrainStepBench {
        arch: args.arch.clone(),
        base_width: args.base_width,
        batch: args.batch,
        size: args.size,
        method: args.method.clone(),
        steps: args.steps,
        warmup: args.warmup,
    };
    let result = train_step(&bench, &DeviceSpec::parse(&args.device)?)?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{} {}x3x{}x{} {}: {:.4} s/step (median of {}), {:.1} images/s, peak RSS {}",
            args.arch,
            args.batch,
            args.size,
            args.size,
            args.method.as_deref().unwrap_or("supervised"),
            result.median_s_per_step,
            args.steps,
            result.images_per_s,
            result.peak_rss_mb.map_or("unknown".into(), |m| format!("{m:.0} MB")),
        );
    }
    Ok(())
}
