//! `--emit slurm DIR`: the plan as Slurm array jobs — one run per array task, in stages so
//! that parents finish before children — plus a collect job that writes the report. Tasks
//! call `densessl experiment FILE --only ID`, which skips finished runs, so any stage can be
//! resubmitted after a failure.

use std::path::{Path, PathBuf};

use super::plan::Plan;
use crate::train::run_dir::write_atomic;
use crate::{Error, Result};

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn hours(seconds: f64) -> String {
    // Slurm's limit: at least an hour, four times the rough estimate, in H:MM:SS.
    let s = (seconds * 4.0).max(3600.0) as u64;
    format!("{}:{:02}:00", s / 3600, s % 3600 / 60)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<()> {
    Ok(())
}

/// Writes `stage-N.txt` (run ids), `task.sh`, `collect.sh` and `submit.sh` into `dir`.
/// `experiment` is the experiment file; `workdir` the directory its relative paths start from.
pub fn emit(plan: &Plan, experiment: &Path, workdir: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| Error::io(dir, e))?;
    let experiment = std::path::absolute(experiment).map_err(|e| Error::io(experiment, e))?;
    let stages: Vec<(&str, Vec<(String, f64)>)> = vec![
        ("pretrain", plan.pretrain.iter().filter(|j| j.parent.is_none()).map(|j| (j.id.clone(), j.estimate_s)).collect()),
        ("continue", plan.pretrain.iter().filter(|j| j.parent.is_some()).map(|j| (j.id.clone(), j.estimate_s)).collect()),
        ("finetune", plan.finetune.iter().map(|j| (j.id.clone(), j.estimate_s)).collect()),
    ];
    let mut written = Vec::new();
    let mut submit = String::from(
        "#!/bin/bash\n# Submits the experiment as Slurm array jobs, one stage after another, then the report.\n\
         # Resource flags: edit the #SBATCH lines of task.sh, or pass them here, e.g. ./submit.sh --partition=gpu\n\
         set -euo pipefail\ncd \"$(dirname \"$0\")\"\ndep=()\n",
    );
    for (k, (name, runs)) in stages.iter().enumerate().filter(|(_, (_, runs))| !runs.is_empty()) {
        let list = dir.join(format!("stage-{}-{name}.txt", k + 1));
        let text: String = runs.iter().map(|(id, _)| format!("{id}\n")).collect();
        write_atomic(&list, text.as_bytes())?;
        written.push(list.clone());
        let longest = runs.iter().map(|(_, s)| *s).fold(0.0, f64::max);
        submit.push_str(&format!(
            "job=$(sbatch --parsable ${{dep[@]+\"${{dep[@]}}\"}} --array=0-{} --time={} --job-name={}-{name} \"$@\" task.sh {})\n\
             echo \"stage {} ({name}, {} runs): job $job\"\ndep=(--dependency=afterok:$job)\n",
            runs.len() - 1,
            hours(longest),
            plan.spec.name,
            list.file_name().expect("file name").to_string_lossy(),
            k + 1,
            runs.len(),
        ));
    }
    submit.push_str(&format!(
        "job=$(sbatch --parsable ${{dep[@]+\"${{dep[@]/afterok/afterany}}\"}} --job-name={}-collect collect.sh)\necho \"report: job $job\"\n",
        plan.spec.name
    ));
    let densessl = "\"${DENSESSL:-densessl}\"";
    let task = format!(
        "#!/bin/bash\n#SBATCH --cpus-per-task=8\n#SBATCH --mem=32G\n#SBATCH --output=logs/%x-%A_%a.out\n\
         # One run of the experiment per array task (line SLURM_ARRAY_TASK_ID + 1 of the stage list).\n\
         # Finished runs are skipped, so a stage can be resubmitted. Set DENSESSL to the binary's path\n\
         # and add --device vulkan (or cuda) below on GPU nodes.\n\
         set -euo pipefail\nlist=\"$(cd \"$(dirname \"$1\")\" && pwd)/$(basename \"$1\")\"\n\
         id=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" \"$list\")\ncd {}\nexec {densessl} experiment {} --only \"$id\"\n",
        quote(workdir),
        quote(&experiment),
    );
    let collect = format!(
        "#!/bin/bash\n#SBATCH --cpus-per-task=1\n#SBATCH --output=logs/%x-%j.out\n\
         # Writes results.md, results.json and the plots from every finished run.\n\
         set -euo pipefail\ncd {}\nexec {densessl} experiment {} --report\n",
        quote(workdir),
        quote(&experiment),
    );
    for (name, text) in [("task.sh", task), ("collect.sh", collect), ("submit.sh", submit)] {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes())?;
        make_executable(&path)?;
        written.push(path);
    }
    Ok(written)
}
