//! Traces: OpenTelemetry spans through `tracing`, exported over OTLP when the standard
//! `OTEL_*` variables ask for it, and W3C trace context carried in and out.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); then spans
//! go over OTLP/HTTP (protobuf) to that endpoint, sampled as `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` say (default: parent-based, always on), named after
//! `OTEL_SERVICE_NAME` (default `roomcast-gateway`).
//!
//! A publish starts a `publish` span — continuing the caller's trace when the request
//! carries a `traceparent` header — and writes its context into the envelope's `trace`
//! field; every node that delivers the message records a `deliver` span as its child
//! (node id, socket count). One trace then shows publish → bus → each node's delivery.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header (and envelope field) that carries a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TelemetryError(String);

/// The trace pipeline of the process, if the environment turned it on. Keep it for the
/// process's life and call [`Telemetry::shutdown`] at exit, which sends what is buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

impl Telemetry {
    /// Whether the `OTEL_*` variables ask for trace export.
    pub fn wanted() -> bool {
        (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            && !env_is("OTEL_SDK_DISABLED", "true")
            && !env_is("OTEL_TRACES_EXPORTER", "none")
    }

    /// The pipeline the environment asks for ([`Telemetry::wanted`]), or an inactive one.
    pub fn from_env() -> Result<Self, TelemetryError> {
        if !Self::wanted() {
            return Ok(Self::default());
        }
        Self::build(
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build(),
        )
    }

    /// Exports every span to the OTLP/HTTP receiver at `url` (`http://host:4318`),
    /// whatever the environment says; the other `OTEL_*` variables still apply.
    pub fn to_endpoint(url: &str) -> Result<Self, TelemetryError> {
        use opentelemetry_otlp::WithExportConfig as _;
        Self::build(
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", url.trim_end_matches('/')))
                .build(),
        )
    }

    fn build(
        exporter: Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError>,
    ) -> Result<Self, TelemetryError> {
        let exporter = exporter.map_err(|e| TelemetryError(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !env_set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name("roomcast-gateway");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Self {
            provider: Some(provider),
        })
    }

    /// Whether spans are exported.
    pub fn is_active(&self) -> bool {
        self.provider.is_some()
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans, when active.
    pub fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let tracer = self.provider.as_ref()?.tracer("roomcast");
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// Sends every finished span now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(error = %e, "could not flush traces");
        }
    }

    /// Sends what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "could not shut the trace exporter down cleanly");
        }
    }
}

/// The trace context a W3C `traceparent` value names (empty if it is not valid).
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of `span`, when it belongs to a (sampled or not) OpenTelemetry trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the trace `traceparent` names, if it names a valid one.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    let cx = context_from_traceparent(tp);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
