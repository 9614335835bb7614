//! Golden files: the encoded bytes of every v1 message are committed under
//! `tests/golden/` and must keep decoding into the same value, forever. A change that
//! breaks one of these is a breaking contract change: make a new version instead.
//!
//! To add a golden file for a NEW message, run with `GOLDEN_WRITE=1` once and commit
//! the new file; existing files are never rewritten by the test.

use std::path::PathBuf;

use contracts::api::{CreateEventRequest, Preferences, RsvpRequest};
use contracts::events::{
    EventCancelledV1, EventCreatedV1, EventMeta, EventSnapshot, EventStatus, EventUpdatedV1,
    PasswordResetRequestedV1, PreferencesChangedV1, RsvpChangedV1, RsvpCounts, RsvpStatus,
    UserRegisteredV1,
};
use contracts::rpc::{Caller, Role, RpcReply, RpcRequest};
use contracts::{DomainEvent, ErrorCode, Problem, wire};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("valid timestamp literal")
}

fn meta(n: u128, aggregate: u128, version: u64) -> EventMeta {
    EventMeta {
        message_id: id(n),
        occurred_at: ts("2030-01-02T03:04:05.123456Z"),
        aggregate_id: id(aggregate),
        aggregate_version: version,
    }
}

fn snapshot() -> EventSnapshot {
    EventSnapshot {
        event_id: id(10),
        organizer_id: id(20),
        title: "Rust meetup".into(),
        description: "Talks and pizza".into(),
        starts_at: ts("2030-06-01T16:00:00Z"),
        ends_at: ts("2030-06-01T19:00:00Z"),
        time_zone: "Europe/Berlin".into(),
        location: "c-base".into(),
        capacity: 40,
        status: EventStatus::Scheduled,
        counts: RsvpCounts {
            going: 3,
            maybe: 1,
            declined: 2,
        },
    }
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.msgpack"))
}

/// Checks that the committed bytes decode to `value` and that encoding `value` still
/// gives those bytes (so producers and consumers agree byte for byte).
fn check<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let path = golden_path(name);
    let encoded = wire::encode(value).expect("encode");
    if !path.exists() {
        assert!(
            std::env::var_os("GOLDEN_WRITE").is_some(),
            "golden file {} is missing; run with GOLDEN_WRITE=1 to create it",
            path.display()
        );
        std::fs::write(&path, &encoded).expect("write golden file");
    }
    let committed = std::fs::read(&path).expect("read golden file");
    let decoded: T = wire::decode(&committed)
        .unwrap_or_else(|e| panic!("{name}: committed bytes no longer decode: {e}"));
    assert_eq!(
        &decoded, value,
        "{name}: committed bytes decode to another value"
    );
    assert_eq!(
        encoded, committed,
        "{name}: encoding changed; adding an optional field needs a new golden file name, \
         anything else a new version"
    );
}

fn check_event<E>(name: &str, event: &E)
where
    E: DomainEvent + PartialEq + std::fmt::Debug,
{
    assert!(
        E::SUBJECT.contains(&format!(".v{}.", E::VERSION)),
        "{name}: subject carries the version"
    );
    check(name, event);
}

#[test]
fn user_registered_v1() {
    check_event(
        "auth.user_registered.v1",
        &UserRegisteredV1 {
            meta: meta(1, 20, 1),
            user_id: id(20),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            role: Role::User,
            verification_token: None,
            unsubscribe_token: None,
        },
    );
    // The optional fields added within v1 (an older reader ignores them).
    check_event(
        "auth.user_registered.v1.tokens",
        &UserRegisteredV1 {
            meta: meta(1, 20, 1),
            user_id: id(20),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            role: Role::User,
            verification_token: Some("verify-abc".into()),
            unsubscribe_token: Some("unsub-xyz".into()),
        },
    );
}

#[test]
fn preferences_changed_v1() {
    let mut preferences = Preferences::default();
    preferences.email.rsvp_received = false;
    check_event(
        "auth.preferences_changed.v1",
        &PreferencesChangedV1 {
            meta: meta(6, 20, 2),
            user_id: id(20),
            preferences,
        },
    );
}

