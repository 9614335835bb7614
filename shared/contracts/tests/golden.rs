//! Golden files: the encoded bytes of every released version of every message are
//! committed under `tests/golden/` (`<type>.v<N>.msgpack`) and must keep decoding into
//! the same value, forever. This is the CI compatibility check: a change that breaks
//! one of these fails with "breaking change to <type> v<N>"; publish a new version
//! beside the old one instead. Every (type, version) in `KNOWN_EVENTS` must have its
//! golden file.
//!
//! To add a golden file for a NEW message, run with `GOLDEN_WRITE=1` once and commit
//! the new file; existing files are never rewritten by the test.

use std::path::PathBuf;

use contracts::api::{
    CreateEventRequest, LoginRequest, Notification, NotificationKind, NotificationsSince,
    Preferences, RsvpRequest,
};
use contracts::events::{
    EventCancelledV1, EventCreatedV1, EventMeta, EventSnapshot, EventStatus, EventUpdatedV1,
    KNOWN_EVENTS, PasswordResetRequestedV1, PreferencesChangedV1, RsvpAnswer, RsvpChangedV1,
    RsvpChangedV2, RsvpCounts, RsvpStatus, UserRegisteredV1,
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
/// gives those bytes (so producers and consumers agree byte for byte). `contract` names
/// the released contract in the failure, e.g. `calendar.rsvp_changed v1`.
fn check<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    check_contract(name, &contract_of(name), value)
}

/// `calendar.rsvp_changed.v1.tokens` → `calendar.rsvp_changed v1`.
fn contract_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.iter().rposition(|p| {
        p.strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) {
        Some(i) => format!("{} {}", parts[..i].join("."), parts[i]),
        None => name.to_owned(),
    }
}

fn breaking(contract: &str) -> String {
    format!(
        "breaking change to {contract}: released encodings no longer decode; \
         publish a new version instead"
    )
}

fn check_contract<T>(name: &str, contract: &str, value: &T)
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
        .unwrap_or_else(|e| panic!("{} (golden file {name}: {e})", breaking(contract)));
    assert_eq!(
        &decoded,
        value,
        "{} (golden file {name} decodes to another value)",
        breaking(contract)
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
    assert!(
        name.starts_with(&format!("{}.v{}", E::TYPE, E::VERSION)),
        "{name}: a golden file of {} v{} is named after them",
        E::TYPE,
        E::VERSION
    );
    check_contract(name, &format!("{} v{}", E::TYPE, E::VERSION), event);
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
fn rsvp_changed_v2() {
    check_event(
        "calendar.rsvp_changed.v2",
        &RsvpChangedV2 {
            meta: meta(8, 10, 5),
            event: snapshot(),
            attendee_id: id(30),
            previous_status: Some(RsvpAnswer {
                value: RsvpStatus::Maybe,
                note: None,
            }),
            status: RsvpAnswer {
                value: RsvpStatus::Going,
                note: Some("bringing a friend".into()),
            },
        },
    );
}

/// v2 is a genuinely breaking change: neither version's bytes decode as the other, so
/// a consumer can only act on the version it declares (and parks the other).
#[test]
fn rsvp_changed_v2_breaks_v1() {
    let v1 = RsvpChangedV1 {
        meta: meta(5, 10, 4),
        event: snapshot(),
        attendee_id: id(30),
        previous_status: None,
        status: RsvpStatus::Going,
    };
    let v2 = RsvpChangedV2::from(&v1);
    assert_eq!(v2.meta, v1.meta, "both copies carry one logical event id");
    assert_eq!(v2.status.value, RsvpStatus::Going);
    let v1_bytes = wire::encode(&v1).expect("encode");
    let v2_bytes = wire::encode(&v2).expect("encode");
    assert!(wire::decode::<RsvpChangedV2>(&v1_bytes).is_err());
    assert!(wire::decode::<RsvpChangedV1>(&v2_bytes).is_err());
    assert_eq!(
        contracts::events::copy_msg_id(&v1.meta.message_id, 2),
        format!("{}:v2", v1.meta.message_id)
    );
}

/// Every released version of every event type has a golden file, and no version of a
/// type was dropped from `KNOWN_EVENTS` while a later one exists.
#[test]
fn every_known_event_version_has_a_golden_file() {
    let mut missing = Vec::new();
    for (message_type, version, subject) in KNOWN_EVENTS {
        let name = format!("{message_type}.v{version}");
        if !golden_path(&name).exists() {
            missing.push(name.clone());
        }
        assert!(
            subject.contains(&format!(".v{version}.")),
            "{name}: subject {subject} carries the version"
        );
        for earlier in 1..*version {
            assert!(
                KNOWN_EVENTS
                    .iter()
                    .any(|(t, v, _)| t == message_type && *v == earlier),
                "{message_type} v{earlier} was released before v{version} and must stay in \
                 KNOWN_EVENTS (with its golden file) while anyone may still read it"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "released versions without a golden file: {missing:?}; add a test that writes \
         tests/golden/<type>.v<N>.msgpack (run once with GOLDEN_WRITE=1)"
    );
}

#[test]
fn breaking_changes_are_named() {
    assert_eq!(
        contract_of("auth.user_registered.v1.tokens"),
        "auth.user_registered v1"
    );
    assert_eq!(
        contract_of("calendar.rsvp_changed.v2"),
        "calendar.rsvp_changed v2"
    );
    // The real check on a deliberately incompatible type: as if `RsvpChangedV1` had been
    // changed in place into v2's shape, its released golden file is read as that type.
    let changed_in_place = RsvpChangedV2 {
        meta: meta(5, 10, 4),
        event: snapshot(),
        attendee_id: id(30),
        previous_status: None,
        status: RsvpAnswer {
            value: RsvpStatus::Going,
            note: None,
        },
    };
    let failure = std::panic::catch_unwind(|| {
        check_contract(
            "calendar.rsvp_changed.v1",
            "calendar.rsvp_changed v1",
            &changed_in_place,
        )
    })
    .expect_err("the compatibility check refuses the change");
    let text = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        text.starts_with(
            "breaking change to calendar.rsvp_changed v1: released encodings no longer decode; \
             publish a new version instead (golden file calendar.rsvp_changed.v1: "
        ),
        "{text}"
    );

    // A change that still decodes, but to another value, is refused too: a field
    // renamed (and made optional so old bytes "decode") loses what v1 producers sent.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct AttendeeRenamed {
        meta: EventMeta,
        #[serde(default)]
        attendee: Option<Uuid>,
    }
    let renamed = AttendeeRenamed {
        meta: meta(5, 10, 4),
        attendee: Some(id(30)),
    };
    let failure = std::panic::catch_unwind(|| {
        check_contract(
            "calendar.rsvp_changed.v1",
            "calendar.rsvp_changed v1",
            &renamed,
        )
    })
    .expect_err("the compatibility check refuses the rename");
    let text = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        text.contains(
            "breaking change to calendar.rsvp_changed v1: released encodings no longer decode; \
             publish a new version instead (golden file calendar.rsvp_changed.v1 decodes to \
             another value)"
        ),
        "{text}"
    );
}

