//! Projection heads for contrastive pretext tasks: per image (`Mlp`) and per feature-map
//! cell (`ConvMlp`, 1×1 convolutions: DenseCL's and PixPro's dense projectors).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::kernels::batch_norm::batch_norm_module;
use crate::kernels::batch_norm_relu::batch_norm_relu_module;

/// MoCo v2's MLP projector: Linear → ReLU → Linear (no BN), as in facebookresearch/moco.
#[derive(Config, Debug)]
pub struct MlpProjectorConfig {
    /// Input features (the encoder's C5 channels).
    pub d_input: usize,
    /// Hidden width (MoCo v2: the same as the input).
    pub d_hidden: usize,
    /// Output dimension (128 in MoCo).
    #[config(default = 128)]
    pub d_output: usize,
}

/// The projector.
#[derive(Module, Debug)]
pub struct MlpProjector {
    fc1: Linear,
    fc2: Linear,
}

impl MlpProjectorConfig {
    /// Builds the projector.
    pub fn init(&self, device: &Device) -> MlpProjector {
        MlpProjector {
            fc1: LinearConfig::new(self.d_input, self.d_hidden).init(device),
            fc2: LinearConfig::new(self.d_hidden, self.d_output).init(device),
        }
    }
}

impl MlpProjector {
    /// # Shapes
    /// `[B, d_input]` → `[B, d_output]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

/// A general MLP head: `dims[0] → … → dims[n]`, each hidden layer Linear → BN → ReLU
/// (BN optional), the last Linear optionally followed by BN (SimSiam's projector).
/// SimCLR, BYOL and SimSiam projectors and predictors are instances.
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Layer widths, input first (at least two entries).
    pub dims: Vec<usize>,
    /// BatchNorm after each hidden Linear.
    #[config(default = true)]
    pub batch_norm: bool,
    /// BatchNorm after the last Linear.
    #[config(default = false)]
    pub last_batch_norm: bool,
}

/// The MLP.
#[derive(Module, Debug)]
pub struct Mlp {
    linears: Vec<Linear>,
    norms: Vec<BatchNorm>,
    last_norm: Option<BatchNorm>,
}

impl MlpConfig {
    /// Builds the MLP.
    pub fn init(&self, device: &Device) -> Mlp {
        assert!(self.dims.len() >= 2, "an MLP needs input and output widths");
        let n = self.dims.len() - 1;
        let linears = (0..n).map(|i| LinearConfig::new(self.dims[i], self.dims[i + 1]).init(device)).collect();
        let norms = if self.batch_norm {
            (1..n).map(|i| BatchNormConfig::new(self.dims[i]).init(device)).collect()
        } else {
            Vec::new()
        };
        let last_norm = self.last_batch_norm.then(|| BatchNormConfig::new(self.dims[n]).init(device));
        Mlp { linears, norms, last_norm }
    }
}

impl Mlp {
    /// # Shapes
    /// `[B, dims[0]]` → `[B, dims[n]]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let n = self.linears.len();
        let mut x = x;
        for (i, linear) in self.linears.iter().enumerate() {
            x = linear.forward(x);
            if i + 1 < n {
                x = match self.norms.get(i) {
                    Some(norm) => batch_norm_relu_module(norm, x, None),
                    None => relu(x),
                };
            }
        }
        match &self.last_norm {
            Some(norm) => batch_norm_module(norm, x),
            None => x,
        }
    }
}

/// A dense MLP: the same layers as [`MlpConfig`] applied to every cell of a feature map, as
/// 1×1 convolutions (hidden layers Conv → BN → ReLU, BN optional; the last Conv plain).
#[derive(Config, Debug)]
pub struct ConvMlpConfig {
    /// Channel widths, input first (at least two entries).
    pub dims: Vec<usize>,
    /// BatchNorm after each hidden convolution.
    #[config(default = false)]
    pub batch_norm: bool,
}

/// The dense MLP.
#[derive(Module, Debug)]
pub struct ConvMlp {
    convs: Vec<Conv2d>,
    norms: Vec<BatchNorm>,
}

impl ConvMlpConfig {
    /// Builds the dense MLP.
    pub fn init(&self, device: &Device) -> ConvMlp {
        assert!(self.dims.len() >= 2, "an MLP needs input and output widths");
        let n = self.dims.len() - 1;
        let convs = (0..n).map(|i| Conv2dConfig::new([self.dims[i], self.dims[i + 1]], [1, 1]).init(device)).collect();
        let norms =
            if self.batch_norm { (1..n).map(|i| BatchNormConfig::new(self.dims[i]).init(device)).collect() } else { Vec::new() };
        ConvMlp { convs, norms }
    }
}

impl ConvMlp {
    /// # Shapes
    /// `[B, dims[0], h, w]` → `[B, dims[n], h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let n = self.convs.len();
        let mut x = x;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.forward(x);
            if i + 1 < n {
                x = match self.norms.get(i) {
                    Some(norm) => batch_norm_relu_module(norm, x, None),
                    None => relu(x),
                };
            }
        }
        x
    }
}
