//! Momentum ("EMA") updates of a key network from an online network of the same
//! architecture: θ_k ← m·θ_k + (1 − m)·θ_q, for parameters only — BN running statistics
//! of the key network stay its own, as in MoCo's `_momentum_update_key_encoder` — and the
//! key branch's substitute for shuffle-BN.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::kernels::batch_norm_groups::with_batch_norm_groups;
use crate::kernels::momentum_blend::momentum_blend;
use rand_chacha::ChaCha8Rng;

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

/// Puts the blended parameters back in visiting order.
struct Replace {
    path: Vec<String>,
    blended: std::vec::IntoIter<Tensor<1>>,
}

impl ModuleMapper for Replace {
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
        let blended = self.blended.next().expect("one blended tensor per parameter");
        param.map(|key| blended.reshape(key.shape()))
    }
}

/// The parameters (not BN buffers) of `module`, flattened and detached, in visiting order.
fn parameters<M: Module>(module: &M) -> Vec<Tensor<1>> {
    let mut collect = Collect { path: Vec::new(), tensors: Vec::new() };
    module.visit(&mut collect);
    collect.tensors
}

/// Returns `key` with θ_k ← m·θ_k + (1 − m)·θ_q applied to every parameter. The blends run
/// in parallel across parameters, each one pass on the CPU backend ([`momentum_blend`]).
pub fn momentum_update<M: Module>(key: M, online: &M, momentum: f64) -> M {
    let (keys, online) = (parameters(&key), parameters(online));
    assert_eq!(keys.len(), online.len(), "key and online networks have the same parameters");
    let blended: Vec<Tensor<1>> = keys
        .into_par_iter()
        .zip(online)
        .map(|(key, online)| {
            assert_eq!(key.dims(), online.dims(), "parameter shapes differ");
            momentum_blend(key, online, momentum)
        })
        .collect();
    key.map(&mut Replace { path: Vec::new(), blended: blended.into_iter() })
}

/// The manifest note of methods that use [`split_batch_forward`].
pub fn split_batch_note(groups: usize) -> serde_json::Value {
    serde_json::json!({
        "shuffle_bn": format!("split-batch substitute: key batch permuted, BN statistics per each of {groups} chunks (one forward pass), outputs un-permuted")
    })
}

/// What a key branch returns: one tensor or a tuple of tensors, each with the batch first.
pub trait KeyBatch: Sized {
    /// Rows `index` of the batch axis.
    fn select_rows(self, index: Tensor<1, Int>) -> Self;
    /// Without gradient.
    fn detach_all(self) -> Self;
}

impl<const D: usize> KeyBatch for Tensor<D> {
    fn select_rows(self, index: Tensor<1, Int>) -> Self {
        self.select(0, index)
    }
    fn detach_all(self) -> Self {
        self.detach()
    }
}

impl<A: KeyBatch, B: KeyBatch, C: KeyBatch> KeyBatch for (A, B, C) {
    fn select_rows(self, index: Tensor<1, Int>) -> Self {
        (self.0.select_rows(index.clone()), self.1.select_rows(index.clone()), self.2.select_rows(index))
    }
    fn detach_all(self) -> Self {
        (self.0.detach_all(), self.1.detach_all(), self.2.detach_all())
    }
}

/// Shuffle-BN's single-device substitute for a key branch: the batch is permuted, forwarded
/// with BN statistics per chunk of `⌈B / groups⌉` images (so a key's BN statistics come from
/// other images than its query's), and the outputs are put back in input order. Works for any
/// outputs with the batch first (global or dense keys, or several at once). The result
/// carries no gradient.
///
/// The chunks share one forward pass ([`with_batch_norm_groups`]): `forward`'s batch norms
/// must go through this crate's module functions, its other layers must treat images
/// independently. The result is then that of forwarding each chunk on its own.
///
/// # Shapes
/// `[B, 3, H, W]` → `[B, …]`
pub fn split_batch_forward<T: KeyBatch>(
    x: Tensor<4>,
    groups: usize,
    rng: &mut ChaCha8Rng,
    forward: impl Fn(Tensor<4>) -> T,
) -> T {
    let b = x.dims()[0];
    let groups = groups.min(b);
    if groups <= 1 {
        return forward(x).detach_all();
    }
    let (shuffled, inverse) = shuffle(x, rng);
    with_batch_norm_groups(b.div_ceil(groups), || forward(shuffled)).select_rows(inverse).detach_all()
}

/// `x` with its batch in a random order, and the index that puts it back.
fn shuffle(x: Tensor<4>, rng: &mut ChaCha8Rng) -> (Tensor<4>, Tensor<1, Int>) {
    let (b, device) = (x.dims()[0], x.device());
    let mut perm: Vec<i64> = (0..b as i64).collect();
    perm.shuffle(rng);
    let mut inverse = vec![0i64; b];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    let index = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [b]), &device);
    (x.select(0, index(perm)), index(inverse))
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

    #[test]
    fn split_batch_outputs_come_back_in_input_order() {
        use rand::SeedableRng;
        // A per-sample function (no BN): grouping cannot change an output, so any mismatch is
        // a permutation bug. Rank-4 outputs, as dense keys have.
        let device = Device::flex();
        let data: Vec<f32> = (0..7 * 3 * 2 * 2).map(|i| i as f32).collect();
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), [7, 3, 2, 2]), &device);
        let forward = |t: Tensor<4>| t * 2.0 + 1.0;
        let got: Vec<f32> =
            split_batch_forward(x.clone(), 3, &mut ChaCha8Rng::seed_from_u64(4), forward).into_data().try_to_vec().unwrap();
        let expected: Vec<f32> = data.iter().map(|v| v * 2.0 + 1.0).collect();
        assert_eq!(got, expected);
        // Several outputs at once (DenseCL's global keys, dense keys and backbone cells).
        let several = |t: Tensor<4>| (t.clone().sum_dim(1).reshape([t.dims()[0], 4]), forward(t.clone()), t);
        let (sums, doubled, same) = split_batch_forward(x.clone(), 2, &mut ChaCha8Rng::seed_from_u64(5), several);
        assert_eq!(doubled.into_data().try_to_vec::<f32>().unwrap(), expected);
        assert_eq!(same.into_data().try_to_vec::<f32>().unwrap(), data);
        let sums: Vec<f32> = sums.into_data().try_to_vec().unwrap();
        assert_eq!(sums[4], data[12] + data[16] + data[20]); // image 1, cell 0
    }
}
