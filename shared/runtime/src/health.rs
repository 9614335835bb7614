//! `/healthz` (the process runs) and `/readyz` (its dependencies answer) on every service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use contracts::api::{Health, HealthCheck};
use tokio_util::sync::CancellationToken;

use crate::db::Database;

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The readiness checks of one service.
#[derive(Clone)]
pub struct Readiness {
    service: &'static str,
    version: &'static str,
    checks: Vec<(&'static str, CheckFn)>,
}

impl Readiness {
    pub fn new(service: &'static str, version: &'static str) -> Self {
        Readiness {
            service,
            version,
            checks: Vec::new(),
        }
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

    /// Ready when the database answers.
    pub fn database(self, db: Database) -> Self {
        self.check("database", move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|e| e.to_string()) }
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

/// Routes `/healthz` and `/readyz`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

/// Prometheus text exposition of the process's metrics.
async fn metrics() -> impl axum::response::IntoResponse {
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
