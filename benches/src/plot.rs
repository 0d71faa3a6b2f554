//! PNG plots of latency distributions: latency (log scale) against the
//! percentile on a "nines" axis (90%, 99%, 99.9%…), one line per run, so the
//! tails are as readable as the medians.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{BenchError, Result};

/// Fonts tried for labels, in order; `EVENTBUS_BENCH_FONT` comes first.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// The deepest percentile drawn: 99.999%.
const MAX_NINES: f64 = 5.0;

/// One line of a plot.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Legend text.
    pub(crate) label: String,
    /// Latencies in ms.
    pub(crate) samples_ms: Vec<f64>,
    /// Events that never arrived (counted as slower than every sample).
    pub(crate) missing: usize,
}

/// Registers a TrueType font for plotters' pure-Rust rasterizer, once.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = std::env::var("EVENTBUS_BENCH_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|p| (*p).to_owned()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no usable TrueType font for plot labels: install fonts-dejavu-core \
             or set EVENTBUS_BENCH_FONT to a .ttf file (tried {})",
            FONT_PATHS.join(", ")
        ))
    })
    .clone()
    .map_err(|message| BenchError::Plot {
        path: "(font)".into(),
        message,
    })
}

/// `-log10(1 - p)`: 1 at 90%, 2 at 99%, 3 at 99.9%.
fn nines(p: f64) -> f64 {
    -(1.0 - p).max(1e-12).log10()
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i64 - 2).clamp(0, 4) as usize;
    format!("{p:.decimals$}%")
}

/// Points `(nines, latency)` of one series, thinned to what a plot can show.
fn points(series: &Series) -> Vec<(f64, f64)> {
    let mut sorted = series.samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let total = (sorted.len() + series.missing) as f64;
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (i, v) in sorted.iter().enumerate() {
        let x = nines(i as f64 / total).min(MAX_NINES);
        let last = i + 1 == sorted.len();
        if last || out.last().is_none_or(|(lx, _)| x - lx >= 0.002) {
            out.push((x, v.max(0.01)));
        }
    }
    out
}

/// Draws the latency distributions of `series` into the PNG at `path`.
pub(crate) fn latency_distribution(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    ensure_font()?;
    let fail = |e: String| BenchError::Plot {
        path: path.to_owned(),
        message: e,
    };
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|s| !s.samples_ms.is_empty())
        .map(|s| (s.label.clone(), points(s)))
        .collect();
    let all = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut lo, mut hi, mut x_hi) = (f64::MAX, 0.01f64, 1.0f64);
    for &(x, y) in all {
        lo = lo.min(y);
        hi = hi.max(y);
        x_hi = x_hi.max(x);
    }
    if lo > hi {
        lo = 0.1;
        hi = 1.0;
    }
    let y_range = (lo * 0.8).max(0.01)..(hi * 1.3).max(lo * 2.0);
    let x_range = 0.0..x_hi.ceil().min(MAX_NINES);

    let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range.log_scale())
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log scale)")
        .x_labels(6)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| crate::report::number(*y))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (i, (label, pts)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_reads_as_nines() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
    }
}
