//! Learning-rate schedules as pure functions of the step (so a resumed run needs no state):
//! `cosine`, `step` (milestones × gamma), `poly` (power), `linear`, `constant`, each with
//! optional linear warm-up. burn 0.22's schedulers have no poly or multi-step schedule.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Settings of a schedule (`[schedule]` in a config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// `cosine`, `step`, `poly`, `linear` or `constant`.
    pub kind: String,
    /// Steps of linear warm-up from 0 (or `warmup_ratio` × lr) to the base LR.
    pub warmup_steps: usize,
    /// Starting factor of the warm-up.
    pub warmup_ratio: f64,
    /// `step`: the steps at which the LR is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// `step`: the factor.
    pub gamma: f64,
    /// `poly`: the power (0.9 in mmsegmentation).
    pub power: f64,
    /// Floor of `cosine`, `poly` and `linear`, as a fraction of the base LR.
    pub min_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: "cosine".into(),
            warmup_steps: 0,
            warmup_ratio: 0.0,
            milestones: Vec::new(),
            gamma: 0.1,
            power: 0.9,
            min_ratio: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Checks the kind name.
    pub fn check(&self) -> Result<()> {
        match self.kind.as_str() {
            "cosine" | "step" | "poly" | "linear" | "constant" => Ok(()),
            other => Err(Error::Invalid(format!(
                "schedule.kind '{other}': choose cosine, step, poly, linear or constant"
            ))),
        }
    }

    /// The LR at `step` (0-based) of `total` steps for base LR `base`.
    pub fn lr_at(&self, base: f64, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return base * (self.warmup_ratio + (1.0 - self.warmup_ratio) * t);
        }
        let t = if total > 0 { (step as f64 / total as f64).min(1.0) } else { 0.0 };
        let floor = base * self.min_ratio;
        match self.kind.as_str() {
            "cosine" => floor + (base - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            "poly" => floor + (base - floor) * (1.0 - t).powf(self.power),
            "linear" => floor + (base - floor) * (1.0 - t),
            "step" => base * self.gamma.powi(self.milestones.iter().filter(|&&m| step >= m).count() as i32),
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: &str) -> ScheduleConfig {
        ScheduleConfig { kind: kind.into(), ..ScheduleConfig::default() }
    }

    #[test]
    fn closed_forms() {
        assert!((cfg("cosine").lr_at(1.0, 50, 100) - 0.5).abs() < 1e-12);
        assert!((cfg("cosine").lr_at(1.0, 100, 100)).abs() < 1e-12);
        assert!((cfg("poly").lr_at(0.01, 50, 100) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-12);
        assert!((cfg("linear").lr_at(2.0, 25, 100) - 1.5).abs() < 1e-12);
        let step = ScheduleConfig { milestones: vec![21_000, 27_000], ..cfg("step") };
        assert_eq!(step.lr_at(0.003, 20_999, 30_000), 0.003);
        assert!((step.lr_at(0.003, 21_000, 30_000) - 0.0003).abs() < 1e-12);
        assert!((step.lr_at(0.003, 29_999, 30_000) - 0.00003).abs() < 1e-12);
        let warm = ScheduleConfig { warmup_steps: 10, ..cfg("constant") };
        assert_eq!(warm.lr_at(1.0, 0, 100), 0.0);
        assert_eq!(warm.lr_at(1.0, 5, 100), 0.5);
        assert_eq!(warm.lr_at(1.0, 10, 100), 1.0);
        assert!(cfg("exp").check().is_err());
    }
}
