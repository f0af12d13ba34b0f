//! SGD settings, the burn optimiser they build, and the step that applies an encoder LR
//! multiplier (parameter groups by sub-module).

use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Gradients, Tensor};
use rayon::prelude::*;
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
    /// The encoder's LR is `lr × encoder_lr_mult` (e.g. 0.01 to continue from a checkpoint
    /// gently); heads, decoders and projections use `lr`.
    pub encoder_lr_mult: f64,
    /// No weight decay on BatchNorm γ/β and on biases.
    pub no_decay_norm_bias: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { lr: 0.03, momentum: 0.9, weight_decay: 1e-4, encoder_lr_mult: 1.0, no_decay_norm_bias: false }
    }
}

/// Parameters exempt from weight decay under `no_decay_norm_bias`: biases and BN γ/β.
fn norm_and_bias() -> ParamGroup {
    ParamGroup::from_regex(r"(^|\.)(bias|gamma|beta)$").expect("fixed pattern compiles")
}

impl OptimConfig {
    fn sgd_config(&self, weight_decay: f64) -> SgdConfig {
        SgdConfig::new()
            // PyTorch SGD: no dampening (burn defaults to 0.1, a 10 % smaller steady-state step).
            .with_momentum(Some(MomentumConfig::new().with_momentum(self.momentum).with_dampening(0.0)))
            .with_weight_decay((weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)))
    }

    /// burn's SGD with these settings (a second group without decay if `no_decay_norm_bias`).
    pub fn sgd(&self) -> ModuleOptimizer {
        let optim = self.sgd_config(self.weight_decay).init();
        if self.no_decay_norm_bias {
            optim.with_group(norm_and_bias(), self.sgd_config(0.0).build(), None)
        } else {
            optim
        }
    }

    /// One SGD step where the parameters of `encoder(model)` move at `lr × encoder_lr_mult`
    /// and the rest at `lr`.
    pub fn step<M: Module, E: Module>(
        &self,
        optim: &mut ModuleOptimizer,
        lr: f64,
        model: M,
        mut grads: Gradients,
        encoder: impl Fn(&M) -> &E,
    ) -> M {
        if self.encoder_lr_mult == 1.0 {
            let grads = GradientsParams::from_grads(grads, &model);
            return optim.step(lr, model, grads);
        }
        let encoder_grads = GradientsParams::from_module(&mut grads, encoder(&model));
        let other_grads = GradientsParams::from_grads(grads, &model);
        let model = optim.step(lr * self.encoder_lr_mult, model, encoder_grads);
        optim.step(lr, model, other_grads)
    }
}

/// Whether every gradient `model`'s parameters received is finite: one reduction per
/// parameter, one read-back in all.
pub fn gradients_are_finite<M: Module>(model: &M, grads: &Gradients) -> bool {
    struct Collect<'a> {
        grads: &'a Gradients,
        flat: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = param.val().grad(self.grads) {
                let n = grad.shape().num_elements();
                self.flat.push(grad.reshape([n]));
            }
        }
    }
    let mut visitor = Collect { grads, flat: Vec::new() };
    model.visit(&mut visitor);
    if visitor.flat.is_empty() {
        return true;
    }
    // One sum per parameter, the parameters spread over the threads: each sum is a serial
    // pass on the CPU backend, and a ResNet has 11–25 M gradient values.
    let sums: Vec<Tensor<1>> = visitor.flat.into_par_iter().map(|g| g.sum()).collect();
    // NaN and ±inf survive a sum (inf − inf is NaN), so one scalar tells.
    Tensor::cat(sums, 0).sum().into_scalar::<f32>().is_finite()
}

