//! Names on the bus, defined once.
//!
//! Scheme:
//! - domain events: `<context>.v<version>.<aggregate>.<fact>` (e.g. `calendar.v1.rsvp.changed`),
//!   stored in one stream per bounded context (`AUTH`, `CALENDAR`);
//! - request/reply: `svc.<context>.v<version>.<operation>`. The `svc.` prefix lies outside
//!   every stream's subjects: a request captured by a stream would get a publish ack
//!   instead of the service's reply.

/// A JetStream stream owned by one bounded context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: &'static [&'static str],
    pub description: &'static str,
    /// Maximum age of a message in seconds; 0 keeps messages forever.
    pub max_age_secs: u64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped by the server. It must cover
    /// the gap between an outbox relay publishing a row and recording that it did.
    pub duplicate_window_secs: u64,
}

/// Events of the auth context. Kept forever: a new subscriber rebuilds its user read
/// model from the start of this stream.
pub const AUTH_STREAM: StreamSpec = StreamSpec {
    name: "AUTH",
    subjects: &["auth.>"],
    description: "Domain events of the auth context (users, preferences)",
    max_age_secs: 0,
    duplicate_window_secs: 20 * 60,
};

/// Events of the calendar context, kept 90 days.
pub const CALENDAR_STREAM: StreamSpec = StreamSpec {
    name: "CALENDAR",
    subjects: &["calendar.>"],
    description: "Domain events of the calendar context (events, RSVPs)",
    max_age_secs: 90 * 24 * 3600,
    duplicate_window_secs: 20 * 60,
};

/// The dead-letter stream (the message hospital's ward): one subject per durable,
/// `dlq.<durable>`. Limits retention so it can be browsed; 30 days and 1 GiB by default
/// (the hospital may provision other limits); discard-new, so a full ward refuses new
/// parks instead of dropping old ones.
pub const DLQ_STREAM: StreamSpec = StreamSpec {
    name: "DLQ",
    subjects: &["dlq.>"],
    description: "Parked messages with their diagnosis (the message hospital)",
    max_age_secs: 30 * 24 * 3600,
    duplicate_window_secs: 2 * 3600,
};

/// Default size limit of the dead-letter stream.
pub const DLQ_MAX_BYTES: i64 = 1024 * 1024 * 1024;

/// Every domain stream the mesh provisions (the DLQ has its own limits).
pub const ALL_STREAMS: &[StreamSpec] = &[AUTH_STREAM, CALENDAR_STREAM];

/// The server's notices that a durable reached max deliveries for a message
/// (`…MAX_DELIVERIES.<stream>.<durable>`, JSON with the stream sequence, no payload).
pub const MAX_DELIVERIES_ADVISORIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>";

/// The subject a durable parks a message on.
pub fn dlq_subject(durable: &str) -> String {
    format!("dlq.{durable}")
}

/// The bounded-context prefix of a domain stream's subjects (`CALENDAR` → `calendar`).
pub fn stream_prefix(stream: &str) -> Option<&'static str> {
    ALL_STREAMS
        .iter()
        .find(|s| s.name == stream)
        .and_then(|s| s.subjects.first())
        .map(|s| s.trim_end_matches(".>"))
}

/// Replays to ONE durable go to `<context>.replay.<durable>.<original subject>`: inside
/// the source stream (so the durable can filter on it), but matched only by that
/// durable's extra filter, never by another service's `<context>.v1.>`.
pub fn replay_filter(stream: &str, durable: &str) -> Option<String> {
    stream_prefix(stream).map(|p| format!("{p}.replay.{durable}.>"))
}

/// The replay subject of `original_subject` for `durable`.
pub fn replay_subject(stream: &str, durable: &str, original_subject: &str) -> Option<String> {
    stream_prefix(stream).map(|p| format!("{p}.replay.{durable}.{original_subject}"))
}

/// The original subject of a replayed message, if `subject` is a replay subject.
pub fn original_of_replay(subject: &str) -> Option<&str> {
    let mut parts = subject.splitn(4, '.');
    let _context = parts.next()?;
    (parts.next()? == "replay").then_some(())?;
    let _durable = parts.next()?;
    parts.next()
}

pub mod auth {
    pub const USER_REGISTERED_V1: &str = "auth.v1.user.registered";
    pub const PREFERENCES_CHANGED_V1: &str = "auth.v1.preferences.changed";
    pub const PASSWORD_RESET_REQUESTED_V1: &str = "auth.v1.password_reset.requested";

