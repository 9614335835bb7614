//! Versioned domain events.
//!
//! Every event carries an [`EventMeta`]: a UUIDv7 message id made when the event is
//! written (never a database sequence, so ids stay unique across replicas and replays),
//! the time it happened, and its aggregate's id and version so a reader can ignore an
//! event older than the state it already holds (deliveries can be reordered by retries).
//!
//! Compatibility rule: within a version a producer may only add optional fields
//! (`#[serde(default)]`); anything else is a new version (`…V2`, on a `v2` subject),
//! published beside the old one until every consumer has moved. The golden files in
//! `tests/golden/` hold the encoded bytes of every released version and must keep
//! decoding.
//!
//! While two versions of one type are published side by side, both copies of one change
//! carry the same `meta.message_id` (the LOGICAL event id consumers dedupe on); only
//! their `Nats-Msg-Id`s differ ([`copy_msg_id`]), since the stream dedupes per stream,
//! not per subject. Every durable filters one version per event type, so nobody acts
//! twice.

use jiff::Timestamp;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::rpc::Role;
use crate::subjects;

/// Identity, time and ordering of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventMeta {
    /// UUIDv7, also the `Nats-Msg-Id` the outbox relay publishes with.
    pub message_id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
    pub aggregate_id: Uuid,
    /// Increases by one with every change of the aggregate.
    pub aggregate_version: u64,
}

impl EventMeta {
    /// New metadata with a fresh UUIDv7 and the current time.
    pub fn new(aggregate_id: Uuid, aggregate_version: u64) -> Self {
        EventMeta {
            message_id: Uuid::now_v7(),
            occurred_at: Timestamp::now(),
            aggregate_id,
            aggregate_version,
        }
    }
}

/// A domain event type: its contract name, schema version and subject.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Contract type name, e.g. `calendar.rsvp_changed`.
    const TYPE: &'static str;
    /// Schema version of this type.
    const VERSION: u32;
    /// Subject it is published on.
    const SUBJECT: &'static str;

    fn meta(&self) -> &EventMeta;
}

macro_rules! domain_event {
    ($ty:ty, $name:literal, $version:literal, $subject:expr) => {
        impl DomainEvent for $ty {
            const TYPE: &'static str = $name;
            const VERSION: u32 = $version;
            const SUBJECT: &'static str = $subject;
            fn meta(&self) -> &EventMeta {
                &self.meta
            }
        }
    };
}

/// A new account. Aggregate: the user (version 1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserRegisteredV1 {
    pub meta: EventMeta,
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    /// Single-use token that proves the address (the welcome mail's verification
    /// link). It only verifies an address and expires, so it may live in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_token: Option<String>,
    /// Token that lets the user's mails carry a one-click `List-Unsubscribe` link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_token: Option<String>,
}
crate::redacted_debug!(UserRegisteredV1 {
    meta, user_id, email, display_name, role;
    verification_token, unsubscribe_token
});
domain_event!(
    UserRegisteredV1,
    "auth.user_registered",
    1,
    subjects::auth::USER_REGISTERED_V1
);

/// A user's notification preferences changed. Aggregate: the user's preferences
/// (version increases with every change; readers keep the highest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreferencesChangedV1 {
    pub meta: EventMeta,
    pub user_id: Uuid,
    pub preferences: crate::api::Preferences,
}
domain_event!(
    PreferencesChangedV1,
    "auth.preferences_changed",
    1,
    subjects::auth::PREFERENCES_CHANGED_V1
);

/// A password reset was requested for an existing account. Carries the single-use,
/// short-lived token the mail links to (useless once used or expired). Aggregate: the
/// user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PasswordResetRequestedV1 {
    pub meta: EventMeta,
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub token: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}
crate::redacted_debug!(PasswordResetRequestedV1 {
    meta, user_id, email, display_name, expires_at;
    token
});
domain_event!(
    PasswordResetRequestedV1,
    "auth.password_reset_requested",
    1,
    subjects::auth::PASSWORD_RESET_REQUESTED_V1
);

/// Lifecycle state of a calendar event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Scheduled,
    Cancelled,
}

/// An attendee's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RsvpStatus {
    Going,
    Maybe,
    Declined,
}

impl RsvpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RsvpStatus::Going => "going",
            RsvpStatus::Maybe => "maybe",
            RsvpStatus::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> Option<RsvpStatus> {
        match s {
            "going" => Some(RsvpStatus::Going),
            "maybe" => Some(RsvpStatus::Maybe),
            "declined" => Some(RsvpStatus::Declined),
            _ => None,
        }
    }
}

/// RSVP counts of an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RsvpCounts {
    pub going: u32,
    pub maybe: u32,
    pub declined: u32,
}

/// The state of a calendar event as of one of its domain events: everything a
/// subscriber needs to render a mail or notification without asking calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventSnapshot {
    pub event_id: Uuid,
    pub organizer_id: Uuid,
    pub title: String,
    pub description: String,
    /// UTC instant; render it in `time_zone`.
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: Timestamp,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub time_zone: String,
    pub location: String,
    pub capacity: u32,
    pub status: EventStatus,
    pub counts: RsvpCounts,
}