/// The loss's value and, when it and every gradient of `model` are finite, the gradients.
/// `(NaN, None)` when a gradient is not finite, `(value, None)` when the loss itself is not:
/// the caller skips the update either way.
pub fn finite_backward<M: Module>(model: &M, loss: Tensor<1>) -> (f64, Option<Gradients>) {
    let value = loss.clone().into_scalar::<f32>() as f64;
    if !value.is_finite() {
        return (value, None);
    }
    let grads = loss.backward();
    if gradients_are_finite(model, &grads) { (value, Some(grads)) } else { (f64::NAN, None) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
    use burn::tensor::{Device, Tensor};

    #[derive(Module, Debug)]
    struct Toy {
        encoder: Linear,
        norm: BatchNorm,
        head: Linear,
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn non_finite_gradients_are_detected() {
        let device = Device::flex().autodiff();
        let toy = Toy {
            encoder: LinearConfig::new(3, 3).init(&device),
            norm: BatchNormConfig::new(3).init(&device),
            head: LinearConfig::new(3, 3).init(&device),
        };
        let forward = |x: Tensor<2>| toy.head.forward(toy.encoder.forward(x)).sum();
        let fine = forward(Tensor::<2>::ones([2, 3], &device)).backward();
        assert!(gradients_are_finite(&toy, &fine));
        let x = Tensor::<2>::from_floats([[1.0, f32::NAN, 0.0], [0.0, 1.0, 2.0]], &device);
        assert!(!gradients_are_finite(&toy, &forward(x).backward()), "a NaN input poisons the head's gradient");
        let x = Tensor::<2>::from_floats([[1.0, f32::INFINITY, 0.0], [0.0, 1.0, 2.0]], &device);
        assert!(!gradients_are_finite(&toy, &forward(x).backward()), "so does an infinite one");
    }

    #[test]
    fn encoder_multiplier_and_no_decay_groups() {
        let device = Device::flex().autodiff();
        let toy = Toy {
            encoder: LinearConfig::new(3, 3).init(&device),
            norm: BatchNormConfig::new(3).init(&device),
            head: LinearConfig::new(3, 3).init(&device),
        };
        let (e0, h0) = (values(toy.encoder.weight.val()), values(toy.head.weight.val()));
        let bias0 = values(toy.head.bias.as_ref().unwrap().val());
        // A loss through encoder and head (not BN): equal raw gradients are not needed, only
        // that each group moves by its own LR.
        let x = Tensor::<2>::ones([2, 3], &device);
        let loss = toy.head.forward(toy.encoder.forward(x)).sum();
        let config = OptimConfig { lr: 0.1, momentum: 0.0, weight_decay: 0.5, encoder_lr_mult: 0.0, no_decay_norm_bias: true };
        let mut optim = config.sgd();
        let toy = config.step(&mut optim, 0.1, toy, loss.backward(), |t: &Toy| &t.encoder);
        assert_eq!(values(toy.encoder.weight.val()), e0, "encoder LR × 0 leaves the encoder alone");
        assert_ne!(values(toy.head.weight.val()), h0, "the head moves");
        // γ has no gradient here; with decay it would shrink, without it stays.
        // The head weight decays: w ← w − lr·(g + wd·w), with g[i][j] = Σ_batch h[i] = 2·h[i].
        let be = values(toy.encoder.bias.as_ref().unwrap().val());
        let h: Vec<f32> = (0..3).map(|i| (0..3).map(|k| e0[k * 3 + i]).sum::<f32>() + be[i]).collect();
        let w1 = values(toy.head.weight.val());
        for i in 0..3 {
            for j in 0..3 {
                let expected = h0[i * 3 + j] - 0.1 * (2.0 * h[i] + 0.5 * h0[i * 3 + j]);
                assert!((w1[i * 3 + j] - expected).abs() < 1e-5, "weight decays");
            }
        }
        // The head bias gets gradient 2 per output (batch of 2, sum loss), without decay.
        let bias: Vec<f32> = values(toy.head.bias.as_ref().unwrap().val());
        for (b, b0) in bias.iter().zip(&bias0) {
            assert!((b - (b0 - 0.1 * 2.0)).abs() < 1e-6, "bias {b} from {b0}");
        }
    }
}
