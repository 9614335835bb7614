//! The use cases: each runs the domain rules inside one database transaction and, when
//! state changes, writes the domain event into the outbox in that same transaction
//! (the relay publishes it after commit; a crash in between loses nothing).
//!
//! Contract evolution: with [`Calendar::publish_rsvp_v2`] on, an RSVP writes two outbox
//! rows, v1 and v2 of `calendar.rsvp_changed`, with one logical message id (the v2 row's
//! `Nats-Msg-Id` is `<id>:v2`); consumers filter one version each.

use contracts::api::{
    self, CreateEventRequest, EventPage, RsvpPage, RsvpResult, UpdateEventRequest,
};
use contracts::events::{EventCancelledV1, EventCreatedV1, EventMeta, EventUpdatedV1, RsvpStatus};
use jiff::Timestamp;
use runtime::db::Database;
use runtime::outbox::{OutboxError, RelayWaker, enqueue};
use uuid::Uuid;

use crate::domain::{
    self, DomainError, EventCursor, EventQuery, EventRecord, RsvpCursor, RsvpQuery,
};
use crate::rsvp_writer::RsvpWriter;
use crate::store::{self, RsvpRecord, StoreError};

/// Why a use case failed: a rule (answered with its code) or the infrastructure (500).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        ServiceError::Store(StoreError::Db(e))
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The calendar's use cases over one database.
#[derive(Clone, Debug)]
pub struct Calendar {
    db: Database,
    waker: RelayWaker,
    /// Also publish `RsvpChangedV2` beside v1 (`CALENDAR_PUBLISH_RSVP_V2`).
    rsvp_v2: bool,
    /// The group-committing writer every RSVP goes through.
    rsvps: RsvpWriter,
}

/// The current time at the stored precision (µs), so a reply and a later read agree.
pub(crate) fn now_us() -> Timestamp {
    runtime::db::from_micros(runtime::db::to_micros(Timestamp::now()))
}

fn rsvp_to_api(r: &RsvpRecord) -> api::Rsvp {
    api::Rsvp {
        event_id: r.event_id,
        user_id: r.user_id,
        status: r.status,
        updated_at: r.updated_at,
    }
}

impl Calendar {
    /// The use cases over `db`; starts the RSVP writer on the current runtime.
    pub fn new(db: Database, waker: RelayWaker) -> Self {
        let rsvps = RsvpWriter::start(db.clone(), waker.clone(), false);
        Calendar {
            db,
            waker,
            rsvp_v2: false,
            rsvps,
        }
    }

    /// Publish v2 of `calendar.rsvp_changed` beside v1 (off by default).
    pub fn publish_rsvp_v2(mut self, on: bool) -> Self {
        self.rsvp_v2 = on;
        // A writer that knows; the old one stops once its handle is dropped here.
        self.rsvps = RsvpWriter::start(self.db.clone(), self.waker.clone(), on);
        self
    }

    pub async fn create_event(&self, caller: Uuid, req: &CreateEventRequest) -> Result<api::Event> {
        let fields = domain::validate_create(req)?;
        let event = EventRecord::new(Uuid::now_v7(), caller, fields, now_us());
        let mut tx = self.db.begin_write().await?;
        store::insert_event(&mut tx, &event).await?;
        let created = EventCreatedV1 {
            meta: EventMeta::new(event.id, event.version),
            event: event.snapshot(),
        };
        enqueue(&mut tx, &created).await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(event.to_api(None))
    }

    pub async fn get_event(&self, caller: Uuid, id: Uuid) -> Result<api::Event> {
        let mut conn = self.db.pool.acquire().await?;
        let (event, mine) = store::get_event(&mut conn, id, caller)
            .await?
            .ok_or(DomainError::NotFound)?;
        Ok(event.to_api(mine))
    }

