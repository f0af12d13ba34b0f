//! Segmentation heads against PyTorch re-implementations of mmsegmentation's heads with the
//! same tensor names (`tools/fixtures/heads.py`): weights load by name, logits agree.

mod common;

use burn::module::Module;
use burn::store::{KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};
use densessl::models::heads::HeadConfig;
use densessl::models::resnet::Features;
use common::assert_relative_close;
use safetensors::SafeTensors;

/// Relative to the largest logit.
const TOLERANCE: f32 = 1e-5;

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/heads.safetensors")).unwrap()
}

fn tensor(bytes: &[u8], name: &str, device: &Device) -> Tensor<4> {
    let (values, shape) = common::fixture_f32(bytes, name);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A store reading the fixture's `<prefix>.*` tensors under mmseg names.
fn store(bytes: &[u8], prefix: &str) -> SafetensorsStore {
    let remapper = KeyRemapper::from_patterns(vec![
        (format!("^{prefix}\\."), String::new()),
        // nn.Sequential(AdaptiveAvgPool2d, ConvModule): the ConvModule is index 1.
        (r"^psp_modules\.(\d+)\.1\.".to_string(), "psp_modules.$1.conv.".to_string()),
        (r"^image_pool\.1\.".to_string(), "image_pool.".to_string()),
    ])
    .unwrap();
    SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .remap(remapper)
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true)
        .allow_partial(true)
}

fn expected_keys(bytes: &[u8], prefix: &str) -> usize {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.names().iter().filter(|n| n.starts_with(&format!("{prefix}.")) && !n.ends_with(".logits")).count()
}

fn assert_close(got: Tensor<4>, expected: Tensor<4>, what: &str) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let (got, expected): (Vec<f32>, Vec<f32>) =
        (got.into_data().try_to_vec().unwrap(), expected.into_data().try_to_vec().unwrap());
    assert_relative_close(&got, &expected, TOLERANCE, what);
}

#[test]
fn heads_load_mmseg_names_and_match_pytorch() {
    let device = Device::flex();
    let bytes = fixture();
    let features = Features {
        c2: tensor(&bytes, "features.c2", &device),
        c3: Tensor::zeros([2, 16, 8, 8], &device),
        c4: tensor(&bytes, "features.c4", &device),
        c5: tensor(&bytes, "features.c5", &device),
    };
    let base = HeadConfig { channels: Some(16), ..HeadConfig::default() };
    let cases = [
        ("fcn", HeadConfig { name: "fcn".into(), ..base.clone() }),
        (
            "fcn_d2_noconcat",
            HeadConfig { name: "fcn".into(), num_convs: 1, concat_input: false, dilation: Some(2), ..base.clone() },
        ),
        ("pspnet", HeadConfig { name: "pspnet".into(), ..base.clone() }),
        ("deeplabv3plus", HeadConfig { name: "deeplabv3plus".into(), dilations: vec![1, 2, 3], c1_channels: 4, ..base.clone() }),
        ("nonlocal", HeadConfig { name: "nonlocal".into(), ..base.clone() }),
    ];
    for (prefix, config) in cases {
        let mut head = config.init([8, 16, 32, 64], 5, &device).unwrap();
        let result = head.load_from(&mut store(&bytes, prefix)).unwrap();
        assert!(result.errors.is_empty() && result.missing.is_empty(), "{prefix}: {result}");
        assert_eq!(result.applied.len(), expected_keys(&bytes, prefix), "{prefix}: every fixture tensor is used");
        assert_close(head.valid().forward(&features), tensor(&bytes, &format!("{prefix}.logits"), &device), prefix);
    }
    // The auxiliary FCN head on C4.
    let config = HeadConfig { aux_channels: 8, ..base };
    let mut aux = config.init_aux([8, 16, 32, 64], 5, &device).unwrap();
    let result = aux.load_from(&mut store(&bytes, "aux")).unwrap();
    assert!(result.errors.is_empty() && result.missing.is_empty(), "aux: {result}");
    assert_close(aux.valid().forward(features.c4.clone()), tensor(&bytes, "aux.logits", &device), "aux");
}
