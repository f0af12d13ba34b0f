use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
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
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Procedural { out, size, train, val, seed } => {
            let generator = ProceduralConfig { size, seed };
            generator.check()?;
            let train_scenes = generator.scenes(0, train);
            let val_scenes = generator.scenes(procedural::VAL_INDEX_OFFSET, val);
            voc::write_tree(&out, &[("train", &train_scenes), ("val", &val_scenes)])?;
            println!(
                "wrote {train} train + {val} val scenes ({size} px, {} classes: {}) to {}",
                procedural::NUM_CLASSES,
                procedural::CLASS_NAMES.join(", "),
                out.display()
            );
            Ok(())
        }
    }
}
