//! The run directory every command writes: `config.toml`, `manifest.json`,
//! `metrics.jsonl`, `checkpoints/`, `summary.json`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::{Error, Result};

/// An open run directory.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    metrics: File,
    manifest: serde_json::Value,
}

/// What `manifest.json` records about a run.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInfo {
    /// The command that started the run (`pretrain`, `finetune`, ...).
    pub command: String,
    /// The full command line.
    pub argv: Vec<String>,
    /// The device the run used.
    pub device: String,
    /// The run's seed.
    pub seed: u64,
    /// The dataset (name or path).
    pub dataset: String,
    /// A fingerprint of the dataset's content.
    pub dataset_fingerprint: String,
    /// Checkpoint the run started from, with its fingerprint, if any.
    pub init: Option<String>,
}

impl RunDir {
    /// Creates `root` (and `checkpoints/`), writes the resolved config and the manifest.
    /// Fails if `root` already holds a finished run, so a good result is never overwritten.
    pub fn create(root: &Path, resolved_config_toml: &str, info: &ManifestInfo) -> Result<Self> {
        if root.join("summary.json").exists() {
            return Err(Error::Invalid(format!(
                "{} already holds a finished run (summary.json exists): choose another --out",
                root.display()
            )));
        }
        fs::create_dir_all(root.join("checkpoints")).map_err(|e| Error::io(root, e))?;
        write_atomic(&root.join("config.toml"), resolved_config_toml.as_bytes())?;
        let manifest = serde_json::json!({
            "densessl_version": env!("CARGO_PKG_VERSION"),
            "git_commit": git_commit(),
            "command": info.command,
            "argv": info.argv,
            "device": info.device,
            "seed": info.seed,
            "dataset": info.dataset,
            "dataset_fingerprint": info.dataset_fingerprint,
            "init": info.init,
            "start_time": now_rfc3339(),
            "end_time": serde_json::Value::Null,
        });
        let metrics_path = root.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        let run = Self { root: root.to_path_buf(), metrics, manifest };
        run.write_manifest()?;
        Ok(run)
    }

