//! `densessl plot`: training curves of one or more runs in one PNG.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use densessl::plot::{Series, line_chart, read_metric};

/// Arguments of `densessl plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each with a metrics.jsonl); each becomes one line, labelled with the
    /// run's method name if its manifest has one, else the directory name.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Metric to draw against the step: loss, knn_acc, acc1, lr, … (any key of metrics.jsonl).
    #[arg(long, default_value = "loss")]
    pub key: String,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Chart title (default: the metric).
    #[arg(long)]
    pub title: Option<String>,
    /// Image size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "800x500")]
    pub size: String,
}

fn label(run: &std::path::Path) -> String {
    let dir_name = run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
    std::fs::read_to_string(run.join("config.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|config| config.get("method")?.get("name")?.as_str().map(str::to_owned))
        .map_or(dir_name.clone(), |method| if dir_name.contains(&method) { dir_name.clone() } else { format!("{method} ({dir_name})") })
}

/// Runs `densessl plot`.
pub fn run(args: PlotArgs) -> Result<()> {
    let (width, height) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .with_context(|| format!("--size {}: expected WIDTHxHEIGHT, e.g. 800x500", args.size))?;
    let mut series = Vec::new();
    for run in &args.runs {
        let points = read_metric(&run.join("metrics.jsonl"), &args.key)?;
        if points.is_empty() {
            bail!("{}: no '{}' in metrics.jsonl", run.display(), args.key);
        }
        series.push(Series { label: label(run), points });
    }
    let title = args.title.clone().unwrap_or_else(|| args.key.clone());
    line_chart(&args.out, &title, "step", &args.key, &series, (width, height))?;
    println!("{}", args.out.display());
    Ok(())
}
