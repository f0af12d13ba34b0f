//! mmsegmentation's `NLHead` (Wang et al. 2018): an FCN head whose two 3×3 convs enclose an
//! embedded-Gaussian non-local block (reduction 2, scaled dot product, zero-initialised
//! output BN so the block starts as the identity), then `conv_cat`, dropout, classifier.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::Initializer;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use super::channel_dropout::ChannelDropout;
use super::conv_module::{ConvModule, classifier, conv};

/// A 1×1 conv with bias (mmcv ConvModule without norm and activation), `.conv` in mmseg.
#[derive(Module, Debug)]
pub struct Projection {
    /// The 1×1 convolution.
    pub conv: Conv2d,
}

/// mmcv's `NonLocal2d` in `embedded_gaussian` mode.
#[derive(Module, Debug)]
pub struct NonLocal2d {
    /// Value projection.
    pub g: Projection,
    /// Query projection.
    pub theta: Projection,
    /// Key projection.
    pub phi: Projection,
    /// Output projection with BN (γ starts at 0).
    pub conv_out: ConvModule,
    use_scale: bool,
}

impl NonLocal2d {
    /// A block on `channels` with `channels / reduction` inner channels.
    pub fn new(channels: usize, reduction: usize, use_scale: bool, device: &Device) -> Self {
        let inter = (channels / reduction.max(1)).max(1);
        let projection = |cin, cout| {
            let mut c = conv(cin, cout, 1, 1, 1, true, device);
            // mmcv: normal_init(std=0.01) for g, theta, phi.
            c.weight = Initializer::Normal { mean: 0.0, std: 0.01 }.init([cout, cin, 1, 1], device);
            Projection { conv: c }
        };
        let mut conv_out = ConvModule::new(inter, channels, 1, 1, 1, false, device);
        conv_out.bn.gamma = Initializer::Zeros.init([channels], device);
        Self { g: projection(channels, inter), theta: projection(channels, inter), phi: projection(channels, inter), conv_out, use_scale }
    }

    /// # Shapes
    /// `[B, C, h, w]` → `[B, C, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let flat = |t: Tensor<4>| {
            let c = t.dims()[1];
            t.reshape([b, c, h * w])
        };
        let g = flat(self.g.conv.forward(x.clone())).swap_dims(1, 2); // [B, hw, c']
        let theta = flat(self.theta.conv.forward(x.clone())).swap_dims(1, 2); // [B, hw, c']
        let phi = flat(self.phi.conv.forward(x.clone())); // [B, c', hw]
        let inter = phi.dims()[1];
        let mut pairwise = theta.matmul(phi); // [B, hw, hw]
        if self.use_scale {
            pairwise = pairwise / (inter as f32).sqrt();
        }
        let y = softmax(pairwise, 2).matmul(g); // [B, hw, c']
        let y = y.swap_dims(1, 2).reshape([b, inter, h, w]);
        x + self.conv_out.forward(y)
    }
}

/// The non-local head.
#[derive(Module, Debug)]
pub struct NonLocalHead {
    /// The two 3×3 convs around the non-local block.
    pub convs: Vec<ConvModule>,
    /// The non-local block.
    pub nl_block: NonLocal2d,
    /// Fuses input and output.
    pub conv_cat: ConvModule,
    dropout: ChannelDropout,
    /// The classifier.
    pub conv_seg: Conv2d,
}

impl NonLocalHead {
    /// mmseg defaults: reduction 2, scaled, concatenated input.
    pub fn new(in_channels: usize, channels: usize, reduction: usize, dropout: f64, num_classes: usize, device: &Device) -> Self {
        Self {
            convs: vec![
                ConvModule::new(in_channels, channels, 3, 1, 1, true, device),
                ConvModule::new(channels, channels, 3, 1, 1, true, device),
            ],
            nl_block: NonLocal2d::new(channels, reduction, true, device),
            conv_cat: ConvModule::new(in_channels + channels, channels, 3, 1, 1, true, device),
            dropout: ChannelDropout::new(dropout),
            conv_seg: classifier(channels, num_classes, device),
        }
    }

    /// Features before the classifier.
    ///
    /// # Shapes
    /// `[B, Cin, h, w]` → `[B, channels, h, w]`
    pub fn decode(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.convs[1].forward(self.nl_block.forward(self.convs[0].forward(x.clone())));
        self.conv_cat.forward(Tensor::cat(vec![x, out], 1))
    }

    /// # Shapes
    /// `[B, Cin, h, w]` → `[B, K, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_seg.forward(self.dropout.forward(self.decode(x)))
    }
}
