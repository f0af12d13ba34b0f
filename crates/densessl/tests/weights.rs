//! Import, export and forward parity with PyTorch on narrow torchvision-layout ResNets written
//! by `tools/fixtures/resnet_weights.py`.

mod common;

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use densessl::models::segmenter::EncoderConfig;
use densessl::weights::export::export_torchvision;
use densessl::weights::import::{ImportOptions, SourceFormat, load_encoder};
use common::{assert_relative_close, fixture_f32};
use safetensors::SafeTensors;

/// Features go through ~20 convolutions with BN; float32 summation order differs from PyTorch.
const RELATIVE_TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

fn features() -> (Vec<u8>, Device) {
    (std::fs::read(fixture("resnet_features.safetensors")).unwrap(), Device::flex())
}

fn encoder(arch: &str, base_width: usize, output_stride: usize) -> EncoderConfig {
    EncoderConfig { arch: arch.into(), base_width, output_stride, zero_init_residual: false }
}

fn check_features(net: &densessl::models::resnet::ResNet, fixture_prefix: &str) {
    let (bytes, device) = features();
    let (input, shape) = fixture_f32(&bytes, "input");
    let x = Tensor::<4>::from_data(TensorData::new(input, shape), &device);
    let f = net.valid().forward(x);
    for (name, got) in [("c2", f.c2), ("c3", f.c3), ("c4", f.c4), ("c5", f.c5)] {
        let (expected, shape) = fixture_f32(&bytes, &format!("{fixture_prefix}.{name}"));
        assert_eq!(got.dims().to_vec(), shape, "{fixture_prefix}.{name} shape");
        let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
        assert_relative_close(&got, &expected, RELATIVE_TOLERANCE, &format!("{fixture_prefix}.{name}"));
    }
}

#[test]
fn torchvision_state_dict_imports_and_matches_pytorch_features() {
    let device = Device::flex();
    let (net, report) =
        load_encoder(&fixture("resnet18_w8.pth"), &encoder("resnet18", 8, 32), &ImportOptions::default(), &device)
            .unwrap();
    assert_eq!(report.format, SourceFormat::Torchvision);
    assert_eq!(report.prefix, "");
    // 20 convs + 20 BNs × 4 tensors (weight, bias, running mean, running var).
    assert_eq!(report.mapped, 20 + 20 * 4);
    assert_eq!(report.dropped.get("fc.*"), Some(&2), "{report}");
    assert_eq!(report.dropped.get("*.num_batches_tracked"), Some(&20), "{report}");
    check_features(&net, "resnet18_w8");
}

#[test]
fn moco_checkpoint_imports_at_output_stride_8_and_drops_the_key_encoder() {
    let device = Device::flex();
    let path = fixture("resnet50_w4_os8.pth.tar");
    let (net, report) = load_encoder(&path, &encoder("resnet50", 4, 8), &ImportOptions::default(), &device).unwrap();
    assert_eq!(report.format, SourceFormat::Moco);
    assert_eq!(report.prefix, "state_dict.module.encoder_q.");
    assert_eq!(report.mapped, 265);
    assert_eq!(report.dropped.get("state_dict.module.encoder_k.*"), Some(&3), "{report}");
    assert_eq!(report.dropped.get("state_dict.module.queue"), Some(&1), "{report}");
    assert_eq!(report.dropped.get("state_dict.module.encoder_q.fc.*"), Some(&2), "{report}");
    check_features(&net, "resnet50_w4_os8");
    // Restricting the format to one whose prefixes are absent fails and says what is there.
    let opts = ImportOptions { format: SourceFormat::Mmselfsup, ..ImportOptions::default() };
    let e = load_encoder(&path, &encoder("resnet50", 4, 8), &opts, &device).unwrap_err().to_string();
    assert!(e.contains("no tensor matches") && e.contains("state_dict."), "{e}");
}

#[test]
fn wrong_architecture_is_an_error_that_lists_keys() {
    let device = Device::flex();
    let path = fixture("resnet18_w8.pth");
    let e = load_encoder(&path, &encoder("resnet34", 8, 32), &ImportOptions::default(), &device).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("80 encoder tensor(s) missing") && e.contains("layer1.2.bn1.bias"), "{e}");
    let e = load_encoder(&path, &encoder("resnet18", 16, 32), &ImportOptions::default(), &device).unwrap_err().to_string();
    assert!(e.contains("do not fit"), "{e}");
    let e = load_encoder(&fixture("resnet50_w4_os8.pth.tar"), &encoder("resnet18", 4, 32), &ImportOptions::default(), &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected") && e.contains("conv3"), "{e}");
}

#[test]
fn export_uses_torchvision_names_and_round_trips() {
    let device = Device::flex();
    let config = encoder("resnet50", 4, 8);
    let (net, _) = load_encoder(&fixture("resnet50_w4_os8.pth.tar"), &config, &ImportOptions::default(), &device).unwrap();
    let dir = std::env::temp_dir().join(format!("densessl-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("r50.safetensors");
    assert_eq!(export_torchvision(&net, &out).unwrap(), 265 + 53);
    // Exactly torchvision's state_dict keys without fc.*, as the PyTorch fixture saved them.
    let bytes = std::fs::read(&out).unwrap();
    let exported = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = exported.names().into_iter().map(String::from).collect();
    names.sort();
    let source = burn::store::PytorchStore::from_file(fixture("resnet50_w4_os8.pth.tar"));
    let mut source = source;
    let mut expected: Vec<String> = burn::store::ModuleStore::keys(&mut source)
        .unwrap()
        .into_iter()
        .filter_map(|k| k.strip_prefix("state_dict.module.encoder_q.").map(String::from))
        .filter(|k| !k.starts_with("fc."))
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    // The exported file imports back (as a foreign torchvision file) to the same features.
    let (back, report) = load_encoder(&out, &config, &ImportOptions::default(), &device).unwrap();
    assert_eq!(report.format, SourceFormat::Torchvision);
    check_features(&back, "resnet50_w4_os8");
    // Missing tensors are an error unless allowed by pattern, and then reported.
    let partial = dir.join("partial.safetensors");
    let keep: Vec<(String, safetensors::tensor::TensorView<'_>)> = exported
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("layer4."))
        .collect();
    std::fs::write(&partial, safetensors::serialize(keep, None).unwrap()).unwrap();
    let e = load_encoder(&partial, &config, &ImportOptions::default(), &device).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("50 encoder tensor(s)") && e.contains("layer4.0.bn1.bias") && e.contains("--allow-missing"), "{e}");
    let opts = ImportOptions { allow_missing: vec!["layer4.*".into()], ..ImportOptions::default() };
    let (_, report) = load_encoder(&partial, &config, &opts, &device).unwrap();
    assert_eq!(report.allowed_missing.len(), 3 * (3 + 3 * 4) + 1 + 4);
    std::fs::remove_dir_all(&dir).unwrap();
}
