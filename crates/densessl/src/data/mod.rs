//! Datasets: in-memory labelled scenes, the built-in `procedural` generator and VOC trees.

pub mod labels;
pub mod procedural;
pub mod voc;

use std::path::PathBuf;

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Label value that losses and metrics ignore (VOC's object boundaries).
pub const IGNORE_LABEL: u8 = 255;

/// One image with its per-pixel class labels.
#[derive(Debug, Clone)]
pub struct SegSample {
    /// The image, 8-bit RGB.
    pub image: RgbImage,
    /// Class index per pixel, [`IGNORE_LABEL`] where unlabelled; same size as `image`.
    pub mask: GrayImage,
}

/// A labelled split held in memory.
#[derive(Debug, Clone)]
pub struct SegDataset {
    /// What the data is (`procedural` or a path), for manifests.
    pub name: String,
    /// Number of classes including background.
    pub num_classes: usize,
    /// The samples.
    pub samples: Vec<SegSample>,
}

impl SegDataset {
    /// A content fingerprint over every pixel and label.
    pub fn fingerprint(&self) -> String {
        crate::train::run_dir::fingerprint(self.samples.iter().flat_map(|s| {
            s.image.as_raw().iter().copied().chain(s.mask.as_raw().iter().copied())
        }))
    }
}

/// Where a command's data comes from (`[data]` in a config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `"procedural"` (built-in, generated from `seed`) or a path to a VOC-format tree.
    #[serde(default = "default_source")]
    pub source: String,
    /// Image side in pixels for procedural scenes (32–96).
    #[serde(default = "default_size")]
    pub size: u32,
    /// Number of training scenes (procedural only).
    #[serde(default = "default_train")]
    pub train: usize,
    /// Number of validation scenes (procedural only).
    #[serde(default = "default_val")]
    pub val: usize,
    /// Seed of the procedural generator (independent of the training seed).
    #[serde(default)]
    pub seed: u64,
    /// Split to train on for VOC trees (`ImageSets/Segmentation/<split>.txt`).
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Split to evaluate on for VOC trees.
    #[serde(default = "default_val_split")]
    pub val_split: String,
    /// Number of classes for VOC trees (21 for PASCAL VOC). Ignored for procedural.
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
}

fn default_source() -> String {
    "procedural".into()
}
fn default_size() -> u32 {
    64
}
fn default_train() -> usize {
    1000
}
fn default_val() -> usize {
    200
}
fn default_train_split() -> String {
    "train".into()
}
fn default_val_split() -> String {
    "val".into()
}
fn default_num_classes() -> usize {
    21
}

impl Default for DataConfig {
    fn default() -> Self {
        crate::config::from_toml_str("", "<defaults>").expect("defaults parse")
    }
}

/// Which split of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split.
    Train,
    /// The validation split.
    Val,
}

impl DataConfig {
    /// Loads one split into memory.
    pub fn load(&self, split: Split) -> Result<SegDataset> {
        if self.source == "procedural" {
            let generator = procedural::ProceduralConfig { size: self.size, seed: self.seed };
            generator.check()?;
            let (offset, count) = match split {
                Split::Train => (0, self.train),
                Split::Val => (procedural::VAL_INDEX_OFFSET, self.val),
            };
            Ok(SegDataset {
                name: format!("procedural(size={}, seed={})", self.size, self.seed),
                num_classes: procedural::NUM_CLASSES,
                samples: generator.scenes(offset, count),
            })
        } else {
            let split_name = match split {
                Split::Train => &self.train_split,
                Split::Val => &self.val_split,
            };
            let root = PathBuf::from(&self.source);
            let samples = voc::load_split(&root, split_name)?;
            if samples.is_empty() {
                return Err(Error::data(&root, format!("split '{split_name}' lists no images")));
            }
            Ok(SegDataset {
                name: root.display().to_string(),
                num_classes: self.num_classes,
                samples,
            })
        }
    }
}
