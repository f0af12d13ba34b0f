//! PNG charts with plotters: training curves from runs' `metrics.jsonl`. Text needs a TrueType
//! font: `DENSESSL_FONT`, else common system locations (DejaVu Sans, Arial); without one the
//! chart is drawn without labels and a warning says how to get them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::train::run_dir::write_atomic;
use crate::{Error, Result};

/// One named line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points in drawing order.
    pub points: Vec<(f64, f64)>,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font once; false if none could be found.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let candidates = std::env::var_os("DENSESSL_FONT").map(PathBuf::from).into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found: charts are drawn without text (set DENSESSL_FONT=/path/to/font.ttf)");
        false
    })
}

/// Line colours, distinguishable and printable (ten strong, then ten light variants).
pub const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data { path: path.to_path_buf(), message: format!("cannot draw the chart: {e}") }
}

/// Draws `series` as lines into a `width`×`height` PNG at `path` (written atomically).
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series], (width, height): (u32, u32)) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    if points().next().is_none() {
        return Err(Error::Invalid(format!("{}: nothing to plot (no finite points)", path.display())));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let text = font_available();
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder.caption(title, ("sans-serif", 20)).x_label_area_size(36).y_label_area_size(56);
        } else {
            builder.x_label_area_size(4).y_label_area_size(4);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| plot_error(path, e))?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(RGBColor(235, 235, 235));
        if text {
            mesh.x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| plot_error(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let line = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite());
            let drawn = chart.draw_series(LineSeries::new(line, color.stroke_width(2))).map_err(|e| plot_error(path, e))?;
            if text {
                drawn.label(s.label.clone()).legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
            }
        }
        if text && series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| plot_error(path, e))?;
        }
        root.present().map_err(|e| plot_error(path, e))?;
    }
    save_png(path, width, height, buffer)
}

/// One bar: label, height and the half-length of its error bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Text under the bar.
    pub label: String,
    /// Height.
    pub value: f64,
    /// Error bar: ± this much (0 = none).
    pub error: f64,
}

/// Draws `bars` with error bars into a `width`×`height` PNG at `path` (written atomically).
pub fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[Bar], (width, height): (u32, u32)) -> Result<()> {
    if bars.is_empty() || bars.iter().any(|b| !b.value.is_finite() || !b.error.is_finite()) {
        return Err(Error::Invalid(format!("{}: nothing to plot (no bars, or a bar is not finite)", path.display())));
    }
    let top = bars.iter().map(|b| b.value + b.error).fold(f64::MIN, f64::max);
    let bottom = bars.iter().map(|b| b.value - b.error).fold(0.0, f64::min);
    let top = if top > bottom { top + (top - bottom) * 0.08 } else { bottom + 1.0 };
    let text = font_available();
    let n = bars.len();
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder.caption(title, ("sans-serif", 20)).x_label_area_size(60).y_label_area_size(56);
        } else {
            builder.x_label_area_size(4).y_label_area_size(4);
        }
        let mut chart = builder.build_cartesian_2d(0.0..n as f64, bottom..top).map_err(|e| plot_error(path, e))?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().light_line_style(RGBColor(235, 235, 235));
        let label_of = |x: &f64| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 && i < n { bars[i].label.clone() } else { String::new() }
        };
        if text {
            mesh.y_desc(y_label).label_style(("sans-serif", 13)).x_labels(2 * n + 1).x_label_formatter(&label_of);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| plot_error(path, e))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let color = PALETTE[i % PALETTE.len()];
                Rectangle::new([(i as f64 + 0.15, 0.0f64.max(bottom)), (i as f64 + 0.85, b.value)], color.filled())
            }))
            .map_err(|e| plot_error(path, e))?;
        for (i, b) in bars.iter().enumerate().filter(|(_, b)| b.error > 0.0) {
            let x = i as f64 + 0.5;
            let (lo, hi) = (b.value - b.error, b.value + b.error);
            let style = BLACK.stroke_width(2);
            chart
                .draw_series([
                    PathElement::new([(x, lo), (x, hi)], style),
                    PathElement::new([(x - 0.12, lo), (x + 0.12, lo)], style),
                    PathElement::new([(x - 0.12, hi), (x + 0.12, hi)], style),
                ])
                .map_err(|e| plot_error(path, e))?;
        }
        root.present().map_err(|e| plot_error(path, e))?;
    }
    save_png(path, width, height, buffer)
}

fn save_png(path: &Path, width: u32, height: u32, buffer: Vec<u8>) -> Result<()> {
    let image = image::RgbImage::from_raw(width, height, buffer).expect("buffer has width × height × 3 bytes");
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(|e| plot_error(path, e))?;
    write_atomic(path, png.get_ref())
}

/// The `(step, value)` points of metric `key` in a run's `metrics.jsonl` (lines without the
/// key are skipped). An error names the file and line that cannot be read.
pub fn read_metric(metrics: &Path, key: &str) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Data { path: metrics.to_path_buf(), message: format!("line {}: {e}", n + 1) })?;
        if let (Some(step), Some(value)) = (record["step"].as_f64(), record[key].as_f64()) {
            points.push((step, value));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_a_png_showing_every_series() {
        let dir = std::env::temp_dir().join(format!("densessl-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("curves.png");
        let series = vec![
            Series { label: "a".into(), points: (0..50).map(|i| (i as f64, 5.0 - i as f64 * 0.05)).collect() },
            Series { label: "b".into(), points: (0..50).map(|i| (i as f64, 3.0 + (i as f64 * 0.3).sin())).collect() },
        ];
        line_chart(&path, "loss", "step", "loss", &series, (400, 300)).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (400, 300));
        for color in &PALETTE[..2] {
            let count = image.pixels().filter(|p| p.0 == [color.0, color.1, color.2]).count();
            assert!(count > 100, "{count} pixels of {color:?}");
        }
        assert!(!image.pixels().any(|p| p.0 == [PALETTE[2].0, PALETTE[2].1, PALETTE[2].2]));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bars_have_their_colours_and_error_bars() {
        let dir = std::env::temp_dir().join(format!("densessl-bars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bars.png");
        let bars = vec![
            Bar { label: "RandomInit".into(), value: 0.20, error: 0.01 },
            Bar { label: "MoCo v2".into(), value: 0.30, error: 0.02 },
        ];
        bar_chart(&path, "mIoU", "mIoU", &bars, (300, 240)).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        let count = |c: RGBColor| image.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
        // The taller bar covers more pixels; black error bars are drawn.
        assert!(count(PALETTE[1]) > count(PALETTE[0]) && count(PALETTE[0]) > 500, "{} {}", count(PALETTE[0]), count(PALETTE[1]));
        assert!(count(BLACK) > 20);
        assert!(bar_chart(&path, "t", "y", &[], (300, 240)).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn metrics_are_read_by_key_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("densessl-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        std::fs::write(&path, "{\"event\":\"start\"}\n{\"step\":10,\"loss\":2.5}\n{\"step\":20,\"knn_acc\":0.3}\n{\"step\":20,\"loss\":2.0}\n").unwrap();
        assert_eq!(read_metric(&path, "loss").unwrap(), vec![(10.0, 2.5), (20.0, 2.0)]);
        std::fs::write(&path, "{\"step\":10,\"loss\":2.5}\nnot json\n").unwrap();
        let e = read_metric(&path, "loss").unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
