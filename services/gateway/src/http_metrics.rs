//! HTTP metrics, as one middleware around everything the gateway answers.
//!
//! - `mesh_gateway_requests_total{route, method, status}` and
//!   `mesh_gateway_request_duration_seconds{route, method}` (time to the response
//!   headers): `route` is the template (`/v1/events/{id}/rsvp`), never the path, so ids
//!   do not multiply series; a path that matches nothing counts as `unmatched`.
//! - `mesh_gateway_requests_in_flight`: requests not yet answered.
//! - `mesh_gateway_sse_streams_open`: notification streams whose body is still open (the
//!   response body carries a guard that counts down when the stream ends).
//! - `mesh_gateway_rejections_total{status, reason}` for 401, 403, 429 and 503: the
//!   gateway's own refusals say why ([`Rejection`], set by `ApiError`'s response); a
//!   refusal a service answered is counted under its error code.
//!
//! Routes axum matches itself (stream, ticket, console, health) are named by axum's
//! `MatchedPath`; the route-table handler names the template it matched through
//! [`RouteSlot`], which this middleware puts into the request. The request's trace span
//! gets the same name (`PUT /v1/events/{id}/rsvp`) and `http.route`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use contracts::Problem;
use futures::StreamExt;
use runtime::telemetry::names;

use crate::error::{ApiError, PROBLEM_JSON};
use crate::stream::STREAM_PATH;

/// Where the route-table handler writes the template it matched.
#[derive(Clone, Default, Debug)]
pub struct RouteSlot(Arc<OnceLock<String>>);

impl RouteSlot {
    /// Records `template` as the request's route (the first call wins).
    pub fn set(&self, template: &str) {
        let _ = self.0.set(template.to_owned());
    }
}

/// Names the matched route template for the metrics of the request in `parts`.
pub fn record_route(parts: &axum::http::request::Parts, template: &str) {
    if let Some(slot) = parts.extensions.get::<RouteSlot>() {
        slot.set(template);
    }
}

/// Why the gateway itself refused a request (a response extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection(pub &'static str);

impl Rejection {
    /// The reason label of `err`: the failed check for 401 and 503 (their details are
    /// fixed texts, so the label values stay few), the code otherwise.
    pub fn of(err: &ApiError) -> Rejection {
        Rejection(match err {
            ApiError::Unauthorized(detail) | ApiError::ServiceUnavailable(detail) => detail,
            ApiError::CsrfRejected => "csrf",
            other => other.code().as_str(),
        })
    }
}

/// Bodies read to find a service's error code are never larger than this.
const PROBLEM_BODY_LIMIT: usize = 16 * 1024;

/// The middleware (`axum::middleware::from_fn`).
pub async fn track(mut request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let slot = RouteSlot::default();
    request.extensions_mut().insert(slot.clone());
    let in_flight = InFlight::enter();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    drop(in_flight);

    let route = matched
        .or_else(|| slot.0.get().cloned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // The HTTP span (this middleware runs inside it) is named after the template too.
    let span = tracing::Span::current();
    span.record("http.route", route.as_str());
    runtime::trace::rename_current(format!("{method} {route}"));
    let status = response.status();
    metrics::histogram!(
        names::GATEWAY_REQUEST_DURATION,
        "route" => route.clone(),
        "method" => method,
    )
    .record(elapsed);
    let is_stream = route == STREAM_PATH && status == StatusCode::OK;
    metrics::counter!(
        names::GATEWAY_REQUESTS,
        "route" => route,
        "method" => method,
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    let response = if is_rejection(status) {
        count_rejection(response).await
    } else {
        response
    };
    if is_stream {
        guard_stream(response)
    } else {
        response
    }
}

fn is_rejection(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 429 | 503)
}

/// Methods outside the standard ones would each be a label value: one bucket for them.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `Missing bearer token` → `missing_bearer_token`.
fn label(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

async fn count_rejection(response: Response) -> Response {
    let status = response.status();
    let (reason, response) = match response.extensions().get::<Rejection>().copied() {
        Some(Rejection(reason)) => (label(reason), response),
        None => service_reason(response).await,
    };
    metrics::counter!(
        names::GATEWAY_REJECTIONS,
        "status" => status.as_str().to_owned(),
        "reason" => reason,
    )
    .increment(1);
    response
}

/// A refusal a service answered: its problem's code (a closed list), read from the
/// small problem+json body, which is then put back.
async fn service_reason(response: Response) -> (String, Response) {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if !is_problem {
        return ("other".to_owned(), response);
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, PROBLEM_BODY_LIMIT).await {
        Ok(bytes) => {
            let reason = serde_json::from_slice::<Problem>(&bytes)
                .map(|p| p.code.as_str().to_owned())
                .unwrap_or_else(|_| "other".to_owned());
            (reason, Response::from_parts(parts, Body::from(bytes)))
        }
        // Too large or unreadable: not a problem body the gateway knows.
        Err(_) => (
            "other".to_owned(),
            Response::from_parts(parts, Body::empty()),
        ),
    }
}

/// Counts the stream as open until its body is dropped (the client left, or the
/// gateway ended it).
fn guard_stream(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let open = StreamOpen::enter();
    let body = body.into_data_stream().map(move |chunk| {
        let _still_open = &open;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!(names::GATEWAY_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(names::GATEWAY_IN_FLIGHT).decrement(1.0);
    }
}

struct StreamOpen;

impl StreamOpen {
    fn enter() -> Self {
        metrics::gauge!(names::GATEWAY_SSE_STREAMS).increment(1.0);
        StreamOpen
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        metrics::gauge!(names::GATEWAY_SSE_STREAMS).decrement(1.0);
    }
}

/// Sets the gauges to 0 at start, so they exist before the first request.
pub fn init() {
    metrics::gauge!(names::GATEWAY_IN_FLIGHT).set(0.0);
    metrics::gauge!(names::GATEWAY_SSE_STREAMS).set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_label_values() {
        assert_eq!(label("missing bearer token"), "missing_bearer_token");
        assert_eq!(
            label("invalid, used or expired ticket"),
            "invalid_used_or_expired_ticket"
        );
        assert_eq!(label("rate_limited"), "rate_limited");
    }

    #[test]
    fn gateway_refusals_name_their_check() {
        assert_eq!(
            Rejection::of(&ApiError::Unauthorized("token expired")),
            Rejection("token expired")
        );
        assert_eq!(
            Rejection::of(&ApiError::RateLimited {
                retry_after_secs: 1
            }),
            Rejection("rate_limited")
        );
        assert_eq!(Rejection::of(&ApiError::Forbidden), Rejection("forbidden"));
        assert_eq!(Rejection::of(&ApiError::CsrfRejected), Rejection("csrf"));
    }

    #[test]
    fn odd_methods_share_one_label() {
        assert_eq!(method_label(&Method::PUT), "PUT");
        let odd = Method::from_bytes(b"BREW").expect("a method");
        assert_eq!(method_label(&odd), "other");
    }
}
