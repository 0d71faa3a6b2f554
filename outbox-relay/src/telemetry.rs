//! Logs and traces of the relay: `tracing` lines on stderr — those written
//! while a row is sent carry its `trace_id` — and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the `send` spans exported over
//! OTLP/HTTP (protobuf).

use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// The variable that turns OTLP export on.
const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The installed tracer provider; flushes and shuts it down when dropped.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`
    /// and the event's fields), for log collectors.
    Json,
}

/// Installs the `tracing` subscriber (level from `RUST_LOG`, default
/// `default_level`; lines in `format`) and the global OpenTelemetry tracer
/// provider. Spans get real ids either way, so log lines name their traces;
/// they leave the process only when [`ENDPOINT_VAR`] is set
/// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
/// `OTEL_EXPORTER_OTLP_HEADERS` and the other standard variables apply).
pub(crate) fn init(
    service_name: &'static str,
    default_level: &str,
    format: LogFormat,
) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => lines.init(),
        // The event's fields at the top level, beside `message`: what log
        // collectors index without a parsing rule.
        LogFormat::Json => lines.json().flatten_event(true).init(),
    }
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name);
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let endpoint = std::env::var(ENDPOINT_VAR)
        .ok()
        .filter(|e| !e.trim().is_empty());
    let mut exporting = false;
    if let Some(endpoint) = endpoint {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                exporting = true;
                tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
            }
            // Telemetry must never keep the relay from relaying.
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "cannot export spans over OTLP; going on without")
            }
        }
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Telemetry {
        provider,
        exporting,
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if self.exporting {
            // Sends the spans still buffered.
            if let Err(e) = self.provider.shutdown() {
                eprintln!("outbox-relay: flushing spans failed: {e}");
            }
        }
    }
}
