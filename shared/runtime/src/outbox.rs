//! The transactional outbox and its relay.
//!
//! A service writes its domain rows and the domain event in ONE transaction
//! ([`enqueue`]); the [`Relay`] publishes unpublished rows to JetStream with
//! `Nats-Msg-Id` = the event's message id and marks them published only after the
//! server acknowledged them. A crash between publish and mark re-publishes the row,
//! which the stream drops as a duplicate inside its duplicate window; a NATS outage
//! only delays publishing. Nothing committed is lost, nothing is stored twice.
//!
//! Every service that uses it has this table in its migrations (SQLite types shown;
//! PostgreSQL uses BIGSERIAL and BYTEA):
//!
//! ```sql
//! CREATE TABLE outbox (
//!     seq          INTEGER PRIMARY KEY AUTOINCREMENT,
//!     message_id   TEXT NOT NULL UNIQUE,
//!     subject      TEXT NOT NULL,
//!     headers      TEXT NOT NULL,   -- JSON list of [name, value] pairs
//!     payload      BLOB NOT NULL,
//!     created_at   BIGINT NOT NULL, -- µs since epoch
//!     published_at BIGINT           -- NULL until the stream acknowledged it
//! );
//! ```
//!
//! Observability: each published row gets an `outbox.publish` span that continues the
//! trace stored with the row (the request that committed it) and whose context goes out
//! in the message's `traceparent`, so the consumers' spans hang below it. The backlog
//! and the age of the oldest unpublished row are gauges sampled at scrape time
//! ([`sample_gauges`]) and answered to ops by the [`stats_endpoint`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::DomainEvent;
use contracts::hospital::OutboxStats;
use contracts::rpc::NoBody;
use contracts::rpc::RpcReply;
use sqlx::{Any, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::db::{Database, from_micros, to_micros};
use crate::rpc::Endpoint;
use crate::telemetry::{names, queries};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot encode event: {0}")]
    Encode(#[from] contracts::wire::WireError),
    #[error("outbox database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot publish to JetStream: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

/// Adds `event` to the outbox inside the caller's transaction. The current trace
/// context is stored with it, so the relay's publish continues the request's trace.
pub async fn enqueue<E: DomainEvent>(
    tx: &mut Transaction<'static, Any>,
    event: &E,
) -> Result<(), OutboxError> {
    insert(tx, &[OutboxRow::new(event)?]).await
}

/// [`enqueue`] with another `Nats-Msg-Id`: for a second copy of the same logical event
/// (e.g. v2 beside v1, see `contracts::events::copy_msg_id`). The stream dedupes by
/// `Nats-Msg-Id` per stream, so the copy needs its own; `Mesh-Message-Id` and
/// `meta.message_id` stay the logical id consumers dedupe on. `nats_msg_id` is also the
/// row's unique key in the outbox.
pub async fn enqueue_as<E: DomainEvent>(
    tx: &mut Transaction<'static, Any>,
    event: &E,
    nats_msg_id: &str,
) -> Result<(), OutboxError> {
    let row = OutboxRow::with_msg_id(event, nats_msg_id, crate::trace::current_context_pairs())?;
    insert(tx, &[row]).await
}

/// One encoded outbox row, ready to insert. Built apart from the insert so a writer
/// that commits many changes at once ([`insert`] takes a slice) can build each row with
/// the trace context of the request it belongs to.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    nats_msg_id: String,
    subject: &'static str,
    headers: String,
    payload: Vec<u8>,
}

impl OutboxRow {
    /// The event's row under its own message id, with the current trace context.
    pub fn new<E: DomainEvent>(event: &E) -> Result<Self, OutboxError> {
        let id = event.meta().message_id.to_string();
        Self::with_msg_id(event, &id, crate::trace::current_context_pairs())
    }

    /// The event's row under `nats_msg_id`, carrying `trace` (W3C `traceparent` /
    /// `tracestate` pairs, as [`crate::trace::current_context_pairs`] gives them).
    pub fn with_msg_id<E: DomainEvent>(
        event: &E,
        nats_msg_id: &str,
        trace: Vec<(String, String)>,
    ) -> Result<Self, OutboxError> {
        let payload = contracts::wire::encode(event)?;
        let mut headers: Vec<(String, String)> = contracts::events::event_headers(event)
            .into_iter()
            .map(|(k, v)| {
                let v = if k == contracts::subjects::headers::NATS_MSG_ID {
                    nats_msg_id.to_owned()
                } else {
                    v
                };
                (k.to_owned(), v)
            })
            .collect();
        headers.extend(trace);
        let headers = serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into());
        Ok(OutboxRow {
            nats_msg_id: nats_msg_id.to_owned(),
            subject: E::SUBJECT,
            headers,
            payload,
        })
    }
}

