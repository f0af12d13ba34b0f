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
    let wanted = |id: &str| options.only.as_deref().is_none_or(|only| only == id);
    let total = plan.pretrain.len() + plan.finetune.len();
    let mut counts = RunCounts::default();
    let mut index = 0;
    let run_options = |out| RunOptions { out, device: options.device.clone(), argv: options.argv.clone() };
    for job in &plan.pretrain {
        index += 1;
        let dir = plan.pretrain_dir(&job.id);
        if !wanted(&job.id) {
            continue;
        }
        if is_done(&dir) {
            counts.skipped += 1;
            continue;
        }
        clear_unfinished(&dir)?;
        let mut config = job.config.clone();
        if let Some(parent) = &job.parent {
            config.init = Some(require_finished(plan, parent, &job.id)?.display().to_string());
        }
        eprintln!("[{index}/{total}] {} (about {:.0} s)", job.id, job.estimate_s);
        let start = Instant::now();
        let outcome = pretrain::run(&config, &run_options(dir))?;
        eprintln!("[{index}/{total}] {}: loss {:.4} in {:.0} s", job.id, outcome.final_loss, start.elapsed().as_secs_f64());
        counts.ran += 1;
    }
    for job in &plan.finetune {
        index += 1;
        let dir = plan.finetune_dir(&job.id);
        if !wanted(&job.id) {
            continue;
        }
        if is_done(&dir) {
            counts.skipped += 1;
            continue;
        }
        clear_unfinished(&dir)?;
        let mut config = job.config.clone();
        if let Some(pretrain) = &job.pretrain {
            config.init = Some(require_finished(plan, pretrain, &job.id)?.display().to_string());
        }
        eprintln!("[{index}/{total}] {} (about {:.0} s)", job.id, job.estimate_s);
        let outcome = finetune::run(&config, &run_options(dir))?;
        eprintln!("[{index}/{total}] {}: mIoU {:.4} in {:.0} s", job.id, outcome.metrics.miou, outcome.wall_s);
        counts.ran += 1;
    }
    Ok(counts)
}
