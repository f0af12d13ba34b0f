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

/// The gap of a row to its reference MoCo v2 row (same head): see [`gap_to_moco_v2`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    /// Row mean − reference mean.
    pub delta: f64,
    /// Twice the larger of the two seed standard deviations.
    pub twice_spread: f64,
    /// The reference's pre-training steps.
    pub reference_steps: usize,
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

/// The gap of `result` to a MoCo v2 row with the same head and protocol: a continuation's
/// own parent when that is a MoCo v2 row of the table; else MoCo v2 at the same length; else
/// the longest MoCo v2 (so RandomInit meets the table's yardstick). MoCo v2's own rows have
/// none.
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
    let parent = result.row.parent.as_ref().and_then(|(method, steps)| candidates().find(|r| &r.row.method == method && r.row.steps == *steps));
    let same_length = || (result.row.parent.is_none()).then(|| candidates().find(|r| r.row.steps == result.row.steps)).flatten();
    let longest = || candidates().max_by_key(|r| r.row.steps);
    let reference = parent.or_else(same_length).or_else(longest)?;
    if (result.row.method == "moco-v2" && result.row.parent.is_none()) || result.seeds.is_empty() {
        return None;
    }
    Some(Gap {
        delta: result.miou.0 - reference.miou.0,
        twice_spread: 2.0 * result.miou.1.max(reference.miou.1),
        reference_steps: reference.row.steps,
    })
}

/// A row's name with its length: `RandomInit`, `moco-v2 4000`, `moco-v2 → densecl +400`.
pub fn label_with_steps(row: &Row) -> String {
    match (&row.parent, row.method.as_str()) {
        (_, "random") => row.label(),
        (Some(_), _) => format!("{} +{}", row.label(), row.steps),
        (None, _) => format!("{} {}", row.label(), row.steps),
    }
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
        parts.push(format!("{:+.4} vs MoCo v2 {} ({verdict} 2× spread {:.4})", gap.delta, gap.reference_steps, gap.twice_spread));
    }
    parts.join("; ")
}

/// The results table in Markdown.
pub fn markdown(plan: &Plan, results: &[RowResult]) -> String {
    let mut md = format!(
        "# {}: results\n\nmIoU on the val split, mean ± sample std over seeds. \"> 2× spread\": the gap to MoCo v2 \
         (same head; a continuation's parent, else the same length, else the longest) exceeds twice the larger seed \
         std of the two rows.\n\n\
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
                    "reference_steps": g.reference_steps,
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
            .map(|r| Bar { label: label_with_steps(&r.row), value: r.miou.0, error: r.miou.1 })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(method: &str, steps: usize, parent: Option<(&str, usize)>, seeds: &[f64]) -> RowResult {
        let row = Row {
            method: method.into(),
            steps,
            head: "moco-fcn".into(),
            parent: parent.map(|(m, s)| (m.to_string(), s)),
            protocol: None,
        };
        let seeds: Vec<(u64, f64)> = seeds.iter().enumerate().map(|(i, &m)| (i as u64, m)).collect();
        let values: Vec<f64> = seeds.iter().map(|s| s.1).collect();
        RowResult { row, planned: seeds.len(), miou: mean_std(&values), seeds }
    }

    #[test]
    fn each_row_meets_the_moco_v2_row_it_should() {
        let all = vec![
            result("random", 0, None, &[0.10, 0.11]),
            result("moco-v2", 1000, None, &[0.12, 0.12]),
            result("moco-v2", 4000, None, &[0.13, 0.14]),
            result("plr", 1000, None, &[0.15, 0.16]),
            result("densecl", 2000, None, &[0.12, 0.13]),
            result("densecl", 400, Some(("moco-v2", 4000)), &[0.12, 0.12]),
        ];
        let reference = |i: usize| gap_to_moco_v2(&all[i], &all).map(|g| g.reference_steps);
        assert_eq!(reference(0), Some(4000), "RandomInit meets the longest MoCo v2");
        assert_eq!(reference(1), None);
        assert_eq!(reference(2), None);
        assert_eq!(reference(3), Some(1000), "same length");
        assert_eq!(reference(4), Some(4000), "no MoCo v2 at 2000: the longest");
        assert_eq!(reference(5), Some(4000), "a continuation meets its parent");
        let gap = gap_to_moco_v2(&all[0], &all).unwrap();
        assert!((gap.delta - (0.105 - 0.135)).abs() < 1e-12);
        assert!((gap.twice_spread - 2.0 * all[2].miou.1.max(all[0].miou.1)).abs() < 1e-12);
        assert_eq!(label_with_steps(&all[5].row), "moco-v2 → densecl +400");
        assert_eq!(label_with_steps(&all[2].row), "moco-v2 4000");
    }
}