    /// NATS micro-service name of the auth context.
    pub const SERVICE: &str = "auth";
    pub const RPC_REGISTER: &str = "svc.auth.v1.register";
    pub const RPC_LOGIN: &str = "svc.auth.v1.login";
    pub const RPC_REFRESH: &str = "svc.auth.v1.refresh";
    pub const RPC_LOGOUT: &str = "svc.auth.v1.logout";
    pub const RPC_ME: &str = "svc.auth.v1.me";
    /// Returns the JSON Web Key Set the gateway verifies access tokens with.
    pub const RPC_JWKS: &str = "svc.auth.v1.jwks";
    pub const RPC_GET_PREFERENCES: &str = "svc.auth.v1.preferences.get";
    pub const RPC_PUT_PREFERENCES: &str = "svc.auth.v1.preferences.put";
    pub const RPC_REQUEST_PASSWORD_RESET: &str = "svc.auth.v1.password_reset.request";
    pub const RPC_CONFIRM_PASSWORD_RESET: &str = "svc.auth.v1.password_reset.confirm";
    pub const RPC_VERIFY_EMAIL: &str = "svc.auth.v1.verify_email";
    pub const RPC_UNSUBSCRIBE: &str = "svc.auth.v1.unsubscribe";
    /// The outbox's backlog, for ops (see [`super::ops`]).
    pub const RPC_OUTBOX_STATS: &str = "svc.auth.v1.outbox.stats";
}

pub mod calendar {
    pub const EVENT_CREATED_V1: &str = "calendar.v1.event.created";
    pub const EVENT_UPDATED_V1: &str = "calendar.v1.event.updated";
    pub const EVENT_CANCELLED_V1: &str = "calendar.v1.event.cancelled";
    pub const RSVP_CHANGED_V1: &str = "calendar.v1.rsvp.changed";
    /// v2 of `calendar.rsvp_changed`, published beside v1 while consumers move.
    pub const RSVP_CHANGED_V2: &str = "calendar.v2.rsvp.changed";

    pub const SERVICE: &str = "calendar";
    pub const RPC_CREATE_EVENT: &str = "svc.calendar.v1.events.create";
    pub const RPC_LIST_EVENTS: &str = "svc.calendar.v1.events.list";
    pub const RPC_GET_EVENT: &str = "svc.calendar.v1.events.get";
    pub const RPC_UPDATE_EVENT: &str = "svc.calendar.v1.events.update";
    pub const RPC_CANCEL_EVENT: &str = "svc.calendar.v1.events.cancel";
    pub const RPC_PUT_RSVP: &str = "svc.calendar.v1.rsvp.put";
    pub const RPC_LIST_RSVPS: &str = "svc.calendar.v1.rsvp.list";
    /// The outbox's backlog, for ops (see [`super::ops`]).
    pub const RPC_OUTBOX_STATS: &str = "svc.calendar.v1.outbox.stats";
}

/// The ops plane's requests to the services themselves (not public routes).
pub mod ops {
    /// Endpoint name of a service's outbox figures (`OutboxStats`), on
    /// `svc.<service>.v1.outbox.stats`; the hospital finds them in discovery by this
    /// name and asks each for `GET /v1/admin/services`.
    pub const OUTBOX_STATS_ENDPOINT: &str = "outbox.stats";
    /// The subjects the hospital may call for them.
    pub const OUTBOX_STATS_WILDCARD: &str = "svc.*.v1.outbox.stats";
}

pub mod hospital {
    pub const SERVICE: &str = "hospital";
    /// The hospital's own durable on the DLQ stream (it indexes every parked message).
    pub const INDEX_DURABLE: &str = "hospital-index";
    pub const RPC_LIST: &str = "svc.hospital.v1.dlq.list";
    pub const RPC_GET: &str = "svc.hospital.v1.dlq.get";
    pub const RPC_GROUPS: &str = "svc.hospital.v1.dlq.groups";
    pub const RPC_REPLAY: &str = "svc.hospital.v1.dlq.replay";
    pub const RPC_EDIT_REPLAY: &str = "svc.hospital.v1.dlq.edit_replay";
    pub const RPC_DISCARD: &str = "svc.hospital.v1.dlq.discard";
    pub const RPC_PURGE: &str = "svc.hospital.v1.dlq.purge";
    pub const RPC_JOBS: &str = "svc.hospital.v1.jobs.list";
    pub const RPC_JOB: &str = "svc.hospital.v1.jobs.get";
    pub const RPC_STATS: &str = "svc.hospital.v1.stats";
    pub const RPC_WHERE: &str = "svc.hospital.v1.where";
    pub const RPC_AUDIT: &str = "svc.hospital.v1.audit";
    pub const RPC_PAUSE: &str = "svc.hospital.v1.consumers.pause";
    pub const RPC_RESUME: &str = "svc.hospital.v1.consumers.resume";
    /// Which service instances run, with their versions and contracts, and which
    /// consumers lag (`GET /v1/admin/services`).
    pub const RPC_SERVICES: &str = "svc.hospital.v1.services";
}

