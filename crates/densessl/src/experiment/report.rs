//! The experiment's report from whatever runs have finished: `results.md` (the design notes'
//! columns), `results.json`, and PNG plots — pre-training loss curves and mIoU bars with
//! seed error bars per head.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::plan::{Plan, Row, is_done};
use crate::plot::{Bar, Series, bar_chart, line_chart, read_metric};
use crate::seg::finetune::mean_std;
use crate::train::run_dir::write_atomic;
use crate::{Error, Result};

/// One row's fine-tuning results.
#[derive(Debug, Clone)]
pub struct RowResult {
    /// The row.
    pub row: Row,
    /// `(seed, mIoU)` of every finished seed.
    pub seeds: Vec<(u64, f64)>,
    /// Seeds planned.
    pub planned: usize,
    /// Mean and sample standard deviation of mIoU over finished seeds.
    pub miou: (f64, f64),
}

/// The gap of a row to the MoCo v2 row with the same head (and length, if there is one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    /// Row mean − MoCo v2 mean.
    pub delta: f64,
    /// Twice the larger of the two seed standard deviations.
    pub twice_spread: f64,
}

impl Gap {
    /// Whether the gap exceeds twice the seed spread.
    pub fn significant(&self) -> bool {
        self.delta.abs() > self.twice_spread
    }
}

/// Reads every finished fine-tune of `plan`.
pub fn collect(plan: &Plan) -> Result<Vec<RowResult>> {
    let mut results = Vec::new();
    for row in plan.rows() {
        let jobs: Vec<_> = plan.finetune.iter().filter(|j| j.row == row).collect();
        let mut seeds = Vec::new();
        for job in &jobs {
            let dir = plan.finetune_dir(&job.id);
            if !is_done(&dir) {
                continue;
            }
            let path = dir.join("summary.json");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let summary: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Data { path: path.clone(), message: format!("not a run summary: {e}") })?;
            let miou = summary["miou"]
                .as_f64()
                .ok_or_else(|| Error::Data { path: path.clone(), message: "no \"miou\" number".into() })?;
            seeds.push((job.seed, miou));
        }
        let values: Vec<f64> = seeds.iter().map(|(_, m)| *m).collect();
        let miou = if values.is_empty() { (f64::NAN, f64::NAN) } else { mean_std(&values) };
        results.push(RowResult { row, seeds, planned: jobs.len(), miou });
    }
    Ok(results)
}

/// The gap of `result` to the MoCo v2 row with the same head (same length preferred).
pub fn gap_to_moco_v2(result: &RowResult, all: &[RowResult]) -> Option<Gap> {
    let candidates = || {
        all.iter().filter(|r| {
            r.row.method == "moco-v2"
                && r.row.parent.is_none()
                && r.row.head == result.row.head
                && r.row.protocol == result.row.protocol
                && !r.seeds.is_empty()
        })
    };
    let reference = candidates().find(|r| r.row.steps == result.row.steps).or_else(|| candidates().next())?;
    if reference.row == result.row || result.seeds.is_empty() {
        return None;
    }
    Some(Gap { delta: result.miou.0 - reference.miou.0, twice_spread: 2.0 * result.miou.1.max(reference.miou.1) })
}

fn note(result: &RowResult, all: &[RowResult]) -> String {
    let mut parts = Vec::new();
    if let Some(protocol) = &result.row.protocol {
        parts.push(format!("protocol {protocol}"));
    }
    if let Some((method, steps)) = &result.row.parent {
        parts.push(format!("continues {method} ({steps} steps)"));
    }
    if result.seeds.len() < result.planned {
        parts.push(format!("{} of {} seeds finished", result.seeds.len(), result.planned));
    }
    if let Some(gap) = gap_to_moco_v2(result, all) {
        let verdict = if gap.significant() { ">" } else { "≤" };
        parts.push(format!("{:+.4} vs MoCo v2 ({verdict} 2× spread {:.4})", gap.delta, gap.twice_spread));
    }
    parts.join("; ")
}

