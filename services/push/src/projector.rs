//! The consumer side: one [`Projector`] per durable turns each domain event into read
//! model updates and notifications in ONE transaction (with the processed-message
//! ledger row), then sends the new notifications live.
//!
//! Idempotency, in layers: the ledger skips a message this durable already completed;
//! the notifications' unique key (source message, user, kind) stops a second copy of
//! one notification even if two deliveries race; read-model rows keep the highest
//! aggregate version, so an old or repeated event never rolls them back. A live message
//! is sent only for a row this transaction inserted, after commit: a redelivered event
//! is not sent again.
//!
//! Deliveries of one aggregate may be handled out of order (the loop runs many at once
//! and retries reorder them), so each rule is written to hold in any order:
//! - an RSVP that a newer answer of the same attendee already superseded tells no one;
//! - a cancellation or time change tells the attendees known at that moment, and is
//!   kept on the event, so an RSVP handled after it (but given before it) still tells
//!   its attendee. The one miss left: an attendee whose later "declined" arrives after
//!   the cancellation was already sent to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use contracts::DomainEvent;
use contracts::api::NotificationKind;
use contracts::events::{
    EventCancelledV1, EventCreatedV1, EventMeta, EventUpdatedV1, PasswordResetRequestedV1,
    PreferencesChangedV1, RsvpChangedV1, UserRegisteredV1,
};
use contracts::subjects::headers;
use jiff::Timestamp;
use runtime::consumer::{Delivery, Handler, HandlerError, ledger};
use runtime::db::Database;
use runtime::telemetry::names;
use sqlx::AnyConnection;

use crate::domain::{self, Draft, EventView, Milestone};
use crate::store::{self, NotificationRecord, StoreError};

/// Counts of what this process did, for tests and logs.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    applied: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
}

impl Stats {
    /// Messages whose effect this process committed (duplicates it skipped excluded).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Live notifications this process sent.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// A domain event push understands.
#[derive(Debug, Clone)]
pub enum Incoming {
    UserRegistered(UserRegisteredV1),
    PreferencesChanged(PreferencesChangedV1),
    EventCreated(EventCreatedV1),
    EventUpdated(EventUpdatedV1),
    EventCancelled(EventCancelledV1),
    RsvpChanged(RsvpChangedV1),
}

impl Incoming {
    pub fn meta(&self) -> &EventMeta {
        match self {
            Incoming::UserRegistered(e) => &e.meta,
            Incoming::PreferencesChanged(e) => &e.meta,
            Incoming::EventCreated(e) => &e.meta,
            Incoming::EventUpdated(e) => &e.meta,
            Incoming::EventCancelled(e) => &e.meta,
            Incoming::RsvpChanged(e) => &e.meta,
        }
    }
}

fn is<E: DomainEvent>(ty: &str, version: u32) -> bool {
    ty == E::TYPE && version == E::VERSION
}

/// The contract versions push acts on (each one decoded by [`decode`]), for discovery.
/// Its durables filter these versions' subjects (`calendar.v1.>`), so while calendar
/// publishes `calendar.rsvp_changed` v2 beside v1, push reads v1 only and acts once.
pub fn consumed() -> runtime::rpc::Contracts {
    runtime::rpc::Contracts::new()
        .consumes::<UserRegisteredV1>()
        .consumes::<PreferencesChangedV1>()
        .consumes::<EventCreatedV1>()
        .consumes::<EventUpdatedV1>()
        .consumes::<EventCancelledV1>()
        .consumes::<RsvpChangedV1>()
}

/// Decodes a delivery by its `Mesh-Message-Type` and `Mesh-Schema-Version`. `Ok(None)`:
/// a contract push has no use for (acknowledged, nothing done). An unknown type or
/// version, or bytes that do not decode, are permanent failures (parked in the
/// hospital with the reason).
pub fn decode(delivery: &Delivery) -> Result<Option<Incoming>, HandlerError> {
    let (Some(ty), Some(version)) = (delivery.message_type.as_deref(), delivery.schema_version)
    else {
        return Err(HandlerError::permanent(format!(
            "{} without {} or {}",
            delivery.subject,
            headers::MESSAGE_TYPE,
            headers::SCHEMA_VERSION
        )));
    };
    let incoming = if is::<UserRegisteredV1>(ty, version) {
        Incoming::UserRegistered(delivery.decode()?)
    } else if is::<PreferencesChangedV1>(ty, version) {
        Incoming::PreferencesChanged(delivery.decode()?)
    } else if is::<EventCreatedV1>(ty, version) {
        Incoming::EventCreated(delivery.decode()?)
    } else if is::<EventUpdatedV1>(ty, version) {
        Incoming::EventUpdated(delivery.decode()?)
    } else if is::<EventCancelledV1>(ty, version) {
        Incoming::EventCancelled(delivery.decode()?)
    } else if is::<RsvpChangedV1>(ty, version) {
        Incoming::RsvpChanged(delivery.decode()?)
    } else if is::<PasswordResetRequestedV1>(ty, version) {
        return Ok(None);
    } else {
        return Err(HandlerError::permanent(format!(
            "unknown schema version: {ty} v{version} is not a contract push reads"
        )));
    };
    Ok(Some(incoming))
}

fn transient(e: impl Into<StoreError>) -> HandlerError {
    HandlerError::transient(e.into())
}

/// The handler of one durable consumer.
pub struct Projector {
    db: Database,
    client: async_nats::Client,
    /// The durable's name, also its key in the processed-message ledger.
    durable: String,
    max_event_age: Duration,
    stats: Stats,
}

impl Projector {
    pub fn new(
        db: Database,
        client: async_nats::Client,
        durable: String,
        max_event_age: Duration,
        stats: Stats,
    ) -> Self {
        // Defined from the start, so rates over them are too.
        for (channel, outcome) in [("history", "ok"), ("live", "ok"), ("live", "failed")] {
            metrics::counter!(names::PUSH_DELIVERIES, "channel" => channel, "outcome" => outcome)
                .absolute(0);
        }
        Projector {
            db,
            client,
            durable,
            max_event_age,
            stats,
        }
    }

