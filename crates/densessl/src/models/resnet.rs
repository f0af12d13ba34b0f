//! ResNet-18/34/50/101 in torchvision's layout (He et al. 2016), returning C2..C5.
//!
//! Parameter paths match torchvision's state_dict keys one-to-one except
//! `downsample.{0,1}` ↔ `downsample.{conv,bn}`, which import/export remap.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::kernels::conv2d_module;
use crate::kernels::batch_norm::batch_norm_module;
use crate::kernels::batch_norm_relu::batch_norm_relu_module;
use crate::kernels::max_pool::max_pool2d_module;

/// Configuration of a ResNet encoder.
#[derive(Config, Debug, PartialEq)]
pub struct ResNetConfig {
    /// 18, 34, 50 or 101.
    #[config(default = 18)]
    pub depth: usize,
    /// Channels of the stem and of layer1's 3×3 convs (64 in torchvision; smaller = narrow).
    #[config(default = 64)]
    pub base_width: usize,
    /// 32 (plain), 16 (layer4 dilated) or 8 (layers 3 and 4 dilated).
    #[config(default = 32)]
    pub output_stride: usize,
    /// Zero-init the last BN γ of each block (Goyal et al. 2017).
    #[config(default = false)]
    pub zero_init_residual: bool,
}

/// The encoder's four feature maps.
#[derive(Debug, Clone)]
pub struct Features {
    /// layer1 output, stride 4. `[B, C2, H/4, W/4]`
    pub c2: Tensor<4>,
    /// layer2 output, stride 8.
    pub c3: Tensor<4>,
    /// layer3 output, stride 16 (8 if dilated).
    pub c4: Tensor<4>,
    /// layer4 output, stride 32 (16 or 8 if dilated).
    pub c5: Tensor<4>,
}

/// ResNet encoder (no classifier).
#[derive(Module, Debug)]
pub struct ResNet {
    /// 7×7 stride-2 stem convolution.
    pub conv1: Conv2d,
    /// Stem batch norm.
    pub bn1: BatchNorm,
    /// 3×3 stride-2 max-pool.
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 4).
    pub layer1: Vec<Block>,
    /// Stage 2 (stride 8).
    pub layer2: Vec<Block>,
    /// Stage 3 (stride 16).
    pub layer3: Vec<Block>,
    /// Stage 4 (stride 32).
    pub layer4: Vec<Block>,
}

/// A residual block: basic (two 3×3) when `conv3` is absent, bottleneck (1×1, 3×3, 1×1) otherwise.
#[derive(Module, Debug)]
pub struct Block {
    /// First conv (3×3 basic, 1×1 bottleneck).
    pub conv1: Conv2d,
    /// BN after conv1.
    pub bn1: BatchNorm,
    /// Second conv (3×3, carries stride and dilation in a bottleneck).
    pub conv2: Conv2d,
    /// BN after conv2.
    pub bn2: BatchNorm,
    /// Bottleneck's 1×1 expansion.
    pub conv3: Option<Conv2d>,
    /// BN after conv3.
    pub bn3: Option<BatchNorm>,
    /// Projection shortcut when shape changes.
    pub downsample: Option<Downsample>,
}

/// 1×1 conv + BN shortcut.
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1×1 strided conv.
    pub conv: Conv2d,
    /// Its BN.
    pub bn: BatchNorm,
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, dilation: usize, device: &Device) -> Conv2d {
    let pad = dilation * (k - 1) / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_dilation([dilation, dilation])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
        .with_initializer(Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true })
        .init(device)
}

fn bn(channels: usize, zero: bool, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(channels).init(device);
    if zero {
        bn.gamma = bn.gamma.map(|g| g.zeros_like());
    }
    bn
}

impl ResNetConfig {
    /// Whether this is a bottleneck architecture (50, 101).
    pub fn bottleneck(&self) -> bool {
        self.depth >= 50
    }

    fn blocks_per_stage(&self) -> Result<[usize; 4], String> {
        match self.depth {
            18 => Ok([2, 2, 2, 2]),
            34 | 50 => Ok([3, 4, 6, 3]),
            101 => Ok([3, 4, 23, 3]),
            d => Err(format!("ResNet depth must be 18, 34, 50 or 101, got {d}")),
        }
    }

    /// Checks the configuration with a sentence a user can act on.
    pub fn check(&self) -> Result<(), String> {
        self.blocks_per_stage()?;
        if ![8, 16, 32].contains(&self.output_stride) {
            return Err(format!("output_stride must be 8, 16 or 32, got {}", self.output_stride));
        }
        if self.base_width == 0 {
            return Err("base_width must be positive".into());
        }
        Ok(())
    }

    /// Output channels of C2..C5.
    pub fn channels(&self) -> [usize; 4] {
        let e = if self.bottleneck() { 4 } else { 1 };
        let w = self.base_width;
        [w * e, 2 * w * e, 4 * w * e, 8 * w * e]
    }

