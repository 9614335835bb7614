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

/// Every stream the mesh provisions.
pub const ALL_STREAMS: &[StreamSpec] = &[AUTH_STREAM, CALENDAR_STREAM];

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
}

pub mod calendar {
    pub const EVENT_CREATED_V1: &str = "calendar.v1.event.created";
    pub const EVENT_UPDATED_V1: &str = "calendar.v1.event.updated";
    pub const EVENT_CANCELLED_V1: &str = "calendar.v1.event.cancelled";
    pub const RSVP_CHANGED_V1: &str = "calendar.v1.rsvp.changed";

    pub const SERVICE: &str = "calendar";
    pub const RPC_CREATE_EVENT: &str = "svc.calendar.v1.events.create";
    pub const RPC_LIST_EVENTS: &str = "svc.calendar.v1.events.list";
    pub const RPC_GET_EVENT: &str = "svc.calendar.v1.events.get";
    pub const RPC_UPDATE_EVENT: &str = "svc.calendar.v1.events.update";
    pub const RPC_CANCEL_EVENT: &str = "svc.calendar.v1.events.cancel";
    pub const RPC_PUT_RSVP: &str = "svc.calendar.v1.rsvp.put";
    pub const RPC_LIST_RSVPS: &str = "svc.calendar.v1.rsvp.list";
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
        format!("push.live.{}", user_id.simple())
    }
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
        push::RPC_LIST_NOTIFICATIONS,
        push::RPC_MARK_READ,
        push::RPC_NOTIFICATIONS_SINCE,
        push::LIVE_WILDCARD,
    ];

    const EVENT_SUBJECTS: &[&str] = &[
        auth::USER_REGISTERED_V1,
        auth::PREFERENCES_CHANGED_V1,
        auth::PASSWORD_RESET_REQUESTED_V1,
        calendar::EVENT_CREATED_V1,
        calendar::EVENT_UPDATED_V1,
        calendar::EVENT_CANCELLED_V1,
        calendar::RSVP_CHANGED_V1,
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
    fn wildcards_match_like_nats() {
        assert!(subject_matches("calendar.>", "calendar.v1.rsvp.changed"));
        assert!(!subject_matches("calendar.>", "calendar"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(!subject_matches("svc.>", "calendar.v1"));
    }
}
