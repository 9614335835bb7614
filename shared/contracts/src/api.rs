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

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(example = "ada@example.com", max_length = 254)]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// Trimmed, 1 to 100 characters.
    #[schema(example = "Ada", min_length = 1, max_length = 100)]
    pub display_name: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    pub refresh_token: String,
}

crate::redacted_debug!(RegisterRequest { email, display_name; password });
crate::redacted_debug!(LoginRequest { email; password });
crate::redacted_debug!(RefreshRequest { ; refresh_token });
crate::redacted_debug!(LogoutRequest { ; refresh_token });

/// Tokens issued by login and refresh.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
crate::redacted_debug!(TokenResponse { token_type, expires_in, refresh_expires_in; access_token, refresh_token });

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
    #[schema(example = "Rust meetup", min_length = 1, max_length = 200)]
    pub title: String,
    #[serde(default)]
    #[schema(max_length = 5000)]
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
    #[schema(max_length = 500)]
    pub location: String,
    /// Seats for `going` RSVPs.
    #[schema(minimum = 1, maximum = 100_000, example = 40)]
    pub capacity: u32,
}

/// A partial update; absent fields stay as they are. Changing the time needs
/// `starts_at`, `ends_at` and `time_zone` to agree (absent ones keep their value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEventRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub title: Option<String>,
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub time_zone: Option<String>,
    #[schema(max_length = 500)]
    pub location: Option<String>,
    #[schema(minimum = 1, maximum = 100_000)]
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

// ---- preferences, account mails ----

/// Kinds of notification a user can switch per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// To an attendee: their RSVP was recorded (with the `.ics` invitation by mail).
    RsvpConfirmation,
    /// To an organizer: someone RSVP'd or changed their RSVP.
    RsvpReceived,
    /// To attendees: the event's time changed or it was cancelled.
    EventChanged,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::RsvpConfirmation => "rsvp_confirmation",
            NotificationKind::RsvpReceived => "rsvp_received",
            NotificationKind::EventChanged => "event_changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rsvp_confirmation" => Some(NotificationKind::RsvpConfirmation),
            "rsvp_received" => Some(NotificationKind::RsvpReceived),
            "event_changed" => Some(NotificationKind::EventChanged),
            _ => None,
        }
    }

    pub const ALL: [NotificationKind; 3] = [
        NotificationKind::RsvpConfirmation,
        NotificationKind::RsvpReceived,
        NotificationKind::EventChanged,
    ];
}

/// On/off per notification kind for one channel. Account mails (welcome, password
/// reset) are always sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPreferences {
    #[serde(default = "yes")]
    pub rsvp_confirmation: bool,
    #[serde(default = "yes")]
    pub rsvp_received: bool,
    #[serde(default = "yes")]
    pub event_changed: bool,
}

fn yes() -> bool {
    true
}

impl Default for ChannelPreferences {
    fn default() -> Self {
        ChannelPreferences {
            rsvp_confirmation: true,
            rsvp_received: true,
            event_changed: true,
        }
    }
}

impl ChannelPreferences {
    pub fn allows(&self, kind: NotificationKind) -> bool {
        match kind {
            NotificationKind::RsvpConfirmation => self.rsvp_confirmation,
            NotificationKind::RsvpReceived => self.rsvp_received,
            NotificationKind::EventChanged => self.event_changed,
        }
    }

    pub fn set(&mut self, kind: NotificationKind, on: bool) {
        match kind {
            NotificationKind::RsvpConfirmation => self.rsvp_confirmation = on,
            NotificationKind::RsvpReceived => self.rsvp_received = on,
            NotificationKind::EventChanged => self.event_changed = on,
        }
    }
}

/// `GET`/`PUT /v1/me/preferences`: absent channels or kinds are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default)]
    pub email: ChannelPreferences,
    #[serde(default)]
    pub push: ChannelPreferences,
}

/// `POST /v1/auth/password-reset`: always answered 202, whether the account exists or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    pub email: String,
}

/// `POST /v1/auth/password-reset/confirm`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirm {
    pub token: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}
crate::redacted_debug!(PasswordResetConfirm { ; token, new_password });

/// Plain acknowledgement for operations without a resource to return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub status: String,
}

// ---- notifications (push) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// UUIDv7, made before the notification is stored: ordered by creation, but not by
    /// commit (push stores notifications concurrently).
    pub id: Uuid,
    /// The user's notification sequence number: 1, 2, 3, … per user, assigned in commit
    /// order (under a per-user lock in the storing transaction), so every notification
    /// with a lower `seq` was visible before this one. The SSE event id, and what
    /// `Last-Event-ID` resumes from. Absent only from pushes older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub read_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Unread notifications of the caller in all.
    pub unread: u64,
}

/// Internal (gateway → push): what a notification stream missed, oldest first, at most
/// `limit`. Which ones, by the first field that applies:
/// - `newest`: only the caller's newest notification (by `seq`), or none: where a new
///   stream without `Last-Event-ID` starts counting;
/// - `after_seq`: those with a `seq` above it, in `seq` order (the resume point);
/// - else `after`: those with an id above it, in id order (the resume point before
///   `seq` existed; it can miss one stored concurrently with a lower id).
///
/// The two optional fields were added within v1: an older push ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsSince {
    pub after: Uuid,
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub newest: bool,
}

impl NotificationsSince {
    /// Those with a `seq` above `after_seq`.
    pub fn after_seq(after_seq: u64, limit: u32) -> Self {
        NotificationsSince {
            after: Uuid::nil(),
            limit,
            after_seq: Some(after_seq),
            newest: false,
        }
    }

    /// Those with an id above `after` (a resume point from before `seq`).
    pub fn after_id(after: Uuid, limit: u32) -> Self {
        NotificationsSince {
            after,
            limit,
            after_seq: None,
            newest: false,
        }
    }

    /// Only the newest one.
    pub fn newest() -> Self {
        NotificationsSince {
            after: Uuid::nil(),
            limit: 1,
            after_seq: None,
            newest: true,
        }
    }
}

/// `POST /v1/notifications/stream/ticket`: a single-use ticket for
/// `GET /v1/notifications/stream?ticket=…` (browsers' EventSource sends no headers).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamTicket {
    pub ticket: String,
    pub expires_in: u64,
}
crate::redacted_debug!(StreamTicket { expires_in; ticket });
