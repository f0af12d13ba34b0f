//! A training step against PyTorch (`tools/fixtures/train_step.py`): a narrow ResNet-18 in
//! train mode (batch-statistics BN), its parameter gradients, the BN running statistics the
//! forward leaves, and the parameters after two SGD steps with momentum and weight decay.
//! If any of these drifted from PyTorch, models would train differently here than there.

mod common;

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use common::assert_relative_close;
use densessl::models::resnet::ResNet;
use densessl::models::segmenter::EncoderConfig;
use densessl::train::optim::OptimConfig;
use densessl::weights::import::{ImportOptions, load_encoder};

/// Gradients pass back through 20 convolutions and BNs in float32: summation order differs.
const TOLERANCE: f32 = 2e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

struct Expected(Vec<u8>);

impl Expected {
    fn get(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        common::fixture_f32(&self.0, name)
    }

    fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (v, shape) = self.get(name);
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

/// A parameter of either rank.
enum P {
    Conv(Tensor<4>),
    Norm(Tensor<1>),
}

impl P {
    fn values(&self) -> Vec<f32> {
        match self {
            P::Conv(t) => values(t.clone()),
            P::Norm(t) => values(t.clone()),
        }
    }

    fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Vec<f32>> {
        match self {
            P::Conv(t) => t.grad(grads).map(values),
            P::Norm(t) => t.grad(grads).map(values),
        }
    }
}

/// The checked parameters, by their PyTorch names.
fn params(net: &ResNet) -> Vec<(&'static str, P)> {
    vec![
        ("conv1.weight", P::Conv(net.conv1.weight.val())),
        ("bn1.weight", P::Norm(net.bn1.gamma.val())),
        ("bn1.bias", P::Norm(net.bn1.beta.val())),
        ("layer1.0.conv1.weight", P::Conv(net.layer1[0].conv1.weight.val())),
        ("layer2.0.downsample.0.weight", P::Conv(net.layer2[0].downsample.as_ref().unwrap().conv.weight.val())),
        ("layer3.1.bn2.weight", P::Norm(net.layer3[1].bn2.gamma.val())),
        ("layer4.1.conv2.weight", P::Conv(net.layer4[1].conv2.weight.val())),
        ("layer4.1.bn2.bias", P::Norm(net.layer4[1].bn2.beta.val())),
    ]
}

fn loss(net: &ResNet, x: Tensor<4>, weight: Tensor<4>) -> Tensor<1> {
    let c5 = net.forward(x).c5;
    let n = c5.dims().iter().product::<usize>() as f32;
    (c5 * weight).sum() / n
}

#[test]
fn resnet_training_step_matches_pytorch() {
    let expected = Expected(std::fs::read(fixture("train_step.safetensors")).expect("fixture present"));
    let device = Device::flex().autodiff();
    let config = EncoderConfig { arch: "resnet18".into(), base_width: 8, output_stride: 32, zero_init_residual: false };
    let (net, _) = load_encoder(&fixture("resnet18_w8.pth"), &config, &ImportOptions::default(), &device).unwrap();
    let x: Tensor<4> = expected.tensor("input", &device);
    let weight: Tensor<4> = expected.tensor("weight", &device);

    let first = loss(&net, x.clone(), weight.clone());
    let value = first.clone().into_scalar::<f32>();
    assert_relative_close(&[value], &expected.get("loss").0, 1e-4, "loss");
    let grads = first.backward();
    for (name, param) in params(&net) {
        let grad = param.grad(&grads).unwrap_or_else(|| panic!("{name} has a gradient"));
        assert_relative_close(&grad, &expected.get(&format!("grad.{name}")).0, TOLERANCE, &format!("grad.{name}"));
    }
    for (name, bn) in [("bn1", &net.bn1), ("layer4.1.bn2", &net.layer4[1].bn2)] {
        let mean = values(bn.running_mean.value_sync());
        let var = values(bn.running_var.value_sync());
        assert_relative_close(&mean, &expected.get(&format!("running_mean.{name}")).0, 1e-4, &format!("running_mean.{name}"));
        // burn updates running_var with the biased batch variance, PyTorch with the unbiased
        // one: they differ by momentum × var / (N − 1), N values per channel. At C5 here N is
        // 4 × 2 × 2 = 16, so about 5e-4 relative; at the stem (N = 1,600) it vanishes.
        assert_relative_close(&var, &expected.get(&format!("running_var.{name}")).0, 1e-3, &format!("running_var.{name}"));
    }

    // Two SGD steps on the same batch (the second sees the momentum buffer and weight decay).
    let optim_config = OptimConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, ..OptimConfig::default() };
    let mut optim = optim_config.sgd();
    let net = optim_config.step(&mut optim, 0.1, net, grads, |n: &ResNet| n);
    let grads = loss(&net, x, weight).backward();
    let net = optim_config.step(&mut optim, 0.1, net, grads, |n: &ResNet| n);
    for (name, param) in params(&net) {
        assert_relative_close(&param.values(), &expected.get(&format!("sgd2.{name}")).0, TOLERANCE, &format!("sgd2.{name}"));
    }
}
