//! [`MessagingSpan`]: the `publish`, `send` and `process` spans, written once
//! for the outbox, the relay and the consumer. With the `otel` feature each is
//! an OpenTelemetry span; without it, only the trace context passes through
//! unchanged, so call sites need no `cfg`.

use std::future::Future;

use super::{attributes as attr, TraceContext};

/// What a span does to a message, in the messaging semantic conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// The outbox writes an event in the business transaction.
    // Without `otel` the outbox makes no span: rows keep the caller's context.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    Publish,
    /// The relay sends an outbox row to the broker.
    Send,
    /// A consumer handles a message (or a batch).
    Process,
}

impl Operation {
    /// `messaging.operation.name`, also the first word of the span name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Operation::Publish => super::PUBLISH,
            Operation::Send => super::SEND,
            Operation::Process => super::PROCESS,
        }
    }

    /// `messaging.operation.type`.
    fn kind(self) -> &'static str {
        match self {
            Operation::Publish => "create",
            Operation::Send => "send",
            Operation::Process => "process",
        }
    }
}

/// Which span a new span is the child of.
#[derive(Debug, Clone)]
pub(crate) enum Parent {
    /// The span a message carries (its stored or received trace context).
    Remote(TraceContext),
    /// The active OpenTelemetry context of the caller (none without `otel`).
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    Current,
    /// None: the span starts a trace of its own.
    Root,
}

/// One messaging span. Ends when [`MessagingSpan::end`] is called (or, with
/// OpenTelemetry's SDK, when dropped).
#[derive(Debug)]
pub(crate) struct MessagingSpan {
    operation: Operation,
    /// What a message passes on when there is no valid span of our own (no
    /// `otel` feature, or a tracer that records nothing and starts no trace).
    parent: Option<TraceContext>,
    /// The `tracing` span the work runs in (`process` only; disabled for the
    /// others), with the trace id for log lines.
    log: tracing::Span,
    #[cfg(feature = "otel")]
    cx: opentelemetry::Context,
}

impl MessagingSpan {
    /// Starts `operation` on `destination` as a child of `parent`, linked to
    /// `links` (the messages of a batch).
    pub(crate) fn start(
        operation: Operation,
        destination: &str,
        parent: Parent,
        links: &[TraceContext],
    ) -> Self {
        #[cfg(feature = "otel")]
        let (cx, log) = otel::start(
            operation,
            &format!("{} {destination}", operation.name()),
            &parent,
            links,
        );
        #[cfg(not(feature = "otel"))]
        let log = {
            let _ = (destination, links);
            log_span(operation)
        };
        let parent = match parent {
            Parent::Remote(tc) => Some(tc),
            #[cfg(feature = "otel")]
            Parent::Current => TraceContext::current(),
            _ => None,
        };
        let span = MessagingSpan {
            operation,
            parent,
            log,
            #[cfg(feature = "otel")]
            cx,
        };
        if let Some(tc) = span.trace_context() {
            span.log
                .record("trace_id", tracing::field::display(tc.trace_id()));
            span.log
                .record("span_id", tracing::field::display(tc.span_id()));
        }
        span
    }