    pub async fn list_events(&self, caller: Uuid, q: &EventQuery) -> Result<EventPage> {
        let mut conn = self.db.pool.acquire().await?;
        let mut rows = store::list_events(&mut conn, caller, q).await?;
        let more = rows.len() > q.limit as usize;
        rows.truncate(q.limit as usize);
        let next_cursor = match rows.last() {
            Some((last, _)) if more => Some(
                EventCursor {
                    starts_at_us: last.fields.starts_at.as_microsecond(),
                    id: last.id,
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(EventPage {
            items: rows.iter().map(|(e, mine)| e.to_api(*mine)).collect(),
            next_cursor,
        })
    }

    pub async fn update_event(
        &self,
        caller: Uuid,
        id: Uuid,
        req: &UpdateEventRequest,
    ) -> Result<api::Event> {
        let mut tx = self.db.begin_write().await?;
        let current = store::lock_event(&mut tx, self.db.backend, id)
            .await?
            .ok_or(DomainError::NotFound)?;
        let Some(change) = domain::plan_update(&current, caller, req)? else {
            // Nothing changes: no version bump, no event.
            tx.rollback().await?;
            return self.get_event(caller, id).await;
        };
        let updated = store::update_fields(&mut tx, id, &change.fields, now_us())
            .await?
            // The row is locked and going was checked; only a concurrent change that
            // the lock should have prevented lands here.
            .ok_or(DomainError::CapacityBelowGoing {
                capacity: change.fields.capacity,
                going: current.counts.going,
            })?;
        let event = EventUpdatedV1 {
            meta: EventMeta::new(id, updated.version),
            event: updated.snapshot(),
            time_changed: change.time_changed,
            changed_fields: change.changed_fields,
        };
        enqueue(&mut tx, &event).await?;
        let mine = store::rsvp_of(&mut tx, id, caller).await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(updated.to_api(mine))
    }

    pub async fn cancel_event(&self, caller: Uuid, id: Uuid) -> Result<api::Event> {
        let mut tx = self.db.begin_write().await?;
        let current = store::lock_event(&mut tx, self.db.backend, id)
            .await?
            .ok_or(DomainError::NotFound)?;
        if !domain::plan_cancel(&current, caller)? {
            // Already cancelled: same answer, nothing new to say.
            let mine = store::rsvp_of(&mut tx, id, caller).await?;
            tx.rollback().await?;
            return Ok(current.to_api(mine));
        }
        let Some(cancelled) = store::set_cancelled(&mut tx, id, now_us()).await? else {
            tx.rollback().await?;
            return self.get_event(caller, id).await;
        };
        let event = EventCancelledV1 {
            meta: EventMeta::new(id, cancelled.version),
            event: cancelled.snapshot(),
        };
        enqueue(&mut tx, &event).await?;
        let mine = store::rsvp_of(&mut tx, id, caller).await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(cancelled.to_api(mine))
    }

    /// Sets the caller's answer. RSVPs are applied in batches by one writer (see
    /// [`crate::rsvp_writer`]): every change of one event is serialized behind its row
    /// lock, and seats are counted against the running total, so concurrent RSVPs
    /// cannot overbook.
    pub async fn put_rsvp(&self, caller: Uuid, id: Uuid, status: RsvpStatus) -> Result<RsvpResult> {
        self.rsvps.put(caller, id, status).await
    }

    pub async fn list_rsvps(&self, caller: Uuid, id: Uuid, q: &RsvpQuery) -> Result<RsvpPage> {
        let mut conn = self.db.pool.acquire().await?;
        let (event, _) = store::get_event(&mut conn, id, caller)
            .await?
            .ok_or(DomainError::NotFound)?;
        event.authorize_organizer(caller)?;
        let mut rows = store::list_rsvps(&mut conn, id, q).await?;
        let more = rows.len() > q.limit as usize;
        rows.truncate(q.limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(
                RsvpCursor {
                    user_id: last.user_id,
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(RsvpPage {
            items: rows.iter().map(rsvp_to_api).collect(),
            next_cursor,
        })
    }
}
