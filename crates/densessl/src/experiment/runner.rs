//! Runs a plan: every run not yet finished, parents first; finished runs are skipped and a
//! run killed half-way is started again from scratch (its directory has no `summary.json`).

use std::path::Path;
use std::time::Instant;

use super::plan::{Plan, is_done};
use crate::device::DeviceSpec;
use crate::seg::finetune;
use crate::train::pretrain::{self, RunOptions};
use crate::{Error, Result};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// The device.
    pub device: DeviceSpec,
    /// The command line, for the manifests.
    pub argv: Vec<String>,
    /// Run only this run id (a Slurm array task).
    pub only: Option<String>,
}

/// What a call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCounts {
    /// Runs trained now.
    pub ran: usize,
    /// Runs found finished and skipped.
    pub skipped: usize,
}

/// Clears what a killed run left behind, so it starts cleanly.
fn clear_unfinished(dir: &Path) -> Result<()> {
    if dir.exists() && !is_done(dir) {
        tracing::warn!("{}: unfinished run, starting it again", dir.display());
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

fn require_finished(plan: &Plan, pretrain: &str, child: &str) -> Result<std::path::PathBuf> {
    let encoder = plan.encoder_path(pretrain);
    if !is_done(&plan.pretrain_dir(pretrain)) || !encoder.exists() {
        return Err(Error::Invalid(format!(
            "{child} needs pre-training {pretrain}, which has not finished: run it first (--only {pretrain})"
        )));
    }
    Ok(encoder)
}

/// Runs every unfinished run of `plan` (or just `options.only`).
pub fn run(plan: &Plan, options: &RunnerOptions) -> Result<RunCounts> {
    if let Some(only) = &options.only
        && !plan.run_ids().contains(only)
    {
        return Err(Error::Invalid(format!("no run '{only}' in this experiment: see --dry-run for the ids")));
    }
    let total = plan.pretrain.len() + plan.finetune.len();
    let mut counts = RunCounts::default();
    let run_options = |out| RunOptions { out, device: options.device.clone(), argv: options.argv.clone() };
    // Every run in plan order: its id, directory, estimate, the pre-training it needs, and how
    // to train it once its `init` is known.
    type Train<'a> = Box<dyn Fn(Option<String>, std::path::PathBuf) -> Result<String> + 'a>;
    let mut runs: Vec<(&str, std::path::PathBuf, f64, Option<&str>, Train)> = Vec::new();
    for job in &plan.pretrain {
        let train: Train = Box::new(|init, dir| {
            let config = pretrain::PretrainConfig { init, ..job.config.clone() };
            Ok(format!("loss {:.4}", pretrain::run(&config, &run_options(dir))?.final_loss))
        });
        runs.push((&job.id, plan.pretrain_dir(&job.id), job.estimate_s, job.parent.as_deref(), train));
    }
    for job in &plan.finetune {
        let train: Train = Box::new(|init, dir| {
            let config = finetune::FinetuneConfig { init, ..job.config.clone() };
            Ok(format!("mIoU {:.4}", finetune::run(&config, &run_options(dir))?.metrics.miou))
        });
        runs.push((&job.id, plan.finetune_dir(&job.id), job.estimate_s, job.pretrain.as_deref(), train));
    }
    for (index, (id, dir, estimate, needs, train)) in runs.into_iter().enumerate() {
        if options.only.as_deref().is_some_and(|only| only != id) {
            continue;
        }
        if is_done(&dir) {
            counts.skipped += 1;
            continue;
        }
        clear_unfinished(&dir)?;
        let init = needs.map(|pretrain| require_finished(plan, pretrain, id)).transpose()?;
        eprintln!("[{}/{total}] {id} (about {estimate:.0} s)", index + 1);
        let start = Instant::now();
        let outcome = train(init.map(|p| p.display().to_string()), dir)?;
        eprintln!("[{}/{total}] {id}: {outcome} in {:.0} s", index + 1, start.elapsed().as_secs_f64());
        counts.ran += 1;
    }
    Ok(counts)
}
