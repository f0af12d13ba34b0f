//! An experiment file resolved into runs: every pre-training and every fine-tune with its
//! full config, a content-hash id, its place on disk and a rough time estimate.

use std::path::{Path, PathBuf};

use super::{ExperimentSpec, stable_hash};
use crate::Result;
use crate::config::{load, load_with_preset, to_toml};
use crate::seg::finetune::FinetuneConfig;
use crate::train::pretrain::PretrainConfig;

/// One pre-training run.
#[derive(Debug, Clone)]
pub struct PretrainJob {
    /// `pt-<method>-<steps>-<hash>`.
    pub id: String,
    /// The pretext method.
    pub method: String,
    /// Length in steps.
    pub steps: usize,
    /// The pre-training it continues from.
    pub parent: Option<String>,
    /// Its resolved config (without `init`, set at run time from the parent).
    pub config: PretrainConfig,
    /// Rough seconds on the 2-core reference machine.
    pub estimate_s: f64,
}

/// A row of the results table: what was pre-trained and which head was fine-tuned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Row {
    /// Pretext method, or `random`.
    pub method: String,
    /// Pre-training steps (0 for random init).
    pub steps: usize,
    /// Fine-tuning head.
    pub head: String,
    /// The parent pre-training of a continuation: method and steps.
    pub parent: Option<(String, usize)>,
    /// The block's fine-tuning protocol, if it overrides the experiment's.
    pub protocol: Option<String>,
}

impl Row {
    /// `moco-v2`, `random`, or `moco-v2 → densecl` for a continuation.
    pub fn label(&self) -> String {
        match &self.parent {
            Some((method, _)) => format!("{method} → {}", self.method),
            None if self.method == "random" => "RandomInit".into(),
            None => self.method.clone(),
        }
    }
}

/// One fine-tuning run (one seed of a row).
#[derive(Debug, Clone)]
pub struct FinetuneJob {
    /// `ft-<row>-<head>-s<seed>-<hash>`.
    pub id: String,
    /// Its row.
    pub row: Row,
    /// The pre-training whose encoder it starts from (none = random init).
    pub pretrain: Option<String>,
    /// Its seed.
    pub seed: u64,
    /// Its resolved config (without `init`).
    pub config: FinetuneConfig,
    /// Rough seconds on the 2-core reference machine.
    pub estimate_s: f64,
}

/// Every run of an experiment, parents before children.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The experiment.
    pub spec: ExperimentSpec,
    /// The output directory.
    pub out: PathBuf,
    /// Pre-trainings, each after its parent.
    pub pretrain: Vec<PretrainJob>,
    /// Fine-tunes.
    pub finetune: Vec<FinetuneJob>,
}

/// Images per second of a pre-training step at 64 px views on the reference machine (2-core
/// AMD EPYC, ResNet-18 of width 16), measured with the mini configs: a rough guide for
/// `--dry-run`, scaled by view area.
fn pretrain_images_per_s(method: &str) -> f64 {
    match method {
        "moco-v1" | "moco-v2" | "simclr" => 80.0,
        "rotation" => 40.0,
        "byol" | "simsiam" | "edmoco" => 35.0,
        "plr" | "plmoco" | "pledmoco" | "densecl" => 27.0,
        "pixpro" => 15.0,
        _ => 30.0,
    }
}

/// Fine-tuning images per second at 64 px crops on the reference machine.
const FINETUNE_IMAGES_PER_S: f64 = 65.0;

fn short_hash(text: &str) -> String {
    format!("{:08x}", stable_hash(text) >> 32)
}

