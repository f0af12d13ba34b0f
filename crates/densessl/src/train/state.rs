//! Resumable training state: what `--resume` needs beyond the user-facing checkpoints.
//!
//! A state is a directory `checkpoints/state-step<N>/` holding the networks as burnpack
//! files (they keep their `ParamId`s, so the optimiser state keyed by those ids applies
//! again after loading), the optimiser record, queues and the loop's own `loop.json`. It is
//! written as `state-step<N>.tmp/` and renamed when complete, so a state on disk is whole or
//! absent; a crash leaves at most a `.tmp` directory, which the next save or resume removes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::run_dir::write_atomic;
use crate::pretext::queue::KeyQueue;
use crate::{Error, Result};

const PREFIX: &str = "state-step";

fn err(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), message: message.into() }
}

/// Writes the parts of one state into its (temporary) directory.
pub struct StateWriter {
    dir: PathBuf,
}

impl StateWriter {
    /// Saves `module` with its parameter ids as `<name>.bpk`.
    pub fn module<M: Module>(&self, name: &str, module: &M) -> Result<()> {
        let path = self.dir.join(format!("{name}.bpk"));
        super::checkpoint::sync_running_statistics(module);
        let mut store = BurnpackStore::from_bytes(None);
        module.save_into(&mut store).map_err(|e| err(&path, e.to_string()))?;
        let bytes = store.get_bytes().map_err(|e| err(&path, e.to_string()))?;
        write_atomic(&path, &bytes)
    }

    /// Saves an optimiser's state (momentum buffers, keyed by parameter id) as `<name>.bpk`.
    pub fn optimizer(&self, name: &str, optim: &ModuleOptimizer) -> Result<()> {
        let path = self.dir.join(format!("{name}.bpk"));
        let bytes = optim.into_bytes().map_err(|e| err(&path, format!("{e:?}")))?;
        write_atomic(&path, &bytes)
    }

    /// Saves a key queue (rows and write position) as `<name>.safetensors`.
    pub fn queue(&self, name: &str, queue: &KeyQueue) -> Result<()> {
        let path = self.dir.join(format!("{name}.safetensors"));
        let rows = queue.rows().into_data();
        let shape = rows.shape().to_vec();
        let values: Vec<f32> = rows.try_to_vec().map_err(|e| err(&path, format!("{e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, shape, &bytes).expect("sizes agree by construction");
        let metadata = HashMap::from([("position".to_string(), queue.position().to_string())]);
        let file = safetensors::serialize([("rows", view)], Some(metadata)).map_err(|e| err(&path, e.to_string()))?;
        write_atomic(&path, &file)
    }

    /// Saves any serialisable value as `<name>.json`.
    pub fn json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value).expect("state serializes");
        write_atomic(&self.dir.join(format!("{name}.json")), text.as_bytes())
    }
}

/// Reads the parts of one saved state.
pub struct StateReader {
    dir: PathBuf,
}

impl StateReader {
    /// Opens the state directory `dir`.
    pub fn open(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The state's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, file: &str) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.dir.join(file);
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Ok((path, bytes))
    }

    /// Loads `<name>.bpk` into `module`, strictly (every tensor present and used), restoring
    /// the saved parameter ids.
    pub fn module<M: Module>(&self, name: &str, mut module: M) -> Result<M> {
        let (path, bytes) = self.read(&format!("{name}.bpk"))?;
        let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)));
        let result = module.load_from(&mut store).map_err(|e| err(&path, e.to_string()))?;
        if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
            return Err(err(
                &path,
                format!(
                    "does not fit the model (another architecture or method?): errors {:?}, missing {:?}, unused {:?}",
                    result.errors, result.missing, result.unused
                ),
            ));
        }
        Ok(module)
    }

    /// Loads `<name>.bpk` into a freshly built optimiser.
    pub fn optimizer(&self, name: &str, fresh: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let (path, bytes) = self.read(&format!("{name}.bpk"))?;
        fresh.from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| err(&path, format!("{e:?}")))
    }

    /// Loads `<name>.safetensors` into `queue`, which must have the same shape.
    pub fn queue(&self, name: &str, queue: &mut KeyQueue, device: &Device) -> Result<()> {
        let (path, bytes) = self.read(&format!("{name}.safetensors"))?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(&path, e.to_string()))?;
        let position: usize = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("position"))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| err(&path, "no queue position in the metadata"))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(&path, e.to_string()))?;
        let rows = tensors.tensor("rows").map_err(|e| err(&path, e.to_string()))?;
        let shape = rows.shape().to_vec();
        if shape != queue.rows().dims() || rows.dtype() != Dtype::F32 {
            return Err(err(&path, format!("queue of shape {shape:?}, the method's is {:?}", queue.rows().dims())));
        }
        let values: Vec<f32> = rows.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let rows = Tensor::<2>::from_data(TensorData::new(values, [shape[0], shape[1]]), device);
        queue.restore(rows, position).map_err(|e| err(&path, e))
    }

    /// Loads `<name>.json`.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let (path, bytes) = self.read(&format!("{name}.json"))?;
        serde_json::from_slice(&bytes).map_err(|e| err(&path, e.to_string()))
    }
}

