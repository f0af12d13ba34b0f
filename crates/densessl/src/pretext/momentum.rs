//! Momentum ("EMA") updates of a key network from an online network of the same
//! architecture: θ_k ← m·θ_k + (1 − m)·θ_q, for parameters only — BN running statistics
//! of the key network stay its own, as in MoCo's `_momentum_update_key_encoder`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

const BUFFERS: [&str; 2] = ["running_mean", "running_var"];

struct Collect {
    path: Vec<String>,
    tensors: Vec<Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.path.last().is_some_and(|n| BUFFERS.contains(&n.as_str())) {
            let t = param.val();
            let n = t.shape().num_elements();
            self.tensors.push(t.detach().reshape([n]));
        }
    }
}

struct Blend {
    path: Vec<String>,
    online: std::vec::IntoIter<Tensor<1>>,
    momentum: f64,
}

impl ModuleMapper for Blend {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.path.last().is_some_and(|n| BUFFERS.contains(&n.as_str())) {
            return param;
        }
        let online = self.online.next().expect("key and online networks have the same parameters");
        let m = self.momentum;
        param.map(|key| {
            let shape = key.shape();
            assert_eq!(shape.num_elements(), online.shape().num_elements(), "parameter shapes differ");
            (key * m + online.reshape(shape) * (1.0 - m)).detach()
        })
    }
}

/// Returns `key` with θ_k ← m·θ_k + (1 − m)·θ_q applied to every parameter.
pub fn momentum_update<M: Module>(key: M, online: &M, momentum: f64) -> M {
    let mut collect = Collect { path: Vec::new(), tensors: Vec::new() };
    online.visit(&mut collect);
    let mut blend = Blend { path: Vec::new(), online: collect.tensors.into_iter(), momentum };
    key.map(&mut blend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
    use burn::tensor::Device;

    #[derive(Module, Debug)]
    struct Toy {
        linear: Linear,
        bn: BatchNorm,
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn update_is_exact_and_leaves_running_stats() {
        let device = Device::flex();
        let online = Toy { linear: LinearConfig::new(3, 2).init(&device), bn: BatchNormConfig::new(2).init(&device) };
        let key = Toy { linear: LinearConfig::new(3, 2).init(&device), bn: BatchNormConfig::new(2).init(&device) };
        let mut key = key;
        key.bn.running_mean = burn::module::RunningState::new(Tensor::from_floats([5.0, 6.0], &device));
        let (k0, q0) = (values(key.linear.weight.val()), values(online.linear.weight.val()));
        let updated = momentum_update(key, &online, 0.9);
        let k1 = values(updated.linear.weight.val());
        for i in 0..k0.len() {
            assert!((k1[i] - (0.9 * k0[i] + 0.1 * q0[i])).abs() < 1e-6);
        }
        let rm: Vec<f32> = updated.bn.running_mean.value().into_data().try_to_vec().unwrap();
        assert_eq!(rm, vec![5.0, 6.0]);
    }
}
