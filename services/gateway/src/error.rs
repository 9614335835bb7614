//! The gateway's one error type and its one mapping to `application/problem+json`.
//!
//! Every failure the gateway answers itself (routing, auth, body checks, rate limits,
//! idempotency, transport) is an [`ApiError`]; a problem returned by a service passes
//! through as [`ApiError::Upstream`]. Internal errors are logged here, once, with their
//! cause chain, and leave the gateway as an opaque 500 carrying only the trace id.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contracts::{ErrorCode, Problem};

/// `Content-Type` of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// `Retry-After` (seconds) of a 503: no instance answers a known route, the bus or a
/// store is not there yet. Long enough for a restarting instance to register.
pub const SERVICE_UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for this path")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: Vec<Method> },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// No valid access token; the detail says which check failed (never the token).
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden")]
    Forbidden,
    /// A cookie-authenticated change without the matching `X-CSRF-Token` header.
    #[error("CSRF token missing or wrong")]
    CsrfRejected,
    #[error("rate limited, retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this idempotency key is in flight")]
    IdempotencyKeyInFlight,
    #[error("service unavailable: {0}")]
    ServiceUnavailable(&'static str),
    #[error("upstream timeout")]
    Timeout,
    /// A problem answered by the owning service, passed through as is.
    #[error("service answered {0}")]
    Upstream(Problem),
    #[error("{context}")]
    Internal {
        context: &'static str,
        #[source]
        source: BoxError,
    },
}

impl ApiError {
    /// Wraps an unexpected failure; `context` says what the gateway was doing.
    pub fn internal(context: &'static str, source: impl Into<BoxError>) -> Self {
        ApiError::Internal {
            context,
            source: source.into(),
        }
    }

    /// The stable code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::RouteNotFound => ErrorCode::RouteNotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::MalformedJson(_) => ErrorCode::MalformedJson,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden | ApiError::CsrfRejected => ErrorCode::Forbidden,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            ApiError::IdempotencyKeyInFlight => ErrorCode::IdempotencyKeyInFlight,
            ApiError::ServiceUnavailable(_) => ErrorCode::ServiceUnavailable,
            ApiError::Timeout => ErrorCode::Timeout,
            ApiError::Upstream(p) => p.code,
            ApiError::Internal { .. } => ErrorCode::Internal,
        }
    }

    /// The problem body, without trace id.
    pub fn problem(&self) -> Problem {
        let problem = Problem::new(self.code());
        match self {
            ApiError::Upstream(p) => {
                let mut p = p.clone();
                // A service must not be able to make the gateway answer a non-error status.
                if !(400..=599).contains(&p.status) {
                    p.status = p.code.status();
                }
                p
            }
            ApiError::MethodNotAllowed { allow } => {
                let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
                problem.with_detail(format!("allowed: {}", allow.join(", ")))
            }
            ApiError::BadRequest(detail) | ApiError::MalformedJson(detail) => {
                problem.with_detail(detail.clone())
            }
            ApiError::UnsupportedMediaType => {
                problem.with_detail("the body must be sent as Content-Type: application/json")
            }
            ApiError::PayloadTooLarge { limit } => {
                problem.with_detail(format!("the body may be at most {limit} bytes"))
            }
            ApiError::Unauthorized(detail) => problem.with_detail(*detail),
            ApiError::RateLimited { retry_after_secs } => problem
                .with_detail(format!("retry after {retry_after_secs} s"))
                .with_retry_after(*retry_after_secs),
            ApiError::ServiceUnavailable(detail) => problem.with_detail(*detail),
            ApiError::CsrfRejected => problem.with_detail("CSRF token missing or wrong"),
            ApiError::RouteNotFound
            | ApiError::Forbidden
            | ApiError::IdempotencyKeyReused
            | ApiError::IdempotencyKeyInFlight
            | ApiError::Timeout
            | ApiError::Internal { .. } => problem,
        }
    }

    /// Headers that go with the error (`Allow`, `WWW-Authenticate`, `Retry-After`).
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            ApiError::MethodNotAllowed { allow } => {
                let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
                if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                    headers.insert(header::ALLOW, v);
                }
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::ServiceUnavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(SERVICE_UNAVAILABLE_RETRY_AFTER_SECS),
                );
            }
            // A service's 429 (auth's login throttling) says how long to wait.
            ApiError::Upstream(Problem {
                retry_after: Some(secs),
                ..
            }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            _ => {}
        }
        headers
    }
}

/// Logs an internal error with its whole cause chain.
fn log_internal(err: &ApiError) {
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(error = %chain, "internal error");
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Internal { .. }) {
            log_internal(&self);
        }
        let mut problem = self.problem();
        if problem.trace_id.is_none() {
            problem.trace_id = runtime::trace::current_trace_id();
        }
        let mut response = problem_response(&problem);
        response.headers_mut().extend(self.headers());
        response
            .extensions_mut()
            .insert(crate::http_metrics::Rejection::of(&self));
        response
    }
}

