//! Group commit for RSVPs, the calendar's hottest write.
//!
//! Every RSVP is a small transaction: lock the event, read the caller's answer, move the
//! counts, upsert the answer, add the outbox row. Run one by one, the write path is
//! bound by round trips to the database (on SQLite each statement is a hop to the
//! connection's thread, and there is one writer), not by the work itself. So RSVPs
//! queue for ONE writer task, which takes whatever has queued while the previous batch
//! committed (no waiting to fill a batch: a lone RSVP goes at once) and applies the
//! batch in one transaction with a fixed number of statements:
//!
//! 1. lock every event of the batch (`FOR UPDATE` on PostgreSQL, in id order; SQLite's
//!    write lock is already held) and read the callers' current answers;
//! 2. decide each RSVP in arrival order against the events as changed by the RSVPs
//!    before it (the same [`domain::plan_rsvp`] rules; capacity is checked against the
//!    running count, so the batch cannot overbook);
//! 3. write the changed counts and versions (guarded by the version read in step 1),
//!    the answers, and one outbox row per change; commit; answer every caller.
//!
//! A rule that refuses one RSVP (full, cancelled, past, unknown event) answers that
//! caller only. If the batch's transaction fails, each RSVP is retried alone, so one
//! bad request cannot fail its neighbours.

use std::collections::HashMap;

use contracts::DomainEvent;
use contracts::api::{self, RsvpResult};
use contracts::events::{EventMeta, RsvpChangedV1, RsvpChangedV2, RsvpStatus, copy_msg_id};
use jiff::Timestamp;
use runtime::db::Database;
use runtime::outbox::{self, OutboxRow, RelayWaker};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{self, DomainError, EventRecord, RsvpPlan};
use crate::service::{Result, ServiceError};
use crate::store::{self, RsvpRecord, StoreError};

/// The most RSVPs one transaction applies.
const MAX_BATCH: usize = 256;
/// RSVPs waiting for the writer before callers wait to enqueue.
const QUEUE: usize = 4096;

/// What the transaction needs of one command: caller, event, answer, trace context.
type Request<'a> = (Uuid, Uuid, RsvpStatus, &'a [(String, String)]);

/// One caller's RSVP, waiting for the writer.
struct Command {
    caller: Uuid,
    event_id: Uuid,
    status: RsvpStatus,
    /// The request's trace context, for its outbox row.
    trace: Vec<(String, String)>,
    reply: oneshot::Sender<Result<RsvpResult>>,
}

/// The handle RPC handlers use; cheap to clone. The writer task stops when the last
/// handle is dropped, after answering everything queued.
#[derive(Clone, Debug)]
pub struct RsvpWriter {
    queue: mpsc::Sender<Command>,
}

