//! Logs and traces, set up in one call.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as JSON lines when
//! `LOG_FORMAT=json`, human-readable otherwise. Traces: every span also goes to an
//! OpenTelemetry tracer, so trace ids exist and propagate over NATS headers even when
//! nothing exports them; spans are exported over OTLP/HTTP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes exported spans when dropped (keep it alive for the life of `main`).
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder (installed by the first call), rendered at
/// `/metrics` by every service.
pub fn metrics() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no metrics recorder");
                None
            }
        })
        .as_ref()
}

/// Installs the global subscriber. Safe to call twice (the second call only returns a
/// guard), so tests may start several services in one process.
pub fn init(service_name: &'static str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = metrics();

    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    if endpoint.as_deref().is_some_and(|e| !e.is_empty()) {
        // The blocking HTTP client must not be built on a runtime thread.
        let exporter = std::thread::spawn(|| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
        })
        .join();
        match exporter {
            Ok(Ok(exporter)) => builder = builder.with_batch_exporter(exporter),
            Ok(Err(e)) => eprintln!("OTLP exporter disabled: {e}"),
            Err(_) => eprintln!("OTLP exporter disabled: builder panicked"),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(service_name);
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,sqlx=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(fmt_layer)
        .try_init();
    TelemetryGuard { provider }
}
