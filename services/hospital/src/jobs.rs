//! Bulk jobs: replay, discard and purge worked through in chunks in the background.
//!
//! The job's members are fixed when it starts (the ids the selection matched, oldest
//! first); each chunk acts only on members still in the actionable status, the others
//! are `skipped`. Progress goes to the `jobs` row every ~100 rows or 500 ms, which is
//! also the job's sign of life: a job of a dead process is marked failed by the next
//! sweep (see [`crate::app`]) and its claims go back to parked.
//!
//! A replay claims its members a chunk at a time (`replaying`), publishes them (up to
//! 2,048 publish acks outstanding across chunks when unlimited, paced otherwise), and
//! marks the acknowledged ones replayed in one statement per chunk; the rest go back to
//! parked. A claimed member is marked only after the stream acknowledged it, so a
//! process that dies leaves claims (given back by the sweep), never a member marked but
//! unsent; the rerun's publish carries the same `Nats-Msg-Id`, which the stream drops
//! if the first one was stored. On shutdown a job stops between messages, settles what
//! it sent, and ends `failed` ("interrupted; run the action again"): a rerun skips
//! everything already replayed and sends the rest once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use contracts::hospital::{DeadLetterStatus, Job, JobKind, JobStatus};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus;
use crate::service::Hospital;
use crate::store::{self, INTERRUPTED};

/// Outstanding publish acks of an unlimited replay (the JetStream context allows 4096;
/// 1,024 left the per-chunk statements on the critical path often enough to cost ~10%).
pub const WINDOW: usize = 2048;
/// Rows an unlimited replay claims, and marks replayed, per statement (as many ids in
/// one IN list: far below both backends' parameter limits).
pub const REPLAY_CHUNK: usize = 2048;
/// Rows a discard or purge acts on per statement.
pub const CHUNK: usize = 256;
const SAVE_EVERY_ROWS: u64 = 100;
const SAVE_EVERY: Duration = Duration::from_millis(500);