/// What `--resume RUN_DIR` starts from: the run's own `config.toml` and its newest complete
/// state (leftovers of an interrupted save are removed first).
pub fn resume_point<T: DeserializeOwned>(root: &Path) -> Result<(T, StateReader)> {
    let config_path = root.join("config.toml");
    if !config_path.exists() {
        return Err(Error::Invalid(format!("{} is not a run directory (no config.toml)", root.display())));
    }
    let config = crate::config::load(Some(&config_path), &[])?;
    let checkpoints = root.join("checkpoints");
    remove_partial(&checkpoints)?;
    let (step, dir) = latest(&checkpoints).ok_or_else(|| {
        Error::Invalid(format!(
            "{} has no saved state to resume from (states are written every train.checkpoint_every steps)",
            root.display()
        ))
    })?;
    eprintln!("resuming {} at step {step} from {}", root.display(), dir.display());
    Ok((config, StateReader::open(&dir)))
}

fn state_step(name: &str) -> Option<usize> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// Writes the state of step `step` under `checkpoints/` through `write`, atomically (temporary
/// directory, then rename), and keeps only the newest `keep` states (at least one).
pub fn save(checkpoints: &Path, step: usize, keep: usize, write: impl FnOnce(&StateWriter) -> Result<()>) -> Result<PathBuf> {
    let done = checkpoints.join(format!("{PREFIX}{step:08}"));
    let tmp = checkpoints.join(format!("{PREFIX}{step:08}.tmp"));
    remove_partial(checkpoints)?;
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write(&StateWriter { dir: tmp.clone() })?;
    if done.exists() {
        fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
    }
    fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
    // The rename is durable once the parent directory is synced.
    if let Ok(parent) = fs::File::open(checkpoints) {
        let _ = parent.sync_all();
    }
    prune(checkpoints, keep.max(1))?;
    Ok(done)
}

/// Removes `.tmp` leftovers of a save that was interrupted.
pub fn remove_partial(checkpoints: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(checkpoints) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let path = entry.path();
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The complete states under `checkpoints/`, oldest first.
pub fn list(checkpoints: &Path) -> Vec<(usize, PathBuf)> {
    let mut states: Vec<(usize, PathBuf)> = fs::read_dir(checkpoints)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((state_step(&e.file_name().to_string_lossy())?, e.path())))
        .filter(|(_, p)| p.is_dir())
        .collect();
    states.sort();
    states
}

/// The newest complete state, if any.
pub fn latest(checkpoints: &Path) -> Option<(usize, PathBuf)> {
    list(checkpoints).pop()
}

