//! The results of a run: machine-readable JSON (`results.json`) and a
//! Markdown summary (`summary.md`) with every figure next to its baseline,
//! the ratio and the target.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::env::Environment;
use crate::error::{BenchError, Result};
use crate::stats::Summary;

/// A whole run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// When the run started (UTC, RFC 3339).
    pub(crate) started_at: String,
    /// When it ended.
    pub(crate) finished_at: String,
    /// The command line that produced it.
    pub(crate) command: String,
    /// Quick mode (small counts, for CI): figures are not meaningful.
    pub(crate) quick: bool,
    /// Versions and settings.
    pub(crate) environment: Environment,
    /// One entry per workload run.
    pub(crate) workloads: Vec<WorkloadReport>,
}

/// The outcome of one workload.
#[derive(Debug, Default, Serialize)]
pub(crate) struct WorkloadReport {
    /// `W1` … `W6`.
    pub(crate) id: &'static str,
    /// What it measures.
    pub(crate) title: String,
    /// Counts, rates, durations and settings it ran with.
    pub(crate) parameters: BTreeMap<String, serde_json::Value>,
    /// Figures with their baselines.
    pub(crate) rows: Vec<Row>,
    /// Latency distributions.
    pub(crate) latencies: Vec<LatencyRow>,
    /// PNG files written (relative to the output directory).
    pub(crate) plots: Vec<String>,
    /// Remarks: what bounds a figure, what was left out.
    pub(crate) notes: Vec<String>,
    /// Set when the workload failed; the rows hold what was measured before.
    pub(crate) error: Option<String>,
    /// Wall time of the workload.
    pub(crate) seconds: f64,
}

/// One figure: ours, the baseline measured in the same run, their ratio.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Which configuration (transaction size, broker, rate…).
    pub(crate) case: String,
    /// What is measured.
    pub(crate) metric: String,
    /// Unit of `ours` and `baseline`.
    pub(crate) unit: String,
    /// Our figure.
    pub(crate) ours: Option<f64>,
    /// What `ours` is when it is not eventbus: a row comparing two baselines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ours_name: Option<String>,
    /// What the baseline is.
    pub(crate) baseline_name: String,
    /// The baseline's figure.
    pub(crate) baseline: Option<f64>,
    /// Ours relative to the baseline, oriented so that above 1 means ours is
    /// better: ours/baseline for throughput, baseline/ours for latency and cost.
    pub(crate) ratio: Option<f64>,
    /// The target, in words.
    pub(crate) target: String,
    /// Whether the target is met (`None`: no target, or not measurable).
    pub(crate) met: Option<bool>,
}

impl Row {
    /// A throughput figure (higher is better) with an optional minimum ratio.
    pub(crate) fn throughput(
        case: impl Into<String>,
        ours: f64,
        baseline_name: impl Into<String>,
        baseline: f64,
        min_ratio: Option<f64>,
    ) -> Self {
        let ratio = crate::stats::ratio(ours, baseline);
        Row {
            case: case.into(),
            metric: "throughput".into(),
            unit: "events/s".into(),
            ours: Some(ours),
            ours_name: None,
            baseline_name: baseline_name.into(),
            baseline: Some(baseline),
            ratio,
            target: min_ratio.map_or_else(String::new, |m| format!("≥ {m:.2}×")),
            met: min_ratio.and_then(|m| ratio.map(|r| r >= m)),
        }
    }

    /// A figure where lower is better (latency, memory, CPU), with an optional
    /// ceiling for ours and an optional baseline.
    pub(crate) fn lower_is_better(
        case: impl Into<String>,
        metric: impl Into<String>,
        unit: impl Into<String>,
        ours: Option<f64>,
        baseline: Option<(String, Option<f64>)>,
        max: Option<f64>,
    ) -> Self {
        let (baseline_name, baseline) = baseline.unwrap_or_default();
        let ratio = match (ours, baseline) {
            (Some(o), Some(b)) => crate::stats::ratio(b, o),
            _ => None,
        };
        let unit = unit.into();
        Row {
            case: case.into(),
            metric: metric.into(),
            target: max.map_or_else(String::new, |m| format!("≤ {} {unit}", number(m))),
            met: max.map(|m| ours.is_some_and(|o| o <= m)),
            unit,
            ours,
            ours_name: None,
            baseline_name,
            baseline,
            ratio,
        }
    }

