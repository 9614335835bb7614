//! The HTTP stack: the generic handler behind request ids, tracing, CORS, the request
//! timeout and the problem+json safety net; the gateway's own notification-stream routes,
//! the web console, health, readiness and the OpenAPI document (of the current discovered
//! table) beside it.
//!
//! The request timeout bounds producing the response (for a stream: authentication,
//! subscribing and the response headers), not the body: a notification stream stays
//! open after its headers are sent, and ends on shutdown or when the client leaves.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use runtime::health::Readiness;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::console;
use crate::error::{ApiError, problemize};
use crate::http_metrics;
use crate::idempotency;
use crate::proxy::{self, Gateway, REQUEST_ID_HEADER};
use crate::stream;

/// Settings of the HTTP stack.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub http_timeout: Duration,
    pub cors_origins: Vec<String>,
    /// Whether the console's cookies are marked `Secure`.
    pub cookie_secure: bool,
}

/// The gateway's whole router.
pub fn router(gateway: Arc<Gateway>, readiness: Readiness, options: &HttpOptions) -> Router {
    let directory = gateway.directory.clone();
    let mut app = Router::new()
        // Answered by the gateway itself; everything else goes through the route table.
        .route(stream::STREAM_PATH, get(stream::open))
        .route(stream::TICKET_PATH, post(stream::issue_ticket))
        .fallback(proxy::handle)
        .with_state(gateway.clone())
        .merge(console::router(gateway, options.cookie_secure))
        .merge(runtime::health::router(readiness))
        .route(
            "/openapi.json",
            get(move || {
                let doc: Bytes = directory.snapshot().openapi.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        // Inside the trace span, so a timeout is logged and carries the trace id.
        .layer(middleware::from_fn_with_state(
            options.http_timeout,
            timeout,
        ))
        .layer(middleware::map_response(problemize));
    if let Some(cors) = cors(&options.cors_origins) {
        app = app.layer(cors);
    }
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    .on_request(())
                    .on_failure(())
                    .on_response(on_response),
            )
            .layer(middleware::from_fn(http_metrics::track))
            .layer(PropagateRequestIdLayer::new(request_id)),
    )
}

fn make_span(request: &axum::http::Request<Body>) -> Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "http.request",
        otel.name = %request.method(),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
    )
}

fn on_response(response: &Response, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    tracing::info!(
        status,
        latency_ms = latency.as_millis() as u64,
        "request served"
    );
}

/// Bounds the time to a response (headers); answers 504 `timeout` as problem+json. A
/// response body still streaming afterwards (a notification stream) is not cut.
async fn timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Closed (no layer, so browsers refuse cross-origin calls) unless origins are listed.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(origin = %o, "ignoring invalid CORS origin");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(idempotency::HEADER),
                HeaderName::from_static(REQUEST_ID_HEADER),
                // Sent by `EventSource` when it reconnects to the notification stream.
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static(idempotency::REPLAYED_HEADER),
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
            ])
            .max_age(Duration::from_secs(600)),
    )
}
