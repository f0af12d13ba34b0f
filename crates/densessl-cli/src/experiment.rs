//! `densessl experiment`: run a grid of pre-trainings and fine-tunes, resumably, and report it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use densessl::device::DeviceSpec;
use densessl::experiment::plan::{Plan, is_done};
use densessl::experiment::runner::{ChildCommand, RunnerOptions, run as run_plan};
use densessl::experiment::{ExperimentSpec, report, slurm};

/// Arguments of `densessl experiment`.
#[derive(Args, Debug)]
#[command(after_long_help = EXPERIMENT_HELP)]
pub struct ExperimentArgs {
    /// The experiment file (see experiments/*.toml).
    pub file: PathBuf,
    /// List the runs, whether each is finished, and a rough time estimate; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only this run id (what a Slurm array task does); finished runs are skipped anyway.
    #[arg(long)]
    pub only: Option<String>,
    /// Only write the report from the runs that have finished.
    #[arg(long)]
    pub report: bool,
    /// Write a cluster submission instead of running: `--emit slurm DIR`.
    #[arg(long, num_args = 2, value_names = ["KIND", "DIR"])]
    pub emit: Option<Vec<String>>,
    /// Output directory (overrides the file's `out`; default runs/experiments/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compute device: cpu, vulkan[:N] or cuda[:N] (the latter two need the matching Cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Runs trained at once, each in its own process with an equal share of the cores. Small
    /// models leave cores idle: on 2 cores, `--jobs 2` trains the mini grids about twice as fast.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
}

const EXPERIMENT_HELP: &str = "\
Experiment file:
  name = \"mini\"                 used in reports
  out = \"runs/experiments/mini\" [runs/experiments/<name>]
  seeds = 2                     fine-tuning seeds per row [2], first_seed [0]
  [pretrain]  config = \"configs/pretrain/{method}-mini.toml\"   {method} is replaced
              set = [\"data.unlabeled_count=2000\"]              overrides for every pre-training
  [finetune]  protocol = \"mini\", config = FILE, set = [...]     as `densessl finetune`
  [[grid]]    methods = [\"random\", \"moco-v2\", ...]   random = RandomInit (no pre-training)
              steps = [300]                 pre-training lengths
              heads = [\"moco-fcn\", ...]     fine-tuning heads
              continue_from = { method = \"moco-v2\", steps = 300 }   optional: continue that run
              pretrain_set = [...]          optional overrides for this block's pre-trainings

Each run's id is a hash of its resolved config: finished runs (summary.json) are skipped, a
killed grid resumes where it stopped, and a run shared by several rows is done once. Output:
OUT/pretrain/<id>/, OUT/finetune/<id>/, OUT/results.md, results.json, pretrain_loss.png,
miou_<head>.png; with --jobs N, each run's output goes to OUT/logs/<id>.log.";

/// Runs `densessl experiment`.
pub fn run(args: ExperimentArgs) -> Result<()> {
    let mut spec = ExperimentSpec::load(&args.file)?;
    if let Some(out) = &args.out {
        spec.out = Some(out.clone());
    }
    let plan = Plan::build(&spec)?;
    if let Some(emit) = &args.emit {
        if emit[0] != "slurm" {
            bail!("--emit {}: the only kind is slurm (--emit slurm DIR)", emit[0]);
        }
        let dir = PathBuf::from(&emit[1]);
        let files = slurm::emit(&plan, &args.file, &std::env::current_dir()?, &dir)?;
        for f in &files {
            println!("{}", f.display());
        }
        println!("submit with: {}/submit.sh", dir.display());
        return Ok(());
    }
    if args.dry_run {
        let mut count = 0;
        println!("{:<60} {:>10} {:>10}", "run", "estimate", "status");
        for run in plan.scheduled() {
            let done = is_done(&run.dir);
            count += usize::from(!done);
            println!("{:<60} {:>9.0}s {:>10}", run.id, run.estimate_s, if done { "finished" } else { "to run" });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "{} runs, {count} to run, about {:.0} min left with --jobs {} on {cores} cores (rough: rates measured on a 2-core CPU with the mini configs)",
            plan.pretrain.len() + plan.finetune.len(),
            plan.estimate_wall_s(args.jobs as usize, cores) / 60.0,
            args.jobs,
        );
        return Ok(());
    }
    if !args.report {
        // A child trains one run: this same command, pinned to the plan's output directory.
        let child = ChildCommand {
            program: std::env::current_exe()?,
            args: vec![
                "experiment".into(),
                args.file.display().to_string(),
                "--out".into(),
                plan.out.display().to_string(),
                "--device".into(),
                args.device.clone(),
            ],
        };
        let options = RunnerOptions {
            device: DeviceSpec::parse(&args.device)?,
            argv: crate::argv(),
            only: args.only.clone(),
            jobs: args.jobs as usize,
            child: Some(child),
        };
        let counts = run_plan(&plan, &options)?;
        eprintln!("{} runs trained, {} already finished", counts.ran, counts.skipped);
        if args.only.is_some() {
            return Ok(());
        }
    }
    for path in report::write(&plan)? {
        println!("{}", path.display());
    }
    Ok(())
}
