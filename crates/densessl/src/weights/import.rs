//! Strict import of encoder weights. The prefix under which a file keeps its encoder is
//! detected from the keys themselves (or restricted by `--from`); then every encoder tensor
//! must be in the file, no unknown encoder-like tensor may be left over, and every shape must
//! agree. Anything else is an error that lists the keys; `allow_missing` opts out explicitly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::store::{KeyRemapper, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};
use burn::tensor::Device;
use serde::Serialize;

use super::torchvision_keys;
use crate::models::resnet::ResNet;
use crate::models::segmenter::EncoderConfig;
use crate::train::checkpoint::{self, CheckpointInfo};
use crate::{Error, Result};

/// Where a checkpoint comes from, which fixes the prefixes its encoder may sit under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// Any of the below, chosen by which prefix matches the most encoder keys.
    Auto,
    /// A torchvision `state_dict` (optionally wrapped by `nn.DataParallel`: `module.`).
    Torchvision,
    /// MoCo v1/v2 `.pth.tar`: `state_dict` → `module.encoder_q.*`.
    Moco,
    /// mmselfsup / DenseCL / OpenMMLab: `state_dict` → `backbone.*`.
    Mmselfsup,
    /// Common BYOL and SimSiam layouts: `online_network.encoder.*`, `module.encoder.*`, `encoder.*`, `net.*`.
    Byol,
    /// A densessl checkpoint (safetensors with densessl metadata).
    Densessl,
}

impl FromStr for SourceFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "torchvision" => Self::Torchvision,
            "moco" => Self::Moco,
            "mmselfsup" | "densecl" => Self::Mmselfsup,
            "byol" | "simsiam" => Self::Byol,
            "densessl" => Self::Densessl,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown checkpoint format '{other}': use auto|torchvision|moco|mmselfsup|byol|densessl"
                )));
            }
        })
    }
}

/// Encoder prefixes inside a state_dict, per format.
const PREFIXES: [(&str, SourceFormat); 11] = [
    ("module.encoder_q.", SourceFormat::Moco),
    ("encoder_q.", SourceFormat::Moco),
    ("module.backbone.", SourceFormat::Mmselfsup),
    ("backbone.", SourceFormat::Mmselfsup),
    ("module.online_network.encoder.", SourceFormat::Byol),
    ("online_network.encoder.", SourceFormat::Byol),
    ("module.encoder.", SourceFormat::Byol),
    ("encoder.", SourceFormat::Byol),
    ("net.", SourceFormat::Byol),
    ("module.", SourceFormat::Torchvision),
    ("", SourceFormat::Torchvision),
];
/// Top-level keys that wrap a state_dict in training checkpoints (flattened with a dot).
const WRAPPERS: [&str; 4] = ["", "state_dict.", "model.", "model_state."];

/// What an import did, for the user to read.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The file.
    pub file: PathBuf,
    /// The format it was read as.
    pub format: SourceFormat,
    /// The prefix the encoder was found under.
    pub prefix: String,
    /// Encoder tensors loaded.
    pub mapped: usize,
    /// Tensors left out (classifier, BN batch counters, other networks), counted by group.
    pub dropped: BTreeMap<String, usize>,
    /// Encoder tensors missing from the file but allowed by `allow_missing` (kept at init).
    pub allowed_missing: Vec<String>,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: read as {:?}, encoder under prefix '{}': {} tensors mapped",
            self.file.display(),
            self.format,
            self.prefix,
            self.mapped
        )?;
        for (group, n) in &self.dropped {
            writeln!(f, "  dropped {n:>4} × {group}")?;
        }
        if !self.allowed_missing.is_empty() {
            writeln!(f, "  missing but allowed (left at init): {}", self.allowed_missing.join(", "))?;
        }
        Ok(())
    }
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Which layout to expect.
    pub format: SourceFormat,
    /// Patterns (`*` matches any run of characters) of torchvision-named encoder keys that
    /// may be missing from the file.
    pub allow_missing: Vec<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { format: SourceFormat::Auto, allow_missing: Vec::new() }
    }
}

/// The encoder settings for loading `path`: a densessl checkpoint's own architecture and
/// width (given values must agree), else `arch` (required) and `base_width` (default 64).
pub fn encoder_config_for(
    path: &Path,
    arch: Option<&str>,
    base_width: Option<usize>,
    output_stride: usize,
) -> Result<EncoderConfig> {
    let saved = match checkpoint::read_info(path) {
        Ok(CheckpointInfo::Encoder { encoder } | CheckpointInfo::Segmenter { encoder, .. }) => Some(encoder),
        Err(_) => None,
    };
    let config = match (saved, arch) {
        (Some(saved), _) => EncoderConfig {
            arch: arch.map_or(saved.arch.clone(), String::from),
            base_width: base_width.unwrap_or(saved.base_width),
            ..saved
        },
        (None, Some(arch)) => EncoderConfig { arch: arch.into(), base_width: base_width.unwrap_or(64), ..EncoderConfig::default() },
        (None, None) => {
            return Err(fail(path, "is not a densessl checkpoint, so its architecture is unknown: pass --arch (e.g. resnet50)"));
        }
    };
    Ok(EncoderConfig { output_stride, ..config })
}

