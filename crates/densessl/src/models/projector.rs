//! Projection heads for contrastive pretext tasks.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

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