/// A new event. Aggregate: the event (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventCreatedV1 {
    pub meta: EventMeta,
    pub event: EventSnapshot,
}
domain_event!(
    EventCreatedV1,
    "calendar.event_created",
    1,
    subjects::calendar::EVENT_CREATED_V1
);

/// An edit of an event by its organizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventUpdatedV1 {
    pub meta: EventMeta,
    pub event: EventSnapshot,
    /// True when `starts_at` or `ends_at` changed (attendees are told).
    pub time_changed: bool,
    /// Names of the fields that changed, e.g. `["title", "capacity"]`.
    pub changed_fields: Vec<String>,
}
domain_event!(
    EventUpdatedV1,
    "calendar.event_updated",
    1,
    subjects::calendar::EVENT_UPDATED_V1
);

/// An event cancelled by its organizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventCancelledV1 {
    pub meta: EventMeta,
    pub event: EventSnapshot,
}
domain_event!(
    EventCancelledV1,
    "calendar.event_cancelled",
    1,
    subjects::calendar::EVENT_CANCELLED_V1
);

/// A new or changed RSVP. Aggregate: the event (every RSVP bumps its version, since it
/// changes the event's counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RsvpChangedV1 {
    pub meta: EventMeta,
    pub event: EventSnapshot,
    pub attendee_id: Uuid,
    /// `None` for a first RSVP.
    pub previous_status: Option<RsvpStatus>,
    pub status: RsvpStatus,
}
domain_event!(
    RsvpChangedV1,
    "calendar.rsvp_changed",
    1,
    subjects::calendar::RSVP_CHANGED_V1
);

/// An RSVP answer as v2 of `calendar.rsvp_changed` carries it: the status became an
/// object, so it can grow (a note now) without another breaking change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RsvpAnswer {
    pub value: RsvpStatus,
    /// The attendee's note with the answer; `None` when they left none.
    #[serde(default)]
    pub note: Option<String>,
}

impl From<RsvpStatus> for RsvpAnswer {
    fn from(value: RsvpStatus) -> Self {
        RsvpAnswer { value, note: None }
    }
}

/// A new or changed RSVP, v2: `status` and `previous_status` are [`RsvpAnswer`] objects
/// instead of bare strings (a breaking change, hence a new version on
/// `calendar.v2.rsvp.changed`, published beside v1 while consumers move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RsvpChangedV2 {
    pub meta: EventMeta,
    pub event: EventSnapshot,
    pub attendee_id: Uuid,
    /// `None` for a first RSVP.
    pub previous_status: Option<RsvpAnswer>,
    pub status: RsvpAnswer,
}
domain_event!(
    RsvpChangedV2,
    "calendar.rsvp_changed",
    2,
    subjects::calendar::RSVP_CHANGED_V2
);

impl From<&RsvpChangedV1> for RsvpChangedV2 {
    /// The v2 copy of a v1 event: the same change, the same logical id.
    fn from(v1: &RsvpChangedV1) -> Self {
        RsvpChangedV2 {
            meta: v1.meta.clone(),
            event: v1.event.clone(),
            attendee_id: v1.attendee_id,
            previous_status: v1.previous_status.map(RsvpAnswer::from),
            status: v1.status.into(),
        }
    }
}

/// The `Nats-Msg-Id` of the copy of an event published as `version` beside the first
/// one: `<message id>:v<version>`. The first copy uses the bare message id; every copy
/// keeps `meta.message_id` (and `Mesh-Message-Id`) unchanged.
pub fn copy_msg_id(message_id: &Uuid, version: u32) -> String {
    format!("{message_id}:v{version}")
}

/// How discovery names a contract: `type@version`, e.g. `calendar.rsvp_changed@2`.
pub fn contract_ref<E: DomainEvent>() -> String {
    format!("{}@{}", E::TYPE, E::VERSION)
}

/// Headers every published event carries besides the trace context.
pub fn event_headers<E: DomainEvent>(event: &E) -> Vec<(&'static str, String)> {
    use crate::subjects::headers::*;
    let meta = event.meta();
    vec![
        (NATS_MSG_ID, meta.message_id.to_string()),
        (MESSAGE_ID, meta.message_id.to_string()),
        (MESSAGE_TYPE, E::TYPE.to_owned()),
        (SCHEMA_VERSION, E::VERSION.to_string()),
        (AGGREGATE_ID, meta.aggregate_id.to_string()),
        (AGGREGATE_VERSION, meta.aggregate_version.to_string()),
        (CONTENT_TYPE, crate::wire::CONTENT_TYPE.to_owned()),
    ]
}

/// Why an edited body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("unknown message type {message_type} version {version}")]
    Unknown { message_type: String, version: u32 },
    #[error("the body does not fit {message_type} v{version}: {reason}")]
    Invalid {
        message_type: String,
        version: u32,
        reason: String,
    },
}

