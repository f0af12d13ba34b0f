//! Self-describing checkpoints: safetensors files whose metadata (`densessl`) holds the
//! JSON needed to rebuild the module (kind, encoder and head settings, classes).
//! Saving is atomic (burn-store writes a scratch file and renames it into place);
//! loading is strict: a missing or unexpected tensor is an error that lists them.

use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::models::heads::HeadConfig;
use crate::models::resnet::ResNet;
use crate::models::segmenter::{EncoderConfig, Segmenter};
use crate::{Error, Result};

/// Metadata key holding [`CheckpointInfo`] as JSON.
pub const METADATA_KEY: &str = "densessl";

/// What a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckpointInfo {
    /// A bare encoder (output of `pretrain`).
    Encoder {
        /// Its settings.
        encoder: EncoderConfig,
    },
    /// A segmentation model (output of `finetune`).
    Segmenter {
        /// Encoder settings.
        encoder: EncoderConfig,
        /// Head settings.
        head: HeadConfig,
        /// Number of classes.
        num_classes: usize,
    },
}

fn err(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), message: message.into() }
}

/// Installs BatchNorm running statistics that burn keeps pending after a training forward
/// (they are merged only at the next forward), so a saved module is not one update behind.
pub fn sync_running_statistics<M: Module>(module: &M) {
    // `valid` merges every RunningState's pending value in place; the snapshot is dropped.
    let _ = module.valid();
}

/// Saves `module` with `info` in its metadata, atomically replacing `path`.
pub fn save<M: Module>(module: &M, info: &CheckpointInfo, path: &Path) -> Result<()> {
    sync_running_statistics(module);
    let json = serde_json::to_string(info).expect("checkpoint info serializes");
    // Staged beside the target, synced, then renamed: a crash never leaves a cut-off file
    // under the checkpoint's name, and an older checkpoint there stays until the new one is whole.
    let tmp = crate::train::run_dir::temp_sibling(path);
    let mut store = SafetensorsStore::from_file(&tmp).metadata(METADATA_KEY, json).overwrite(true);
    let written = crate::train::run_dir::simulated_disk_full(path)
        .map_err(|e| Error::io(path, e))
        .and_then(|()| module.save_into(&mut store).map_err(|e| err(path, e.to_string())))
        .and_then(|()| {
            let file = std::fs::File::open(&tmp).map_err(|e| Error::io(&tmp, e))?;
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Reads the [`CheckpointInfo`] from a checkpoint's header without loading tensors.
pub fn read_info(path: &Path) -> Result<CheckpointInfo> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| err(path, "not a safetensors file (shorter than its header)"))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(err(path, "not a safetensors file (implausible header length)"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|_| err(path, "truncated safetensors header"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| err(path, format!("bad safetensors header: {e}")))?;
    let info = header["__metadata__"][METADATA_KEY]
        .as_str()
        .ok_or_else(|| err(path, "no densessl metadata: not written by densessl (import it first)"))?;
    serde_json::from_str(info).map_err(|e| err(path, format!("bad densessl metadata: {e}")))
}

/// Applies the tensors in `path` to `module`, strictly: every module tensor must be in the
/// file and every file tensor must be used.
pub fn load_into<M: ModuleSnapshot>(module: &mut M, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_file(path).allow_partial(true);
    let result = module.load_from(&mut store).map_err(|e| err(path, e.to_string()))?;
    let mut problems = Vec::new();
    if !result.errors.is_empty() {
        problems.push(format!("errors: {:?}", result.errors));
    }
    if !result.missing.is_empty() {
        let names: Vec<&str> = result.missing.iter().map(|(n, _)| n.as_str()).collect();
        problems.push(format!("missing from the file: {}", names.join(", ")));
    }
    let unused: Vec<&String> = result.unused.iter().filter(|n| !n.ends_with("num_batches_tracked")).collect();
    if !unused.is_empty() {
        problems.push(format!("in the file but not in the model: {unused:?}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(err(path, problems.join("; "))) }
}

/// Loads an encoder checkpoint, or the encoder of a segmenter checkpoint.
pub fn load_encoder(path: &Path, device: &Device) -> Result<(ResNet, EncoderConfig)> {
    match read_info(path)? {
        CheckpointInfo::Encoder { encoder } => {
            let mut model = encoder.resnet()?.init(device);
            load_into(&mut model, path)?;
            Ok((model, encoder))
        }
        CheckpointInfo::Segmenter { encoder, head, num_classes } => {
            let (model, _) = load_segmenter_with(path, &encoder, &head, num_classes, device)?;
            Ok((model.encoder, encoder))
        }
    }
}

/// Loads a segmentation model checkpoint.
pub fn load_segmenter(path: &Path, device: &Device) -> Result<(Segmenter, CheckpointInfo)> {
    match read_info(path)? {
        CheckpointInfo::Segmenter { encoder, head, num_classes } => {
            load_segmenter_with(path, &encoder, &head, num_classes, device)
        }
        CheckpointInfo::Encoder { .. } => Err(err(
            path,
            "holds only an encoder (a pre-training output): fine-tune it first, then evaluate",
        )),
    }
}

fn load_segmenter_with(
    path: &Path,
    encoder: &EncoderConfig,
    head: &HeadConfig,
    num_classes: usize,
    device: &Device,
) -> Result<(Segmenter, CheckpointInfo)> {
    let mut model = Segmenter::new(encoder, head, num_classes, device)?;
    load_into(&mut model, path)?;
    let info = CheckpointInfo::Segmenter { encoder: encoder.clone(), head: head.clone(), num_classes };
    Ok((model, info))
}

/// A fingerprint of a checkpoint file's bytes (recorded in manifests of runs that start from it).
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(crate::train::run_dir::fingerprint(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tensor;

    #[test]
    fn encoder_round_trips_and_mismatch_is_listed() {
        let device = Device::flex();
        let dir = std::env::temp_dir().join(format!("densessl-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("enc.safetensors");
        let config = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let model = config.resnet().unwrap().init(&device);
        let info = CheckpointInfo::Encoder { encoder: config.clone() };
        save(&model, &info, &path).unwrap();
        assert_eq!(read_info(&path).unwrap(), info);
        let (loaded, _) = load_encoder(&path, &device).unwrap();
        let x = Tensor::<4>::ones([1, 3, 32, 32], &device);
        let (a, b) = (model.valid().forward_pooled(x.clone()), loaded.valid().forward_pooled(x));
        let (a, b): (Vec<f32>, Vec<f32>) = (a.into_data().try_to_vec().unwrap(), b.into_data().try_to_vec().unwrap());
        assert_eq!(a, b);
        // A deeper model cannot silently take a shallower checkpoint.
        let mut deeper = EncoderConfig { arch: "resnet34".into(), ..config }.resnet().unwrap().init(&device);
        let e = load_into(&mut deeper, &path).unwrap_err().to_string();
        assert!(e.contains("missing from the file") && e.contains("layer1.2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
