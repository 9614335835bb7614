//! Who may do what on the bus: one NATS identity per deployable, with its subject
//! permissions, as data.
//!
//! `mesh-provision nats-config` turns [`identities`] into the nats-server
//! `authorization` block (`compose/nats/auth.conf`), and the permissions integration
//! test checks both what it allows (the whole mesh works) and what it denies. Every
//! subject here is derived from the names in [`crate::subjects`] and [`crate::events`],
//! so a renamed subject cannot leave a stale grant behind.
//!
//! The rules:
//! - only `provision` creates, changes or deletes streams and key-value buckets
//!   (`$JS.API.STREAM.{CREATE,UPDATE,DELETE}.>`); services read stream info only;
//! - a producer publishes exactly its own event subjects (auth and calendar); email,
//!   push and the hospital publish no domain events;
//! - only the gateway publishes to the services' request subjects (`svc.<context>.v1.>`)
//!   and to `$SRV.>` (discovery; the hospital may ask `$SRV.INFO` too, for
//!   `GET /v1/admin/services`); each service subscribes to its own request subjects and
//!   the discovery verbs and answers through `allow_responses` (email runs a micro
//!   service without endpoints, only to be discoverable);
//! - only the hospital publishes to replay subjects (`<context>.replay.<durable>.>`);
//! - a subscriber touches only its own durables (create, info, pull, ack) and parks only
//!   on its own `dlq.<durable>`; the hospital, the ops plane, reads every source
//!   durable's state and pauses and resumes them, and deletes parked copies.

use crate::events::KNOWN_EVENTS;
use crate::subjects::{
    self, AUTH_STREAM, CALENDAR_STREAM, DLQ_STREAM, StreamSpec, buckets, durables,
};

/// A NATS user and its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The NATS user name (`NATS_USER` of the process that uses it).
    pub user: &'static str,
    /// Subjects this identity may publish to (NATS wildcards allowed).
    pub publish: Vec<String>,
    /// Subjects this identity may subscribe to.
    pub subscribe: Vec<String>,
    /// May reply to the reply subject of a message it received (once per request):
    /// how services answer requests without a grant on every `_INBOX.>`.
    pub allow_responses: bool,
}

/// The provisioning identity: streams and buckets, nothing else.
pub const PROVISION: &str = "provision";
pub const GATEWAY: &str = "gateway";
pub const AUTH: &str = subjects::auth::SERVICE;
pub const CALENDAR: &str = subjects::calendar::SERVICE;
pub const EMAIL: &str = "email";
pub const PUSH: &str = subjects::push::SERVICE;
pub const HOSPITAL: &str = subjects::hospital::SERVICE;

/// Every identity, in the order the server config lists them.
pub const USERS: [&str; 7] = [PROVISION, GATEWAY, AUTH, CALENDAR, EMAIL, PUSH, HOSPITAL];

/// Where every client gets its replies (requests, JetStream API answers, pulled
/// messages, publish acks): async-nats inboxes are `_INBOX.<random>.…`.
const INBOX: &str = "_INBOX.>";
const JS_API: &str = "$JS.API";

/// The KV buckets a service reads and writes.
const GATEWAY_BUCKETS: [&str; 3] = [buckets::IDEMPOTENCY, buckets::SSE_TICKETS, buckets::ROUTES];

/// A subscriber's durable on a stream.
struct Durable {
    stream: &'static str,
    name: &'static str,
}

/// The durables each subscribing identity owns.
fn durables_of(user: &str) -> Vec<Durable> {
    let d = |stream: &StreamSpec, name| Durable {
        stream: stream.name,
        name,
    };
    match user {
        EMAIL => vec![
            d(&AUTH_STREAM, durables::EMAIL_AUTH),
            d(&CALENDAR_STREAM, durables::EMAIL_CALENDAR),
        ],
        PUSH => vec![
            d(&AUTH_STREAM, durables::PUSH_AUTH),
            d(&CALENDAR_STREAM, durables::PUSH_CALENDAR),
        ],
        HOSPITAL => vec![d(&DLQ_STREAM, subjects::hospital::INDEX_DURABLE)],
        _ => Vec::new(),
    }
}

/// `svc.auth.v1.register` → `svc.auth.v1.>`: the request subjects of one service.
fn rpc_wildcard(any_rpc_subject: &str) -> String {
    let head: Vec<&str> = any_rpc_subject.split('.').take(3).collect();
    format!("{}.>", head.join("."))
}

