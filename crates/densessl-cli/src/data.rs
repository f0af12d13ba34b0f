use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use densessl::data::check::{self, SplitReport};
use densessl::data::fashion_scenes::{self, FashionMnist, FashionScenesConfig, Stream};
use densessl::data::procedural::ProceduralConfig;
use densessl::data::{procedural, voc};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Write procedural scenes (5 textured shape classes + background) as a VOC-format tree.
    Procedural {
        /// Output root (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/).
        #[arg(long)]
        out: PathBuf,
        /// Image side in pixels (32–96).
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Number of training scenes.
        #[arg(long, default_value_t = 1000)]
        train: usize,
        /// Number of validation scenes.
        #[arg(long, default_value_t = 200)]
        val: usize,
        /// Generator seed: the same seed writes the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write the FashionScenes mini benchmark (Fashion-MNIST items on textured backgrounds,
    /// 11 classes) as a VOC-format tree plus an unlabeled/ folder for pre-training.
    FashionScenes {
        /// Output root.
        #[arg(long)]
        out: PathBuf,
        /// Folder with Fashion-MNIST's {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
        #[arg(long, default_value = fashion_scenes::DEFAULT_SOURCE)]
        source: PathBuf,
        /// Labelled training scenes (items from Fashion-MNIST train).
        #[arg(long, default_value_t = 1000)]
        train: usize,
        /// Labelled validation scenes (items from Fashion-MNIST test).
        #[arg(long, default_value_t = 300)]
        val: usize,
        /// Unlabeled pre-training scenes (items from Fashion-MNIST train).
        #[arg(long, default_value_t = 4000)]
        unlabeled: usize,
        /// Scene side in pixels (32–128).
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Generator seed: the same seed writes the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Check a VOC-format tree: every listed image has a same-sized mask with labels in
    /// 0..C-1 or 255; prints counts and the per-class pixel histogram; lists every bad file.
    /// Exits non-zero if any file is bad.
    Check {
        /// Root of the tree (the folder with JPEGImages/, or VOCdevkit's parent).
        root: PathBuf,
        /// Split(s) to check (default: those of train, train_aug, val, test that exist).
        #[arg(long)]
        split: Vec<String>,
        /// Number of classes (default: classes.txt of the tree, else 21).
        #[arg(long)]
        num_classes: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Procedural { out, size, train, val, seed } => {
            let generator = ProceduralConfig { size, seed };
            generator.check()?;
            let train_scenes = generator.scenes(0, train);
            let val_scenes = generator.scenes(procedural::VAL_INDEX_OFFSET, val);
            voc::write_tree(&out, &[("train", &train_scenes), ("val", &val_scenes)])?;
            voc::write_classes(&out, &procedural::CLASS_NAMES)?;
            println!(
                "wrote {train} train + {val} val scenes ({size} px, {} classes: {}) to {}",
                procedural::NUM_CLASSES,
                procedural::CLASS_NAMES.join(", "),
                out.display()
            );
            Ok(())
        }
        DataCommand::FashionScenes { out, source, train, val, unlabeled, size, seed } => {
            let generator = FashionScenesConfig { size, seed };
            generator.check()?;
            let train_items = FashionMnist::load(&source, "train")?;
            let test_items = FashionMnist::load(&source, "t10k")?;
            let train_scenes = generator.scenes(&train_items, Stream::Train, train);
            let val_scenes = generator.scenes(&test_items, Stream::Val, val);
            voc::write_tree(&out, &[("train", &train_scenes), ("val", &val_scenes)])?;
            voc::write_classes(&out, &fashion_scenes::CLASS_NAMES)?;
            let unlabeled_scenes = generator.scenes(&train_items, Stream::Unlabeled, unlabeled);
            let images: Vec<_> = unlabeled_scenes.into_iter().map(|s| s.image).collect();
            voc::write_image_folder(&out.join("unlabeled"), "unlabeled", &images)?;
            println!(
                "wrote FashionScenes ({size} px, {} classes) to {}: {train} train, {val} val, \
                 {unlabeled} unlabeled scenes",
                fashion_scenes::NUM_CLASSES,
                out.display()
            );
            Ok(())
        }
        DataCommand::Check { root, split, num_classes, json } => {
            let num_classes = num_classes
                .or_else(|| check::declared_classes(&root).map(|c| c.len()))
                .unwrap_or(densessl::data::VOC_NUM_CLASSES);
            let resolved = voc::resolve_root(&root)?;
            let splits: Vec<String> = if split.is_empty() {
                check::DEFAULT_SPLITS
                    .iter()
                    .filter(|s| voc::find_split_list(&resolved, s).is_ok())
                    .map(|s| s.to_string())
                    .collect()
            } else {
                split
            };
            if splits.is_empty() {
                bail!("{}: no split lists found; name one with --split", root.display());
            }
            let reports = splits
                .iter()
                .map(|s| check::check_split(&root, s, num_classes))
                .collect::<densessl::Result<Vec<_>>>()?;
            if json {
                let value = serde_json::json!({
                    "root": resolved, "num_classes": num_classes, "splits": reports,
                    "ok": reports.iter().all(SplitReport::ok),
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                for report in &reports {
                    print_report(report);
                }
            }
            let bad: usize = reports.iter().map(|r| r.problems.len()).sum();
            if bad > 0 {
                bail!("{bad} problem(s) in {}", root.display());
            }
            Ok(())
        }
    }
}

fn print_report(r: &SplitReport) {
    println!("split {} ({}): {} listed, {} valid", r.split, r.list.display(), r.listed, r.valid);
    if let Some(standard) = r.standard_size {
        let verdict = if r.listed == standard && r.valid == standard { "complete" } else { "INCOMPLETE" };
        println!("  standard VOCaug size {standard}: {verdict}");
    }
    let total: u64 = r.class_pixels.iter().sum::<u64>() + r.ignore_pixels;
    for (c, &n) in r.class_pixels.iter().enumerate() {
        println!("  class {c:>3}: {n:>12} px  {:>6.2} %", 100.0 * n as f64 / total.max(1) as f64);
    }
    println!("  ignore 255: {:>11} px  {:>6.2} %", r.ignore_pixels, 100.0 * r.ignore_pixels as f64 / total.max(1) as f64);
    for problem in &r.problems {
        println!("  BAD {problem}");
    }
}