/// A `Problem` as an `application/problem+json` response with the problem's status.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| {
        // Serializing a struct of strings cannot fail; keep a fixed body just in case.
        br#"{"type":"/problems/internal","title":"Internal error","status":500,"code":"internal"}"#
            .to_vec()
    });
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body,
    )
        .into_response()
}

/// The code an error status stands for, for responses made outside the gateway's own
/// code (axum or tower-http answering with an empty body).
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::RouteNotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 | 504 => ErrorCode::Timeout,
        409 => ErrorCode::IdempotencyKeyInFlight,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::ValidationFailed,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::ServiceUnavailable,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}

/// Middleware safety net: an error response without a JSON body (an axum or tower-http
/// rejection) is rewritten as problem+json with the same status and headers, so no
/// plain-text error ever leaves the gateway.
pub async fn problemize(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut problem = Problem::new(code_for_status(status));
    problem.status = status.as_u16();
    problem.trace_id = runtime::trace::current_trace_id();
    let fresh = problem_response(&problem);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_and_code(err: ApiError) -> (u16, serde_json::Value, HeaderMap) {
        let response = err.into_response();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 16))
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (status, json, headers)
    }

    #[test]
    fn every_error_code_keeps_its_status() {
        for code in ErrorCode::ALL {
            let (status, body, headers) = status_and_code(ApiError::Upstream(Problem::new(*code)));
            assert_eq!(status, code.status(), "{code}");
            assert_eq!(body["code"], code.as_str());
            assert_eq!(body["status"], code.status());
            assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
        }
    }

    #[test]
    fn gateway_errors_map_to_their_codes() {
        let cases = [
            (ApiError::RouteNotFound, ErrorCode::RouteNotFound),
            (
                ApiError::MethodNotAllowed {
                    allow: vec![Method::GET],
                },
                ErrorCode::MethodNotAllowed,
            ),
            (ApiError::BadRequest("x".into()), ErrorCode::BadRequest),
            (
                ApiError::MalformedJson("x".into()),
                ErrorCode::MalformedJson,
            ),
            (
                ApiError::UnsupportedMediaType,
                ErrorCode::UnsupportedMediaType,
            ),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                ErrorCode::PayloadTooLarge,
            ),
            (ApiError::Unauthorized("x"), ErrorCode::Unauthorized),
            (ApiError::Forbidden, ErrorCode::Forbidden),
            (ApiError::CsrfRejected, ErrorCode::Forbidden),
            (
                ApiError::RateLimited {
                    retry_after_secs: 1,
                },
                ErrorCode::RateLimited,
            ),
            (
                ApiError::IdempotencyKeyReused,
                ErrorCode::IdempotencyKeyReused,
            ),
            (
                ApiError::IdempotencyKeyInFlight,
                ErrorCode::IdempotencyKeyInFlight,
            ),
            (
                ApiError::ServiceUnavailable("x"),
                ErrorCode::ServiceUnavailable,
            ),
            (ApiError::Timeout, ErrorCode::Timeout),
            (
                ApiError::internal("boom", std::io::Error::other("disk")),
                ErrorCode::Internal,
            ),
        ];
        for (err, code) in cases {
            let (status, body, _) = status_and_code(err);
            assert_eq!(status, code.status(), "{code}");
            assert_eq!(body["code"], code.as_str());
            assert_eq!(body["type"], format!("/problems/{code}"));
        }
    }

    #[test]
    fn internal_errors_are_opaque() {
        let (_, body, _) = status_and_code(ApiError::internal(
            "cannot encode",
            std::io::Error::other("secret detail"),
        ));
        assert!(body.get("detail").is_none());
        assert!(!body.to_string().contains("secret"));
    }

    #[test]
    fn error_headers_are_set() {
        let (_, _, h) = status_and_code(ApiError::Unauthorized("missing"));
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
        let (_, _, h) = status_and_code(ApiError::RateLimited {
            retry_after_secs: 3,
        });
        assert_eq!(h[header::RETRY_AFTER], "3");
        let (_, body, h) = status_and_code(ApiError::Upstream(
            Problem::new(ErrorCode::LoginThrottled).with_retry_after(42),
        ));
        assert_eq!(h[header::RETRY_AFTER], "42");
        assert_eq!(body["retry_after"], 42);
        let (_, _, h) = status_and_code(ApiError::MethodNotAllowed {
            allow: vec![Method::GET, Method::PATCH],
        });
        assert_eq!(h[header::ALLOW], "GET, PATCH");
    }

    #[test]
    fn upstream_problem_with_bogus_status_is_corrected() {
        let mut p = Problem::new(ErrorCode::EventFull);
        p.status = 200;
        let (status, _, _) = status_and_code(ApiError::Upstream(p));
        assert_eq!(status, 409);
    }

    #[test]
    fn plain_error_responses_become_problems() {
        let plain = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET")],
            "nope",
        )
            .into_response();
        let fixed = futures::executor::block_on(problemize(plain));
        assert_eq!(fixed.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(fixed.headers()[header::ALLOW], "GET");
        assert_eq!(fixed.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
