//! A segmentation training step against PyTorch (`tools/fixtures/seg_step.py`): a ResNet-18
//! at output stride 8 (dilated layer3 and layer4) + MoCo-FCN head (dilation 2) + bilinear
//! up-sampling + cross-entropy over labelled pixels. Loss and gradients must agree, through
//! the dilated convolutions' backward passes, which `train_step.rs` does not reach.

mod common;

use std::path::PathBuf;

use burn::store::{KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use common::{assert_relative_close, fixture_f32};
use densessl::models::heads::{Head, HeadConfig};
use densessl::models::segmenter::{EncoderConfig, Segmenter};
use densessl::seg::loss::masked_cross_entropy;
use densessl::weights::import::{ImportOptions, load_encoder};
use safetensors::SafeTensors;

/// Gradients pass back through 20+ convolutions and BNs in float32: summation order differs.
const TOLERANCE: f32 = 2e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

fn read(bytes: &[u8], name: &str) -> (Vec<u8>, Vec<usize>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has {name}"));
    (t.data().to_vec(), t.shape().to_vec())
}

fn grad<const D: usize>(param: Tensor<D>, grads: &Gradients, name: &str) -> Vec<f32> {
    param.grad(grads).unwrap_or_else(|| panic!("{name} has a gradient")).into_data().try_to_vec().unwrap()
}

#[test]
fn dilated_segmentation_step_matches_pytorch() {
    let bytes = std::fs::read(fixture("seg_step.safetensors")).expect("fixture present");
    let device = Device::flex().autodiff();
    let encoder_config = EncoderConfig { arch: "resnet18".into(), base_width: 8, output_stride: 8, zero_init_residual: false };
    let head_config = HeadConfig { channels: Some(16), dilation: Some(2), dropout: 0.0, ..HeadConfig::default() };
    let mut model = Segmenter::new(&encoder_config, &head_config, 5, &device).unwrap();
    model.encoder = load_encoder(&fixture("resnet18_w8.pth"), &encoder_config, &ImportOptions::default(), &device).unwrap().0;
    let mut store = SafetensorsStore::from_bytes(Some(bytes.clone()))
        .remap(KeyRemapper::from_patterns(vec![(r"^head\.", "")]).unwrap())
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true)
        .allow_partial(true);
    let result = model.head.load_from(&mut store).unwrap();
    assert!(result.errors.is_empty() && result.missing.is_empty(), "{result}");
    assert_eq!(result.applied.len(), 12, "conv1, bn1 (4), conv2, bn2 (4), classifier (2): {result}");

    let (x, x_shape) = fixture_f32(&bytes, "input");
    let (raw_labels, label_shape) = read(&bytes, "labels");
    let labels: Vec<i64> = raw_labels.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    let x = Tensor::<4>::from_data(TensorData::new(x, x_shape), &device);
    let labels = Tensor::<3, Int>::from_data(TensorData::new(labels, label_shape), &device);
    let loss = masked_cross_entropy(model.forward(x), labels, 255);
    assert_relative_close(&[loss.clone().into_scalar::<f32>()], &fixture_f32(&bytes, "loss").0, 1e-5, "loss");
    let grads = loss.backward();

    let e = &model.encoder;
    let encoder_params: Vec<(&str, Vec<f32>)> = vec![
        ("conv1.weight", grad(e.conv1.weight.val(), &grads, "conv1")),
        ("layer3.0.conv1.weight", grad(e.layer3[0].conv1.weight.val(), &grads, "layer3.0.conv1")),
        ("layer3.1.conv1.weight", grad(e.layer3[1].conv1.weight.val(), &grads, "layer3.1.conv1")),
        ("layer4.0.conv1.weight", grad(e.layer4[0].conv1.weight.val(), &grads, "layer4.0.conv1")),
        ("layer4.0.downsample.0.weight", grad(e.layer4[0].downsample.as_ref().unwrap().conv.weight.val(), &grads, "ds")),
        ("layer4.1.conv2.weight", grad(e.layer4[1].conv2.weight.val(), &grads, "layer4.1.conv2")),
        ("layer4.1.bn2.weight", grad(e.layer4[1].bn2.gamma.val(), &grads, "layer4.1.bn2")),
    ];
    let Head::MocoFcn(h) = &model.head else { panic!("moco-fcn head") };
    let head_params: Vec<(&str, Vec<f32>)> = vec![
        ("head.conv1.weight", grad(h.conv1.weight.val(), &grads, "head.conv1")),
        ("head.bn1.weight", grad(h.bn1.gamma.val(), &grads, "head.bn1.weight")),
        ("head.bn1.bias", grad(h.bn1.beta.val(), &grads, "head.bn1.bias")),
        ("head.conv2.weight", grad(h.conv2.weight.val(), &grads, "head.conv2")),
        ("head.classifier.weight", grad(h.classifier.weight.val(), &grads, "classifier.weight")),
        ("head.classifier.bias", grad(h.classifier.bias.as_ref().unwrap().val(), &grads, "classifier.bias")),
    ];
    for (name, got) in encoder_params.into_iter().chain(head_params) {
        assert_relative_close(&got, &fixture_f32(&bytes, &format!("grad.{name}")).0, TOLERANCE, &format!("grad.{name}"));
    }
}