#[test]
fn password_reset_requested_v1() {
    check_event(
        "auth.password_reset_requested.v1",
        &PasswordResetRequestedV1 {
            meta: meta(7, 20, 3),
            user_id: id(20),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            token: "reset-123".into(),
            expires_at: ts("2030-01-02T03:34:05Z"),
        },
    );
}

#[test]
fn event_created_v1() {
    check_event(
        "calendar.event_created.v1",
        &EventCreatedV1 {
            meta: meta(2, 10, 1),
            event: snapshot(),
        },
    );
}

#[test]
fn event_updated_v1() {
    check_event(
        "calendar.event_updated.v1",
        &EventUpdatedV1 {
            meta: meta(3, 10, 2),
            event: snapshot(),
            time_changed: true,
            changed_fields: vec!["starts_at".into(), "ends_at".into()],
        },
    );
}

#[test]
fn event_cancelled_v1() {
    let mut event = snapshot();
    event.status = EventStatus::Cancelled;
    check_event(
        "calendar.event_cancelled.v1",
        &EventCancelledV1 {
            meta: meta(4, 10, 3),
            event,
        },
    );
}

#[test]
fn rsvp_changed_v1() {
    check_event(
        "calendar.rsvp_changed.v1",
        &RsvpChangedV1 {
            meta: meta(5, 10, 4),
            event: snapshot(),
            attendee_id: id(30),
            previous_status: Some(RsvpStatus::Maybe),
            status: RsvpStatus::Going,
        },
    );
}

#[test]
fn rpc_request_v1() {
    check(
        "rpc.request.create_event.v1",
        &RpcRequest {
            caller: Some(Caller {
                user_id: id(20),
                role: Role::User,
            }),
            params: Default::default(),
            query: Default::default(),
            body: CreateEventRequest {
                title: "Rust meetup".into(),
                description: String::new(),
                starts_at: "2030-06-01T18:00:00+02:00".into(),
                ends_at: "2030-06-01T21:00:00+02:00".into(),
                time_zone: "Europe/Berlin".into(),
                location: String::new(),
                capacity: 40,
            },
        },
    );
    check(
        "rpc.request.put_rsvp.v1",
        &RpcRequest::new(RsvpRequest {
            status: RsvpStatus::Declined,
        })
        .with_param("id", id(10).to_string()),
    );
}

#[test]
fn rpc_reply_v1() {
    check(
        "rpc.reply.problem.v1",
        &RpcReply::<()>::Err(
            Problem::new(ErrorCode::EventFull).with_detail("all 40 seats are taken"),
        ),
    );
    check(
        "rpc.reply.ok.v1",
        &RpcReply::Ok {
            status: 201,
            body: RsvpCounts {
                going: 1,
                maybe: 0,
                declined: 0,
            },
        },
    );
}

/// A reader of v1 must accept a message from a newer producer that added an optional
/// field (the compatibility rule within a version).
#[test]
fn unknown_fields_from_newer_producers_are_ignored() {
    #[derive(Serialize)]
    struct UserRegisteredV1Plus<'a> {
        meta: EventMeta,
        user_id: Uuid,
        email: &'a str,
        display_name: &'a str,
        role: Role,
        locale: &'a str,
    }
    let bytes = wire::encode(&UserRegisteredV1Plus {
        meta: meta(1, 20, 1),
        user_id: id(20),
        email: "ada@example.com",
        display_name: "Ada",
        role: Role::Admin,
        locale: "de-DE",
    })
    .expect("encode");
    let decoded: UserRegisteredV1 = wire::decode(&bytes).expect("older reader accepts it");
    assert_eq!(decoded.role, Role::Admin);
    assert_eq!(decoded.email, "ada@example.com");
}

#[test]
fn ids_and_times_are_strings_on_the_wire() {
    // Generic MessagePack→JSON transcoding (gateway, hospital) must show readable ids.
    let bytes = wire::encode(&meta(1, 2, 3)).expect("encode");
    let json: serde_json::Value = wire::decode(&bytes).expect("decode as JSON value");
    assert_eq!(json["message_id"], id(1).to_string());
    assert_eq!(json["occurred_at"], "2030-01-02T03:04:05.123456Z");
    assert_eq!(json["aggregate_version"], 3);
}
