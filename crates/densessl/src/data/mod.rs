//! Datasets: in-memory labelled scenes, the built-in `procedural` generator, the
//! FashionScenes benchmark, VOC/VOCaug trees and unlabeled image folders.

pub mod check;
pub mod fashion_scenes;
pub mod image_folder;
pub mod labels;
pub mod loader;
pub mod procedural;
mod texture;
pub mod voc;

use std::path::{Path, PathBuf};

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
    /// `"procedural"` (built-in, generated from `seed`), `"fashion-scenes"` (FashionScenes
    /// generated in memory from the Fashion-MNIST files in `fashion_mnist`) or a path to a
    /// VOC-format tree.
    #[serde(default = "default_source")]
    pub source: String,
    /// Image side in pixels for generated scenes (procedural 32–96, fashion-scenes 32–128).
    #[serde(default = "default_size")]
    pub size: u32,
    /// Number of training scenes (generated sources).
    #[serde(default = "default_train")]
    pub train: usize,
    /// Number of validation scenes (generated sources).
    #[serde(default = "default_val")]
    pub val: usize,
    /// Seed of the scene generator (independent of the training seed).
    #[serde(default)]
    pub seed: u64,
    /// Split to train on for VOC trees (`ImageSets/Segmentation/<split>.txt`).
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Split to evaluate on for VOC trees.
    #[serde(default = "default_val_split")]
    pub val_split: String,
    /// Number of classes for VOC trees. Default: the lines of the tree's `classes.txt`
    /// (written by `densessl data`), else 21 (PASCAL VOC). Ignored for procedural.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Folder of unlabeled images (searched recursively) that pre-training uses instead of
    /// the training split's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlabeled: Option<String>,
    /// fashion-scenes: folder of the Fashion-MNIST IDX files.
    #[serde(default = "default_fashion_mnist")]
    pub fashion_mnist: String,
    /// fashion-scenes: unlabeled scenes pre-training uses (from Fashion-MNIST train).
    #[serde(default = "default_unlabeled_count")]
    pub unlabeled_count: usize,
}

fn default_fashion_mnist() -> String {
    fashion_scenes::DEFAULT_SOURCE.into()
}
fn default_unlabeled_count() -> usize {
    4000
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
/// Classes of PASCAL VOC, the default for trees without `classes.txt`.
pub const VOC_NUM_CLASSES: usize = 21;

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
        } else if self.source == "fashion-scenes" {
            let (generator, items) = self.fashion_generator(split == Split::Val)?;
            let (stream, count) = match split {
                Split::Train => (fashion_scenes::Stream::Train, self.train),
                Split::Val => (fashion_scenes::Stream::Val, self.val),
            };
            Ok(SegDataset {
                name: format!("fashion-scenes(size={}, seed={})", self.size, self.seed),
                num_classes: fashion_scenes::NUM_CLASSES,
                samples: generator.scenes(&items, stream, count),
            })
        } else {
            let split_name = match split {
                Split::Train => &self.train_split,
                Split::Val => &self.val_split,
            };
            let root = PathBuf::from(&self.source);
            let samples = voc::load_split(&root, split_name, Some(self.num_classes()))?;
            if samples.is_empty() {
                return Err(Error::data(&root, format!("split '{split_name}' lists no images")));
            }
            Ok(SegDataset { name: root.display().to_string(), num_classes: self.num_classes(), samples })
        }
    }

    /// The FashionScenes generator and the Fashion-MNIST split it draws from (test for val).
    fn fashion_generator(&self, test: bool) -> Result<(fashion_scenes::FashionScenesConfig, fashion_scenes::FashionMnist)> {
        let generator = fashion_scenes::FashionScenesConfig { size: self.size, seed: self.seed };
        generator.check()?;
        let items = fashion_scenes::FashionMnist::load(Path::new(&self.fashion_mnist), if test { "t10k" } else { "train" })?;
        Ok((generator, items))
    }

    /// The number of classes: as set, else from the tree's `classes.txt`, else 21.
    pub fn num_classes(&self) -> usize {
        if self.source == "procedural" {
            return procedural::NUM_CLASSES;
        }
        if self.source == "fashion-scenes" {
            return fashion_scenes::NUM_CLASSES;
        }
        self.num_classes
            .or_else(|| check::declared_classes(Path::new(&self.source)).map(|c| c.len()))
            .unwrap_or(VOC_NUM_CLASSES)
    }

    /// Images for pre-training: the `unlabeled` folder if set, else the training split's
    /// images. Returns the images and a name for manifests.
    pub fn load_pretraining_images(&self) -> Result<(String, Vec<RgbImage>)> {
        match &self.unlabeled {
            Some(folder) => {
                let images = image_folder::load_images(Path::new(folder))?;
                Ok((format!("unlabeled folder {folder}"), images))
            }
            None if self.source == "fashion-scenes" => {
                let (generator, items) = self.fashion_generator(false)?;
                let scenes = generator.scenes(&items, fashion_scenes::Stream::Unlabeled, self.unlabeled_count);
                let name = format!("fashion-scenes unlabeled(size={}, seed={}, count={})", self.size, self.seed, self.unlabeled_count);
                Ok((name, scenes.into_iter().map(|s| s.image).collect()))
            }
            None => {
                let dataset = self.load(Split::Train)?;
                Ok((dataset.name, dataset.samples.into_iter().map(|s| s.image).collect()))
            }
        }
    }
}
