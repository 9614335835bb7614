//! The events this service understands, decoded by their contract type and version.
//!
//! The `Mesh-Message-Type` and `Mesh-Schema-Version` headers pick the Rust type; a type
//! or version this build does not know, or bytes that do not decode, can never succeed
//! on a retry, so they are permanent failures (the message is parked in the hospital
//! with that reason, not retried).
//!
//! Versions: email accepts exactly the versions in [`consumed`] (reported in discovery)
//! and its durables filter those versions' subjects (`calendar.v1.>`): while calendar
//! publishes `calendar.rsvp_changed` v2 beside v1, email still reads v1 only, so it acts
//! once per change. Moving to v2 means decoding it here and filtering
//! `calendar.v2.rsvp.changed` plus the other v1 subjects instead of `calendar.v1.>`.

use contracts::events::{
    DomainEvent, EventCancelledV1, EventCreatedV1, EventMeta, EventUpdatedV1,
    PasswordResetRequestedV1, PreferencesChangedV1, RsvpChangedV1, UserRegisteredV1,
};
use runtime::consumer::{Delivery, HandlerError};
use runtime::rpc::Contracts;

/// The contract versions email reads (each one decoded below), for discovery.
pub fn consumed() -> Contracts {
    Contracts::new()
        .consumes::<UserRegisteredV1>()
        .consumes::<PreferencesChangedV1>()
        .consumes::<PasswordResetRequestedV1>()
        .consumes::<EventCreatedV1>()
        .consumes::<EventUpdatedV1>()
        .consumes::<EventCancelledV1>()
        .consumes::<RsvpChangedV1>()
}

/// One decoded domain event.
#[derive(Debug, Clone)]
pub enum Incoming {
    UserRegistered(UserRegisteredV1),
    PreferencesChanged(PreferencesChangedV1),
    PasswordResetRequested(PasswordResetRequestedV1),
    EventCreated(EventCreatedV1),
    EventUpdated(EventUpdatedV1),
    EventCancelled(EventCancelledV1),
    RsvpChanged(RsvpChangedV1),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message without {0} header")]
    MissingHeader(&'static str),
    #[error("unknown schema version: {message_type} v{version} is not a contract this build reads")]
    Unknown { message_type: String, version: u32 },
    #[error("cannot decode {message_type} v{version}: {source}")]
    Body {
        message_type: &'static str,
        version: u32,
        #[source]
        source: contracts::wire::WireError,
    },
}

impl From<DecodeError> for HandlerError {
    fn from(e: DecodeError) -> Self {
        HandlerError::permanent(e)
    }
}

fn decode<E: DomainEvent>(payload: &[u8]) -> Result<E, DecodeError> {
    contracts::wire::decode(payload).map_err(|source| DecodeError::Body {
        message_type: E::TYPE,
        version: E::VERSION,
        source,
    })
}

fn is<E: DomainEvent>(message_type: &str, version: u32) -> bool {
    message_type == E::TYPE && version == E::VERSION
}

impl Incoming {
    /// Decodes a delivery by its type and version headers.
    pub fn decode(delivery: &Delivery) -> Result<Self, DecodeError> {
        let message_type = delivery
            .message_type
            .as_deref()
            .ok_or(DecodeError::MissingHeader(
                contracts::subjects::headers::MESSAGE_TYPE,
            ))?;
        let version = delivery.schema_version.ok_or(DecodeError::MissingHeader(
            contracts::subjects::headers::SCHEMA_VERSION,
        ))?;
        Self::decode_parts(message_type, version, &delivery.payload)
    }

    /// Decodes a body of the given contract type and version.
    pub fn decode_parts(
        message_type: &str,
        version: u32,
        payload: &[u8],
    ) -> Result<Self, DecodeError> {
        let t = message_type;
        if is::<UserRegisteredV1>(t, version) {
            Ok(Incoming::UserRegistered(decode(payload)?))
        } else if is::<PreferencesChangedV1>(t, version) {
            Ok(Incoming::PreferencesChanged(decode(payload)?))
        } else if is::<PasswordResetRequestedV1>(t, version) {
            Ok(Incoming::PasswordResetRequested(decode(payload)?))
        } else if is::<EventCreatedV1>(t, version) {
            Ok(Incoming::EventCreated(decode(payload)?))
        } else if is::<EventUpdatedV1>(t, version) {
            Ok(Incoming::EventUpdated(decode(payload)?))
        } else if is::<EventCancelledV1>(t, version) {
            Ok(Incoming::EventCancelled(decode(payload)?))
        } else if is::<RsvpChangedV1>(t, version) {
            Ok(Incoming::RsvpChanged(decode(payload)?))
        } else {
            Err(DecodeError::Unknown {
                message_type: message_type.to_owned(),
                version,
            })
        }
    }