/// Inserts `rows` inside the caller's transaction, many per statement (one round trip
/// to the database per chunk, not per row).
pub async fn insert(
    tx: &mut Transaction<'static, Any>,
    rows: &[OutboxRow],
) -> Result<(), OutboxError> {
    // 5 binds a row; well under SQLite's and PostgreSQL's bind limits.
    const ROWS_PER_STATEMENT: usize = 200;
    let backend = crate::db::Backend::of(tx);
    let created_at = to_micros(jiff::Timestamp::now());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = |n| backend.param(i * 5 + n);
                format!("({}, {}, {}, {}, {})", p(1), p(2), p(3), p(4), p(5))
            })
            .collect();
        let sql = format!(
            "INSERT INTO outbox (message_id, subject, headers, payload, created_at) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.nats_msg_id.clone())
                .bind(row.subject)
                .bind(row.headers.clone())
                .bind(row.payload.clone())
                .bind(created_at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Wakes the relay right after a commit, so events do not wait for the next poll.
#[derive(Clone, Debug, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Settings of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows published per round (and acks in flight).
    pub batch: i64,
    /// How often to look for rows when nobody woke the relay (rows left by a crash).
    pub idle_poll: Duration,
    /// Published rows older than this are deleted.
    pub keep_published: Duration,
    /// How long a woken relay waits for more commits before a round: under load every
    /// round is a read and a marking write on the database, so a few milliseconds of
    /// patience publish many rows per round instead of a few.
    pub linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 512,
            idle_poll: Duration::from_millis(500),
            keep_published: Duration::from_secs(7 * 24 * 3600),
            linger: Duration::from_millis(5),
        }
    }
}

/// Publishes outbox rows to JetStream.
pub struct Relay {
    db: Database,
    js: jetstream::Context,
    waker: RelayWaker,
    config: RelayConfig,
}

impl Relay {
    pub fn new(
        db: Database,
        js: jetstream::Context,
        waker: RelayWaker,
        config: RelayConfig,
    ) -> Self {
        Relay {
            db,
            js,
            waker,
            config,
        }
    }