/// Keeps the newest `keep` states and the newest `keep` of each family of step checkpoints
/// (`<family>-step<N>.safetensors`).
fn prune(checkpoints: &Path, keep: usize) -> Result<()> {
    let states = list(checkpoints);
    for (_, path) in states.iter().take(states.len().saturating_sub(keep)) {
        fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    let mut families: HashMap<String, Vec<(usize, PathBuf)>> = HashMap::new();
    for entry in fs::read_dir(checkpoints).map_err(|e| Error::io(checkpoints, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".safetensors") else { continue };
        let Some((family, step)) = stem.rsplit_once("-step") else { continue };
        if let Ok(step) = step.parse::<usize>() {
            families.entry(family.to_string()).or_default().push((step, entry.path()));
        }
    }
    for (_, mut files) in families {
        files.sort();
        for (_, path) in files.iter().take(files.len().saturating_sub(keep)) {
            fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("densessl-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn modules_keep_their_ids_and_queues_their_position() {
        let dir = temp_dir("roundtrip");
        let device = Device::flex();
        let saved: Linear = LinearConfig::new(3, 2).init(&device);
        let mut queue = KeyQueue::random(6, 4, 1, &device);
        queue.push(Tensor::<2>::ones([2, 4], &device));
        let path = save(&dir, 7, 2, |w| {
            w.module("net", &saved)?;
            w.queue("queue", &queue)?;
            w.json("loop", &serde_json::json!({"step": 7}))
        })
        .unwrap();
        let reader = StateReader::open(&path);
        let fresh: Linear = LinearConfig::new(3, 2).init(&device);
        assert_ne!(fresh.weight.id, saved.weight.id);
        let loaded = reader.module("net", fresh).unwrap();
        assert_eq!(loaded.weight.id, saved.weight.id, "the parameter id comes back, so optimiser state applies");
        assert_eq!(loaded.weight.val().into_data(), saved.weight.val().into_data());
        let mut other = KeyQueue::random(6, 4, 2, &device);
        reader.queue("queue", &mut other, &device).unwrap();
        assert_eq!(other.position(), 2);
        assert_eq!(other.rows().into_data(), queue.rows().into_data());
        let step: serde_json::Value = reader.json("loop").unwrap();
        assert_eq!(step["step"], 7);
        // Another shape is refused with the file named.
        let wrong: Linear = LinearConfig::new(4, 2).init(&device);
        let e = reader.module("net", wrong).unwrap_err().to_string();
        assert!(e.contains("net.bpk"), "{e}");
        let mut small = KeyQueue::random(3, 4, 2, &device);
        assert!(reader.queue("queue", &mut small, &device).unwrap_err().to_string().contains("queue.safetensors"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn batchnorm_running_statistics_come_back() {
        use burn::nn::{BatchNorm, BatchNormConfig};
        let dir = temp_dir("bn");
        let device = Device::flex().autodiff();
        let bn: BatchNorm = BatchNormConfig::new(3).init(&device);
        let x = Tensor::<4>::random([4, 3, 5, 5], burn::tensor::Distribution::Normal(2.0, 3.0), &device);
        let _ = bn.forward(x);
        // burn keeps the newest statistics pending until the next forward; the saved state
        // must hold them anyway.
        let expected = bn.running_mean.value_sync().into_data();
        let path = save(&dir, 1, 1, |w| w.module("bn", &bn)).unwrap();
        let fresh: BatchNorm = BatchNormConfig::new(3).init(&device);
        let loaded = StateReader::open(&path).module("bn", fresh).unwrap();
        assert_eq!(loaded.running_mean.value().into_data(), expected);
        // And they go on from there: one more training forward moves both alike.
        let x = Tensor::<4>::random([4, 3, 5, 5], burn::tensor::Distribution::Normal(-1.0, 2.0), &device);
        let _ = (bn.forward(x.clone()), loaded.forward(x));
        assert_eq!(loaded.running_mean.value_sync().into_data(), bn.running_mean.value_sync().into_data());
        assert_eq!(loaded.running_var.value_sync().into_data(), bn.running_var.value_sync().into_data());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_newest_states_and_step_checkpoints_stay_and_partial_ones_never_count() {
        let dir = temp_dir("prune");
        for step in [10, 20, 30] {
            fs::write(dir.join(format!("encoder-step{step}.safetensors")), b"x").unwrap();
            save(&dir, step, 2, |w| w.json("loop", &step)).unwrap();
        }
        let steps: Vec<usize> = list(&dir).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        assert!(!dir.join("encoder-step10.safetensors").exists());
        assert!(dir.join("encoder-step20.safetensors").exists() && dir.join("encoder-step30.safetensors").exists());
        // A save that died half-way leaves a .tmp directory that is not a state.
        fs::create_dir_all(dir.join("state-step00000040.tmp")).unwrap();
        assert_eq!(latest(&dir).unwrap().0, 30);
        let failed = save(&dir, 50, 2, |_| Err(Error::Invalid("disk full".into())));
        assert!(failed.is_err());
        assert_eq!(latest(&dir).unwrap().0, 30, "a failed save leaves the last good state the newest");
        remove_partial(&dir).unwrap();
        assert!(!dir.join("state-step00000040.tmp").exists() && !dir.join("state-step00000050.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
