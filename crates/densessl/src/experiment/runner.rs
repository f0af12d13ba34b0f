//! Runs a plan: every run not yet finished, parents first; finished runs are skipped and a
//! run killed half-way is started again from scratch (its directory has no `summary.json`).
//! With `jobs` above 1, independent runs train at once, each in its own child process: burn's
//! random generator is process-wide, so runs sharing a process would not be reproducible.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::plan::{Plan, Scheduled, is_done};
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
    /// Runs trained at once (1: one after another, in this process).
    pub jobs: usize,
    /// How to run one run of this experiment in a child process (needed when `jobs` > 1).
    pub child: Option<ChildCommand>,
}

/// A command that trains one run of the experiment when `--only ID` is appended: the CLI's
/// `densessl experiment FILE --out OUT --device DEV`.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments, before `--only ID`.
    pub args: Vec<String>,
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
    if options.jobs > 1 && options.only.is_none() {
        let child = options.child.as_ref().ok_or_else(|| Error::Invalid("jobs > 1 needs a child command".into()))?;
        return run_in_children(plan, options.jobs, child);
    }
    let total = plan.pretrain.len() + plan.finetune.len();
    let mut counts = RunCounts::default();
    let run_options = |out| RunOptions { out, device: options.device.clone(), argv: options.argv.clone() };
    // How to train each run, in plan order, once its `init` is known.
    type Train<'a> = Box<dyn Fn(Option<String>, PathBuf) -> Result<String> + 'a>;
    let mut trainers: Vec<Train> = Vec::new();
    for job in &plan.pretrain {
        trainers.push(Box::new(|init, dir| {
            let config = pretrain::PretrainConfig { init, ..job.config.clone() };
            Ok(format!("loss {:.4}", pretrain::run(&config, &run_options(dir))?.final_loss))
        }));
    }
    for job in &plan.finetune {
        trainers.push(Box::new(|init, dir| {
            let config = finetune::FinetuneConfig { init, ..job.config.clone() };
            Ok(format!("mIoU {:.4}", finetune::run(&config, &run_options(dir))?.metrics.miou))
        }));
    }
    for (index, (run, train)) in plan.scheduled().into_iter().zip(trainers).enumerate() {
        if options.only.as_deref().is_some_and(|only| only != run.id) {
            continue;
        }
        if is_done(&run.dir) {
            counts.skipped += 1;
            continue;
        }
        clear_unfinished(&run.dir)?;
        let init = run.needs.as_deref().map(|pretrain| require_finished(plan, pretrain, &run.id)).transpose()?;
        eprintln!("[{}/{total}] {} (about {:.0} s)", index + 1, run.id, run.estimate_s);
        let start = Instant::now();
        let outcome = train(init.map(|p| p.display().to_string()), run.dir)?;
        eprintln!("[{}/{total}] {}: {outcome} in {:.0} s", index + 1, run.id, start.elapsed().as_secs_f64());
        counts.ran += 1;
    }
    Ok(counts)
}

/// A run training in a child process.
struct Running {
    index: usize,
    run: Scheduled,
    child: Child,
    log: PathBuf,
    start: Instant,
}

/// Runs the unfinished runs `jobs` at a time, each as `child --only ID` with its output in
/// `OUT/logs/ID.log`; the cores are shared out through `RAYON_NUM_THREADS`. Runs start in
/// [`Plan::start_order`], each once its pre-training has finished. After a failure no new
/// run starts, the running ones finish, and the first failure is returned.
fn run_in_children(plan: &Plan, jobs: usize, command: &ChildCommand) -> Result<RunCounts> {
    let ids = plan.run_ids();
    let total = ids.len();
    let mut counts = RunCounts::default();
    let mut waiting: Vec<(usize, Scheduled)> = Vec::new();
    for run in plan.start_order() {
        // Numbered as in plan order, like the one-by-one path and --dry-run.
        let index = ids.iter().position(|id| id == &run.id).expect("a run of the plan");
        if is_done(&run.dir) {
            counts.skipped += 1;
        } else {
            waiting.push((index, run));
        }
    }
    let logs = plan.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / jobs).max(1).to_string();
    let mut running: Vec<Running> = Vec::new();
    let mut failure: Option<Error> = None;
    loop {
        while failure.is_none() && running.len() < jobs {
            let ready = |(_, r): &(usize, Scheduled)| r.needs.as_ref().is_none_or(|p| is_done(&plan.pretrain_dir(p)));
            let Some(position) = waiting.iter().position(ready) else { break };
            let (index, run) = waiting.remove(position);
            clear_unfinished(&run.dir)?;
            let log = logs.join(format!("{}.log", run.id));
            let file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
            let err = file.try_clone().map_err(|e| Error::io(&log, e))?;
            let child = Command::new(&command.program)
                .args(&command.args)
                .args(["--only", &run.id])
                .env("RAYON_NUM_THREADS", &threads)
                .env("DENSESSL_QUIET", "1")
                .stdout(file)
                .stderr(err)
                .spawn()
                .map_err(|e| Error::io(&command.program, e))?;
            eprintln!("[{}/{total}] {} started (about {:.0} s alone; log {})", index + 1, run.id, run.estimate_s, log.display());
            running.push(Running { index, run, child, log, start: Instant::now() });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for mut r in running.drain(..) {
            match r.child.try_wait().map_err(|e| Error::io(&command.program, e))? {
                None => still.push(r),
                Some(status) if status.success() && is_done(&r.run.dir) => {
                    let outcome = outcome_in_log(&r.log, &r.run.id).unwrap_or_else(|| "finished".into());
                    eprintln!("[{}/{total}] {}: {outcome} in {:.0} s", r.index + 1, r.run.id, r.start.elapsed().as_secs_f64());
                    counts.ran += 1;
                }
                Some(status) => {
                    eprintln!("[{}/{total}] {} FAILED ({}): see {}", r.index + 1, r.run.id, describe(status), r.log.display());
                    failure.get_or_insert_with(|| failed(&r, status));
                }
            }
        }
        running = still;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    if let Some((_, run)) = waiting.first() {
        return Err(Error::Invalid(format!("{} could not start: its pre-training never finished", run.id)));
    }
    Ok(counts)
}

fn describe(status: ExitStatus) -> String {
    status.code().map_or_else(|| "killed by a signal".into(), |code| format!("exit code {code}"))
}

/// The error for a failed child: its id, its log, and the log's last lines.
fn failed(run: &Running, status: ExitStatus) -> Error {
    let text = std::fs::read_to_string(&run.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    Error::Invalid(format!("run {} failed ({}); its log {} ends:\n{tail}", run.run.id, describe(status), run.log.display()))
}

/// What the child said about its run: "loss …" or "mIoU …" from its `ID: … in N s` line.
fn outcome_in_log(log: &Path, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let marker = format!("{id}: ");
    let line = text.lines().rev().find(|l| l.contains(&marker))?;
    let rest = &line[line.find(&marker)? + marker.len()..];
    Some(rest.rsplit_once(" in ").map_or(rest, |(outcome, _)| outcome).to_string())
}