/// Service-level discovery metadata (`$SRV.INFO` → `metadata`) that says which event
/// contracts an instance produces and consumes: JSON lists of `type@version`
/// (see [`crate::events::contract_ref`]).
pub mod discovery {
    pub const CONTRACTS_PRODUCES: &str = "contracts.produces";
    pub const CONTRACTS_CONSUMES: &str = "contracts.consumes";
}

pub mod push {
    pub const SERVICE: &str = "push";
    pub const RPC_LIST_NOTIFICATIONS: &str = "svc.push.v1.notifications.list";
    pub const RPC_MARK_READ: &str = "svc.push.v1.notifications.read";
    /// Notifications of the caller newer than a given id (SSE `Last-Event-ID` resume).
    pub const RPC_NOTIFICATIONS_SINCE: &str = "svc.push.v1.notifications.since";

    /// Core-NATS subject (not in any stream) on which push sends a user's new
    /// notifications to every gateway holding a live stream for that user.
    pub fn live_subject(user_id: &uuid::Uuid) -> String {
        format!("{LIVE_PREFIX}{}", user_id.simple())
    }
    /// What precedes the user id in a live subject.
    pub const LIVE_PREFIX: &str = "push.live.";
    /// Every user's live subject: what each gateway subscribes to once.
    pub const LIVE_WILDCARD: &str = "push.live.*";
}

/// Durable consumer names: `<service>-<stream>`, one per subscribing service and stream.
pub mod durables {
    pub const EMAIL_AUTH: &str = "email-auth";
    pub const EMAIL_CALENDAR: &str = "email-calendar";
    pub const PUSH_AUTH: &str = "push-auth";
    pub const PUSH_CALENDAR: &str = "push-calendar";
}

/// Queue group shared by every replica of a service, so each request reaches one.
pub const RPC_QUEUE_GROUP: &str = "mesh";

/// JetStream key-value buckets.
pub mod buckets {
    /// Gateway idempotency records, shared by every gateway replica (24 h TTL).
    pub const IDEMPOTENCY: &str = "gateway_idempotency";
    /// Single-use tickets that open a notification stream (60 s TTL).
    pub const SSE_TICKETS: &str = "gateway_sse_tickets";
    /// The gateway's last-known route table, one key per service: the routes each
    /// service declared in its discovery metadata (kept until deleted), so a restarted
    /// gateway knows routes whose instances are momentarily gone.
    pub const ROUTES: &str = "gateway_routes";
    /// First failure time and count of messages that are being retried, per
    /// `<durable>.<stream>.<sequence>` (7 days TTL); read when parking and by "where is
    /// this message?".
    pub const CONSUMER_FAILURES: &str = "consumer_failures";
}

/// Header names carried by mesh messages.
pub mod headers {
    /// JetStream's own dedupe header; set to the message id.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// Contract type, e.g. `calendar.rsvp_changed`.
    pub const MESSAGE_TYPE: &str = "Mesh-Message-Type";
    /// Contract schema version of the body, e.g. `1`.
    pub const SCHEMA_VERSION: &str = "Mesh-Schema-Version";
    /// UUIDv7 made when the message was written; survives replays unchanged.
    pub const MESSAGE_ID: &str = "Mesh-Message-Id";
    pub const AGGREGATE_ID: &str = "Mesh-Aggregate-Id";
    pub const AGGREGATE_VERSION: &str = "Mesh-Aggregate-Version";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// Gateway-assigned id of the HTTP request a message stems from.
    pub const REQUEST_ID: &str = "Mesh-Request-Id";
    /// On a replayed message: the park id of the dead letter it replays.
    pub const REPLAY_OF: &str = "Mesh-Replay-Of";
    /// On an edited replay: the message id of the original it replaces.
    pub const EDITED_FROM: &str = "Mesh-Edited-From";
}