    /// Runs until `cancel`; a round in progress finishes first.
    pub async fn run(self, cancel: CancellationToken) {
        // Defined from the start, so rates and alerts over them are too.
        metrics::counter!(names::OUTBOX_PUBLISHED).absolute(0);
        metrics::counter!(names::OUTBOX_RELAY_FAILURES).absolute(0);
        let mut failures = 0u32;
        let mut rounds = 0u64;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            // A trace-level span: it names the relay's statements in the query metrics
            // (whose layer sees it) without exporting a span per idle poll.
            let round = tracing::trace_span!(queries::RELAY_SPAN);
            match self.publish_pending().instrument(round).await {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!("outbox relay recovered");
                    }
                    failures = 0;
                    if n as i64 >= self.config.batch {
                        continue; // more rows are waiting
                    }
                }
                Err(e) => {
                    metrics::counter!(names::OUTBOX_RELAY_FAILURES).increment(1);
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(200 * 2u64.pow(failures.min(5)));
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox relay round failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {},
                    }
                    continue;
                }
            }
            rounds += 1;
            if rounds.is_multiple_of(1000) {
                self.delete_old().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.waker.0.notified() => {
                    tokio::time::sleep(self.config.linger).await;
                },
                _ = tokio::time::sleep(self.config.idle_poll) => {},
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes one batch of unpublished rows in commit order and marks them; returns
    /// how many were published.
    pub async fn publish_pending(&self) -> Result<usize, OutboxError> {
        let rows = sqlx::query(
            "SELECT seq, subject, headers, payload FROM outbox \
             WHERE published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.config.batch)
        .fetch_all(&self.db.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        let mut spans = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let subject: String = row.try_get("subject")?;
            let headers_json: String = row.try_get("headers")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let pairs: Vec<(String, String)> =
                serde_json::from_str(&headers_json).unwrap_or_default();
            let mut headers = async_nats::HeaderMap::new();
            for (k, v) in &pairs {
                headers.insert(k.as_str(), v.as_str());
            }
            // The publish continues the committing request's trace (stored with the row),
            // and the message carries the publish span's context to the consumers.
            let span = tracing::info_span!(
                "outbox.publish",
                otel.name = %format!("publish {subject}"),
                otel.kind = "producer",
                messaging.destination.name = %subject,
            );
            crate::trace::set_parent(&span, Some(&headers));
            span.in_scope(|| crate::trace::inject_current(&mut headers));
            // Publishes are pipelined: all are sent, then all acks awaited.
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload.into())
                .instrument(span.clone())
                .await?;
            acks.push(ack);
            seqs.push(seq);
            spans.push(span);
        }
        for (ack, span) in acks.into_iter().zip(&spans) {
            let ack = ack.into_future().instrument(span.clone()).await?;
            if ack.duplicate {
                tracing::debug!(parent: span, stream = %ack.stream, "outbox row was already in the stream");
            }
        }
        // The spans end once the stream has every row.
        drop(spans);
        self.mark_published(&seqs).await?;
        metrics::counter!(names::OUTBOX_PUBLISHED).increment(seqs.len() as u64);
        tracing::debug!(count = seqs.len(), "outbox rows published");
        Ok(seqs.len())
    }

    async fn mark_published(&self, seqs: &[i64]) -> Result<(), OutboxError> {
        let now = to_micros(jiff::Timestamp::now());
        for chunk in seqs.chunks(200) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE outbox SET published_at = $1 WHERE seq IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for seq in chunk {
                q = q.bind(*seq);
            }
            q.execute(self.db.writer()).await?;
        }
        Ok(())
    }

    async fn delete_old(&self) {
        let cutoff = jiff::Timestamp::now()
            .as_microsecond()
            .saturating_sub(self.config.keep_published.as_micros() as i64);
        if let Err(e) =
            sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
                .bind(cutoff)
                .execute(self.db.writer())
                .await
        {
            tracing::warn!(error = %e, "cannot delete old outbox rows");
        }
    }
}

/// Rows not yet published (the relay's backlog).
pub async fn backlog(db: &Database) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
        .fetch_one(&db.pool)
        .await?
        .try_get("n")
}

/// The backlog and when its oldest row was committed.
pub async fn stats(db: &Database) -> Result<OutboxStats, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await?;
    let backlog: i64 = row.try_get("n")?;
    let oldest: Option<i64> = row.try_get("oldest")?;
    Ok(OutboxStats {
        backlog: u64::try_from(backlog).unwrap_or(0),
        oldest_unpublished_at: oldest.map(from_micros),
    })
}

/// Sets `mesh_outbox_backlog` and `mesh_outbox_oldest_age_seconds` (for
/// `Readiness::on_scrape`); a failed read leaves them as they were.
pub fn sample_gauges(db: Database) -> impl Fn() -> futures::future::BoxFuture<'static, ()> {
    move || {
        let db = db.clone();
        Box::pin(async move {
            match stats(&db).await {
                Ok(s) => {
                    metrics::gauge!(names::OUTBOX_BACKLOG).set(s.backlog as f64);
                    let age = s
                        .oldest_unpublished_at
                        .map(|t| {
                            jiff::Timestamp::now()
                                .duration_since(t)
                                .as_secs_f64()
                                .max(0.0)
                        })
                        .unwrap_or(0.0);
                    metrics::gauge!(names::OUTBOX_OLDEST_AGE).set(age);
                }
                Err(e) => tracing::debug!(error = %e, "cannot sample the outbox"),
            }
        })
    }
}

/// The `outbox.stats` endpoint on `subject` (`svc.<service>.v1.outbox.stats`): the
/// backlog and its oldest row, for the hospital's `GET /v1/admin/services`.
pub fn stats_endpoint(subject: &'static str, db: Database) -> Endpoint {
    crate::rpc::endpoint(
        contracts::subjects::ops::OUTBOX_STATS_ENDPOINT,
        subject,
        move |_: contracts::rpc::RpcRequest<NoBody>| {
            let db = db.clone();
            async move {
                match stats(&db).await {
                    Ok(body) => RpcReply::Ok { status: 200, body },
                    Err(e) => RpcReply::Err(crate::rpc::internal(&e)),
                }
            }
        },
    )
}
