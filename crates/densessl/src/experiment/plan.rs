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
/// AMD EPYC of family 26 with AVX-512, ResNet-18 of width 16, the mini configs at 48 px, 50
/// steps including start-up; docs/RESULTS.md): a rough guide for `--dry-run`, scaled by view area.
fn pretrain_images_per_s(method: &str) -> f64 {
    match method {
        "moco-v1" => 270.0,
        "moco-v2" => 240.0,
        "simclr" => 210.0,
        "simsiam" => 190.0,
        "byol" => 145.0,
        "edmoco" => 134.0,
        "densecl" => 118.0,
        "rotation" => 115.0,
        "plmoco" => 102.0,
        "pledmoco" => 96.0,
        "pixpro" => 63.0,
        "plr" => 53.0,
        _ => 100.0,
    }
}

/// Fine-tuning images per second at 64 px crops on the reference machine (MoCo-FCN head).
const FINETUNE_IMAGES_PER_S: f64 = 110.0;

/// How much slower each run gets when `jobs` runs share `cores` cores, each with `cores /
/// jobs` threads. Measured with `experiments/mini.toml` and `--jobs 2` on two cores (81 min
/// for work estimated at 170 min one by one): a one-thread run takes about as long as alone
/// with both threads (fine-tunes 0.75×, pre-trainings up to 1.4×), since small models leave
/// the second thread mostly idle.
fn contention(jobs: usize, cores: usize) -> f64 {
    if jobs <= 1 { 1.0 } else { (jobs as f64 / cores.max(1) as f64).max(1.0) }
}

/// One run of a plan, as the runner schedules it.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// Run id.
    pub id: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Rough seconds alone on the reference machine.
    pub estimate_s: f64,
    /// The pre-training it starts from, which must finish first.
    pub needs: Option<String>,
}

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

    /// Every run in plan order (pre-trainings, parents first, then fine-tunes).
    pub fn scheduled(&self) -> Vec<Scheduled> {
        let pretrain = self.pretrain.iter().map(|j| Scheduled {
            id: j.id.clone(),
            dir: self.pretrain_dir(&j.id),
            estimate_s: j.estimate_s,
            needs: j.parent.clone(),
        });
        let finetune = self.finetune.iter().map(|j| Scheduled {
            id: j.id.clone(),
            dir: self.finetune_dir(&j.id),
            estimate_s: j.estimate_s,
            needs: j.pretrain.clone(),
        });
        pretrain.chain(finetune).collect()
    }

    /// Every run in the order parallel jobs take them up: the most work first, counting what a
    /// pre-training unlocks (its own estimate plus all its descendants'), so that a long
    /// pre-training that many fine-tunes wait on starts early; plan order among equals.
    pub fn start_order(&self) -> Vec<Scheduled> {
        let runs = self.scheduled();
        // Children come after their parents in plan order, so one backward pass sums subtrees.
        let mut weight: Vec<f64> = runs.iter().map(|r| r.estimate_s).collect();
        for child in (0..runs.len()).rev() {
            if let Some(parent) = runs[child].needs.as_ref().and_then(|p| runs.iter().position(|r| &r.id == p)) {
                weight[parent] += weight[child];
            }
        }
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| weight[b].total_cmp(&weight[a]));
        order.into_iter().map(|i| runs[i].clone()).collect()
    }

    /// Rough wall seconds for the unfinished runs when `jobs` run at once on `cores` cores: the
    /// runner's schedule ([`Plan::start_order`], a run starts once its pre-training has
    /// finished) simulated with the estimates.
    pub fn estimate_wall_s(&self, jobs: usize, cores: usize) -> f64 {
        let slow = contention(jobs, cores);
        let mut waiting: Vec<Scheduled> = self.start_order().into_iter().filter(|r| !is_done(&r.dir)).collect();
        let pending: Vec<String> = waiting.iter().map(|r| r.id.clone()).collect();
        let mut finished_at: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
        let mut slots = vec![0.0_f64; jobs.max(1)];
        while !waiting.is_empty() {
            let slot = (0..slots.len()).min_by(|&a, &b| slots[a].total_cmp(&slots[b])).expect("one slot");
            // When each waiting run could start: once its parent (if still to run) has finished.
            let ready = |r: &Scheduled| r.needs.as_ref().map_or(Some(0.0), |p| {
                if pending.contains(p) { finished_at.get(p).copied() } else { Some(0.0) }
            });
            let times: Vec<Option<f64>> = waiting.iter().map(ready).collect();
            // The first run startable now, else the one startable soonest.
            let now = times.iter().position(|t| t.is_some_and(|t| t <= slots[slot]));
            let soonest = || (0..times.len()).filter(|&i| times[i].is_some()).min_by(|&a, &b| times[a].unwrap().total_cmp(&times[b].unwrap()));
            let Some(index) = now.or_else(soonest) else { break };
            let start = slots[slot].max(times[index].unwrap_or(0.0));
            let run = waiting.remove(index);
            slots[slot] = start + run.estimate_s * slow;
            finished_at.insert(run.id, slots[slot]);
        }
        slots.into_iter().fold(0.0, f64::max)
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