impl RsvpWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(db: Database, waker: RelayWaker, rsvp_v2: bool) -> Self {
        let (queue, commands) = mpsc::channel(QUEUE);
        let writer = Writer { db, waker, rsvp_v2 };
        tokio::spawn(writer.run(commands));
        RsvpWriter { queue }
    }

    /// Sets `caller`'s answer to event `event_id`, committed before this returns.
    pub async fn put(
        &self,
        caller: Uuid,
        event_id: Uuid,
        status: RsvpStatus,
    ) -> Result<RsvpResult> {
        let (reply, answer) = oneshot::channel();
        let command = Command {
            caller,
            event_id,
            status,
            trace: runtime::trace::current_context_pairs(),
            reply,
        };
        self.queue.send(command).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ServiceError {
    ServiceError::Store(StoreError::Db(sqlx::Error::PoolClosed))
}

struct Writer {
    db: Database,
    waker: RelayWaker,
    rsvp_v2: bool,
}

/// The decision for one command, before commit.
enum Decision {
    Refused(DomainError),
    Unchanged {
        rsvp: RsvpRecord,
        counts: contracts::events::RsvpCounts,
    },
    Changed {
        counts: contracts::events::RsvpCounts,
        updated_at: Timestamp,
    },
}

impl Writer {
    async fn run(self, mut commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while commands.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // Each caller's own trace goes on with its outbox row; the batch is a use
            // case of its own for the statement metrics.
            let span = tracing::info_span!(
                runtime::telemetry::queries::BATCH_SPAN,
                operation = contracts::subjects::calendar::RPC_PUT_RSVP,
                size = batch.len(),
            );
            let n = batch.len();
            let t = std::time::Instant::now();
            self.apply(std::mem::take(&mut batch))
                .instrument(span)
                .await;
            if std::env::var_os("DEBUG_BATCH").is_some() {
                eprintln!("BATCH {n} {:?}", t.elapsed());
            }
        }
    }

    /// Applies a batch and answers its callers.
    async fn apply(&self, batch: Vec<Command>) {
        let requests: Vec<Request> = batch
            .iter()
            .map(|c| (c.caller, c.event_id, c.status, c.trace.as_slice()))
            .collect();
        match self.commit(&requests).await {
            Ok(results) => {
                drop(requests);
                for (command, result) in batch.into_iter().zip(results) {
                    let _ = command.reply.send(result);
                }
            }
            Err(e) if batch.len() == 1 => {
                drop(requests);
                if let Some(command) = batch.into_iter().next() {
                    let _ = command.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "RSVP batch failed; applying each alone");
                drop(requests);
                for command in batch {
                    let one = [(
                        command.caller,
                        command.event_id,
                        command.status,
                        command.trace.as_slice(),
                    )];
                    let result = match self.commit(&one).await {
                        Ok(mut results) => results.pop().unwrap_or_else(|| Err(stopped())),
                        Err(e) => Err(e),
                    };
                    let _ = command.reply.send(result);
                }
            }
        }
    }

    /// One transaction for the whole batch; per-command results in batch order.
    async fn commit(&self, batch: &[Request<'_>]) -> Result<Vec<Result<RsvpResult>>> {
        let now = crate::service::now_us();
        let mut ids: Vec<Uuid> = batch.iter().map(|(_, e, _, _)| *e).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut pairs: Vec<(Uuid, Uuid)> = batch.iter().map(|(u, e, _, _)| (*e, *u)).collect();
        pairs.sort_unstable();
        pairs.dedup();

        let mut tx = self.db.begin_write().await?;
        let mut events: HashMap<Uuid, (EventRecord, u64)> =
            store::lock_events(&mut tx, self.db.backend, &ids)
                .await?
                .into_iter()
                .map(|e| {
                    let version = e.version;
                    (e.id, (e, version))
                })
                .collect();
        let mut answers: HashMap<(Uuid, Uuid), RsvpRecord> = store::rsvps_of(&mut tx, &pairs)
            .await?
            .into_iter()
            .map(|r| ((r.event_id, r.user_id), r))
            .collect();

        let mut decisions = Vec::with_capacity(batch.len());
        let mut changed_answers: HashMap<(Uuid, Uuid), RsvpRecord> = HashMap::new();
        let mut rows = Vec::new();
        for &(caller, event_id, status, trace) in batch {
            let Some((event, _)) = events.get_mut(&event_id) else {
                decisions.push(Decision::Refused(DomainError::NotFound));
                continue;
            };
            let previous = answers.get(&(event_id, caller)).map(|r| r.status);
            match domain::plan_rsvp(event, previous, status, now) {
                Err(e) => decisions.push(Decision::Refused(e)),
                Ok(RsvpPlan::Unchanged) => match answers.get(&(event_id, caller)) {
                    Some(rsvp) => decisions.push(Decision::Unchanged {
                        rsvp: rsvp.clone(),
                        counts: event.counts,
                    }),
                    None => decisions.push(Decision::Refused(DomainError::NotFound)),
                },
                Ok(RsvpPlan::Change(delta)) => {
                    event.counts = domain::apply_delta(event.counts, delta);
                    event.version += 1;
                    event.updated_at = now;
                    let answer = RsvpRecord {
                        event_id,
                        user_id: caller,
                        status,
                        updated_at: now,
                    };
                    answers.insert((event_id, caller), answer.clone());
                    changed_answers.insert((event_id, caller), answer);
                    let change = RsvpChangedV1 {
                        meta: EventMeta::new(event_id, event.version),
                        event: event.snapshot(),
                        attendee_id: caller,
                        previous_status: previous,
                        status,
                    };
                    let id = change.meta.message_id.to_string();
                    rows.push(OutboxRow::with_msg_id(&change, &id, trace.to_vec())?);
                    if self.rsvp_v2 {
                        // The same change as v2: same logical id, its own Nats-Msg-Id
                        // (the stream would drop a second message with the first one's).
                        let v2 = RsvpChangedV2::from(&change);
                        let id = copy_msg_id(&v2.meta.message_id, RsvpChangedV2::VERSION);
                        rows.push(OutboxRow::with_msg_id(&v2, &id, trace.to_vec())?);
                    }
                    decisions.push(Decision::Changed {
                        counts: event.counts,
                        updated_at: now,
                    });
                }
            }
        }

        if rows.is_empty() {
            // Nothing changed: nothing to write.
            tx.rollback().await?;
        } else {
            let changes: Vec<(&EventRecord, u64)> = events
                .values()
                .filter(|(e, read)| e.version != *read)
                .map(|(e, read)| (e, *read))
                .collect();
            let written = store::write_counts(&mut tx, &changes).await?;
            if written != changes.len() as u64 {
                // The rows are locked by this transaction: this cannot happen unless
                // something wrote around the lock. Refuse the whole batch.
                return Err(StoreError::Corrupt {
                    table: "events",
                    detail: format!("{written} of {} locked events updated", changes.len()),
                }
                .into());
            }
            let answers: Vec<RsvpRecord> = changed_answers.into_values().collect();
            store::upsert_rsvps(&mut tx, &answers).await?;
            outbox::insert(&mut tx, &rows).await?;
            tx.commit().await?;
            self.waker.wake();
        }

        Ok(batch
            .iter()
            .zip(decisions)
            .map(
                |(&(caller, event_id, status, _), decision)| match decision {
                    Decision::Refused(e) => Err(e.into()),
                    Decision::Unchanged { rsvp, counts } => Ok(RsvpResult {
                        rsvp: rsvp_to_api(&rsvp),
                        counts,
                        changed: false,
                    }),
                    Decision::Changed { counts, updated_at } => Ok(RsvpResult {
                        rsvp: api::Rsvp {
                            event_id,
                            user_id: caller,
                            status,
                            updated_at,
                        },
                        counts,
                        changed: true,
                    }),
                },
            )
            .collect())
    }
}

fn rsvp_to_api(r: &RsvpRecord) -> api::Rsvp {
    api::Rsvp {
        event_id: r.event_id,
        user_id: r.user_id,
        status: r.status,
        updated_at: r.updated_at,
    }
}