    /// Applies one event exactly once per durable; returns the notifications it created.
    /// `replay`: a replay from the message hospital, which notifies however old the
    /// event is (an operator asked for it; the notifications were due when it failed).
    pub async fn apply(
        &self,
        event: &Incoming,
        replay: bool,
    ) -> Result<Vec<NotificationRecord>, HandlerError> {
        let message_id = event.meta().message_id.to_string();
        // Cheap early exit for redeliveries, before taking SQLite's write lock.
        if ledger::is_processed(&self.db, &self.durable, &message_id)
            .await
            .map_err(transient)?
        {
            tracing::debug!(message_id, "already processed");
            return Ok(Vec::new());
        }
        let mut tx = self.db.begin_write().await.map_err(transient)?;
        if !ledger::mark_processed(&mut *tx, &self.durable, &message_id)
            .await
            .map_err(transient)?
        {
            // Another replica completed it meanwhile; dropping `tx` rolls back.
            return Ok(Vec::new());
        }
        let now = runtime::db::from_micros(runtime::db::to_micros(Timestamp::now()));
        let rules = Rules {
            backend: self.db.backend,
            now,
            max_event_age: self.max_event_age,
            replay,
        };
        let mut drafts = rules.apply(&mut tx, event).await.map_err(transient)?;
        // Each insert locks its user's sequence row until commit: taken in one order by
        // every transaction, those locks cannot deadlock.
        drafts.sort_by_key(|d| d.user_id);
        let mut created = Vec::with_capacity(drafts.len());
        for draft in &drafts {
            if let Some(n) = store::insert_notification(&mut tx, draft, now)
                .await
                .map_err(transient)?
            {
                created.push(n);
            }
        }
        tx.commit().await.map_err(transient)?;
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        if !created.is_empty() {
            metrics::counter!(names::PUSH_DELIVERIES, "channel" => "history", "outcome" => "ok")
                .increment(created.len() as u64);
        }
        Ok(created)
    }

