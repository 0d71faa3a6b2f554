//! PNG plots: latency distributions — latency (log scale) against the
//! percentile on a "nines" axis (90%, 99%, 99.9%…), one line per run, so the
//! tails are as readable as the medians — and cost curves, a measure against
//! a size on linear or log axes.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{BenchError, Result};
use crate::report::number;

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
        .y_label_formatter(&|y| number(*y))
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

/// One line of a cost curve: `(x, y)` points, drawn in x order with a mark
/// on each.
#[derive(Debug, Clone)]
pub(crate) struct Curve {
    /// Legend text.
    pub(crate) label: String,
    /// The measured points; those with a non-positive or non-finite value on
    /// a log axis are left out.
    pub(crate) points: Vec<(f64, f64)>,
}

/// Titles and scales of a cost-curve plot.
#[derive(Debug, Clone)]
pub(crate) struct Axes<'a> {
    /// Caption.
    pub(crate) title: &'a str,
    /// What x is.
    pub(crate) x_desc: &'a str,
    /// What y is.
    pub(crate) y_desc: &'a str,
    /// Log scale on x.
    pub(crate) log_x: bool,
    /// Log scale on y.
    pub(crate) log_y: bool,
}

/// Maps a value onto a drawn axis: log10 on a log axis. `None` when a log
/// axis cannot show it.
fn onto(v: f64, log: bool) -> Option<f64> {
    match (log, v.is_finite()) {
        (_, false) => None,
        (true, _) if v <= 0.0 => None,
        (true, _) => Some(v.log10()),
        (false, _) => Some(v),
    }
}

/// The range a drawn axis needs for `values` (already mapped), with a margin.
fn span(values: impl Iterator<Item = f64>, log: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return 0.0..1.0;
    }
    // A log axis gets a tenth of a decade either side; a linear one starts
    // at zero (rates and sizes) and gets a tenth of its height on top.
    if log {
        let pad = ((hi - lo) * 0.1).max(0.1);
        (lo - pad)..(hi + pad)
    } else {
        let top = if hi > 0.0 { hi * 1.1 } else { 1.0 };
        lo.min(0.0)..top
    }
}

/// Draws `curves` into the PNG at `path`; log axes are drawn as log10 of
/// the values, labelled with the values themselves.
pub(crate) fn cost_curves(path: &Path, axes: &Axes<'_>, curves: &[Curve]) -> Result<()> {
    ensure_font()?;
    let fail = |e: String| BenchError::Plot {
        path: path.to_owned(),
        message: e,
    };
    let lines: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|c| {
            let mut pts: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter_map(|&(x, y)| Some((onto(x, axes.log_x)?, onto(y, axes.log_y)?)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (c.label.clone(), pts)
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    let x_range = span(
        lines.iter().flat_map(|(_, p)| p.iter().map(|p| p.0)),
        axes.log_x,
    );
    let y_range = span(
        lines.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)),
        axes.log_y,
    );
    let label = |v: f64, log: bool| number(if log { 10f64.powf(v) } else { v });

    let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(axes.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| fail(e.to_string()))?;
    let scale = |desc: &str, log: bool| {
        if log {
            format!("{desc} (log scale)")
        } else {
            desc.to_owned()
        }
    };
    chart
        .configure_mesh()
        .x_desc(scale(axes.x_desc, axes.log_x))
        .y_desc(scale(axes.y_desc, axes.log_y))
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|x| label(*x, axes.log_x))
        .y_label_formatter(&|y| label(*y, axes.log_y))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (i, (name, pts)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| fail(e.to_string()))?;
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

    #[test]
    fn log_axes_drop_what_they_cannot_show() {
        assert_eq!(onto(1000.0, true), Some(3.0));
        assert_eq!(onto(0.0, true), None);
        assert_eq!(onto(f64::NAN, false), None);
        assert_eq!(onto(-2.0, false), Some(-2.0));
        let r = span([4.0, 6.0].into_iter(), true);
        assert!(r.start < 4.0 && r.end > 6.0);
        let r = span([5.0, 10.0].into_iter(), false);
        assert_eq!(r.start, 0.0);
        assert!(r.end > 10.0);
    }
}
