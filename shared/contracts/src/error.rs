//! The error codes of the public API: one enum, each code documented, each with the
//! HTTP status it travels with. Clients match on `code`, never on `detail` text.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable, machine-readable error code carried in every problem+json body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON (400).
    MalformedJson,
    /// The request is malformed in another way: a bad path parameter, query or header (400).
    BadRequest,
    /// The body is JSON but does not fit the operation: a missing or mistyped field,
    /// a value out of range, an end before the start (422).
    ValidationFailed,
    /// A timestamp's offset disagrees with the named IANA time zone at that instant,
    /// or the zone does not exist (422).
    TimeZoneMismatch,
    /// No valid access token was presented: missing, malformed, forged or expired (401).
    Unauthorized,
    /// Email and password do not match a user. The same code for an unknown email and a
    /// wrong password, so the API does not reveal who has an account (401).
    InvalidCredentials,
    /// The refresh token is unknown, expired or revoked (401).
    InvalidRefreshToken,
    /// The caller is authenticated but may not do this, e.g. edit another user's event (403).
    Forbidden,
    /// The resource does not exist, or the caller may not know it exists (404).
    NotFound,
    /// No route matches the method and path (404).
    RouteNotFound,
    /// The path exists but not with this method (405).
    MethodNotAllowed,
    /// An account with this email already exists (409).
    EmailTaken,
    /// The event has no seat left for another `going` RSVP (409).
    EventFull,
    /// The event is cancelled: no RSVP or edit is possible (409).
    EventCancelled,
    /// The event has already started or ended: no RSVP is possible (409).
    EventPast,
    /// The new capacity is below the number of attendees already going (409).
    CapacityBelowGoing,
    /// A request with this Idempotency-Key is still being processed (409).
    IdempotencyKeyInFlight,
    /// This Idempotency-Key was already used with a different request body (422).
    IdempotencyKeyReused,
    /// The body is larger than the gateway accepts (413).
    PayloadTooLarge,
    /// The body is not `application/json` (415).
    UnsupportedMediaType,
    /// Too many requests from this caller; retry after the `Retry-After` header (429).
    RateLimited,
    /// Too many failed logins for this account or from this address: logins are refused
    /// until the `Retry-After` header's seconds have passed. Answered alike for unknown
    /// and existing accounts, so it does not reveal who has one (429).
    LoginThrottled,
    /// The owning service has no instance answering right now (503).
    ServiceUnavailable,
    /// The owning service did not answer within the gateway's deadline (504).
    Timeout,
    /// An unexpected failure; the detail is logged with the trace id, not returned (500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is returned with.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedJson | BadRequest => 400,
            Unauthorized | InvalidCredentials | InvalidRefreshToken => 401,
            Forbidden => 403,
            NotFound | RouteNotFound => 404,
            MethodNotAllowed => 405,
            EmailTaken
            | EventFull
            | EventCancelled
            | EventPast
            | CapacityBelowGoing
            | IdempotencyKeyInFlight => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            ValidationFailed | TimeZoneMismatch | IdempotencyKeyReused => 422,
            RateLimited | LoginThrottled => 429,
            Internal => 500,
            ServiceUnavailable => 503,
            Timeout => 504,
        }
    }

    /// A short, human-readable summary of the code (the problem's `title`).
    pub fn title(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "Malformed JSON body",
            BadRequest => "Bad request",
            ValidationFailed => "Validation failed",
            TimeZoneMismatch => "Time zone mismatch",
            Unauthorized => "Unauthorized",
            InvalidCredentials => "Invalid credentials",
            InvalidRefreshToken => "Invalid refresh token",
            Forbidden => "Forbidden",
            NotFound => "Not found",
            RouteNotFound => "No such route",
            MethodNotAllowed => "Method not allowed",
            EmailTaken => "Email already registered",
            EventFull => "Event is full",
            EventCancelled => "Event is cancelled",
            EventPast => "Event is in the past",
            CapacityBelowGoing => "Capacity below attendees going",
            IdempotencyKeyInFlight => "Request with this Idempotency-Key in flight",
            IdempotencyKeyReused => "Idempotency-Key reused with a different request",
            PayloadTooLarge => "Payload too large",
            UnsupportedMediaType => "Unsupported media type",
            RateLimited => "Too many requests",
            LoginThrottled => "Too many failed logins",
            ServiceUnavailable => "Service unavailable",
            Timeout => "Upstream timeout",
            Internal => "Internal error",
        }
    }

    /// The snake_case wire name, e.g. `event_full`.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "malformed_json",
            BadRequest => "bad_request",
            ValidationFailed => "validation_failed",
            TimeZoneMismatch => "time_zone_mismatch",
            Unauthorized => "unauthorized",
            InvalidCredentials => "invalid_credentials",
            InvalidRefreshToken => "invalid_refresh_token",
            Forbidden => "forbidden",
            NotFound => "not_found",
            RouteNotFound => "route_not_found",
            MethodNotAllowed => "method_not_allowed",
            EmailTaken => "email_taken",
            EventFull => "event_full",
            EventCancelled => "event_cancelled",
            EventPast => "event_past",
            CapacityBelowGoing => "capacity_below_going",
            IdempotencyKeyInFlight => "idempotency_key_in_flight",
            IdempotencyKeyReused => "idempotency_key_reused",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            LoginThrottled => "login_throttled",
            ServiceUnavailable => "service_unavailable",
            Timeout => "timeout",
            Internal => "internal",
        }
    }

    /// Every code, for documentation and exhaustiveness tests.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::MalformedJson,
        ErrorCode::BadRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::TimeZoneMismatch,
        ErrorCode::Unauthorized,
        ErrorCode::InvalidCredentials,
        ErrorCode::InvalidRefreshToken,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RouteNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::EmailTaken,
        ErrorCode::EventFull,
        ErrorCode::EventCancelled,
        ErrorCode::EventPast,
        ErrorCode::CapacityBelowGoing,
        ErrorCode::IdempotencyKeyInFlight,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::LoginThrottled,
        ErrorCode::ServiceUnavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid input field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer-like path of the field, e.g. `ends_at`.
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem details body (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type: `/problems/<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Trace id of the request, for support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Seconds to wait before trying again (429, 503); the gateway also sends them as the
    /// `Retry-After` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(code: ErrorCode) -> Self {
        Problem {
            type_uri: format!("/problems/{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.status(),
            code,
            detail: None,
            errors: Vec::new(),
            trace_id: None,
            retry_after: None,
        }
    }

    /// Sets the seconds to wait before retrying (at least 1: `Retry-After: 0` would
    /// invite an immediate retry that is refused again).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_field(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.code),
            None => write!(f, "{}", self.code),
        }
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!((400..600).contains(&code.status()));
        }
    }
}