    pub fn meta(&self) -> &EventMeta {
        match self {
            Incoming::UserRegistered(e) => e.meta(),
            Incoming::PreferencesChanged(e) => e.meta(),
            Incoming::PasswordResetRequested(e) => e.meta(),
            Incoming::EventCreated(e) => e.meta(),
            Incoming::EventUpdated(e) => e.meta(),
            Incoming::EventCancelled(e) => e.meta(),
            Incoming::RsvpChanged(e) => e.meta(),
        }
    }

    /// The contract type name, for logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Incoming::UserRegistered(_) => UserRegisteredV1::TYPE,
            Incoming::PreferencesChanged(_) => PreferencesChangedV1::TYPE,
            Incoming::PasswordResetRequested(_) => PasswordResetRequestedV1::TYPE,
            Incoming::EventCreated(_) => EventCreatedV1::TYPE,
            Incoming::EventUpdated(_) => EventUpdatedV1::TYPE,
            Incoming::EventCancelled(_) => EventCancelledV1::TYPE,
            Incoming::RsvpChanged(_) => RsvpChangedV1::TYPE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::rpc::Role;
    use uuid::Uuid;

    fn registered() -> UserRegisteredV1 {
        let id = Uuid::now_v7();
        UserRegisteredV1 {
            meta: EventMeta::new(id, 1),
            user_id: id,
            email: "ann@example.com".into(),
            display_name: "Ann".into(),
            role: Role::User,
            verification_token: Some("tok".into()),
            unsubscribe_token: None,
        }
    }

    #[test]
    fn known_types_decode() {
        let ev = registered();
        let bytes = contracts::wire::encode(&ev).unwrap();
        match Incoming::decode_parts(UserRegisteredV1::TYPE, 1, &bytes).unwrap() {
            Incoming::UserRegistered(got) => assert_eq!(got, ev),
            other => panic!("decoded as {other:?}"),
        }
    }

    /// v2 of rsvp_changed, published beside v1, is not a version email declares: on a
    /// subject email receives (a replay, a misrouted filter) it is parked with the reason.
    #[test]
    fn rsvp_changed_v2_is_an_unknown_version_and_parked() {
        use contracts::events::RsvpChangedV2;
        let v1 = RsvpChangedV1 {
            meta: EventMeta::new(Uuid::now_v7(), 2),
            event: contracts::events::EventSnapshot {
                event_id: Uuid::now_v7(),
                organizer_id: Uuid::now_v7(),
                title: "t".into(),
                description: String::new(),
                starts_at: jiff::Timestamp::UNIX_EPOCH,
                ends_at: jiff::Timestamp::UNIX_EPOCH,
                time_zone: "UTC".into(),
                location: String::new(),
                capacity: 1,
                status: contracts::events::EventStatus::Scheduled,
                counts: Default::default(),
            },
            attendee_id: Uuid::now_v7(),
            previous_status: None,
            status: contracts::events::RsvpStatus::Going,
        };
        let bytes = contracts::wire::encode(&RsvpChangedV2::from(&v1)).unwrap();
        let err = Incoming::decode_parts(RsvpChangedV2::TYPE, 2, &bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown schema version: calendar.rsvp_changed v2"),
            "{err}"
        );
        assert!(matches!(
            HandlerError::from(err),
            HandlerError::Permanent(_)
        ));
        assert!(
            consumed()
                .consumes
                .contains(&"calendar.rsvp_changed@1".to_owned())
        );
        assert!(
            !consumed()
                .consumes
                .contains(&"calendar.rsvp_changed@2".to_owned())
        );
    }

    #[test]
    fn unknown_versions_and_bad_bytes_are_permanent() {
        let bytes = contracts::wire::encode(&registered()).unwrap();
        let err = Incoming::decode_parts(UserRegisteredV1::TYPE, 2, &bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::Unknown { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("unknown schema version"), "{err}");
        let err = Incoming::decode_parts("calendar.something_else", 1, &bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Unknown { .. }));
        let err = Incoming::decode_parts(RsvpChangedV1::TYPE, 1, &bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Body { .. }), "{err}");
        let err = Incoming::decode_parts(UserRegisteredV1::TYPE, 1, b"\xc1garbage").unwrap_err();
        assert!(matches!(
            HandlerError::from(err),
            HandlerError::Permanent(_)
        ));
    }
}
