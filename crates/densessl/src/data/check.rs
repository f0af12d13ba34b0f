//! `densessl data check`: validates a VOC-format tree and summarises its labels.
//! Every bad file is reported, not only the first.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::voc::{self, SplitEntry};
use super::IGNORE_LABEL;
use crate::Result;

/// Sizes of the standard VOCaug splits (Hariharan et al. SBD + VOC 2012).
pub const VOCAUG_TRAIN_AUG: usize = 10_582;
/// Images in VOC 2012's segmentation val split.
pub const VOC_VAL: usize = 1_449;

/// What a check of one split found.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    /// Split name as asked for.
    pub split: String,
    /// The list file that was read.
    pub list: PathBuf,
    /// Entries listed.
    pub listed: usize,
    /// Entries whose image and mask read and agree.
    pub valid: usize,
    /// Labelled pixels per class (index = class), over valid entries.
    pub class_pixels: Vec<u64>,
    /// Pixels labelled 255 (ignored).
    pub ignore_pixels: u64,
    /// One line per bad entry, naming the file.
    pub problems: Vec<String>,
    /// For the standard VOCaug splits: how many images the standard split has.
    pub standard_size: Option<usize>,
}

impl SplitReport {
    /// Whether the split is usable as is (no bad entries, not empty).
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.listed > 0
    }
}

/// Splits checked when none is named: those of these that have a list file.
pub const DEFAULT_SPLITS: [&str; 4] = ["train", "train_aug", "val", "test"];

/// The number of classes a tree declares in `classes.txt` (one name per line), if any.
pub fn declared_classes(root: &Path) -> Option<Vec<String>> {
    let root = voc::resolve_root(root).ok()?;
    let text = std::fs::read_to_string(root.join("classes.txt")).ok()?;
    Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// Checks one split: every listed image decodes, has a mask of the same size, and the
/// mask's labels lie in `0..num_classes` or are 255.
pub fn check_split(root: &Path, split: &str, num_classes: usize) -> Result<SplitReport> {
    let resolved = voc::resolve_root(root)?;
    let list = voc::find_split_list(&resolved, split)?;
    let entries = voc::split_entries(root, split)?;
    let per_entry: Vec<std::result::Result<Vec<u64>, String>> =
        entries.par_iter().map(|e| check_entry(e, num_classes)).collect();
    let mut report = SplitReport {
        split: split.to_string(),
        list,
        listed: entries.len(),
        valid: 0,
        class_pixels: vec![0; num_classes],
        ignore_pixels: 0,
        problems: Vec::new(),
        standard_size: standard_size(&resolved, split),
    };
    for result in per_entry {
        match result {
            Ok(histogram) => {
                report.valid += 1;
                for (total, &n) in report.class_pixels.iter_mut().zip(&histogram) {
                    *total += n;
                }
                report.ignore_pixels += histogram[IGNORE_LABEL as usize];
            }
            Err(problem) => report.problems.push(problem),
        }
    }
    if entries.is_empty() {
        report.problems.push(format!("{}: lists no images", report.list.display()));
    }
    Ok(report)
}

fn standard_size(root: &Path, split: &str) -> Option<usize> {
    let has_aug = root.join("SegmentationClassAug").is_dir();
    match split {
        "train_aug" | "aug" => Some(VOCAUG_TRAIN_AUG),
        "val" if has_aug => Some(VOC_VAL),
        _ => None,
    }
}

/// A 256-bin label histogram, or a sentence naming what is wrong with the entry.
fn check_entry(entry: &SplitEntry, num_classes: usize) -> std::result::Result<Vec<u64>, String> {
    let sample = voc::load_sample(entry).map_err(|e| e.to_string())?;
    let mut histogram = vec![0u64; 256];
    for p in sample.mask.as_raw() {
        histogram[*p as usize] += 1;
    }
    let bad: Vec<String> = (num_classes..256)
        .filter(|&v| v != IGNORE_LABEL as usize && histogram[v] > 0)
        .map(|v| format!("{v} ({} px)", histogram[v]))
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "{}: labels outside 0..{} and 255: {}",
            entry.mask.display(),
            num_classes - 1,
            bad.join(", ")
        ));
    }
    Ok(histogram)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::labels::write_palette_png;
    use crate::data::procedural::ProceduralConfig;

    #[test]
    fn reports_every_bad_file_and_the_histogram() {
        let root = std::env::temp_dir().join(format!("densessl-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let scenes = ProceduralConfig { size: 32, seed: 1 }.scenes(0, 6);
        voc::write_tree(&root, &[("train", &scenes)]).unwrap();
        let good = check_split(&root, "train", 6).unwrap();
        assert!(good.ok(), "{:?}", good.problems);
        let expected: u64 = scenes.iter().map(|s| s.mask.pixels().filter(|p| p.0[0] == 2).count() as u64).sum();
        assert_eq!(good.class_pixels[2], expected);
        assert_eq!(good.class_pixels.iter().sum::<u64>(), 6 * 32 * 32);
        // Three different faults in three files.
        std::fs::remove_file(root.join("JPEGImages/train_000001.jpg")).unwrap();
        write_palette_png(&root.join("SegmentationClass/train_000003.png"), &image::GrayImage::new(5, 5)).unwrap();
        let mut mask = scenes[4].mask.clone();
        mask.put_pixel(0, 0, image::Luma([9]));
        mask.put_pixel(1, 0, image::Luma([255]));
        write_palette_png(&root.join("SegmentationClass/train_000004.png"), &mask).unwrap();
        let bad = check_split(&root, "train", 6).unwrap();
        assert!(!bad.ok());
        assert_eq!((bad.listed, bad.valid, bad.problems.len()), (6, 3, 3));
        let all = bad.problems.join("\n");
        assert!(all.contains("train_000001.jpg"), "{all}");
        assert!(all.contains("train_000003.png") && all.contains("(5, 5)"), "{all}");
        assert!(all.contains("train_000004.png") && all.contains("9 (1 px)") && !all.contains("255 ("), "{all}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
