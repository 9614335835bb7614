//! Bodies of the public REST API. The gateway transcodes JSON to MessagePack and back;
//! the owning service decodes these types, so a missing or mistyped field is reported
//! by the service as `validation_failed` with serde's explanation.
//!
//! Timestamps on the API are RFC 3339 strings with an offset.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::{EventStatus, RsvpCounts, RsvpStatus};
use crate::rpc::Role;

// ---- auth ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// At least 8 characters.
    pub password: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    pub refresh_token: String,
}

/// Tokens issued by login and refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// Ed25519-signed JWT; send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque, single-use; exchange at `/v1/auth/refresh`.
    pub refresh_token: String,
    pub refresh_expires_in: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: Uuid,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
}

/// Issuer and audience of access tokens.
pub const TOKEN_ISSUER: &str = "mesh-auth";
pub const TOKEN_AUDIENCE: &str = "mesh";

/// One Ed25519 public key in JWK form (RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// Base64url public key.
    pub x: String,
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

// ---- calendar ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventRequest {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// RFC 3339 with offset; the offset must match `time_zone` at that instant.
    #[schema(example = "2030-06-01T18:00:00+02:00")]
    pub starts_at: String,
    #[schema(example = "2030-06-01T21:00:00+02:00")]
    pub ends_at: String,
    /// IANA time zone name.
    #[schema(example = "Europe/Berlin")]
    pub time_zone: String,
    #[serde(default)]
    pub location: String,
    /// Seats for `going` RSVPs, at least 1.
    pub capacity: u32,
}

/// A partial update; absent fields stay as they are. Changing the time needs
/// `starts_at`, `ends_at` and `time_zone` to agree (absent ones keep their value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEventRequest {
    pub title: Option<String>,
    pub description: Option<String>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub time_zone: Option<String>,
    pub location: Option<String>,
    pub capacity: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: Uuid,
    pub organizer_id: Uuid,
    pub title: String,
    pub description: String,
    /// RFC 3339 in the event's own time zone offset.
    pub starts_at: String,
    pub ends_at: String,
    pub time_zone: String,
    pub location: String,
    pub capacity: u32,
    pub status: EventStatus,
    pub counts: RsvpCounts,
    /// The caller's own RSVP, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub my_rsvp: Option<RsvpStatus>,
    /// Increases with every change, RSVPs included.
    pub version: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// `GET /v1/events` query: `from`/`to` (RFC 3339) bound `starts_at`; `mine` is
/// `organizing` or `attending`; `limit` 1-200 (default 50); `cursor` from the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<Event>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RsvpRequest {
    pub status: RsvpStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rsvp {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub status: RsvpStatus,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// The reply of `PUT /v1/events/{id}/rsvp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RsvpResult {
    pub rsvp: Rsvp,
    pub counts: RsvpCounts,
    /// False when the PUT repeated the current status (no event was emitted).
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RsvpPage {
    pub items: Vec<Rsvp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Liveness and readiness report of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub service: String,
    pub version: String,
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