    /// Sends a committed notification to every gateway holding a stream for its user.
    /// Best effort: a gateway that misses it finds it through `since`.
    async fn publish_live(&self, n: &NotificationRecord) {
        let payload = match contracts::wire::encode(&n.to_api()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode notification");
                return;
            }
        };
        let mut h = HeaderMap::new();
        h.insert(headers::MESSAGE_ID, n.id.to_string().as_str());
        h.insert(headers::CONTENT_TYPE, contracts::wire::CONTENT_TYPE);
        runtime::trace::inject_current(&mut h);
        let subject = contracts::subjects::push::live_subject(&n.user_id);
        match self
            .client
            .publish_with_headers(subject, h, payload.into())
            .await
        {
            Ok(()) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::PUSH_DELIVERIES, "channel" => "live", "outcome" => "ok")
                    .increment(1);
                tracing::info!(notification = %n.id, user_id = %n.user_id, "notification sent live");
            }
            Err(e) => {
                metrics::counter!(names::PUSH_DELIVERIES, "channel" => "live", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(error = %e, notification = %n.id, "live send failed")
            }
        }
    }
}

impl Handler for Projector {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let Some(event) = decode(delivery)? else {
            return Ok(());
        };
        let created = self.apply(&event, delivery.replay_of.is_some()).await?;
        for n in &created {
            self.publish_live(n).await;
        }
        Ok(())
    }
}

/// What each event means, inside the caller's transaction.
struct Rules {
    backend: runtime::db::Backend,
    now: Timestamp,
    max_event_age: Duration,
    /// A replay from the hospital: exempt from the age limit.
    replay: bool,
}

impl Rules {
    fn fresh(&self, occurred_at: Timestamp) -> bool {
        self.replay || domain::is_fresh(occurred_at, self.now, self.max_event_age)
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &Incoming,
    ) -> Result<Vec<Draft>, StoreError> {
        let mut drafts = match event {
            Incoming::UserRegistered(e) => {
                store::upsert_user(conn, e.user_id, &e.display_name, e.meta.aggregate_version)
                    .await?;
                Vec::new()
            }
            Incoming::PreferencesChanged(e) => {
                store::upsert_preferences(
                    conn,
                    e.user_id,
                    &e.preferences.push,
                    e.meta.aggregate_version,
                )
                .await?;
                Vec::new()
            }
            Incoming::EventCreated(e) => {
                store::apply_snapshot(conn, self.backend, &e.event, e.meta.aggregate_version)
                    .await?;
                Vec::new()
            }
            Incoming::EventUpdated(e) => {
                let view =
                    store::apply_snapshot(conn, self.backend, &e.event, e.meta.aggregate_version)
                        .await?;
                if e.time_changed {
                    let m = milestone(&e.meta);
                    store::record_time_change(conn, view.id, &m).await?;
                    self.tell_attendees(conn, &EventView::from_snapshot(&e.event, m.version), &m)
                        .await?
                } else {
                    Vec::new()
                }
            }
            Incoming::EventCancelled(e) => {
                let view =
                    store::apply_snapshot(conn, self.backend, &e.event, e.meta.aggregate_version)
                        .await?;
                let m = milestone(&e.meta);
                store::record_cancel(conn, view.id, &m).await?;
                let mut at_cancel = EventView::from_snapshot(&e.event, m.version);
                at_cancel.cancel = Some(m);
                self.tell_attendees(conn, &at_cancel, &m).await?
            }
            Incoming::RsvpChanged(e) => self.rsvp(conn, e).await?,
        };
        // Preferences are read once per recipient, in the same transaction.
        let mut kept = Vec::with_capacity(drafts.len());
        for d in drafts.drain(..) {
            if store::push_preferences(conn, d.user_id)
                .await?
                .allows(d.kind)
            {
                kept.push(d);
            }
        }
        Ok(kept)
    }

    /// A cancellation or time change: every attendee going or maybe whose answer
    /// predates it, except the organizer, who made the change.
    async fn tell_attendees(
        &self,
        conn: &mut AnyConnection,
        event: &EventView,
        m: &Milestone,
    ) -> Result<Vec<Draft>, StoreError> {
        if !self.fresh(m.occurred_at) {
            return Ok(Vec::new());
        }
        let users = store::attending_before(conn, event.id, m.version).await?;
        Ok(users
            .into_iter()
            .filter(|u| *u != event.organizer_id)
            .map(|u| domain::event_changed(u, event, m))
            .collect())
    }

