use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use densessl::data::labels::{overlay_panel, write_palette_png, write_rgb_png};
use densessl::data::{DataConfig, Split, image_folder};
use densessl::device::DeviceSpec;
use densessl::seg::evaluate::predict_images;
use densessl::train::checkpoint;
use densessl::image::{GrayImage, RgbImage};

use crate::eval::InferenceArgs;

/// `densessl predict --checkpoint CKPT (--dataset ROOT [--split val] | --images DIR) --out DIR [--overlay]`
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A fine-tuned model (`finetune`'s checkpoints/model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A VOC-format tree (or `procedural`) whose split to predict; ground truth goes in overlays.
    #[arg(long, conflicts_with = "images")]
    dataset: Option<String>,
    /// Split of --dataset.
    #[arg(long, default_value = "val")]
    split: String,
    /// A folder of images (recursive; jpg, png, webp) to predict instead.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Output folder: <id>.png with the VOC palette.
    #[arg(long)]
    out: PathBuf,
    /// Also write <id>_overlay.png: image | prediction | ground truth, side by side.
    #[arg(long)]
    overlay: bool,
    #[command(flatten)]
    inference: InferenceArgs,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let device = DeviceSpec::parse(&args.device)?.init_plain()?;
    let (model, _) = checkpoint::load_segmenter(&args.checkpoint, &device)?;
    // (id, image, ground truth)
    let items: Vec<(String, RgbImage, Option<GrayImage>)> = match (&args.dataset, &args.images) {
        (Some(dataset), None) => {
            let data = DataConfig { source: dataset.clone(), val_split: args.split.clone(), ..DataConfig::default() };
            let ids: Vec<String> = if dataset == "procedural" {
                (0..data.val).map(|i| format!("{}_{i:06}", args.split)).collect()
            } else {
                densessl::data::voc::read_split(std::path::Path::new(dataset), &args.split)?
            };
            let samples = data.load(Split::Val)?.samples;
            ids.into_iter().zip(samples).map(|(id, s)| (id, s.image, Some(s.mask))).collect()
        }
        (None, Some(folder)) => image_folder::list_images(folder)?
            .into_iter()
            .map(|p| {
                let id = p.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string();
                Ok((id, image_folder::decode_rgb(&p)?, None))
            })
            .collect::<densessl::Result<_>>()?,
        _ => bail!("give --dataset ROOT or --images DIR"),
    };
    std::fs::create_dir_all(&args.out)?;
    let images: Vec<&RgbImage> = items.iter().map(|(_, im, _)| im).collect();
    predict_images(&model, &images, &args.inference.config(), args.batch_size, &device, |i, labels| {
        let (id, image, truth) = &items[i];
        let prediction = GrayImage::from_raw(image.width(), image.height(), labels).expect("full-size prediction");
        write_palette_png(&args.out.join(format!("{id}.png")), &prediction)?;
        if args.overlay {
            let panel = overlay_panel(image, &prediction, truth.as_ref());
            write_rgb_png(&args.out.join(format!("{id}_overlay.png")), &panel)?;
        }
        Ok(())
    })?;
    println!("wrote {} predictions to {}", items.len(), args.out.display());
    Ok(())
}