    /// Reopens an unfinished run to resume it at `step`: keeps its manifest (recording the
    /// resume), and drops metrics lines logged after `step` (they will be logged again).
    pub fn reopen(root: &Path, step: usize) -> Result<Self> {
        if root.join("summary.json").exists() {
            return Err(Error::Invalid(format!("{} holds a finished run (summary.json exists): nothing to resume", root.display())));
        }
        let manifest_path = root.join("manifest.json");
        let text = fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let mut manifest: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::data(&manifest_path, format!("not a densessl manifest: {e}")))?;
        let resumes = manifest.as_object_mut().map(|m| m.entry("resumed").or_insert_with(|| serde_json::json!([])));
        if let Some(serde_json::Value::Array(list)) = resumes {
            list.push(serde_json::json!({"step": step, "time": now_rfc3339(), "argv": std::env::args().collect::<Vec<_>>()}));
        }
        let metrics_path = root.join("metrics.jsonl");
        let old = fs::read_to_string(&metrics_path).unwrap_or_default();
        // Lines without a step (events) stay; a line cut short by the crash is dropped.
        let kept: String = old
            .lines()
            .filter(|line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(record) => record["step"].as_u64().is_none_or(|s| s as usize <= step),
                Err(_) => false,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        write_atomic(&metrics_path, kept.as_bytes())?;
        let metrics = OpenOptions::new().append(true).open(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
        let run = Self { root: root.to_path_buf(), metrics, manifest };
        run.write_manifest()?;
        Ok(run)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a checkpoint file named `name` inside `checkpoints/`.
    pub fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.root.join("checkpoints").join(name)
    }

    /// Appends one JSON object to `metrics.jsonl`.
    pub fn log_metrics(&mut self, record: &serde_json::Value) -> Result<()> {
        let path = self.root.join("metrics.jsonl");
        writeln!(self.metrics, "{record}").map_err(|e| Error::io(&path, e))
    }

    /// Records a step whose loss or gradient was not finite (its update was not applied);
    /// an error naming the step and the newest checkpoint once more than `limit` were.
    pub fn skip_nonfinite(&mut self, step: usize, loss: f64, skipped: &mut usize, limit: usize) -> Result<()> {
        *skipped += 1;
        self.log_metrics(&serde_json::json!({"step": step, "event": "skipped_nonfinite", "loss": loss.to_string()}))?;
        if *skipped <= limit {
            return Ok(());
        }
        Err(Error::Training {
            step,
            message: format!(
                "the loss or a gradient is not finite (loss {loss}), {skipped} such step(s) in all, more than train.skip_nonfinite = {limit}; the update was not applied. Last good checkpoint: {} (resume with --resume {}, perhaps at a lower optim.lr)",
                self.latest_checkpoint().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
                self.root.display()
            ),
        })
    }

    /// The newest `.safetensors` file under `checkpoints/`, if any.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        fs::read_dir(self.root.join("checkpoints"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    }

    /// Writes `summary.json` atomically and stamps the manifest's end time.
    pub fn finish(&mut self, summary: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(summary).expect("JSON value serializes");
        write_atomic(&self.root.join("summary.json"), text.as_bytes())?;
        self.manifest["end_time"] = serde_json::Value::String(now_rfc3339());
        self.write_manifest()
    }

    fn write_manifest(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.manifest).expect("JSON value serializes");
        write_atomic(&self.root.join("manifest.json"), text.as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync, rename:
/// a reader never sees a partial file and a crash leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        simulated_disk_full(path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Fault injection for the bad-input tests: with `DENSESSL_SIMULATE_DISK_FULL=TEXT` set,
/// every write of a file whose path contains TEXT fails as a full disk does (ENOSPC).
pub fn simulated_disk_full(path: &Path) -> std::io::Result<()> {
    match std::env::var("DENSESSL_SIMULATE_DISK_FULL") {
        Ok(text) if !text.is_empty() && path.to_string_lossy().contains(&text) => Err(std::io::Error::from_raw_os_error(28)),
        _ => Ok(()),
    }
}

/// `dir/.name.tmp-PID`: where an atomic write stages its bytes.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// The default run directory: `runs/<command>-<UTC timestamp>`.
pub fn default_run_dir(command: &str) -> PathBuf {
    let stamp = now_rfc3339().replace([':', '-'], "").replace('T', "-");
    PathBuf::from("runs").join(format!("{command}-{}", stamp.trim_end_matches('Z')))
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`, without a date-time dependency.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a (year, month, day) civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// FNV-1a 64-bit: a cheap, stable content fingerprint for datasets and checkpoints.
pub fn fingerprint(bytes: impl IntoIterator<Item = u8>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn run_dir_writes_its_files_and_refuses_to_overwrite() {
        let root = std::env::temp_dir().join(format!("densessl-run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let info = ManifestInfo {
            command: "test".into(),
            argv: vec!["x".into()],
            device: "cpu".into(),
            seed: 3,
            dataset: "procedural".into(),
            dataset_fingerprint: "0".into(),
            init: None,
        };
        let mut run = RunDir::create(&root, "seed = 3\n", &info).unwrap();
        run.log_metrics(&serde_json::json!({"step": 1, "loss": 0.5})).unwrap();
        run.finish(&serde_json::json!({"miou": 0.1})).unwrap();
        assert_eq!(fs::read_to_string(root.join("config.toml")).unwrap(), "seed = 3\n");
        let manifest: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(root.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["seed"], 3);
        assert!(manifest["end_time"].is_string());
        assert!(fs::read_to_string(root.join("metrics.jsonl")).unwrap().contains("\"loss\":0.5"));
        assert!(RunDir::create(&root, "", &info).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
