//! [`Exposition`]: metric families in the Prometheus text format, gathered
//! from any number of relays and consumers and rendered with each family
//! once; and the histogram the metrics of both are built from.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) for short operations: a batch publish, a handler.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) for waits that stretch to minutes during an outage:
/// time in the outbox, time in the broker.
pub(crate) const WAIT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Upper bounds for batch sizes (rows or messages).
pub(crate) const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Metric families in the Prometheus text exposition format (version 0.0.4).
///
/// Several sources can write into one exposition — a relay and the consumers
/// of a service, say — and each family is rendered once, with the samples of
/// every source under it (consumers tell theirs apart by the `group` label,
/// relays by the `relay` and `outbox` labels).
///
/// ```
/// use eventbus::consumer::ConsumerMetrics;
/// use eventbus::relay::RelayMetrics;
/// use eventbus::telemetry::Exposition;
///
/// let relay = RelayMetrics::new("orders-relay", "eventbus_outbox");
/// let billing = ConsumerMetrics::new("billing");
/// let shipping = ConsumerMetrics::new("shipping");
///
/// let mut exposition = Exposition::new();
/// relay.write_to(&mut exposition);
/// billing.write_to(&mut exposition);
/// shipping.write_to(&mut exposition);
/// let text = exposition.render(); // serve it at GET /metrics
/// assert!(text.contains(
///     "eventbus_relay_published_total{relay=\"orders-relay\",outbox=\"eventbus_outbox\"} 0"
/// ));
/// assert!(text.contains("eventbus_consumer_handled_total{group=\"shipping\"} 0"));
/// assert_eq!(text.matches("# TYPE eventbus_consumer_handled_total counter").count(), 1);
/// ```
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: &'static str,
    samples: Vec<String>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample of counter `name` (which should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        let line = format!("{name}{} {value}", render_labels(labels, None));
        self.family(name, help, "counter").push(line);
    }

    /// Adds a sample of gauge `name`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let line = format!("{name}{} {}", render_labels(labels, None), number(value));
        self.family(name, help, "gauge").push(line);
    }

    /// Declares gauge `name` without a sample (a labelled family that is
    /// empty for now, such as the backlog of a relay that owns nothing).
    pub fn gauge_family(&mut self, name: &str, help: &str) {
        self.family(name, help, "gauge");
    }

    /// Adds the buckets, sum and count of a histogram to family `name`.
    pub(crate) fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) {
        let data = histogram.snapshot();
        let samples = self.family(name, help, "histogram");
        let mut cumulative = 0;
        for (bound, n) in histogram.bounds.iter().zip(&data.counts) {
            cumulative += n;
            let le = format!("{bound}");
            samples.push(format!(
                "{name}_bucket{} {cumulative}",
                render_labels(labels, Some(&le))
            ));
        }
        samples.push(format!(
            "{name}_bucket{} {}",
            render_labels(labels, Some("+Inf")),
            data.count
        ));
        let plain = render_labels(labels, None);
        samples.push(format!("{name}_sum{plain} {}", number(data.sum)));
        samples.push(format!("{name}_count{plain} {}", data.count));
    }

    /// The text to serve at `GET /metrics` (content type
    /// `text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }

    fn family(&mut self, name: &str, help: &str, kind: &'static str) -> &mut Vec<String> {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[at].samples
    }
}

/// A fixed-bucket histogram, cheap to update from hot paths.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    data: Mutex<HistogramData>,
}

/// A histogram's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HistogramData {
    /// Observations per bucket (not cumulative), in bucket order.
    pub(crate) counts: Vec<u64>,
    /// Observations in all.
    pub(crate) count: u64,
    /// Their sum.
    pub(crate) sum: f64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            data: Mutex::new(HistogramData {
                counts: vec![0; bounds.len()],
                count: 0,
                sum: 0.0,
            }),
        }
    }

    /// Records one observation.
    pub(crate) fn observe(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        // A clock that stepped back must not make a negative wait.
        let value = value.max(0.0);
        if let Ok(mut d) = self.data.lock() {
            d.count += 1;
            d.sum += value;
            if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
                d.counts[i] += 1;
            }
        }
    }

    /// Records a duration, in seconds.
    pub(crate) fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub(crate) fn snapshot(&self) -> HistogramData {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

fn render_labels(labels: &[(&str, &str)], le: Option<&str>) -> String {
    // An empty value is the same as no label to Prometheus: leave it out.
    let mut all = labels
        .iter()
        .copied()
        .filter(|(_, v)| !v.is_empty())
        .chain(le.map(|le| ("le", le)))
        .peekable();
    if all.peek().is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Integers without a fraction, anything else with six decimals.
fn number(v: f64) -> String {
    if !v.is_finite() {
        "0".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.6}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labelled() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        h.observe(-1.0);
        let mut e = Exposition::new();
        e.histogram("x_seconds", "X.", &[("group", "a\"b")], &h);
        let text = e.render();
        assert!(
            text.contains("x_seconds_bucket{group=\"a\\\"b\",le=\"0.1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{group=\"a\\\"b\",le=\"1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{group=\"a\\\"b\",le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_count{group=\"a\\\"b\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_sum{group=\"a\\\"b\"} 7.550000"),
            "{text}"
        );
    }

    #[test]
    fn a_family_is_declared_once() {
        let mut e = Exposition::new();
        e.counter("c_total", "C.", &[("group", "a")], 1);
        e.gauge("g", "G.", &[("relay", "")], 0.25);
        e.counter("c_total", "C.", &[("group", "b")], 2);
        let text = e.render();
        assert_eq!(text.matches("# TYPE c_total counter").count(), 1);
        assert!(
            text.contains("c_total{group=\"a\"} 1\nc_total{group=\"b\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("g 0.250000"), "{text}");
    }
}