    /// Names what the `ours` figure measures, for a row whose "ours" is a
    /// baseline set against another baseline.
    pub(crate) fn with_ours_name(mut self, name: impl Into<String>) -> Self {
        self.ours_name = Some(name.into());
        self
    }

    /// The "ours" cell of the Markdown table: the figure, and what it is
    /// when it is not eventbus.
    fn ours_cell(&self) -> String {
        match &self.ours_name {
            Some(name) => format!("{} {} ({name})", opt(self.ours), self.unit),
            None => format!("{} {}", opt(self.ours), self.unit),
        }
    }

    /// Names the metric (the constructors' default is generic).
    pub(crate) fn with_metric(mut self, metric: impl Into<String>) -> Self {
        self.metric = metric.into();
        self
    }

    /// Sets the unit of `ours` and `baseline` (a throughput in MB/s).
    pub(crate) fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = unit.into();
        self
    }

    /// Overrides the target (text and verdict).
    pub(crate) fn with_target(mut self, target: impl Into<String>, met: Option<bool>) -> Self {
        self.target = target.into();
        self.met = met;
        self
    }
}

/// One latency distribution.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyRow {
    /// Which run (broker, rate, wake-up, ours or baseline).
    pub(crate) case: String,
    /// `commit→ack`, `commit→handler` or `commit→received`.
    pub(crate) path: String,
    /// Percentiles.
    pub(crate) summary: Summary,
}

/// A number for people: thousands separated, two decimals below 100.
pub(crate) fn number(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x.abs() >= 100.0 {
        let n = x.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), number)
}

fn latency(x: Option<f64>, missing: usize) -> String {
    match x {
        Some(v) => number(v),
        None if missing > 0 => "not delivered".into(),
        None => "–".into(),
    }
}

