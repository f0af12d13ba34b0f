//! SGD settings and the burn optimiser they build.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

/// SGD with momentum and weight decay (`[optim]` in a config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Base learning rate (the schedule scales it).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay (L2, added to the gradient as in PyTorch's SGD).
    pub weight_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { lr: 0.03, momentum: 0.9, weight_decay: 1e-4 }
    }
}

impl OptimConfig {
    /// burn's SGD with these settings.
    pub fn sgd(&self) -> ModuleOptimizer {
        SgdConfig::new()
            .with_momentum(Some(MomentumConfig::new().with_momentum(self.momentum)))
            .with_weight_decay(Some(WeightDecayConfig::new(self.weight_decay as f32)))
            .init()
    }
}