/// Builds the encoder `config` describes and loads `path` into it, strictly.
pub fn load_encoder(
    path: &Path,
    config: &EncoderConfig,
    options: &ImportOptions,
    device: &Device,
) -> Result<(ResNet, ImportReport)> {
    if !path.is_file() {
        return Err(Error::Checkpoint { path: path.into(), message: "no such file".into() });
    }
    let mut encoder = config.resnet()?.init(device);
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors && let Ok(info) = checkpoint::read_info(path) {
        if !matches!(options.format, SourceFormat::Auto | SourceFormat::Densessl) {
            return Err(fail(path, format!("is a densessl checkpoint, not {:?}", options.format)));
        }
        let report = load_densessl(&mut encoder, config, &info, path)?;
        return Ok((encoder, report));
    }
    if options.format == SourceFormat::Densessl {
        return Err(fail(path, "has no densessl metadata; use --from auto to import a PyTorch checkpoint"));
    }
    let raw_keys = if is_safetensors {
        SafetensorsStore::from_file(path).keys().map_err(|e| e.to_string())
    } else {
        PytorchStore::from_file(path).keys().map_err(|e| e.to_string())
    }
    .map_err(|e| fail(path, format!("cannot read tensors: {e}")))?;
    let expected = torchvision_keys(&encoder);
    let prefix = choose_prefix(&raw_keys, &expected, options.format)
        .ok_or_else(|| no_prefix_error(path, &raw_keys, config, options.format))?;

    // What the file offers under the prefix, in torchvision names.
    let offered: Vec<&str> = raw_keys.iter().filter_map(|k| k.strip_prefix(prefix.as_str())).collect();
    let is_dropped_name = |k: &str| k.starts_with("fc.") || k.ends_with("num_batches_tracked");
    let missing: Vec<String> = expected.iter().filter(|k| !offered.contains(&k.as_str())).cloned().collect();
    let unexpected: Vec<&str> =
        offered.iter().copied().filter(|k| !is_dropped_name(k) && !expected.iter().any(|e| e == k)).collect();
    let (allowed_missing, missing): (Vec<String>, Vec<String>) =
        missing.into_iter().partition(|k| options.allow_missing.iter().any(|p| wildcard_match(p, k)));
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} encoder tensor(s) missing under prefix '{prefix}': {} (allow with --allow-missing PATTERN)",
            missing.len(),
            preview(&missing)
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} unexpected tensor(s) under prefix '{prefix}' (another architecture? encoder.arch is {}): {}",
            unexpected.len(),
            config.arch,
            preview(&unexpected)
        ));
    }
    if !problems.is_empty() {
        return Err(fail(path, problems.join("; ")));
    }

    let remapper = KeyRemapper::from_patterns(vec![
        (format!("^{}", prefix.replace('.', "\\.")), String::new()),
        (r"\.downsample\.0\.".to_string(), ".downsample.conv.".to_string()),
        (r"\.downsample\.1\.".to_string(), ".downsample.bn.".to_string()),
    ])
    .expect("fixed patterns compile");
    let result = if is_safetensors {
        let mut store = SafetensorsStore::from_file(path)
            .remap(remapper)
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(true)
            .validate(false);
        encoder.load_from(&mut store).map_err(|e| fail(path, e.to_string()))?
    } else {
        let mut store = PytorchStore::from_file(path).remap(remapper).allow_partial(true).validate(false);
        encoder.load_from(&mut store).map_err(|e| fail(path, e.to_string()))?
    };
    if !result.errors.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(fail(path, format!("tensors do not fit {}: {}", config.arch, preview(&errors))));
    }
    let mut dropped = BTreeMap::new();
    let depth = prefix.matches('.').count().max(1);
    for key in &raw_keys {
        let group = match key.strip_prefix(prefix.as_str()) {
            Some(k) if k.starts_with("fc.") => format!("{prefix}fc.*"),
            Some(k) if k.ends_with("num_batches_tracked") => format!("{prefix}*.num_batches_tracked"),
            Some(_) => continue,
            None => {
                let parts: Vec<&str> = key.split('.').collect();
                let head = parts[..depth.min(parts.len())].join(".");
                if parts.len() > depth { format!("{head}.*") } else { head }
            }
        };
        *dropped.entry(group).or_insert(0) += 1;
    }
    let report = ImportReport {
        file: path.into(),
        format: PREFIXES.iter().find(|(p, _)| prefix.ends_with(p)).map_or(SourceFormat::Torchvision, |(_, f)| *f),
        prefix,
        mapped: result.applied.len(),
        dropped,
        allowed_missing,
    };
    Ok((encoder, report))
}