impl Report {
    /// Writes `results.json` and `summary.md` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        let path = dir.join("results.json");
        std::fs::write(&path, json).map_err(|e| BenchError::io(&path, e))?;
        let path = dir.join("summary.md");
        std::fs::write(&path, self.markdown()).map_err(|e| BenchError::io(&path, e))?;
        Ok(())
    }

    /// The Markdown summary.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let mode = if self.quick {
            "quick mode (CI smoke run: small counts, figures not meaningful)"
        } else {
            "full run"
        };
        let _ = writeln!(md, "# eventbus benchmark results\n");
        let _ = writeln!(md, "{mode}, {} → {}\n", self.started_at, self.finished_at);
        let _ = writeln!(md, "Command: `{}`\n", self.command);
        let env = &self.environment;
        let _ = writeln!(md, "| environment | |\n| --- | --- |");
        let mut facts: Vec<(String, String)> = vec![
            (
                "eventbus".into(),
                format!("{} ({} build, git {})", env.eventbus, env.profile, env.git),
            ),
            ("rustc".into(), env.rustc.clone()),
            ("PostgreSQL".into(), env.postgres.clone()),
            ("RabbitMQ".into(), env.rabbitmq.clone()),
            ("Kafka broker".into(), env.kafka_broker.clone()),
            ("librdkafka".into(), env.librdkafka.clone()),
        ];
        for (k, v) in &env.host {
            facts.push((format!("host {k}"), v.clone()));
        }
        for (k, v) in &env.postgres_settings {
            facts.push((format!("postgres {k}"), v.clone()));
        }
        for (k, v) in &env.durability {
            facts.push((format!("durability {k}"), (*v).to_owned()));
        }
        for (k, v) in &env.peer {
            facts.push((format!("peer {k}"), (*v).to_owned()));
        }
        for (k, v) in facts {
            let _ = writeln!(md, "| {k} | {} |", v.replace('|', "\\|"));
        }
        md.push('\n');
        let _ = writeln!(
            md,
            "Ratios are oriented so that above 1× means ours is better: ours ÷ baseline for \
             throughput, baseline ÷ ours for latency, memory and CPU.\n"
        );
        for w in &self.workloads {
            let _ = writeln!(md, "## {} — {}\n", w.id, w.title);
            if !w.parameters.is_empty() {
                let params: Vec<String> = w
                    .parameters
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                let _ = writeln!(
                    md,
                    "Parameters: {}; took {:.0} s.\n",
                    params.join(", "),
                    w.seconds
                );
            }
            if let Some(e) = &w.error {
                let _ = writeln!(md, "**Failed:** {}\n", e.replace('\n', " "));
            }
            if !w.rows.is_empty() {
                let _ = writeln!(
                    md,
                    "| case | metric | ours | baseline | ratio | target | met |\n| --- | --- | ---: | --- | ---: | --- | --- |"
                );
                for r in &w.rows {
                    let baseline = match r.baseline {
                        Some(b) => format!("{} {} ({})", number(b), r.unit, r.baseline_name),
                        None if r.baseline_name.is_empty() => "–".into(),
                        None => format!("– ({})", r.baseline_name),
                    };
                    let ours = r.ours_cell();
                    let met = match r.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "",
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        r.case,
                        r.metric,
                        ours,
                        baseline,
                        r.ratio.map_or_else(|| "–".into(), |x| format!("{x:.2}×")),
                        r.target,
                        met
                    );
                }
                md.push('\n');
            }
            if !w.latencies.is_empty() {
                let _ = writeln!(
                    md,
                    "| run | path | events | not delivered | p50 ms | p99 ms | p99.9 ms | max ms |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
                );
                for l in &w.latencies {
                    let s = &l.summary;
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        l.case,
                        l.path,
                        s.count,
                        s.missing,
                        latency(s.p50_ms, s.missing),
                        latency(s.p99_ms, s.missing),
                        latency(s.p999_ms, s.missing),
                        opt(s.max_ms)
                    );
                }
                md.push('\n');
            }
            for p in &w.plots {
                let _ = writeln!(md, "![{p}]({p})\n");
            }
            for n in &w.notes {
                let _ = writeln!(md, "- {n}");
            }
            if !w.notes.is_empty() {
                md.push('\n');
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.5), "0.50");
        assert_eq!(number(-1500.0), "-1,500");
    }

    #[test]
    fn throughput_ratio_and_verdict() {
        let r = Row::throughput("c", 90.0, "plain", 100.0, Some(0.85));
        assert_eq!(r.ratio, Some(0.9));
        assert_eq!(r.met, Some(true));
        let r = Row::lower_is_better(
            "c",
            "p99",
            "ms",
            Some(20.0),
            Some(("b".into(), Some(10.0))),
            Some(10.0),
        );
        assert_eq!(r.ratio, Some(0.5));
        assert_eq!(r.met, Some(false));
    }

    #[test]
    fn a_row_of_two_baselines_names_both() {
        let ours = Row::throughput("c", 900.0, "plain", 1000.0, None);
        assert_eq!(ours.ours_cell(), "900 events/s");
        let baselines = Row::throughput("c", 900.0, "plain", 1000.0, None)
            .with_ours_name("hand-written outbox SQL");
        assert_eq!(
            baselines.ours_cell(),
            "900 events/s (hand-written outbox SQL)"
        );
        assert_eq!(baselines.ratio, Some(0.9));
        let json = serde_json::to_value(&ours).expect("serializes");
        assert!(json.get("ours_name").is_none(), "{json}");
    }
}