    /// The trace context to hand on: this span's, or the parent's when there
    /// is no span of our own.
    pub(crate) fn trace_context(&self) -> Option<TraceContext> {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::TraceContextExt as _;
            if let Some(own) = TraceContext::from_span_context(self.cx.span().span_context()) {
                return Some(own);
            }
        }
        self.parent.clone()
    }

    /// Sets a string attribute.
    pub(crate) fn set_str(&self, key: &'static str, value: &str) {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::TraceContextExt as _;
            self.cx
                .span()
                .set_attribute(opentelemetry::KeyValue::new(key, value.to_owned()));
        }
        #[cfg(not(feature = "otel"))]
        let _ = (key, value);
    }

    /// Sets an integer attribute.
    pub(crate) fn set_int(&self, key: &'static str, value: i64) {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::TraceContextExt as _;
            self.cx
                .span()
                .set_attribute(opentelemetry::KeyValue::new(key, value));
        }
        #[cfg(not(feature = "otel"))]
        let _ = (key, value);
    }

    /// Records a failed attempt that will be retried, as a span event.
    pub(crate) fn failed_attempt(&self, attempt: u32, reason: &str) {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::TraceContextExt as _;
            use opentelemetry::KeyValue;
            self.cx.span().add_event(
                "retry",
                vec![
                    KeyValue::new(attr::ATTEMPT, i64::from(attempt)),
                    KeyValue::new("exception.message", reason.to_owned()),
                ],
            );
        }
        #[cfg(not(feature = "otel"))]
        let _ = (attempt, reason);
    }

    /// Marks the span failed: status `Error`, `error.type`, and an
    /// `exception` event with the message.
    pub(crate) fn fail(&self, error_type: &str, message: &str) {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::{Status, TraceContextExt as _};
            use opentelemetry::KeyValue;
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()));
            span.add_event(
                "exception",
                vec![
                    KeyValue::new("exception.type", error_type.to_owned()),
                    KeyValue::new("exception.message", message.to_owned()),
                ],
            );
            span.set_status(Status::error(message.to_owned()));
        }
        #[cfg(not(feature = "otel"))]
        let _ = (error_type, message);
    }

    /// Ends the span.
    pub(crate) fn end(self) {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::TraceContextExt as _;
            self.cx.span().end();
        }
    }

    /// The `tracing` span carrying this span's `trace_id` and `span_id`, so
    /// that log lines written inside it name the trace (`process` spans; a
    /// disabled span for the others).
    pub(crate) fn log_span(&self) -> tracing::Span {
        self.log.clone()
    }

    /// Runs `future` inside this span: the active OpenTelemetry context (so
    /// that spans and publishes of the handler are its children) and the
    /// `tracing` span of [`log_span`](Self::log_span).
    pub(crate) fn scope<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        #[cfg(feature = "otel")]
        let future = opentelemetry::context::FutureExt::with_context(future, self.cx.clone());
        tracing::Instrument::instrument(future, self.log_span())
    }
}

/// Span attributes every operation shares.
pub(crate) fn common(
    span: &MessagingSpan,
    system: Option<&str>,
    destination: &str,
    id: Option<&str>,
) {
    if let Some(system) = system {
        span.set_str(attr::MESSAGING_SYSTEM, system);
    }
    span.set_str(attr::DESTINATION, destination);
    span.set_str(attr::OPERATION_NAME, span.operation.name());
    span.set_str(attr::OPERATION_TYPE, span.operation.kind());
    if let Some(id) = id {
        span.set_str(attr::MESSAGE_ID, id);
    }
}

/// The `tracing` span a `process` span's work runs in, named `process` with
/// the OpenTelemetry kind in the field `tracing-opentelemetry` reads, and
/// `trace_id`/`span_id` recorded once known. The other operations run no
/// code of the application: no span.
fn log_span(operation: Operation) -> tracing::Span {
    match operation {
        // Error level, and the target of the module whose lines it wraps:
        // the span, and with it the trace id, must be enabled under any
        // filter that lets those lines through.
        Operation::Process => tracing::error_span!(
            target: "eventbus::consumer",
            "process",
            otel.kind = "consumer",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        ),
        Operation::Publish | Operation::Send => tracing::Span::none(),
    }
}