/// The request subjects of every request/reply service, as (service, wildcard).
fn rpc_services() -> [(&'static str, String); 4] {
    [
        (AUTH, rpc_wildcard(subjects::auth::RPC_REGISTER)),
        (CALENDAR, rpc_wildcard(subjects::calendar::RPC_CREATE_EVENT)),
        (PUSH, rpc_wildcard(subjects::push::RPC_LIST_NOTIFICATIONS)),
        (HOSPITAL, rpc_wildcard(subjects::hospital::RPC_LIST)),
    ]
}

/// The event subjects a context publishes: every known event whose subject its stream
/// captures (replay subjects are not events and are not listed).
fn event_subjects(stream: &StreamSpec) -> Vec<String> {
    KNOWN_EVENTS
        .iter()
        .map(|(_, _, subject)| *subject)
        .filter(|s| subjects::captured_by_stream(s).map(|c| c.name) == Some(stream.name))
        .map(str::to_owned)
        .collect()
}

/// What a NATS micro service subscribes to: its own request subjects and the discovery
/// verbs (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, each also per name and instance).
fn service_subscriptions(service: &str) -> Vec<String> {
    let mut subs: Vec<String> = rpc_services()
        .into_iter()
        .filter(|(s, _)| *s == service)
        .map(|(_, w)| w)
        .collect();
    subs.push("$SRV.*".into());
    subs.push(format!("$SRV.*.{service}"));
    subs.push(format!("$SRV.*.{service}.*"));
    subs
}

fn stream_info(stream: &str) -> String {
    format!("{JS_API}.STREAM.INFO.{stream}")
}

/// The JetStream stream behind a KV bucket.
fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// Open a bucket, read keys (direct get), write and purge keys.
fn kv_read_write(bucket: &str) -> Vec<String> {
    let stream = kv_stream(bucket);
    vec![
        stream_info(&stream),
        format!("{JS_API}.DIRECT.GET.{stream}"),
        format!("{JS_API}.DIRECT.GET.{stream}.>"),
        format!("$KV.{bucket}.>"),
    ]
}

/// List or watch a bucket's keys: an ephemeral ordered consumer on the bucket's stream
/// (created, re-created after a gap, deleted) and its flow-control replies.
fn kv_watch(bucket: &str) -> Vec<String> {
    let stream = kv_stream(bucket);
    vec![
        format!("{JS_API}.CONSUMER.CREATE.{stream}"),
        format!("{JS_API}.CONSUMER.CREATE.{stream}.>"),
        format!("{JS_API}.CONSUMER.INFO.{stream}.*"),
        format!("{JS_API}.CONSUMER.DELETE.{stream}.*"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// Create or update one's own durable, read its info, pull from it, ack its messages.
fn own_durable(d: &Durable) -> Vec<String> {
    let (s, n) = (d.stream, d.name);
    vec![
        stream_info(s),
        format!("{JS_API}.CONSUMER.CREATE.{s}.{n}"),
        // The server's form with one filter subject appended.
        format!("{JS_API}.CONSUMER.CREATE.{s}.{n}.>"),
        format!("{JS_API}.CONSUMER.INFO.{s}.{n}"),
        format!("{JS_API}.CONSUMER.MSG.NEXT.{s}.{n}"),
        format!("$JS.ACK.{s}.{n}.>"),
    ]
}

/// What the shared consumer loop needs besides the durable: check the DLQ stream
/// exists, park on `dlq.<durable>`, keep retry records in `consumer_failures`.
fn worker_ward(durables: &[Durable]) -> Vec<String> {
    let mut p = vec![stream_info(DLQ_STREAM.name)];
    p.extend(durables.iter().map(|d| subjects::dlq_subject(d.name)));
    p.extend(kv_read_write(buckets::CONSUMER_FAILURES));
    p
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

/// The identity named `user`, if the mesh has one.
pub fn identity(user: &str) -> Option<Identity> {
    let user = *USERS.iter().find(|u| **u == user)?;
    let mut publish: Vec<String> = Vec::new();
    let mut subscribe: Vec<String> = vec![INBOX.into()];
    let mut allow_responses = false;
    let own = durables_of(user);
    match user {
        PROVISION => {
            for verb in ["CREATE", "UPDATE", "DELETE", "INFO"] {
                publish.push(format!("{JS_API}.STREAM.{verb}.>"));
            }
            // Account limits, which async-nats reads before creating a bucket.
            publish.push(format!("{JS_API}.INFO"));
        }
        GATEWAY => {
            publish.extend(rpc_services().into_iter().map(|(_, w)| w));
            // Discovery scatter-gather (`$SRV.INFO`), and a request to its own inbox
            // that syncs a new subscription with the server (SSE streams).
            publish.push("$SRV.>".into());
            publish.push(INBOX.into());
            for bucket in GATEWAY_BUCKETS {
                publish.extend(kv_read_write(bucket));
            }
            // A restarted gateway lists the last-known route table's keys.
            publish.extend(kv_watch(buckets::ROUTES));
            subscribe.push(subjects::push::LIVE_WILDCARD.into());
            // The calendar's events keep the gateway's cache of calendar reads fresh
            // (routes declared cacheable name them). Event data only: the AUTH stream,
            // with addresses in it, stays closed.
            subscribe.extend(CALENDAR_STREAM.subjects.iter().map(|s| (*s).to_owned()));
        }
        AUTH => {
            publish.extend(event_subjects(&AUTH_STREAM));
            subscribe.extend(service_subscriptions(AUTH));
            allow_responses = true;
        }
        CALENDAR => {
            publish.extend(event_subjects(&CALENDAR_STREAM));
            subscribe.extend(service_subscriptions(CALENDAR));
            allow_responses = true;
        }
        EMAIL => {
            for d in &own {
                publish.extend(own_durable(d));
            }
            publish.extend(worker_ward(&own));
            // Discoverable (name, version, contracts) though it serves no requests.
            subscribe.extend(service_subscriptions(EMAIL));
            allow_responses = true;
        }
        PUSH => {
            for d in &own {
                publish.extend(own_durable(d));
            }
            publish.extend(worker_ward(&own));
            publish.push(subjects::push::LIVE_WILDCARD.into());
            subscribe.extend(service_subscriptions(PUSH));
            allow_responses = true;
        }
        HOSPITAL => {
            for d in &own {
                publish.extend(own_durable(d));
            }
            publish.extend(worker_ward(&own));
            publish.push(format!("{JS_API}.STREAM.MSG.DELETE.{}", DLQ_STREAM.name));
            // A message the server gave up on (max deliveries) is parked by the
            // hospital for the durable that could not: any `dlq.<durable>`.
            publish.push(subjects::dlq_subject(">"));
            subscribe.push(subjects::MAX_DELIVERIES_ADVISORIES.into());
            for stream in subjects::ALL_STREAMS {
                let s = stream.name;
                publish.push(stream_info(s));
                // Reading that message by its sequence.
                publish.push(format!("{JS_API}.STREAM.MSG.GET.{s}"));
                // The ops plane: every durable's state, pause and resume.
                publish.push(format!("{JS_API}.CONSUMER.LIST.{s}"));
                publish.push(format!("{JS_API}.CONSUMER.INFO.{s}.*"));
                publish.push(format!("{JS_API}.CONSUMER.PAUSE.{s}.*"));
                // "Where is this message?" scans through a short-lived ephemeral
                // consumer (the subject without a name takes no durable), pulls from it
                // and deletes it; its name is the server's, hence the wildcards.
                publish.push(format!("{JS_API}.CONSUMER.CREATE.{s}"));
                publish.push(format!("{JS_API}.CONSUMER.MSG.NEXT.{s}.*"));
                publish.push(format!("{JS_API}.CONSUMER.DELETE.{s}.*"));
                // Replays, to one durable each.
                if let Some(replay) = subjects::replay_filter(s, "*") {
                    publish.push(replay);
                }
            }
            // `GET /v1/admin/services`: discovery scatter-gather (replies to its inbox),
            // and each outbox's figures (the one service request it may make).
            publish.push("$SRV.INFO".into());
            publish.push(subjects::ops::OUTBOX_STATS_WILDCARD.into());
            subscribe.extend(service_subscriptions(HOSPITAL));
            allow_responses = true;
        }
        _ => return None,
    }
    Some(Identity {
        user,
        publish: dedup(publish),
        subscribe: dedup(subscribe),
        allow_responses,
    })
}

/// Every identity of the mesh.
pub fn identities() -> Vec<Identity> {
    USERS.iter().filter_map(|u| identity(u)).collect()
}

impl Identity {
    /// True when this identity may publish to `subject` (ignoring `allow_responses`).
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish
            .iter()
            .any(|p| subjects::subject_matches(p, subject))
    }

    /// True when this identity may subscribe to `subject`.
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe
            .iter()
            .any(|p| subjects::subject_matches(p, subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects::{auth, calendar, hospital, push};

    fn id(user: &str) -> Identity {
        identity(user).expect("known identity")
    }

    #[test]
    fn every_user_has_an_identity() {
        assert_eq!(identities().len(), USERS.len());
        assert!(identity("nobody").is_none());
    }

    #[test]
    fn only_provision_changes_streams() {
        for i in identities() {
            for verb in ["CREATE", "UPDATE", "DELETE"] {
                let s = format!("$JS.API.STREAM.{verb}.CALENDAR");
                assert_eq!(i.may_publish(&s), i.user == PROVISION, "{} {s}", i.user);
                let kv = format!("$JS.API.STREAM.{verb}.KV_{}", buckets::ROUTES);
                assert_eq!(i.may_publish(&kv), i.user == PROVISION, "{} {kv}", i.user);
            }
        }
    }

    #[test]
    fn producers_publish_only_their_own_events() {
        for (_, _, subject) in KNOWN_EVENTS {
            for i in identities() {
                let owner = subject.split('.').next() == Some(i.user);
                assert_eq!(i.may_publish(subject), owner, "{} {subject}", i.user);
            }
        }
        assert!(!id(EMAIL).may_publish(calendar::RSVP_CHANGED_V1));
    }

    #[test]
    fn only_the_gateway_calls_services() {
        for subject in [
            auth::RPC_LOGIN,
            calendar::RPC_CREATE_EVENT,
            push::RPC_LIST_NOTIFICATIONS,
            hospital::RPC_REPLAY,
        ] {
            for i in identities() {
                assert_eq!(
                    i.may_publish(subject),
                    i.user == GATEWAY,
                    "{} {subject}",
                    i.user
                );
            }
        }
        assert!(id(CALENDAR).may_subscribe(calendar::RPC_CREATE_EVENT));
        assert!(!id(CALENDAR).may_subscribe(auth::RPC_LOGIN));
        // Discovery: every service answers it (email too); the hospital may ask.
        assert!(id(EMAIL).may_subscribe("$SRV.INFO"));
        assert!(id(EMAIL).may_subscribe("$SRV.INFO.email"));
        assert!(!id(EMAIL).may_publish("$SRV.INFO"));
        assert!(id(HOSPITAL).may_publish("$SRV.INFO"));
        assert!(!id(HOSPITAL).may_publish("$SRV.STATS"));
    }

    #[test]
    fn the_hospital_reads_outbox_figures_and_nothing_else_of_a_service() {
        for subject in [auth::RPC_OUTBOX_STATS, calendar::RPC_OUTBOX_STATS] {
            for i in identities() {
                assert_eq!(
                    i.may_publish(subject),
                    i.user == GATEWAY || i.user == HOSPITAL,
                    "{} {subject}",
                    i.user
                );
            }
        }
        assert!(id(CALENDAR).may_subscribe(calendar::RPC_OUTBOX_STATS));
        assert!(id(AUTH).may_subscribe(auth::RPC_OUTBOX_STATS));
        assert!(!id(HOSPITAL).may_publish(calendar::RPC_PUT_RSVP));
    }

    #[test]
    fn only_the_hospital_replays() {
        let replay = subjects::replay_subject(
            CALENDAR_STREAM.name,
            durables::EMAIL_CALENDAR,
            calendar::RSVP_CHANGED_V1,
        )
        .expect("calendar replays");
        for i in identities() {
            assert_eq!(i.may_publish(&replay), i.user == HOSPITAL, "{}", i.user);
        }
    }

    #[test]
    fn subscribers_touch_only_their_own_durables() {
        let email = id(EMAIL);
        assert!(email.may_publish("$JS.API.CONSUMER.CREATE.CALENDAR.email-calendar"));
        assert!(email.may_publish("$JS.API.CONSUMER.MSG.NEXT.AUTH.email-auth"));
        assert!(email.may_publish("$JS.ACK.CALENDAR.email-calendar.1.2.3.4.5"));
        assert!(!email.may_publish("$JS.API.CONSUMER.CREATE.CALENDAR.push-calendar"));
        assert!(!email.may_publish("$JS.ACK.CALENDAR.push-calendar.1.2.3.4.5"));
        assert!(!email.may_publish("$JS.API.CONSUMER.DELETE.CALENDAR.email-calendar"));
        assert!(email.may_publish("dlq.email-calendar"));
        assert!(!email.may_publish("dlq.push-calendar"));
        assert!(id(HOSPITAL).may_publish("$JS.API.CONSUMER.PAUSE.CALENDAR.email-calendar"));
        assert!(!email.may_publish("$JS.API.CONSUMER.PAUSE.CALENDAR.email-calendar"));
    }
}