    /// Builds the encoder. Panics with the reason if [`check`](Self::check) fails.
    pub fn init(&self, device: &Device) -> ResNet {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
        let blocks = self.blocks_per_stage().expect("checked");
        let w = self.base_width;
        let expansion = if self.bottleneck() { 4 } else { 1 };
        // Which stages trade stride for dilation (torchvision's replace_stride_with_dilation).
        let dilate = match self.output_stride {
            32 => [false, false, false],
            16 => [false, false, true],
            _ => [false, true, true],
        };
        let mut inplanes = w;
        let mut dilation = 1;
        let mut stages = Vec::new();
        for (stage, &count) in blocks.iter().enumerate() {
            let planes = w << stage;
            let mut stride = if stage == 0 { 1 } else { 2 };
            let previous_dilation = dilation;
            if stage > 0 && dilate[stage - 1] {
                dilation *= stride;
                stride = 1;
            }
            let mut layer = Vec::with_capacity(count);
            for i in 0..count {
                let (s, d) = if i == 0 { (stride, previous_dilation) } else { (1, dilation) };
                let downsample = (i == 0 && (stride != 1 || inplanes != planes * expansion)).then(|| {
                    Downsample {
                        conv: conv(inplanes, planes * expansion, 1, stride, 1, device),
                        bn: bn(planes * expansion, false, device),
                    }
                });
                let zero = self.zero_init_residual;
                let block = if self.bottleneck() {
                    Block {
                        conv1: conv(inplanes, planes, 1, 1, 1, device),
                        bn1: bn(planes, false, device),
                        conv2: conv(planes, planes, 3, s, d, device),
                        bn2: bn(planes, false, device),
                        conv3: Some(conv(planes, planes * 4, 1, 1, 1, device)),
                        bn3: Some(bn(planes * 4, zero, device)),
                        downsample,
                    }
                } else {
                    Block {
                        conv1: conv(inplanes, planes, 3, s, d, device),
                        bn1: bn(planes, false, device),
                        conv2: conv(planes, planes, 3, 1, d, device),
                        bn2: bn(planes, zero, device),
                        conv3: None,
                        bn3: None,
                        downsample,
                    }
                };
                layer.push(block);
                inplanes = planes * expansion;
            }
            stages.push(layer);
        }
        let mut stages = stages.into_iter();
        ResNet {
            conv1: Conv2dConfig::new([3, w], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .with_initializer(Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true })
                .init(device),
            bn1: bn(w, false, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: stages.next().expect("4 stages"),
            layer2: stages.next().expect("4 stages"),
            layer3: stages.next().expect("4 stages"),
            layer4: stages.next().expect("4 stages"),
        }
    }
}

impl Block {
    /// # Shapes
    /// `[B, Cin, H, W]` → `[B, Cout, H/s, W/s]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => batch_norm_module(&d.bn, conv2d_module(&d.conv, x.clone())),
            None => x.clone(),
        };
        let out = batch_norm_relu_module(&self.bn1, conv2d_module(&self.conv1, x), None);
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = batch_norm_relu_module(&self.bn2, conv2d_module(&self.conv2, out), None);
                batch_norm_relu_module(bn3, conv2d_module(conv3, out), Some(identity))
            }
            _ => batch_norm_relu_module(&self.bn2, conv2d_module(&self.conv2, out), Some(identity)),
        }
    }
}

fn run(layer: &[Block], x: Tensor<4>) -> Tensor<4> {
    layer.iter().fold(x, |x, block| block.forward(x))
}

impl ResNet {
    /// # Shapes
    /// `[B, 3, H, W]` → C2 `[B, C2, H/4, W/4]` … C5 `[B, C5, H/os, W/os]`
    pub fn forward(&self, x: Tensor<4>) -> Features {
        let x = batch_norm_relu_module(&self.bn1, conv2d_module(&self.conv1, x), None);
        let x = max_pool2d_module(&self.maxpool, x);
        let c2 = run(&self.layer1, x);
        let c3 = run(&self.layer2, c2.clone());
        let c4 = run(&self.layer3, c3.clone());
        let c5 = run(&self.layer4, c4.clone());
        Features { c2, c3, c4, c5 }
    }

    /// Global average pool of C5.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, C5]`
    pub fn forward_pooled(&self, x: Tensor<4>) -> Tensor<2> {
        let c5 = self.forward(x).c5;
        let [b, c, _, _] = c5.dims();
        c5.mean_dims(&[2, 3]).reshape([b, c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_output_stride_and_depth() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 3, 64, 64], &device);
        for (os, c5) in [(32, 2), (16, 4), (8, 8)] {
            let net = ResNetConfig::new().with_base_width(8).with_output_stride(os).init(&device);
            let f = net.forward(x.clone());
            assert_eq!(f.c2.dims(), [1, 8, 16, 16]);
            assert_eq!(f.c3.dims(), [1, 16, 8, 8]);
            assert_eq!(f.c5.dims(), [1, 64, c5, c5]);
        }
        let net = ResNetConfig::new().with_depth(50).with_base_width(8).init(&device);
        assert_eq!(net.forward(x).c5.dims(), [1, 256, 2, 2]);
        assert_eq!(ResNetConfig::new().with_depth(50).channels(), [256, 512, 1024, 2048]);
    }

    #[test]
    fn resnet18_has_torchvisions_parameter_count() {
        // torchvision resnet18 has 11,689,512 parameters, of which the fc layer holds 513,000.
        // burn also counts BN running stats (2 per BN channel: 9,600 total).
        let net = ResNetConfig::new().init(&Device::flex());
        let bn_channels = 64 + 64 * 4 + (128 * 4 + 128) + (256 * 4 + 256) + (512 * 4 + 512);
        assert_eq!(net.num_params(), 11_689_512 - 513_000 + 2 * bn_channels);
    }

    #[test]
    fn bad_depth_is_explained() {
        let e = ResNetConfig::new().with_depth(20).check().unwrap_err();
        assert!(e.contains("18, 34, 50 or 101"));
    }
}