/// The trace context of the caller's active span (none without `otel`).
pub(crate) fn current() -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    {
        TraceContext::current()
    }
    #[cfg(not(feature = "otel"))]
    None
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, Tracer as _};
    use opentelemetry::{global, Context, InstrumentationScope};

    use super::{log_span, Operation, Parent, TraceContext};

    /// Starts the OpenTelemetry span and the `tracing` span of `operation`;
    /// returns the context holding the former, and the latter.
    ///
    /// An application exporting `tracing` spans through a
    /// `tracing-opentelemetry` layer would export the `tracing` span as a
    /// second span, in a trace of its own. So the `tracing` span is made
    /// first, with the parent as the active context, and if such a layer
    /// backs it with an OpenTelemetry span, that span is the one: it gets the
    /// links and attributes, and no second span is started.
    pub(super) fn start(
        operation: Operation,
        name: &str,
        parent: &Parent,
        links: &[TraceContext],
    ) -> (Context, tracing::Span) {
        let parent_cx = match parent {
            Parent::Remote(tc) => tc.to_context(),
            Parent::Current => Context::current(),
            Parent::Root => Context::new(),
        };
        let log = {
            let _parent = parent_cx.clone().attach();
            log_span(operation)
        };
        if let Some(cx) = layer_span(&log) {
            cx.span().update_name(name.to_owned());
            for tc in links {
                cx.span().add_link(tc.span_context(), Vec::new());
            }
            return (cx, log);
        }
        // Looked up per span, not cached: a provider installed after the
        // first message (tests, late initialisation) must take effect.
        let tracer = global::tracer_with_scope(
            InstrumentationScope::builder(super::super::INSTRUMENTATION_SCOPE)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        let kind = match operation {
            Operation::Publish | Operation::Send => SpanKind::Producer,
            Operation::Process => SpanKind::Consumer,
        };
        let mut builder = tracer.span_builder(name.to_owned()).with_kind(kind);
        if !links.is_empty() {
            builder = builder.with_links(
                links
                    .iter()
                    .map(|tc| Link::with_context(tc.span_context()))
                    .collect(),
            );
        }
        let span = builder.start_with_context(&tracer, &parent_cx);
        (parent_cx.with_span(span), log)
    }

    /// The context of the OpenTelemetry span a `tracing-opentelemetry` layer
    /// made for `log`, if one did: such a layer (with its default context
    /// activation) makes it the active context while `log` is entered.
    fn layer_span(log: &tracing::Span) -> Option<Context> {
        if log.is_disabled() {
            return None;
        }
        let _blank = Context::new().attach();
        let cx = log.in_scope(Context::current);
        cx.span().span_context().is_valid().then_some(cx)
    }
}

/// Starts a `publish` span per outbox entry — a child of the trace context
/// the entry already names (`Metadata::traceparent`), else of the caller's
/// active context — and returns the entries with the spans' contexts in
/// their `traceparent`/`tracestate` headers. Without `otel`, the entries
/// as they are and no span.
pub(crate) fn publish_spans<'e>(
    table: &crate::TableName,
    entries: &'e [crate::OutboxEntry],
) -> (
    std::borrow::Cow<'e, [crate::OutboxEntry]>,
    Vec<MessagingSpan>,
) {
    #[cfg(not(feature = "otel"))]
    {
        let _ = table;
        (std::borrow::Cow::Borrowed(entries), Vec::new())
    }
    #[cfg(feature = "otel")]
    {
        let mut traced = entries.to_vec();
        let mut spans = Vec::with_capacity(entries.len());
        let table = table.to_string();
        for entry in &mut traced {
            let header = |name: &str| entry.headers.get(name).and_then(|v| v.as_str());
            let parent = match header("traceparent") {
                Some(tp) => TraceContext::parse(tp, header("tracestate"))
                    .map_or(Parent::Current, Parent::Remote),
                None => Parent::Current,
            };
            let span = MessagingSpan::start(Operation::Publish, &entry.destination, parent, &[]);
            common(
                &span,
                None,
                &entry.destination,
                Some(&entry.event_id.to_string()),
            );
            span.set_str(attr::EVENT_TYPE, &entry.event_type);
            if let Some(source) = &entry.source {
                span.set_str(attr::EVENT_SOURCE, source);
            }
            if let Some(subject) = &entry.subject {
                span.set_str(attr::EVENT_SUBJECT, subject);
            }
            span.set_str(attr::PARTITION_KEY, &entry.partition_key);
            span.set_str(attr::OUTBOX_TABLE, &table);
            span.set_int(
                attr::BODY_SIZE,
                i64::try_from(entry.payload.len()).unwrap_or(i64::MAX),
            );
            if let (Some(tc), serde_json::Value::Object(headers)) =
                (span.trace_context(), &mut entry.headers)
            {
                headers.insert("traceparent".into(), tc.traceparent().into());
                match tc.tracestate() {
                    Some(state) => headers.insert("tracestate".into(), state.into()),
                    None => headers.remove("tracestate"),
                };
            }
            spans.push(span);
        }
        (std::borrow::Cow::Owned(traced), spans)
    }
}
