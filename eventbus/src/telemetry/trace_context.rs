//! [`TraceContext`]: the W3C trace context (`traceparent`, `tracestate`) an
//! event carries from the business transaction to every consumer.

use std::fmt;

use crate::envelope::Envelope;

/// The W3C trace context of one span: trace id, span id, flags and the
/// vendor `tracestate`, as carried in an event's `traceparent`/`tracestate`
/// (the CloudEvents distributed-tracing extension and the plain headers
/// OpenTelemetry instrumentations read).
///
/// Parsing follows the W3C Trace Context rules: version `ff`, all-zero ids and
/// upper-case hex are refused; a future version is read by its version-00
/// fields.
///
/// ```
/// use eventbus::telemetry::TraceContext;
///
/// let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let tc = TraceContext::parse(parent, Some("congo=t61rcWkgMzE")).unwrap();
/// assert_eq!(tc.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(tc.span_id(), "00f067aa0ba902b7");
/// assert!(tc.is_sampled());
/// assert_eq!(tc.traceparent(), parent);
/// assert_eq!(tc.tracestate(), Some("congo=t61rcWkgMzE"));
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Reads a `traceparent` header value and an optional `tracestate`;
    /// `None` if the `traceparent` is not valid. An empty `tracestate` counts
    /// as none.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let t = traceparent.trim();
        let bytes = t.as_bytes();
        // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2.
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = decode_hex::<1>(&t[0..2])?[0];
        if version == 0xff {
            return None;
        }
        // Version 00 is exactly 55 characters; later versions may append
        // fields after another dash, which we do not understand.
        if (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        let trace_id = decode_hex::<16>(&t[3..35])?;
        let span_id = decode_hex::<8>(&t[36..52])?;
        let flags = decode_hex::<1>(&t[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
            tracestate,
        })
    }

    /// The trace context an event carries (its `traceparent` and `tracestate`
    /// attributes), if it carries a valid one.
    pub fn of(envelope: &Envelope) -> Option<Self> {
        Self::parse(
            envelope.traceparent.as_deref()?,
            envelope.tracestate.as_deref(),
        )
    }

    /// The `traceparent` header value (version `00`).
    pub fn traceparent(&self) -> String {
        // Written digit by digit: the relay builds one per message, and
        // `format!` with a formatter per byte was a few percent of its CPU.
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id: 32 lower-case hex digits, as log lines and trace
    /// back-ends show it.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id: 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// Whether the caller sampled the trace (flag `01`).
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Writes this context into `envelope`'s `traceparent`/`tracestate`.
    pub fn apply_to(&self, envelope: &mut Envelope) {
        envelope.traceparent = Some(self.traceparent());
        envelope.tracestate = self.tracestate.clone();
    }
}

#[cfg(feature = "otel")]
impl TraceContext {
    /// The context of the active OpenTelemetry span
    /// ([`opentelemetry::Context::current`]), if there is a valid one.
    pub fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        Self::from_span_context(opentelemetry::Context::current().span().span_context())
    }

    /// Converts an OpenTelemetry span context; `None` if it is not valid.
    pub fn from_span_context(span: &opentelemetry::trace::SpanContext) -> Option<Self> {
        if !span.is_valid() {
            return None;
        }
        let state = span.trace_state().header();
        Some(TraceContext {
            trace_id: span.trace_id().to_bytes(),
            span_id: span.span_id().to_bytes(),
            flags: span.trace_flags().to_u8(),
            tracestate: (!state.is_empty()).then_some(state),
        })
    }

    /// This context as a remote OpenTelemetry span context (a `tracestate`
    /// OpenTelemetry cannot parse is dropped).
    pub fn span_context(&self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
        use opentelemetry::{SpanId, TraceId};
        let state = self
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            state,
        )
    }

    /// An OpenTelemetry context whose (remote) parent span is this one: pass it
    /// to `Tracer::start_with_context` to continue the trace.
    pub fn to_context(&self) -> opentelemetry::Context {
        use opentelemetry::trace::TraceContextExt as _;
        opentelemetry::Context::new().with_remote_span_context(self.span_context())
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` as lower-case hex digits.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// `N` bytes from `2 * N` lower-case hex digits.
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn refuses_what_the_w3c_spec_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reads_a_future_version_by_its_known_fields() {
        let tc = TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-next",
            Some(""),
        )
        .expect("a later version is read");
        assert!(!tc.is_sampled());
        assert_eq!(tc.tracestate(), None);
        assert_eq!(
            tc.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn round_trips_through_an_envelope() {
        let tc = TraceContext::parse(VALID, Some("a=1")).expect("valid");
        let mut e = Envelope::new("s", "t", Vec::new());
        tc.apply_to(&mut e);
        assert_eq!(TraceContext::of(&e), Some(tc));
    }

    #[cfg(feature = "otel")]
    #[test]
    fn converts_to_and_from_opentelemetry() {
        let tc = TraceContext::parse(VALID, Some("congo=t61rcWkgMzE")).expect("valid");
        let sc = tc.span_context();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), tc.trace_id());
        assert_eq!(TraceContext::from_span_context(&sc), Some(tc));
    }
}
