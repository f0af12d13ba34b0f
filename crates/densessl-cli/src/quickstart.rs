use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use densessl::device::DeviceSpec;

/// `densessl quickstart [--out DIR]`
///
/// Generates procedural scenes in memory, fine-tunes MoCo-FCN from random init, pre-trains
/// MoCo v2 briefly, fine-tunes from it, and prints the two-row table.
#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Output directory (default: runs/quickstart-<timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Compute device: cpu, vulkan[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Multiply every step count (e.g. 0.1 for a smoke run, 3 for a longer one).
    #[arg(long, default_value_t = 1.0)]
    steps_scale: f64,
}

pub fn run(args: QuickstartArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(|| densessl::train::run_dir::default_run_dir("quickstart"));
    let device = DeviceSpec::parse(&args.device)?;
    eprintln!("quickstart → {}", out.display());
    let rows = densessl::quickstart::run(&out, &device, &crate::argv(), args.steps_scale)?;
    println!("\n| init       |   mIoU | aAcc   | wall time |");
    println!("|------------|-------:|-------:|----------:|");
    for row in &rows {
        println!("| {:<10} | {:.4} | {:.4} | {:>7.1} s |", row.name, row.miou, row.aacc, row.wall_s);
    }
    println!("\nruns in {}", out.display());
    Ok(())
}