/// A job ready to run.
pub struct Work {
    pub hospital: Hospital,
    pub job: Job,
    pub ids: Vec<Uuid>,
    /// The status members must have to be acted on.
    pub actionable: DeadLetterStatus,
    pub audit_id: Uuid,
    pub selection: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("a replay step failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("stopped")]
    Interrupted,
}

/// Runs a job to its end and records the outcome.
pub async fn run(mut work: Work) {
    let started = Instant::now();
    let result = work_through(&mut work).await;
    let job = &mut work.job;
    job.finished_at = Some(store::now());
    match result {
        Ok(()) => {
            job.status = JobStatus::Completed;
            if job.failed > 0 {
                job.error = Some(format!("{} members failed; see the logs", job.failed));
            }
        }
        Err(JobError::Interrupted) => {
            job.status = JobStatus::Failed;
            job.error = Some(INTERRUPTED.to_owned());
        }
        Err(e @ (JobError::Store(_) | JobError::Task(_))) => {
            tracing::error!(job = %job.id, error = %e, "job failed");
            job.status = JobStatus::Failed;
            job.error = Some(format!("{e}; run the action again"));
        }
    }
    let db = work.hospital.db();
    // The audit's outcome first: whoever sees the job ended then also finds it there.
    let detail = json!({
        "job": job.id,
        "selection": work.selection,
        "matched": job.total,
        "done": job.done,
        "skipped": job.skipped,
        "failed": job.failed,
        "status": store::job_status_str(job.status),
    });
    if let Err(e) = store::update_audit(db, work.audit_id, job.done, &detail).await {
        tracing::warn!(job = %job.id, error = %e, "cannot record a job's outcome in the audit");
    }
    if let Err(e) = store::save_job(db, job).await {
        tracing::error!(job = %job.id, error = %e, "cannot record the end of a job");
    }
    if let Err(e) = store::release_orphan_claims(db).await {
        tracing::warn!(job = %job.id, error = %e, "cannot release claims");
    }
    tracing::info!(
        job = %job.id,
        kind = crate::domain::job_kind_str(job.kind),
        status = store::job_status_str(job.status),
        total = job.total,
        done = job.done,
        skipped = job.skipped,
        failed = job.failed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "job ended"
    );
}

/// Progress saving: every ~100 rows or 500 ms.
struct Progress {
    last_saved: Instant,
    rows_since: u64,
}

impl Progress {
    async fn tick(&mut self, work: &Work, rows: u64) -> Result<(), JobError> {
        self.rows_since += rows;
        if self.rows_since >= SAVE_EVERY_ROWS || self.last_saved.elapsed() >= SAVE_EVERY {
            store::save_job(work.hospital.db(), &work.job).await?;
            self.rows_since = 0;
            self.last_saved = Instant::now();
        }
        Ok(())
    }
}

async fn work_through(work: &mut Work) -> Result<(), JobError> {
    let mut progress = Progress {
        last_saved: Instant::now(),
        rows_since: 0,
    };
    let ids = std::mem::take(&mut work.ids);
    if work.job.kind == JobKind::Replay {
        return replay(work, &ids, &mut progress).await;
    }
    for chunk in ids.chunks(CHUNK) {
        if work.hospital.cancel().is_cancelled() {
            return Err(JobError::Interrupted);
        }
        match work.job.kind {
            JobKind::Discard => discard_chunk(work, chunk).await?,
            _ => purge_chunk(work, chunk).await?,
        }
        progress.tick(work, chunk.len() as u64).await?;
    }
    Ok(())
}

/// Spaces publishes `1/rate` apart on a fixed schedule; rate 0 does not wait.
///
/// Timers wake a millisecond or so late, so at a few thousand per second every sleep
/// overshoots; a slot that is already due is taken at once, which makes up for it (the
/// rate holds on average instead of falling short). After a stall longer than
/// [`CATCH_UP`] the schedule restarts from now rather than bursting to catch up.
struct Pacer {
    interval: Option<Duration>,
    next: tokio::time::Instant,
}

/// How far behind its schedule the pacer still catches up.
const CATCH_UP: Duration = Duration::from_millis(200);

impl Pacer {
    fn new(rate: u32) -> Self {
        Pacer {
            interval: (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate))),
            next: tokio::time::Instant::now(),
        }
    }

    /// Waits for the next slot; false when cancelled first.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let Some(interval) = self.interval else {
            return !cancel.is_cancelled();
        };
        let now = tokio::time::Instant::now();
        if self.next > now {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(self.next) => {}
            }
        } else if now.duration_since(self.next) > CATCH_UP {
            self.next = now;
        }
        self.next += interval;
        !cancel.is_cancelled()
    }
}

/// Publishes of a replay whose acks are outstanding, oldest first, and the outcomes of
/// those settled but not yet recorded.
#[derive(Default)]
struct Sending {
    window: VecDeque<(Uuid, PublishAckFuture)>,
    acked: Vec<Uuid>,
    failed: Vec<Uuid>,
}

impl Sending {
    /// Waits for the oldest outstanding ack.
    async fn settle_oldest(&mut self) {
        let Some((id, ack)) = self.window.pop_front() else {
            return;
        };
        match ack.await {
            // A duplicate ack means an earlier attempt was stored: it is sent.
            Ok(_) => self.acked.push(id),
            Err(e) => {
                tracing::warn!(dead_letter = %id, error = %e, "replay not acknowledged");
                self.failed.push(id);
            }
        }
    }

    async fn settle_all(&mut self) {
        while !self.window.is_empty() {
            self.settle_oldest().await;
        }
    }
}

