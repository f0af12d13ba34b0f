//! `densessl quickstart`: pre-train MoCo v2 briefly on procedural scenes, fine-tune the
//! MoCo-FCN head from it and from random init, and compare mIoU.

use std::path::Path;

use crate::config::from_toml_str;
use crate::device::DeviceSpec;
use crate::seg::finetune::{self, FinetuneConfig};
use crate::train::pretrain::{self, PretrainConfig, RunOptions};
use crate::Result;

/// One row of the quickstart table.
#[derive(Debug, Clone)]
pub struct Row {
    /// `RandomInit` or `MoCo v2`.
    pub name: String,
    /// Validation mIoU.
    pub miou: f64,
    /// Pixel accuracy.
    pub aacc: f64,
    /// Wall time of pre-training plus fine-tuning, seconds.
    pub wall_s: f64,
}

/// The pre-training config the quickstart runs (committed as an example).
pub const PRETRAIN_TOML: &str = include_str!("../../../configs/pretrain/moco-v2-procedural.toml");
/// The fine-tuning config the quickstart runs (committed as an example).
pub const FINETUNE_TOML: &str = include_str!("../../../configs/finetune/moco-fcn-procedural.toml");

/// The quickstart's configurations: the two committed example configs, with every step count
/// multiplied by `steps_scale`.
pub fn configs(steps_scale: f64) -> Result<(PretrainConfig, FinetuneConfig)> {
    let mut pretrain: PretrainConfig = from_toml_str(PRETRAIN_TOML, "configs/pretrain/moco-v2-procedural.toml")?;
    let mut finetune: FinetuneConfig = from_toml_str(FINETUNE_TOML, "configs/finetune/moco-fcn-procedural.toml")?;
    let scale = |n: usize| ((n as f64 * steps_scale).round() as usize).max(1);
    pretrain.train.steps = scale(pretrain.train.steps);
    finetune.train.steps = scale(finetune.train.steps);
    Ok((pretrain, finetune))
}

/// Runs the quickstart into `out` (`pretrain/`, `finetune-random/`, `finetune-moco-v2/`).
pub fn run(out: &Path, device: &DeviceSpec, argv: &[String], steps_scale: f64) -> Result<Vec<Row>> {
    let (pretrain_config, finetune_config) = configs(steps_scale)?;
    let options = |dir: &str| RunOptions { out: out.join(dir), device: device.clone(), argv: argv.to_vec() };

    let random = finetune::run(&finetune_config, &options("finetune-random"))?;
    let pre = pretrain::run(&pretrain_config, &options("pretrain"))?;
    let from_moco = FinetuneConfig {
        init: Some(pre.encoder_checkpoint.display().to_string()),
        ..finetune_config
    };
    let moco = finetune::run(&from_moco, &options("finetune-moco-v2"))?;
    Ok(vec![
        Row { name: "RandomInit".into(), miou: random.metrics.miou, aacc: random.metrics.aacc, wall_s: random.wall_s },
        Row { name: "MoCo v2".into(), miou: moco.metrics.miou, aacc: moco.metrics.aacc, wall_s: pre.wall_s + moco.wall_s },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_parse_and_scale() {
        let (p, f) = configs(1.0).unwrap();
        assert_eq!(p.method.get("name").and_then(|v| v.as_str()), Some("moco-v2"));
        assert_eq!(p.encoder, f.encoder, "pre-training and fine-tuning share one encoder");
        let (p2, f2) = configs(0.1).unwrap();
        assert_eq!(p2.train.steps, (p.train.steps as f64 * 0.1).round() as usize);
        assert_eq!(f2.train.steps, (f.train.steps as f64 * 0.1).round() as usize);
    }
}
