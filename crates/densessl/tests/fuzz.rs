//! Fuzzing what users hand in: config files and `--set` overrides, label PNGs and encoder
//! checkpoints (densessl safetensors and PyTorch `.pth`). Valid inputs are mutated (bytes
//! overwritten, inserted, cut short) and random ones generated; every result must be a value
//! or an error, never a panic. CI runs a few dozen cases per target; set PROPTEST_CASES for a
//! longer session, e.g. `PROPTEST_CASES=5000 cargo test --release --test fuzz`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use densessl::models::segmenter::EncoderConfig;
use densessl::seg::finetune::FinetuneConfig;
use densessl::train::checkpoint::{self, CheckpointInfo};
use densessl::train::pretrain::PretrainConfig;
use proptest::prelude::*;
use proptest::sample::Index;

/// Byte edits: overwrite at positions, insert a run of bytes, cut the tail.
#[derive(Debug, Clone)]
struct Mutation {
    overwrite: Vec<(Index, u8)>,
    insert: Option<(Index, Vec<u8>)>,
    truncate: Option<Index>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..8),
        prop::option::of((any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))),
        prop::option::weighted(0.3, any::<Index>()),
    )
        .prop_map(|(overwrite, insert, truncate)| Mutation { overwrite, insert, truncate })
}

impl Mutation {
    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if out.is_empty() {
            return out;
        }
        for (at, value) in &self.overwrite {
            let i = at.index(out.len());
            out[i] = *value;
        }
        if let Some((at, run)) = &self.insert {
            let i = at.index(out.len());
            out.splice(i..i, run.iter().copied());
        }
        if let Some(at) = &self.truncate {
            out.truncate(at.index(out.len()));
        }
        out
    }
}

fn cases() -> ProptestConfig {
    ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48), failure_persistence: None, ..ProptestConfig::default() }
}

/// A directory for one property's files, under cargo's per-target scratch folder (it would
/// outlive the test in the system temp dir: the properties share it across cases).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo_file(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative)).unwrap()
}

proptest! {
    #![proptest_config(cases())]

    /// Mutated real configs and random text parse to a config or an error.
    #[test]
    fn config_text_never_panics(edit in mutation(), noise in ".{0,200}") {
        let pretrain = repo_file("configs/pretrain/densecl-mini.toml");
        let text = String::from_utf8_lossy(&edit.apply(pretrain.as_bytes())).into_owned();
        let _ = densessl::config::from_toml_str::<PretrainConfig>(&text, "fuzz.toml");
        let _ = densessl::config::from_toml_str::<FinetuneConfig>(&noise, "noise.toml");
        let finetune = repo_file("configs/finetune/moco-fcn-procedural.toml");
        let text = String::from_utf8_lossy(&edit.apply(finetune.as_bytes())).into_owned();
        let _ = densessl::config::from_toml_str::<FinetuneConfig>(&text, "fuzz.toml");
    }

    /// `--set` overrides of any shape are applied or refused.
    #[test]
    fn overrides_never_panic(key in "[a-z_.\\[\\]]{0,24}", value in ".{0,24}") {
        let mut table = toml::Table::new();
        let _ = densessl::config::apply_override(&mut table, &format!("{key}={value}"));
        let _ = densessl::config::apply_override(&mut table, &key);
    }

    /// Label PNGs: mutated palette PNGs and random bytes decode to a mask or an error.
    #[test]
    fn label_png_never_panics(edit in mutation(), noise in prop::collection::vec(any::<u8>(), 0..64)) {
        let dir = scratch("png");
        let good = dir.join("good.png");
        let mask = image::GrayImage::from_fn(12, 9, |x, y| image::Luma([((x + y) % 4) as u8]));
        densessl::data::labels::write_palette_png(&good, &mask).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let bad = dir.join(format!("bad-{}.png", bytes.len()));
        std::fs::write(&bad, edit.apply(&bytes)).unwrap();
        let _ = densessl::data::labels::read_label_png(&bad);
        let mut noisy = b"\x89PNG\r\n\x1a\n".to_vec();
        noisy.extend(noise);
        std::fs::write(&bad, noisy).unwrap();
        let _ = densessl::data::labels::read_label_png(&bad);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases().cases / 2, ..cases() })]

    /// Encoder checkpoints: a mutated densessl checkpoint loads or fails cleanly.
    #[test]
    fn densessl_checkpoint_never_panics(edit in mutation()) {
        let device = Device::flex();
        let dir = scratch("ckpt");
        let config = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let good = dir.join("good.safetensors");
        if !good.exists() {
            let encoder = config.resnet().unwrap().init(&device);
            checkpoint::save(&encoder, &CheckpointInfo::Encoder { encoder: config.clone() }, &good).unwrap();
        }
        let bad = dir.join("bad.safetensors");
        std::fs::write(&bad, edit.apply(&std::fs::read(&good).unwrap())).unwrap();
        let _ = checkpoint::read_info(&bad);
        let _ = densessl::weights::import::load_init(bad.to_str().unwrap(), "auto", &config, &device);
    }

    /// PyTorch checkpoints (a zip of pickles): mutated `.pth` files load or fail cleanly.
    #[test]
    fn pytorch_checkpoint_never_panics(edit in mutation()) {
        let device = Device::flex();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resnet18_w8.pth");
        let dir = scratch("pth");
        let bad = dir.join("bad.pth");
        std::fs::write(&bad, edit.apply(&std::fs::read(fixture).unwrap())).unwrap();
        let config = EncoderConfig { base_width: 8, ..EncoderConfig::default() };
        let _ = densessl::weights::import::load_init(bad.to_str().unwrap(), "auto", &config, &device);
    }
}