/// Replays the job's members: claimed a chunk at a time (`replaying`; the next chunk is
/// claimed while one is sent), published with up to [`WINDOW`] acks outstanding across
/// chunks (paced: each chunk settled before the next), and marked replayed in one
/// statement per chunk once acknowledged, while the next chunk is sent; failures go back
/// to parked. Whatever stops the job, everything sent is settled and recorded first, and
/// a chunk claimed ahead is given back.
async fn replay(work: &mut Work, ids: &[Uuid], progress: &mut Progress) -> Result<(), JobError> {
    let rate = work.job.rate_per_sec.unwrap_or(0);
    let chunk_size = match rate {
        0 => REPLAY_CHUNK,
        // About half a second of sending per claim, so progress keeps moving.
        r => (r as usize / 2).clamp(1, REPLAY_CHUNK),
    };
    let db = work.hospital.db().clone();
    let job = work.job.id;
    let claim = |chunk: &[Uuid]| {
        let (db, chunk) = (db.clone(), chunk.to_vec());
        let len = chunk.len();
        (
            len,
            tokio::spawn(async move { store::claim_for_replay(&db, &chunk, job).await }),
        )
    };
    let mut pacer = Pacer::new(rate);
    let mut sending = Sending::default();
    let mut marking: Option<Marking> = None;
    let mut chunks = ids.chunks(chunk_size);
    let mut claiming = chunks.next().map(claim);
    let mut outcome = Ok(());
    while let Some((len, claimed)) = claiming.take() {
        let claimed = match claimed.await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                outcome = Err(e.into());
                break;
            }
            Err(e) => {
                outcome = Err(e.into());
                break;
            }
        };
        work.job.skipped += (len - claimed.len()) as u64;
        claiming = chunks.next().map(claim);
        if let Err(e) = send_chunk(work, &claimed, &mut pacer, &mut sending).await {
            outcome = Err(e);
            break;
        }
        if rate > 0 {
            sending.settle_all().await;
        }
        if let Err(e) = finish_marking(work, marking.take()).await {
            outcome = Err(e);
            break;
        }
        marking = Some(start_marking(work, &mut sending));
        if let Err(e) = progress.tick(work, len as u64).await {
            outcome = Err(e);
            break;
        }
    }
    if let Some((_, ahead)) = claiming {
        match ahead.await {
            Ok(Ok(rows)) => {
                let ids: Vec<Uuid> = rows.iter().map(|r| r.row.id).collect();
                if let Err(e) = store::release_claims(&db, &ids, job).await {
                    // The job's end gives back every claim of a job no longer running.
                    tracing::warn!(job = %job, error = %e, "cannot give back a chunk claimed ahead");
                }
            }
            Ok(Err(e)) => tracing::warn!(job = %job, error = %e, "claiming ahead failed"),
            Err(e) => tracing::warn!(job = %job, error = %e, "claiming ahead failed"),
        }
    }
    sending.settle_all().await;
    let marked = finish_marking(work, marking.take()).await;
    let last = finish_marking(work, Some(start_marking(work, &mut sending))).await;
    outcome.and(marked).and(last)
}

/// Puts one claimed chunk in flight; members not sent because the job stops go straight
/// back to parked.
async fn send_chunk(
    work: &mut Work,
    claimed: &[store::FullRow],
    pacer: &mut Pacer,
    sending: &mut Sending,
) -> Result<(), JobError> {
    let cancel = work.hospital.cancel().clone();
    let js = work.hospital.js().clone();
    for (i, row) in claimed.iter().enumerate() {
        if !pacer.wait(&cancel).await {
            // The members not reached stay uncounted; a rerun takes them.
            let unsent: Vec<Uuid> = claimed[i..].iter().map(|r| r.row.id).collect();
            store::release_claims(work.hospital.db(), &unsent, work.job.id).await?;
            return Err(JobError::Interrupted);
        }
        while sending.window.len() >= WINDOW {
            sending.settle_oldest().await;
        }
        let id = row.row.id;
        match bus::replay_of(row) {
            Ok(m) => match js
                .publish_with_headers(m.subject, m.headers, m.payload)
                .await
            {
                Ok(ack) => sending.window.push_back((id, ack)),
                Err(e) => {
                    tracing::warn!(dead_letter = %id, error = %e, "replay publish failed");
                    sending.failed.push(id);
                }
            },
            Err(e) => {
                tracing::warn!(dead_letter = %id, error = %e, "cannot replay");
                sending.failed.push(id);
            }
        }
    }
    Ok(())
}

/// Recording settled members in the background: (marked replayed, given back as failed).
type Marking = tokio::task::JoinHandle<Result<(u64, u64), store::StoreError>>;

/// Starts marking the acknowledged members replayed and giving the failed ones back.
fn start_marking(work: &Work, sending: &mut Sending) -> Marking {
    let db = work.hospital.db().clone();
    let (job, audit) = (work.job.id, work.audit_id);
    let acked = std::mem::take(&mut sending.acked);
    let failed = std::mem::take(&mut sending.failed);
    tokio::spawn(async move {
        let marked = store::finish_replay(&db, &acked, job, audit).await?;
        store::release_claims(&db, &failed, job).await?;
        Ok((marked, failed.len() as u64))
    })
}