/// Loads the `init` encoder of a run (`--init`, layout `init_from`) and the line its manifest
/// records: the file, how it was read and its fingerprint.
pub fn load_init(init: &str, init_from: &str, config: &EncoderConfig, device: &Device) -> Result<(ResNet, String)> {
    let path = PathBuf::from(init);
    let options = ImportOptions { format: init_from.parse()?, ..ImportOptions::default() };
    let (encoder, report) = load_encoder(&path, config, &options, device)?;
    tracing::info!("{report}");
    let note = format!(
        "{} ({:?}, prefix '{}', {} tensors; fingerprint {})",
        path.display(),
        report.format,
        report.prefix,
        report.mapped,
        checkpoint::file_fingerprint(&path)?
    );
    Ok((encoder, note))
}

fn fail(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.into(), message: message.into() }
}

/// The full prefix (wrapper + encoder prefix) under which most expected keys are found.
fn choose_prefix(keys: &[String], expected: &[String], format: SourceFormat) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for wrapper in WRAPPERS {
        for (prefix, prefix_format) in PREFIXES {
            if format != SourceFormat::Auto && format != prefix_format {
                continue;
            }
            let full = format!("{wrapper}{prefix}");
            let hits = keys
                .iter()
                .filter_map(|k| k.strip_prefix(full.as_str()))
                .filter(|k| expected.iter().any(|e| e == k))
                .count();
            // Strictly more: among equals, the more specific prefix listed first wins.
            if hits > 0 && best.as_ref().is_none_or(|(n, _)| hits > *n) {
                best = Some((hits, full));
            }
        }
    }
    best.map(|(_, p)| p)
}

fn no_prefix_error(path: &Path, keys: &[String], config: &EncoderConfig, format: SourceFormat) -> Error {
    fail(
        path,
        format!(
            "no tensor matches a {} encoder under any {:?} prefix ({} tensors in the file; first: {})",
            config.arch,
            format,
            keys.len(),
            preview(&keys.iter().take(5).collect::<Vec<_>>())
        ),
    )
}

fn load_densessl(encoder: &mut ResNet, config: &EncoderConfig, info: &CheckpointInfo, path: &Path) -> Result<ImportReport> {
    let (saved, prefix) = match info {
        CheckpointInfo::Encoder { encoder } => (encoder, ""),
        CheckpointInfo::Segmenter { encoder, .. } => (encoder, "encoder."),
    };
    // Output stride and zero-init change no tensor, so an encoder pre-trained at one stride
    // fine-tunes at another; architecture and width must agree.
    if saved.arch != config.arch || saved.base_width != config.base_width {
        return Err(fail(
            path,
            format!(
                "holds a {} of width {}, but encoder is {} of width {}: set encoder.arch/base_width to match",
                saved.arch, saved.base_width, config.arch, config.base_width
            ),
        ));
    }
    let remapper = KeyRemapper::from_patterns(vec![(format!("^{}", prefix.replace('.', "\\.")), String::new())])
        .expect("fixed pattern compiles");
    let mut store = SafetensorsStore::from_file(path).remap(remapper).allow_partial(true);
    let result = encoder.load_from(&mut store).map_err(|e| fail(path, e.to_string()))?;
    let unused: Vec<&String> = result.unused.iter().filter(|k| prefix.is_empty() || k.starts_with(prefix)).collect();
    if !result.errors.is_empty() || !result.missing.is_empty() || (prefix.is_empty() && !unused.is_empty()) {
        return Err(fail(path, format!("does not fit the encoder: {result}")));
    }
    let mut dropped = BTreeMap::new();
    if !result.unused.is_empty() {
        dropped.insert("head.".to_string(), result.unused.len());
    }
    Ok(ImportReport {
        file: path.into(),
        format: SourceFormat::Densessl,
        prefix: prefix.into(),
        mapped: result.applied.len(),
        dropped,
        allowed_missing: Vec::new(),
    })
}

/// The first few items and how many more.
fn preview<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(8).map(|s| s.to_string()).collect();
    let more = items.len().saturating_sub(8);
    if more > 0 { format!("{} … and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("layer4.*", "layer4.0.conv1.weight"));
        assert!(wildcard_match("*.running_var", "bn1.running_var"));
        assert!(wildcard_match("layer*.bn3.*", "layer2.1.bn3.weight"));
        assert!(!wildcard_match("layer4.*", "layer3.0.conv1.weight"));
        assert!(!wildcard_match("bn1.weight", "bn1.weight2"));
        assert!(!wildcard_match("a*a", "a"));
    }

    #[test]
    fn prefix_choice_prefers_most_matches_then_specificity() {
        let expected: Vec<String> = ["conv1.weight", "bn1.weight"].map(String::from).to_vec();
        let keys: Vec<String> = [
            "state_dict.module.encoder_q.conv1.weight",
            "state_dict.module.encoder_q.bn1.weight",
            "state_dict.module.encoder_k.conv1.weight",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(choose_prefix(&keys, &expected, SourceFormat::Auto).unwrap(), "state_dict.module.encoder_q.");
        assert_eq!(choose_prefix(&keys, &expected, SourceFormat::Mmselfsup), None);
        let tv: Vec<String> = ["conv1.weight", "fc.weight"].map(String::from).to_vec();
        assert_eq!(choose_prefix(&tv, &expected, SourceFormat::Auto).unwrap(), "");
    }
}