/// The live stream's contracts (push ⇄ gateway). `seq`, `after_seq` and `newest` were
/// added within v1 as optional fields: these files hold the encoding from before them,
/// which still decodes, and a value that leaves them unset still encodes to it.
#[test]
fn notification_and_since_v1() {
    let notification = Notification {
        id: id(40),
        seq: None,
        kind: NotificationKind::RsvpReceived,
        title: "Ada is going to Rust meetup".into(),
        body: "1 going, 0 maybe, 0 declined".into(),
        event_id: Some(id(10)),
        created_at: ts("2030-01-02T03:04:05.123456Z"),
        read_at: None,
    };
    check("push.notification.v1", &notification);
    check(
        "push.notifications_since.v1",
        &NotificationsSince::after_id(id(40), 500),
    );
    let numbered = Notification {
        seq: Some(7),
        ..notification
    };
    let bytes = wire::encode(&numbered).expect("encode");
    assert_eq!(
        wire::decode::<Notification>(&bytes).expect("decode"),
        numbered
    );
    for q in [
        NotificationsSince::after_seq(7, 500),
        NotificationsSince::newest(),
    ] {
        let bytes = wire::encode(&q).expect("encode");
        assert_eq!(
            wire::decode::<NotificationsSince>(&bytes).expect("decode"),
            q
        );
    }
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
            client_ip: None,
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
    // The client address the gateway adds (an optional field: the files above, written
    // before it existed, still decode and encode byte for byte).
    check(
        "rpc.request.login.v1.client_ip",
        &RpcRequest::new(LoginRequest {
            email: "ada@example.com".into(),
            password: "correct horse".into(),
        })
        .with_client_ip(std::net::IpAddr::from([203, 0, 113, 7])),
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
        "rpc.reply.problem.v1.retry_after",
        &RpcReply::<()>::Err(
            Problem::new(ErrorCode::LoginThrottled)
                .with_detail("too many failed logins")
                .with_retry_after(60),
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
