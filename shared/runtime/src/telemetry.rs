//! Logs, traces and metrics, set up in one call.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as JSON lines when
//! `LOG_FORMAT=json` (carrying the `trace_id` and `span_id` of the span they were
//! emitted in, see [`json`]), human-readable otherwise. Traces: every span also goes to
//! an OpenTelemetry tracer, so trace ids exist and propagate over NATS headers even when
//! nothing exports them; spans are exported over OTLP/HTTP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (batched: `OTEL_BSP_SCHEDULE_DELAY` ms between
//! exports, default 5000; what is left is flushed when the guard drops at exit).
//!
//! Metrics: one Prometheus recorder per process ([`metrics`]), rendered at `/metrics`
//! by [`crate::health`]; every name is in [`names`]. Database statement latency comes
//! from sqlx's own statement events ([`queries`]).

pub mod json;
pub mod names;
pub mod queries;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
/// `/metrics` by every service. Every `_seconds` histogram gets [`names::SECONDS_BUCKETS`]
/// (real histograms, so dashboards can aggregate quantiles across replicas).
pub fn metrics() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    names::SECONDS_BUCKETS,
                )
                .and_then(|b| b.install_recorder());
            match builder {
                Ok(handle) => {
                    names::describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no metrics recorder");
                    None
                }
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

    // Filters per layer: logs and spans follow RUST_LOG, while the statement-latency
    // layer always sees sqlx's statement events (which RUST_LOG keeps out of the logs).
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .event_format(json::JsonWithTrace)
            .fmt_fields(JsonFields::new())
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed()
    };
    let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(log_filter())
            .boxed(),
        fmt_layer,
        queries::QueryMetrics
            .with_filter(queries::QueryInterest)
            .boxed(),
    ];
    let _ = tracing_subscriber::registry().with(layers).try_init();
    TelemetryGuard { provider }
}

/// `RUST_LOG`, or `info` with the chatty NATS client and sqlx statements kept at warn.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,sqlx=warn"))
}
