//! Bulk jobs: replay, discard and purge worked through in chunks in the background.
//!
//! The job's members are fixed when it starts (the ids the selection matched, oldest
//! first); each chunk acts only on members still in the actionable status, the others
//! are `skipped`. Progress goes to the `jobs` row every ~100 rows or 500 ms, which is
//! also the job's sign of life: a job of a dead process is marked failed by the next
//! sweep (see [`crate::app`]) and its claims go back to parked.
//!
//! A replay chunk is claimed (`replaying`), published (a window of up to 256
//! outstanding publish acks when unlimited, paced otherwise), and only the acknowledged
//! members are marked replayed; the rest go back to parked. On shutdown a job stops
//! between messages, settles what it sent, and ends `failed` ("interrupted; run the
//! action again"): a rerun skips everything already replayed and sends the rest once.

use std::time::{Duration, Instant};

use contracts::hospital::{DeadLetterStatus, Job, JobKind, JobStatus};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;
use uuid::Uuid;

use crate::bus;
use crate::service::Hospital;
use crate::store::{self, INTERRUPTED};

/// Outstanding publish acks of an unlimited replay, and the chunk of every other job.
pub const WINDOW: usize = 256;
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
        Err(JobError::Store(e)) => {
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
    let rate = work.job.rate_per_sec.unwrap_or(0);
    let chunk_size = match work.job.kind {
        // Paced: chunks of about half a second of sending, so progress keeps moving.
        JobKind::Replay if rate > 0 => (rate as usize / 2).clamp(1, WINDOW),
        _ => WINDOW,
    };
    let mut pacer = Pacer::new(rate);
    let ids = std::mem::take(&mut work.ids);
    for chunk in ids.chunks(chunk_size) {
        if work.hospital.cancel().is_cancelled() {
            return Err(JobError::Interrupted);
        }
        match work.job.kind {
            JobKind::Replay => replay_chunk(work, chunk, &mut pacer).await?,
            JobKind::Discard => discard_chunk(work, chunk).await?,
            JobKind::Purge => purge_chunk(work, chunk).await?,
        }
        progress.tick(work, chunk.len() as u64).await?;
    }
    Ok(())
}

/// Spaces publishes `1/rate` apart; rate 0 does not wait.
struct Pacer {
    interval: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Pacer {
            interval: (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate))),
            next: tokio::time::Instant::now(),
        }
    }

    /// Waits for the next slot; false when cancelled first.
    async fn wait(&mut self, hospital: &Hospital) -> bool {
        let Some(interval) = self.interval else {
            return !hospital.cancel().is_cancelled();
        };
        let now = tokio::time::Instant::now();
        if self.next > now {
            tokio::select! {
                _ = hospital.cancel().cancelled() => return false,
                _ = tokio::time::sleep_until(self.next) => {}
            }
        }
        self.next = self.next.max(now) + interval;
        !hospital.cancel().is_cancelled()
    }
}

async fn replay_chunk(work: &mut Work, chunk: &[Uuid], pacer: &mut Pacer) -> Result<(), JobError> {
    let db = work.hospital.db().clone();
    let job_id = work.job.id;
    let claimed = store::claim_for_replay(&db, chunk, job_id).await?;
    work.job.skipped += (chunk.len() - claimed.len()) as u64;
    let js = work.hospital.js().clone();
    let mut acks = FuturesUnordered::new();
    let mut unsent: Vec<Uuid> = Vec::new();
    let mut failed: Vec<Uuid> = Vec::new();
    let mut interrupted = false;
    for row in &claimed {
        if interrupted || !pacer.wait(&work.hospital).await {
            interrupted = true;
            unsent.push(row.row.id);
            continue;
        }
        let id = row.row.id;
        match bus::replay_of(row) {
            Ok(m) => match js
                .publish_with_headers(m.subject, m.headers, m.payload)
                .await
            {
                Ok(ack) => acks.push(async move { (id, ack.await) }),
                Err(e) => {
                    tracing::warn!(dead_letter = %id, error = %e, "replay publish failed");
                    failed.push(id);
                }
            },
            Err(e) => {
                tracing::warn!(dead_letter = %id, error = %e, "cannot replay");
                failed.push(id);
            }
        }
    }
    // Settle everything sent, even when stopping: an acknowledged replay is recorded.
    let mut sent: Vec<Uuid> = Vec::with_capacity(claimed.len());
    while let Some((id, ack)) = acks.next().await {
        match ack {
            // A duplicate ack means an earlier attempt was stored: it is sent.
            Ok(_) => sent.push(id),
            Err(e) => {
                tracing::warn!(dead_letter = %id, error = %e, "replay not acknowledged");
                failed.push(id);
            }
        }
    }
    let marked = store::finish_replay(&db, &sent, job_id, work.audit_id).await?;
    work.job.done += marked;
    work.job.failed += failed.len() as u64;
    failed.extend(unsent.iter().copied());
    store::release_claims(&db, &failed, job_id).await?;
    if interrupted {
        // The members not reached stay uncounted; a rerun takes them.
        return Err(JobError::Interrupted);
    }
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