    async fn rsvp(
        &self,
        conn: &mut AnyConnection,
        e: &RsvpChangedV1,
    ) -> Result<Vec<Draft>, StoreError> {
        let version = e.meta.aggregate_version;
        let held = store::apply_snapshot(conn, self.backend, &e.event, version).await?;
        let newest =
            store::upsert_attendee(conn, held.id, e.attendee_id, e.status, version).await?;
        if !newest {
            // A later answer of this attendee was already handled (and told).
            return Ok(Vec::new());
        }
        let mut drafts = Vec::new();
        let source = e.meta.message_id;
        let organizer = e.event.organizer_id;
        if self.fresh(e.meta.occurred_at) {
            let at_rsvp = EventView::from_snapshot(&e.event, version);
            if e.attendee_id != organizer {
                let name = store::display_name(conn, e.attendee_id).await?;
                let (title, body) =
                    domain::rsvp_received(name.as_deref(), e.status, &at_rsvp, e.event.counts);
                drafts.push(Draft {
                    user_id: organizer,
                    kind: NotificationKind::RsvpReceived,
                    title,
                    body,
                    event_id: Some(held.id),
                    source_message_id: source,
                });
            }
            let (title, body) = domain::rsvp_confirmation(e.status, &at_rsvp);
            drafts.push(Draft {
                user_id: e.attendee_id,
                kind: NotificationKind::RsvpConfirmation,
                title,
                body,
                event_id: Some(held.id),
                source_message_id: source,
            });
        }
        // The answer was given before a cancellation or time change that was handled
        // first: tell the attendee now (same source, so at most once).
        if domain::attends(e.status) && e.attendee_id != organizer {
            let missed = held
                .cancel
                .filter(|c| c.version > version)
                .or(held.time_change.filter(|t| t.version > version))
                .filter(|m| self.fresh(m.occurred_at));
            if let Some(m) = missed {
                drafts.push(domain::event_changed(e.attendee_id, &held, &m));
            }
        }
        Ok(drafts)
    }
}

fn milestone(meta: &EventMeta) -> Milestone {
    Milestone {
        message_id: meta.message_id,
        version: meta.aggregate_version,
        occurred_at: meta.occurred_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::events::{EventSnapshot, EventStatus, RsvpChangedV2, RsvpStatus};
    use uuid::Uuid;

    fn delivery(ty: &str, version: u32, payload: Vec<u8>) -> Delivery {
        Delivery {
            subject: contracts::subjects::calendar::RSVP_CHANGED_V2.to_owned(),
            headers: HeaderMap::new(),
            payload: payload.into(),
            message_id: None,
            message_type: Some(ty.to_owned()),
            schema_version: Some(version),
            delivered: 1,
            stream_sequence: 1,
            replay_of: None,
        }
    }

    fn rsvp() -> RsvpChangedV1 {
        RsvpChangedV1 {
            meta: EventMeta::new(Uuid::now_v7(), 2),
            event: EventSnapshot {
                event_id: Uuid::now_v7(),
                organizer_id: Uuid::now_v7(),
                title: "t".into(),
                description: String::new(),
                starts_at: Timestamp::UNIX_EPOCH,
                ends_at: Timestamp::UNIX_EPOCH,
                time_zone: "UTC".into(),
                location: String::new(),
                capacity: 1,
                status: EventStatus::Scheduled,
                counts: Default::default(),
            },
            attendee_id: Uuid::now_v7(),
            previous_status: None,
            status: RsvpStatus::Going,
        }
    }

    #[test]
    fn declared_versions_decode_and_unknown_ones_are_parked_with_the_reason() {
        let v1 = rsvp();
        let bytes = contracts::wire::encode(&v1).expect("encode");
        assert!(matches!(
            decode(&delivery(RsvpChangedV1::TYPE, 1, bytes)),
            Ok(Some(Incoming::RsvpChanged(_)))
        ));
        let v2 = contracts::wire::encode(&RsvpChangedV2::from(&v1)).expect("encode");
        match decode(&delivery(RsvpChangedV2::TYPE, 2, v2)) {
            Err(e @ HandlerError::Permanent(_)) => assert!(
                e.to_string()
                    .contains("unknown schema version: calendar.rsvp_changed v2"),
                "{e}"
            ),
            other => panic!("expected a permanent failure, got {other:?}"),
        }
        let consumes = consumed().consumes;
        assert!(consumes.contains(&"calendar.rsvp_changed@1".to_owned()));
        assert!(!consumes.contains(&"calendar.rsvp_changed@2".to_owned()));
    }
}
