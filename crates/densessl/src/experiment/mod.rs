//! Experiment grids: pre-training method × length × head × seed, run as one resumable plan,
//! reported as the design notes' table (`densessl experiment FILE.toml`).
//!
//! Every run of a plan is named by a hash of its resolved config, so a finished run is found
//! and skipped, a killed grid resumes where it stopped, and the same run shared by two rows
//! (a parent pre-training, say) is done once.

pub mod plan;
pub mod report;
pub mod runner;
pub mod slurm;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An experiment file (`experiments/*.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Name, used in reports.
    pub name: String,
    /// Where runs and reports go (default: `runs/experiments/<name>`).
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Fine-tuning seeds per row: `first_seed`, `first_seed + 1`, …
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    /// The first fine-tuning seed.
    #[serde(default)]
    pub first_seed: u64,
    /// What every pre-training shares.
    pub pretrain: PretrainTemplate,
    /// What every fine-tune shares.
    pub finetune: FinetuneTemplate,
    /// Blocks of rows; each is a cartesian product.
    pub grid: Vec<GridBlock>,
}

fn default_seeds() -> usize {
    2
}

/// `[pretrain]`: the config of method `m` is `config` with `{method}` replaced by `m`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PretrainTemplate {
    /// Config path template, e.g. `configs/pretrain/{method}-mini.toml`.
    pub config: String,
    /// Overrides for every pre-training (`key=value`, as `--set`).
    #[serde(default)]
    pub set: Vec<String>,
}

/// `[finetune]`: protocol preset, optional file, overrides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FinetuneTemplate {
    /// Protocol preset (`mini`, `moco-fcn-513-30k`, `mmseg-512-20k`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// A fine-tuning config file under the overrides.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Overrides for every fine-tune.
    #[serde(default)]
    pub set: Vec<String>,
}

/// `[[grid]]`: rows `methods × steps × heads`, each fine-tuned with every seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GridBlock {
    /// Pre-training methods; `random` = no pre-training (RandomInit).
    pub methods: Vec<String>,
    /// Pre-training lengths in steps (ignored for `random`).
    #[serde(default)]
    pub steps: Vec<usize>,
    /// Fine-tuning heads.
    pub heads: Vec<String>,
    /// Continue from another pre-training of this plan (its method and steps): the encoder
    /// starts from its checkpoint, heads fresh.
    #[serde(default)]
    pub continue_from: Option<ParentSpec>,
    /// Overrides for this block's pre-trainings (after `[pretrain] set`).
    #[serde(default)]
    pub pretrain_set: Vec<String>,
    /// Fine-tuning protocol preset for this block (instead of `[finetune] protocol`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Overrides for this block's fine-tunes (after `[finetune] set`).
    #[serde(default)]
    pub finetune_set: Vec<String>,
}

/// The pre-training a continuation starts from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParentSpec {
    /// Its method.
    pub method: String,
    /// Its length in steps.
    pub steps: usize,
}

impl ExperimentSpec {
    /// Reads and checks an experiment file; errors name the file, line and key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let spec: Self = crate::config::from_toml_str(&text, &path.display().to_string())?;
        if spec.seeds == 0 {
            return Err(Error::Config { source_name: path.display().to_string(), message: "seeds must be at least 1".into() });
        }
        for (i, block) in spec.grid.iter().enumerate() {
            let bad = |message: String| Error::Config { source_name: path.display().to_string(), message: format!("grid {}: {message}", i + 1) };
            if block.methods.is_empty() || block.heads.is_empty() {
                return Err(bad("methods and heads must not be empty".into()));
            }
            if block.methods.iter().any(|m| m != "random") && (block.steps.is_empty() || block.steps.contains(&0)) {
                return Err(bad("steps must list positive pre-training lengths".into()));
            }
            if block.continue_from.is_some() && block.methods.iter().any(|m| m == "random") {
                return Err(bad("random init cannot continue from a pre-training".into()));
            }
        }
        Ok(spec)
    }

    /// The output directory: `out`, else `runs/experiments/<name>`.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from("runs/experiments").join(&self.name))
    }
}

/// FNV-1a, 64 bits: a hash that is the same on every platform and release (std's is not).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
