//! `/healthz` (the process runs), `/readyz` (its dependencies answer) and `/metrics`
//! (Prometheus text) on every service.
//!
//! Gauges that are cheap to read but live elsewhere (the database pool, the outbox
//! backlog) are sampled when `/metrics` is scraped ([`Readiness::on_scrape`]), so they
//! are never older than the scrape and cost nothing when nobody looks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use contracts::api::{Health, HealthCheck};
use tokio_util::sync::CancellationToken;

use crate::db::Database;
use crate::telemetry::names;

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;
type SampleFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How long one scrape-time sampler may take; a slow one leaves its gauges as they were.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The readiness checks of one service, and what `/metrics` samples before it renders.
#[derive(Clone)]
pub struct Readiness {
    service: &'static str,
    version: &'static str,
    checks: Vec<(&'static str, CheckFn)>,
    samplers: Vec<SampleFn>,
}

impl Readiness {
    pub fn new(service: &'static str, version: &'static str) -> Self {
        Readiness {
            service,
            version,
            checks: Vec::new(),
            samplers: Vec::new(),
        }
    }

    /// Runs `f` before every `/metrics` render (bounded by [`SAMPLE_TIMEOUT`]), to set
    /// gauges read from elsewhere.
    pub fn on_scrape<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.samplers.push(Arc::new(move || Box::pin(f())));
        self
    }

    pub fn check<F, Fut>(mut self, name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
        self
    }

    /// Ready when the NATS connection is up.
    pub fn nats(self, client: async_nats::Client) -> Self {
        self.check("nats", move || {
            let ok = crate::nats::is_connected(&client);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("not connected".to_owned())
                }
            }
        })
    }

    /// Ready when the database answers; `/metrics` reports its pool's use.
    pub fn database(self, db: Database) -> Self {
        let pool = db.clone();
        self.check("database", move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|e| e.to_string()) }
        })
        .on_scrape(move || {
            pool.sample_pool_gauges();
            async {}
        })
    }

    async fn report(&self) -> (bool, Health) {
        let mut checks = Vec::new();
        let mut all_ok = true;
        for (name, f) in &self.checks {
            let result = f().await;
            all_ok &= result.is_ok();
            checks.push(HealthCheck {
                name: (*name).to_owned(),
                ok: result.is_ok(),
                detail: result.err(),
            });
        }
        let health = Health {
            status: if all_ok { "ready" } else { "not_ready" }.to_owned(),
            service: self.service.to_owned(),
            version: self.version.to_owned(),
            checks,
        };
        (all_ok, health)
    }
}

/// Routes `/healthz`, `/readyz` and `/metrics`.
pub fn router(readiness: Readiness) -> Router {
    if crate::telemetry::metrics().is_some() {
        metrics::gauge!(
            names::BUILD_INFO,
            "service" => readiness.service,
            "version" => readiness.version,
        )
        .set(1.0);
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(readiness))
}

async fn healthz(State(r): State<Arc<Readiness>>) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        service: r.service.to_owned(),
        version: r.version.to_owned(),
        checks: Vec::new(),
    })
}

/// Prometheus text exposition of the process's metrics, after the samplers ran.
async fn render_metrics(State(r): State<Arc<Readiness>>) -> impl axum::response::IntoResponse {
    let samples = r
        .samplers
        .iter()
        .map(|f| tokio::time::timeout(SAMPLE_TIMEOUT, f()));
    futures::future::join_all(samples).await;
    let body = crate::telemetry::metrics()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

async fn readyz(State(r): State<Arc<Readiness>>) -> (StatusCode, Json<Health>) {
    let (ok, health) = r.report().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}

/// The service's HTTP listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// Binds the service's HTTP listener and returns it with its port (the actual one when
/// `addr` asked for port 0, as tests do).
pub async fn bind(addr: &str) -> Result<(tokio::net::TcpListener, u16), BindError> {
    let err = |source| BindError {
        addr: addr.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let port = listener.local_addr().map_err(err)?.port();
    Ok((listener, port))
}

/// Serves `router` on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