/// Every domain event contract the mesh knows, as (type, version, subject). A released
/// version stays here (and in the golden files) for as long as anyone may still read it.
pub const KNOWN_EVENTS: &[(&str, u32, &str)] = &[
    (
        UserRegisteredV1::TYPE,
        UserRegisteredV1::VERSION,
        UserRegisteredV1::SUBJECT,
    ),
    (
        PreferencesChangedV1::TYPE,
        PreferencesChangedV1::VERSION,
        PreferencesChangedV1::SUBJECT,
    ),
    (
        PasswordResetRequestedV1::TYPE,
        PasswordResetRequestedV1::VERSION,
        PasswordResetRequestedV1::SUBJECT,
    ),
    (
        EventCreatedV1::TYPE,
        EventCreatedV1::VERSION,
        EventCreatedV1::SUBJECT,
    ),
    (
        EventUpdatedV1::TYPE,
        EventUpdatedV1::VERSION,
        EventUpdatedV1::SUBJECT,
    ),
    (
        EventCancelledV1::TYPE,
        EventCancelledV1::VERSION,
        EventCancelledV1::SUBJECT,
    ),
    (
        RsvpChangedV1::TYPE,
        RsvpChangedV1::VERSION,
        RsvpChangedV1::SUBJECT,
    ),
    (
        RsvpChangedV2::TYPE,
        RsvpChangedV2::VERSION,
        RsvpChangedV2::SUBJECT,
    ),
];

fn revalidate<E: DomainEvent>(
    json: serde_json::Value,
) -> Result<(Vec<u8>, EventMeta), ContractError> {
    let invalid = |reason: String| ContractError::Invalid {
        message_type: E::TYPE.to_owned(),
        version: E::VERSION,
        reason,
    };
    let event: E = serde_json::from_value(json).map_err(|e| invalid(e.to_string()))?;
    let bytes = crate::wire::encode(&event).map_err(|e| invalid(e.to_string()))?;
    Ok((bytes, event.meta().clone()))
}

/// Checks a JSON body against the contract named by `message_type` and `version` and
/// encodes it for the wire; returns the bytes and the body's metadata.
pub fn encode_json(
    message_type: &str,
    version: u32,
    json: serde_json::Value,
) -> Result<(Vec<u8>, EventMeta), ContractError> {
    match (message_type, version) {
        (UserRegisteredV1::TYPE, 1) => revalidate::<UserRegisteredV1>(json),
        (PreferencesChangedV1::TYPE, 1) => revalidate::<PreferencesChangedV1>(json),
        (PasswordResetRequestedV1::TYPE, 1) => revalidate::<PasswordResetRequestedV1>(json),
        (EventCreatedV1::TYPE, 1) => revalidate::<EventCreatedV1>(json),
        (EventUpdatedV1::TYPE, 1) => revalidate::<EventUpdatedV1>(json),
        (EventCancelledV1::TYPE, 1) => revalidate::<EventCancelledV1>(json),
        (RsvpChangedV1::TYPE, 1) => revalidate::<RsvpChangedV1>(json),
        (RsvpChangedV2::TYPE, 2) => revalidate::<RsvpChangedV2>(json),
        _ => Err(ContractError::Unknown {
            message_type: message_type.to_owned(),
            version,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    fn schema<T: PartialSchema>() -> serde_json::Value {
        serde_json::to_value(T::schema()).unwrap_or_default()
    }

    /// Every domain event type documents its fields (for the contract docs and tools
    /// that render them); instants are RFC 3339 strings.
    #[test]
    fn event_types_derive_their_schema() {
        let meta = schema::<EventMeta>();
        assert_eq!(meta["properties"]["occurred_at"]["type"], "string");
        assert_eq!(meta["properties"]["occurred_at"]["format"], "date-time");
        assert_eq!(
            schema::<EventSnapshot>()["properties"]["starts_at"]["format"],
            "date-time"
        );
        let cases: [(serde_json::Value, &[&str]); 9] = [
            (
                schema::<UserRegisteredV1>(),
                &["meta", "user_id", "email", "display_name", "role"],
            ),
            (
                schema::<PreferencesChangedV1>(),
                &["meta", "user_id", "preferences"],
            ),
            (
                schema::<PasswordResetRequestedV1>(),
                &["meta", "user_id", "token", "expires_at"],
            ),
            (schema::<EventCreatedV1>(), &["meta", "event"]),
            (
                schema::<EventUpdatedV1>(),
                &["meta", "event", "time_changed", "changed_fields"],
            ),
            (schema::<EventCancelledV1>(), &["meta", "event"]),
            (
                schema::<RsvpChangedV1>(),
                &["meta", "event", "attendee_id", "status"],
            ),
            (
                schema::<RsvpChangedV2>(),
                &["meta", "event", "attendee_id", "status"],
            ),
            (schema::<RsvpAnswer>(), &["value", "note"]),
        ];
        for (schema, fields) in cases {
            for field in fields {
                assert!(
                    schema["properties"].get(field).is_some(),
                    "{field} missing from {schema}"
                );
            }
        }
    }
}