/// True when `subject` would be captured by one of the mesh's streams.
pub fn captured_by_stream(subject: &str) -> Option<&'static StreamSpec> {
    ALL_STREAMS
        .iter()
        .find(|s| s.subjects.iter().any(|p| subject_matches(p, subject)))
}

/// NATS subject matching with `*` and `>` wildcards.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut sub = subject.split('.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPC_SUBJECTS: &[&str] = &[
        auth::RPC_REGISTER,
        auth::RPC_LOGIN,
        auth::RPC_REFRESH,
        auth::RPC_LOGOUT,
        auth::RPC_ME,
        auth::RPC_JWKS,
        calendar::RPC_CREATE_EVENT,
        calendar::RPC_LIST_EVENTS,
        calendar::RPC_GET_EVENT,
        calendar::RPC_UPDATE_EVENT,
        calendar::RPC_CANCEL_EVENT,
        calendar::RPC_PUT_RSVP,
        calendar::RPC_LIST_RSVPS,
        auth::RPC_GET_PREFERENCES,
        auth::RPC_PUT_PREFERENCES,
        auth::RPC_REQUEST_PASSWORD_RESET,
        auth::RPC_CONFIRM_PASSWORD_RESET,
        auth::RPC_VERIFY_EMAIL,
        auth::RPC_UNSUBSCRIBE,
        auth::RPC_OUTBOX_STATS,
        calendar::RPC_OUTBOX_STATS,
        push::RPC_LIST_NOTIFICATIONS,
        push::RPC_MARK_READ,
        push::RPC_NOTIFICATIONS_SINCE,
        push::LIVE_WILDCARD,
        hospital::RPC_LIST,
        hospital::RPC_GET,
        hospital::RPC_GROUPS,
        hospital::RPC_REPLAY,
        hospital::RPC_EDIT_REPLAY,
        hospital::RPC_DISCARD,
        hospital::RPC_PURGE,
        hospital::RPC_JOBS,
        hospital::RPC_JOB,
        hospital::RPC_STATS,
        hospital::RPC_WHERE,
        hospital::RPC_AUDIT,
        hospital::RPC_PAUSE,
        hospital::RPC_RESUME,
        hospital::RPC_SERVICES,
    ];

    const EVENT_SUBJECTS: &[&str] = &[
        auth::USER_REGISTERED_V1,
        auth::PREFERENCES_CHANGED_V1,
        auth::PASSWORD_RESET_REQUESTED_V1,
        calendar::EVENT_CREATED_V1,
        calendar::EVENT_UPDATED_V1,
        calendar::EVENT_CANCELLED_V1,
        calendar::RSVP_CHANGED_V1,
        calendar::RSVP_CHANGED_V2,
    ];

    #[test]
    fn rpc_subjects_stay_outside_every_stream() {
        for s in RPC_SUBJECTS {
            assert_eq!(captured_by_stream(s), None, "{s} is captured by a stream");
        }
    }

    #[test]
    fn every_event_subject_lands_in_its_own_stream() {
        for s in EVENT_SUBJECTS {
            let stream = captured_by_stream(s).expect("event subject outside every stream");
            assert!(
                s.starts_with(&stream.name.to_lowercase()),
                "{s} in {}",
                stream.name
            );
        }
    }

    #[test]
    fn replays_reach_only_their_durable() {
        let subject = replay_subject("CALENDAR", "email-calendar", calendar::RSVP_CHANGED_V1)
            .expect("calendar is a stream");
        assert_eq!(
            captured_by_stream(&subject).map(|s| s.name),
            Some("CALENDAR")
        );
        let email = replay_filter("CALENDAR", "email-calendar").expect("filter");
        let push = replay_filter("CALENDAR", "push-calendar").expect("filter");
        assert!(subject_matches(&email, &subject));
        assert!(!subject_matches(&push, &subject));
        assert!(!subject_matches("calendar.v1.>", &subject));
        assert_eq!(
            original_of_replay(&subject),
            Some(calendar::RSVP_CHANGED_V1)
        );
        assert_eq!(original_of_replay(calendar::RSVP_CHANGED_V1), None);
        assert!(captured_by_stream(&dlq_subject("email-calendar")).is_none());
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("calendar.>", "calendar.v1.rsvp.changed"));
        assert!(!subject_matches("calendar.>", "calendar"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(!subject_matches("svc.>", "calendar.v1"));
    }
}
