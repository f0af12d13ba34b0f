//! Every committed config and protocol preset parses strictly, and every pre-training
//! config's `[method]` table builds its method (so a mistyped key cannot hide in a file
//! that no test runs).

use std::path::PathBuf;

use burn::tensor::Device;
use densessl::models::segmenter::EncoderConfig;
use densessl::pretext::{self, BuildContext};
use densessl::seg::finetune::FinetuneConfig;
use densessl::seg::protocol::PROTOCOLS;
use densessl::train::pretrain::PretrainConfig;

fn configs(kind: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs")).join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    files
}

#[test]
fn pretrain_configs_parse_and_build_their_methods() {
    let files = configs("pretrain");
    assert!(files.len() >= 13, "{files:?}");
    let device = Device::flex().autodiff();
    for file in files {
        let config: PretrainConfig = densessl::config::load(Some(&file), &[]).unwrap_or_else(|e| panic!("{e}"));
        let mut settings = config.method.clone();
        let name = settings.remove("name").and_then(|v| v.as_str().map(String::from)).unwrap_or_else(|| "moco-v2".into());
        // A tiny encoder: only the method's own settings are under test.
        let encoder = EncoderConfig { base_width: 4, ..EncoderConfig::default() };
        let context = BuildContext { init: None, encoder: &encoder, optim: &config.optim, view_size: 32, settings, device: &device };
        if let Err(e) = pretext::build(&name, context) {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn finetune_configs_and_protocols_parse() {
    for file in configs("finetune") {
        let config: FinetuneConfig = densessl::config::load(Some(&file), &[]).unwrap_or_else(|e| panic!("{e}"));
        config.check().unwrap();
    }
    for (name, text) in PROTOCOLS {
        let config: FinetuneConfig = densessl::config::load_with_preset(Some((name, text)), None, &[]).unwrap();
        config.check().unwrap();
        assert_eq!(config.protocol.as_deref(), Some(name));
    }
}

/// Every committed experiment resolves into runs: each method's config, each protocol preset
/// and override is loaded and checked, every method of the registry appears in mini.toml, and
/// the mini grids are estimated under 90 minutes with `--jobs 2` on 2 cores.
#[test]
fn experiments_resolve_into_plans() {
    use densessl::experiment::ExperimentSpec;
    use densessl::experiment::plan::Plan;
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(root.join("experiments")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let mut spec = ExperimentSpec::load(&file).unwrap_or_else(|e| panic!("{e}"));
        // Paths in experiment files start from the repository root.
        spec.pretrain.config = root.join(&spec.pretrain.config).display().to_string();
        let plan = Plan::build(&spec).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!plan.finetune.is_empty(), "{}", file.display());
        if file.ends_with("mini.toml") {
            let methods: Vec<&str> = plan.pretrain.iter().map(|j| j.method.as_str()).collect();
            for (name, _) in pretext::METHODS {
                assert!(methods.contains(name), "mini.toml lacks {name}");
            }
        }
        // One job at a time takes the sum of the runs; two on two cores overlap them, no
        // better than perfectly and (with more than one run) faster than one after another.
        let sum: f64 = plan.scheduled().iter().map(|r| r.estimate_s).sum();
        assert!((plan.estimate_wall_s(1, 2) - sum).abs() < 1e-6 * sum, "{}", file.display());
        let two = plan.estimate_wall_s(2, 2);
        assert!(two >= sum / 2.0 - 1e-6 && two < sum, "{}: {two} vs {sum}", file.display());
        // The mini grids promise to fit 90 minutes on a 2-core CPU with `--jobs 2`.
        if file.file_name().unwrap().to_string_lossy().starts_with("mini") {
            assert!(two < 90.0 * 60.0, "{} is estimated at {:.0} min", file.display(), two / 60.0);
        }
    }
}
