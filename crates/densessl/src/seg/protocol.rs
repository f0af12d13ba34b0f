//! Fine-tuning protocol presets. A preset is a TOML layer under the user's config file and
//! `--set` overrides; the run's `config.toml` records the preset's name and every value.

/// Preset names and their TOML.
pub const PROTOCOLS: [(&str, &str); 3] = [
    ("moco-fcn-513-30k", MOCO_FCN_513_30K),
    ("mmseg-512-20k", MMSEG_512_20K),
    ("mini", MINI),
];

/// MoCo's VOC protocol (He et al. 2020): R50 at output stride 16, MoCo-FCN head, 513 crops,
/// SGD lr 0.003, 30k iterations of batch 16, ×0.1 at 21k and 27k.
const MOCO_FCN_513_30K: &str = r#"
protocol = "moco-fcn-513-30k"
[encoder]
arch = "resnet50"
output_stride = 16
[head]
name = "moco-fcn"
channels = 256
dilation = 6
[optim]
lr = 0.003
momentum = 0.9
weight_decay = 1e-4
[schedule]
kind = "step"
milestones = [21000, 27000]
gamma = 0.1
[augment]
crop_size = 513
scale_range = [0.5, 2.0]
flip = true
[train]
steps = 30000
batch_size = 16
"#;

/// mmsegmentation's VOCaug 20k schedule (as in mmselfsup's benchmarks): output stride 8,
/// 512 crops from a 512 short side rescaled 0.5–2.0, cat_max_ratio 0.75, flip, photometric
/// distortion, SGD lr 0.01 wd 5e-4 poly 0.9 down to 1e-4, batch 16, auxiliary FCN head (0.4).
const MMSEG_512_20K: &str = r#"
protocol = "mmseg-512-20k"
[encoder]
arch = "resnet50"
output_stride = 8
[head]
name = "fcn"
aux_channels = 256
[optim]
lr = 0.01
momentum = 0.9
weight_decay = 5e-4
[schedule]
kind = "poly"
power = 0.9
min_ratio = 0.01
[augment]
crop_size = 512
base_size = 512
scale_range = [0.5, 2.0]
cat_max_ratio = 0.75
flip = true
photometric = true
[train]
steps = 20000
batch_size = 16
aux_weight = 0.4
"#;

/// FashionScenes on a laptop CPU: ResNet-18 of width 16 at output stride 8, 64 px crops
/// rescaled 0.75–1.5, flip, SGD lr 0.1 poly (from-scratch runs at lr 0.02–0.05 stayed at
/// all-background for 500+ steps), 500 iterations of batch 16; heads at 64 channels with
/// dilations fitted to an 8×8 C5.
const MINI: &str = r#"
protocol = "mini"
[data]
source = "fashion-scenes"
[encoder]
arch = "resnet18"
base_width = 16
output_stride = 8
[head]
channels = 64
dilation = 2
dilations = [1, 2, 3]
c1_channels = 16
[optim]
lr = 0.1
momentum = 0.9
weight_decay = 1e-4
[schedule]
kind = "poly"
power = 0.9
[augment]
crop_size = 64
scale_range = [0.75, 1.5]
flip = true
[train]
steps = 500
batch_size = 16
"#;

/// The preset's TOML, or an error listing the presets.
pub fn preset(name: &str) -> crate::Result<&'static str> {
    PROTOCOLS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).ok_or_else(|| {
        let names: Vec<&str> = PROTOCOLS.iter().map(|(n, _)| *n).collect();
        crate::Error::Invalid(format!("unknown protocol '{name}': choose one of {}", names.join(", ")))
    })
}