fn slug(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

impl Plan {
    /// Resolves every run of `spec` (configs are loaded and checked now, so a bad key fails
    /// before anything trains).
    pub fn build(spec: &ExperimentSpec) -> Result<Self> {
        let mut plan = Plan { spec: spec.clone(), out: spec.out_dir(), pretrain: Vec::new(), finetune: Vec::new() };
        for block in &spec.grid {
            let parent = match &block.continue_from {
                Some(p) => Some(plan.pretrain_job(&p.method, p.steps, None, &[])?),
                None => None,
            };
            for method in &block.methods {
                let lengths = if method == "random" { vec![0] } else { block.steps.clone() };
                for &steps in &lengths {
                    let pretrain = if method == "random" {
                        None
                    } else {
                        Some(plan.pretrain_job(method, steps, parent.clone(), &block.pretrain_set)?)
                    };
                    for head in &block.heads {
                        let row = Row {
                            method: method.clone(),
                            steps,
                            head: head.clone(),
                            parent: block.continue_from.as_ref().map(|p| (p.method.clone(), p.steps)),
                            protocol: block.protocol.clone(),
                        };
                        for k in 0..spec.seeds as u64 {
                            plan.finetune_job(row.clone(), pretrain.clone(), spec.first_seed + k, &block.finetune_set)?;
                        }
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Adds (once) the pre-training of `method` for `steps`, continuing from `parent`.
    fn pretrain_job(&mut self, method: &str, steps: usize, parent: Option<String>, extra: &[String]) -> Result<String> {
        let path = PathBuf::from(self.spec.pretrain.config.replace("{method}", method));
        let mut overrides = self.spec.pretrain.set.clone();
        overrides.extend(extra.iter().cloned());
        overrides.push(format!("train.steps={steps}"));
        overrides.push("train.epochs=0".into());
        let config: PretrainConfig = load(Some(&path), &overrides)?;
        let key = format!("{}\nparent = {parent:?}", to_toml(&config)?);
        let id = format!("pt-{}-{steps}-{}", slug(method), short_hash(&key));
        if !self.pretrain.iter().any(|j| j.id == id) {
            let side = config.train.view_size as f64 / 64.0;
            let estimate_s = (steps * config.train.batch_size) as f64 * side * side / pretrain_images_per_s(method);
            self.pretrain.push(PretrainJob { id: id.clone(), method: method.into(), steps, parent, config, estimate_s });
        }
        Ok(id)
    }

    fn finetune_job(&mut self, row: Row, pretrain: Option<String>, seed: u64, extra: &[String]) -> Result<()> {
        let spec = &self.spec.finetune;
        let preset = match row.protocol.as_ref().or(spec.protocol.as_ref()) {
            Some(name) => Some((name.as_str(), crate::seg::protocol::preset(name)?)),
            None => None,
        };
        let mut overrides = spec.set.clone();
        overrides.extend(extra.iter().cloned());
        overrides.push(format!("head.name=\"{}\"", row.head));
        overrides.push(format!("seed={seed}"));
        let config: FinetuneConfig = load_with_preset(preset, spec.config.as_deref(), &overrides)?;
        config.check()?;
        let key = format!("{}\npretrain = {pretrain:?}", to_toml(&config)?);
        let label = slug(&row.label().replace(" → ", "-to-"));
        let protocol = row.protocol.as_ref().map(|p| format!("{}-", slug(p))).unwrap_or_default();
        let id = format!("ft-{label}-{}-{protocol}s{seed}-{}", slug(&row.head), short_hash(&key));
        let crop = if config.augment.crop_size > 0 { config.augment.crop_size as f64 } else { f64::from(config.data.size) } / 64.0;
        let estimate_s = (config.train.steps * config.train.batch_size) as f64 * crop * crop / FINETUNE_IMAGES_PER_S;
        self.finetune.push(FinetuneJob { id, row, pretrain, seed, config, estimate_s });
        Ok(())
    }

    /// Directory of pre-training `id`.
    pub fn pretrain_dir(&self, id: &str) -> PathBuf {
        self.out.join("pretrain").join(id)
    }

    /// Directory of fine-tune `id`.
    pub fn finetune_dir(&self, id: &str) -> PathBuf {
        self.out.join("finetune").join(id)
    }

    /// The encoder checkpoint pre-training `id` writes.
    pub fn encoder_path(&self, id: &str) -> PathBuf {
        self.pretrain_dir(id).join("checkpoints").join("encoder.safetensors")
    }

    /// Rows in plan order, each once.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        for job in &self.finetune {
            if !rows.contains(&job.row) {
                rows.push(job.row.clone());
            }
        }
        rows
    }

    /// Every run id, pre-trainings (parents first) then fine-tunes.
    pub fn run_ids(&self) -> Vec<String> {
        self.pretrain.iter().map(|j| j.id.clone()).chain(self.finetune.iter().map(|j| j.id.clone())).collect()
    }
}

/// Whether a run directory holds a finished run.
pub fn is_done(dir: &Path) -> bool {
    dir.join("summary.json").exists()
}
