//! `densessl import`, `densessl export` and `densessl features`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use densessl::device::DeviceSpec;
use densessl::models::features::{Layer, image_features};
use densessl::train::checkpoint::{self, CheckpointInfo};
use densessl::weights::export::export_torchvision;
use densessl::weights::import::{ImportOptions, encoder_config_for, load_encoder};

/// Which checkpoint and how to read it (shared by the three commands).
#[derive(Args, Debug)]
pub struct WeightsSource {
    /// Layout: auto, torchvision, moco, mmselfsup (DenseCL), byol (SimSiam), densessl.
    #[arg(long = "from", default_value = "auto")]
    format: String,
    /// Architecture: resnet18|34|50|101 (default for densessl checkpoints: their own).
    #[arg(long)]
    arch: Option<String>,
    /// Stem width (default: 64, or a densessl checkpoint's own).
    #[arg(long)]
    base_width: Option<usize>,
    /// Output stride 32, 16 or 8 (dilation in the last stages; no weights change).
    #[arg(long, default_value_t = 32)]
    output_stride: usize,
    /// Encoder keys (torchvision names, `*` wildcard) that may be missing; they keep their init.
    #[arg(long, value_name = "PATTERN")]
    allow_missing: Vec<String>,
}

impl WeightsSource {
    fn load(&self, path: &std::path::Path, device: &densessl::device::Device) -> Result<(densessl::models::resnet::ResNet, densessl::models::segmenter::EncoderConfig, densessl::weights::import::ImportReport)> {
        let config = encoder_config_for(path, self.arch.as_deref(), self.base_width, self.output_stride)?;
        let options = ImportOptions { format: self.format.parse()?, allow_missing: self.allow_missing.clone() };
        let (encoder, report) = load_encoder(path, &config, &options, device)?;
        Ok((encoder, config, report))
    }
}

/// `densessl import IN --arch resnet50 --out OUT.safetensors`
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A torchvision `.pth`, MoCo `.pth.tar`, mmselfsup/DenseCL, BYOL/SimSiam or safetensors file.
    input: PathBuf,
    #[command(flatten)]
    source: WeightsSource,
    /// Output: a densessl encoder checkpoint (safetensors), accepted by every --init.
    #[arg(long)]
    out: PathBuf,
}

pub fn import(args: ImportArgs) -> Result<()> {
    let device = DeviceSpec::parse("cpu")?.init_plain()?;
    let (encoder, config, report) = args.source.load(&args.input, &device)?;
    print!("{report}");
    checkpoint::save(&encoder, &CheckpointInfo::Encoder { encoder: config.clone() }, &args.out)?;
    println!("wrote {} ({} of width {})", args.out.display(), config.arch, config.base_width);
    Ok(())
}

/// `densessl export CKPT --format torchvision --out X.safetensors`
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Any importable checkpoint (usually a densessl `pretrain` or `finetune` output).
    checkpoint: PathBuf,
    /// Output format; `torchvision` writes torchvision's state_dict keys (without fc.*).
    #[arg(long = "format", default_value = "torchvision")]
    output_format: String,
    #[command(flatten)]
    source: WeightsSource,
    /// Output `.safetensors` file (written atomically).
    #[arg(long)]
    out: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    if args.output_format != "torchvision" {
        bail!("unknown export format '{}': only torchvision is supported", args.output_format);
    }
    if args.out.extension().is_none_or(|e| e != "safetensors") {
        bail!(
            "{}: export writes safetensors (burn cannot write .pth); name the file *.safetensors and, in \
             Python, torch.save(safetensors.torch.load_file(X), 'X.pth') if a .pth is needed",
            args.out.display()
        );
    }
    let device = DeviceSpec::parse("cpu")?.init_plain()?;
    let (encoder, config, report) = args.source.load(&args.checkpoint, &device)?;
    print!("{report}");
    let n = export_torchvision(&encoder, &args.out)?;
    println!(
        "wrote {} tensors in torchvision names to {}: torchvision.models.{}().load_state_dict(\
         safetensors.torch.load_file(...), strict=False) reports only fc.* missing",
        n,
        args.out.display(),
        config.arch
    );
    Ok(())
}

/// `densessl features --arch A --weights W --image IMG --out F.npy`
#[derive(Args, Debug)]
pub struct FeaturesArgs {
    /// Any importable checkpoint.
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    source: WeightsSource,
    /// Input image (jpg, png, webp).
    #[arg(long)]
    image: PathBuf,
    /// Side the image is resized to (bilinear, align_corners=False, no antialiasing).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Stage to write: c2, c3, c4 or c5.
    #[arg(long, default_value = "c5")]
    layer: String,
    /// Output `.npy` (float32, shape [1, C, H, W]).
    #[arg(long)]
    out: PathBuf,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn features(args: FeaturesArgs) -> Result<()> {
    let layer: Layer = args.layer.parse()?;
    let device = DeviceSpec::parse(&args.device)?.init_plain()?;
    let (encoder, _, report) = args.source.load(&args.weights, &device)?;
    eprint!("{report}");
    let image = densessl::data::image_folder::decode_rgb(&args.image)?;
    let (values, shape) = image_features(&encoder, &image, args.size, layer, &device);
    densessl::npy::write_npy_f32(&args.out, &values, &shape).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} {:?} float32 to {}", args.layer, shape, args.out.display());
    Ok(())
}