/// The results table in Markdown.
pub fn markdown(plan: &Plan, results: &[RowResult]) -> String {
    let mut md = format!(
        "# {}: results\n\nmIoU on the val split, mean ± sample std over seeds. \"> 2× spread\": the gap to MoCo v2 \
         (same head) exceeds twice the larger seed std of the two rows.\n\n\
         | method | pre-training steps | head | mIoU | seeds | note |\n|---|---|---|---|---|---|\n",
        plan.spec.name
    );
    for r in results {
        let steps = if r.row.method == "random" { "—".to_string() } else { r.row.steps.to_string() };
        let miou = if r.seeds.is_empty() { "not run".to_string() } else { format!("{:.4} ± {:.4}", r.miou.0, r.miou.1) };
        md.push_str(&format!("| {} | {} | {} | {} | {} | {} |\n", r.row.label(), steps, r.row.head, miou, r.seeds.len(), note(r, results)));
    }
    md
}

/// Writes `results.md`, `results.json`, `pretrain_loss.png` and `miou_<head>.png` into the
/// experiment's directory; returns the files written.
pub fn write(plan: &Plan) -> Result<Vec<PathBuf>> {
    let results = collect(plan)?;
    std::fs::create_dir_all(&plan.out).map_err(|e| Error::io(&plan.out, e))?;
    let mut written = Vec::new();
    let md_path = plan.out.join("results.md");
    write_atomic(&md_path, markdown(plan, &results).as_bytes())?;
    written.push(md_path);

    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let gap = gap_to_moco_v2(r, &results);
            serde_json::json!({
                "method": r.row.method, "label": r.row.label(), "pretrain_steps": r.row.steps, "head": r.row.head,
                "protocol": r.row.protocol,
                "continues": r.row.parent.as_ref().map(|(m, s)| serde_json::json!({"method": m, "steps": s})),
                "miou_mean": r.miou.0, "miou_std": r.miou.1,
                "seeds": r.seeds.iter().map(|(s, m)| serde_json::json!({"seed": s, "miou": m})).collect::<Vec<_>>(),
                "seeds_planned": r.planned,
                "gap_to_moco_v2": gap.map(|g| serde_json::json!({
                    "delta": g.delta, "twice_spread": g.twice_spread, "exceeds_twice_spread": g.significant(),
                })),
            })
        })
        .collect(); // serde_json writes NaN (no finished seed) as null
    let json_path = plan.out.join("results.json");
    let json = serde_json::json!({"experiment": plan.spec.name, "rows": rows});
    write_atomic(&json_path, serde_json::to_string_pretty(&json).expect("JSON").as_bytes())?;
    written.push(json_path);

    let mut curves = Vec::new();
    for job in plan.pretrain.iter().filter(|j| is_done(&plan.pretrain_dir(&j.id))) {
        let points = read_metric(&plan.pretrain_dir(&job.id).join("metrics.jsonl"), "loss")?;
        let label = match &job.parent {
            Some(_) => format!("{} ({} steps, continued)", job.method, job.steps),
            None => format!("{} ({} steps)", job.method, job.steps),
        };
        curves.push(Series { label, points });
    }
    if !curves.is_empty() {
        let path = plan.out.join("pretrain_loss.png");
        line_chart(&path, "pre-training loss", "step", "loss", &curves, (900, 560))?;
        written.push(path);
    }
    let charts: BTreeSet<(&str, Option<&str>)> = results.iter().map(|r| (r.row.head.as_str(), r.row.protocol.as_deref())).collect();
    for (head, protocol) in charts {
        let bars: Vec<Bar> = results
            .iter()
            .filter(|r| r.row.head == head && r.row.protocol.as_deref() == protocol && !r.seeds.is_empty())
            .map(|r| Bar { label: r.row.label(), value: r.miou.0, error: r.miou.1 })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let suffix = protocol.map(|p| format!("_{p}")).unwrap_or_default();
        let path = plan.out.join(format!("miou_{head}{suffix}.png"));
        let title = format!("mIoU, {head} head{} (mean ± std over seeds)", protocol.map(|p| format!(", {p}")).unwrap_or_default());
        // Each bar's slot is wide enough for its label at 13 px (about 8 px per character).
        let longest = bars.iter().map(|b| b.label.chars().count()).max().unwrap_or(0) as u32;
        let slot = (8 * longest + 24).max(120);
        bar_chart(&path, &title, "mIoU", &bars, ((slot * bars.len() as u32 + 60).max(480), 480))?;
        written.push(path);
    }
    Ok(written)
}