/// Waits for a marking and counts it. Members of a marking that failed stay claimed
/// until the job ends (then parked again; a rerun's publish is a duplicate the stream
/// drops).
async fn finish_marking(work: &mut Work, marking: Option<Marking>) -> Result<(), JobError> {
    let Some(marking) = marking else {
        return Ok(());
    };
    let (marked, failed) = marking.await??;
    work.job.done += marked;
    work.job.failed += failed;
    Ok(())
}

async fn discard_chunk(work: &mut Work, chunk: &[Uuid]) -> Result<(), JobError> {
    let n = store::discard(work.hospital.db(), chunk, work.audit_id).await?;
    work.job.done += n;
    work.job.skipped += chunk.len() as u64 - n;
    Ok(())
}

/// Deletes the stored copies in the `DLQ` stream first, then the index rows: a crash in
/// between leaves rows whose copy is gone (a rerun deletes them), never a copy that a
/// rebuilt index would bring back.
async fn purge_chunk(work: &mut Work, chunk: &[Uuid]) -> Result<(), JobError> {
    let db = work.hospital.db().clone();
    let candidates = store::in_status(&db, chunk, work.actionable).await?;
    work.job.skipped += (chunk.len() - candidates.len()) as u64;
    let dlq = match work
        .hospital
        .js()
        .get_stream(contracts::subjects::DLQ_STREAM.name)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no DLQ stream; purging the index only");
            let n = store::delete(&db, &ids_of(&candidates), work.actionable).await?;
            work.job.done += n;
            return Ok(());
        }
    };
    let results: Vec<(Uuid, Result<(), bus::BusError>)> =
        futures::stream::iter(candidates.clone().into_iter().map(move |(id, seq)| {
            let dlq = dlq.clone();
            async move {
                // Sequence 0: indexed without a copy in the ward (see `advisories`).
                if seq == 0 {
                    return (id, Ok(()));
                }
                (id, bus::delete_parked_copy(&dlq, seq).await)
            }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
    let mut deleted = Vec::new();
    for (id, r) in results {
        match r {
            Ok(()) => deleted.push(id),
            Err(e) => {
                tracing::warn!(dead_letter = %id, error = %e, "cannot delete the parked copy");
                work.job.failed += 1;
            }
        }
    }
    let n = store::delete(&db, &deleted, work.actionable).await?;
    work.job.done += n;
    // Changed by someone else between the two statements: no longer ours to count.
    work.job.skipped += deleted.len() as u64 - n;
    Ok(())
}

fn ids_of(rows: &[(Uuid, u64)]) -> Vec<Uuid> {
    rows.iter().map(|(id, _)| *id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 5,000/s every sleep is shorter than a timer's granularity; the pacer used to
    /// lose each overshoot and fell to well under half the rate.
    #[tokio::test]
    async fn the_pacer_holds_a_high_rate() {
        let cancel = CancellationToken::new();
        let mut pacer = Pacer::new(5_000);
        let started = Instant::now();
        for _ in 0..1_000 {
            assert!(pacer.wait(&cancel).await);
        }
        let took = started.elapsed();
        // 1,000 slots at 200 µs: the last is due after 199.8 ms.
        assert!(
            took >= Duration::from_millis(199),
            "{took:?}: faster than the rate"
        );
        assert!(
            took < Duration::from_millis(600),
            "{took:?}: under the rate"
        );
    }

    #[tokio::test]
    async fn the_pacer_does_not_burst_after_a_stall() {
        let cancel = CancellationToken::new();
        let mut pacer = Pacer::new(1_000);
        assert!(pacer.wait(&cancel).await);
        tokio::time::sleep(CATCH_UP + Duration::from_millis(300)).await;
        let started = Instant::now();
        for _ in 0..100 {
            assert!(pacer.wait(&cancel).await);
        }
        // Restarted from now: 100 slots take ~99 ms, not a burst of the 500 ms missed.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(98), "{took:?}");
    }

    #[tokio::test]
    async fn a_cancelled_pacer_stops_waiting() {
        let cancel = CancellationToken::new();
        let mut pacer = Pacer::new(1);
        assert!(pacer.wait(&cancel).await);
        cancel.cancel();
        assert!(!pacer.wait(&cancel).await);
        assert!(!Pacer::new(0).wait(&cancel).await);
    }
}
