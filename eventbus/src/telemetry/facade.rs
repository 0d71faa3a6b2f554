//! Registration with the application's [`metrics`] recorder: every relay and
//! consumer metric is also recorded through the facade, under the same name
//! and labels as in its Prometheus rendering (docs/adr/0013-metrics-facade.md).
//!
//! Handles are registered once, when a relay or consumer is built, so they
//! stay bound to the recorder in force then: the global one, or a local one
//! (`metrics::with_local_recorder`) around the construction. Without a
//! recorder they are no-ops.

use metrics::{Counter, Gauge, Histogram, Label};

/// A metric's name and help text, shared by the facade and the text renderer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Describe {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
}

impl Describe {
    pub(crate) const fn new(name: &'static str, help: &'static str) -> Self {
        Describe { name, help }
    }

    /// A counter handle labelled `labels`.
    pub(crate) fn counter(&self, labels: &[Label]) -> Counter {
        metrics::describe_counter!(self.name, self.help);
        metrics::counter!(self.name, labels.to_vec())
    }

    /// A gauge handle labelled `labels`.
    pub(crate) fn gauge(&self, labels: &[Label]) -> Gauge {
        metrics::describe_gauge!(self.name, self.help);
        metrics::gauge!(self.name, labels.to_vec())
    }

    /// A histogram handle labelled `labels`; the buckets are the exporter's.
    pub(crate) fn histogram(&self, labels: &[Label]) -> Histogram {
        metrics::describe_histogram!(self.name, self.help);
        metrics::histogram!(self.name, labels.to_vec())
    }
}

/// `labels` plus one more.
pub(crate) fn with(labels: &[Label], key: &'static str, value: String) -> Vec<Label> {
    let mut all = labels.to_vec();
    all.push(Label::new(key, value));
    all
}
