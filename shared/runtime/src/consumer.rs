//! Durable JetStream pull consumers with explicit acks, retry schedules and draining.
//!
//! A subscriber declares a [`ConsumerConfig`] (stream, durable name, filters, where a
//! first start begins, max deliver, backoff) and a [`Handler`]; [`run`] pulls messages,
//! runs the handler for each (a bounded number at once), and settles every message only
//! after its effect is done:
//! - `Ok` → acknowledged, and the server's confirmation awaited (`double_ack`), so an
//!   acknowledged effect is not redelivered;
//! - [`HandlerError::Transient`] → negatively acknowledged WITH the delay from the
//!   backoff schedule (a plain Nak ignores the schedule and burns through max deliver in
//!   milliseconds);
//! - [`HandlerError::Permanent`] → terminated at once, with the reason logged.
//!
//! While a handler runs, the loop sends `Progress` every half ack wait: with a backoff
//! list the server sets ack wait to its first step, and a slow handler must not be
//! redelivered to another replica while it still works. Replicas of one service share
//! the durable (each message is handled by one of them); every service has its own
//! durable (every service sees every message). On shutdown the loop stops pulling and
//! lets in-flight handlers finish before it returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ConfigError;

/// Where a durable consumer starts the first time it is created on a stream that already
/// has history. A restarted consumer always resumes after its last acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// Every message the stream still holds (rebuilding a read model).
    Beginning,
    /// Only messages published after the consumer was created.
    NewOnly,
}

/// The retry schedule of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries before the server gives up on a message.
    pub max_deliver: i64,
    /// Delay before the n-th redelivery; the last step repeats. The first step is also
    /// the ack wait.
    pub backoff: Vec<Duration>,
}

impl RetryPolicy {
    /// Reads `<PREFIX>_MAX_DELIVER` and `<PREFIX>_BACKOFF_MS` (comma list of
    /// milliseconds), with defaults 8 and `1000,5000,30000,120000,600000`.
    pub fn from_env(prefix: &str) -> Result<Self, ConfigError> {
        let max_name = format!("{prefix}_MAX_DELIVER");
        let backoff_name = format!("{prefix}_BACKOFF_MS");
        let max_deliver = crate::config::parse(&max_name, 8i64)?;
        let raw = crate::config::string(&backoff_name, "1000,5000,30000,120000,600000");
        let mut backoff = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ms: u64 =
                part.parse()
                    .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                        name: backoff_name.clone(),
                        value: raw.clone(),
                        reason: e.to_string(),
                    })?;
            backoff.push(Duration::from_millis(ms));
        }
        let policy = RetryPolicy {
            max_deliver,
            backoff,
        };
        policy.validate().map_err(|reason| ConfigError::Invalid {
            name: max_name,
            value: max_deliver.to_string(),
            reason,
        })?;
        Ok(policy)
    }

    /// The server rejects a backoff list with as many or more steps than deliveries;
    /// say so at start, not at the first failure.
    pub fn validate(&self) -> Result<(), String> {
        if self.backoff.is_empty() {
            return Err("the backoff schedule needs at least one step".into());
        }
        if self.backoff.iter().any(|d| d.is_zero()) {
            return Err("backoff steps must be longer than zero".into());
        }
        if self.max_deliver <= self.backoff.len() as i64 {
            return Err(format!(
                "max deliver ({}) must exceed the number of backoff steps ({})",
                self.max_deliver,
                self.backoff.len()
            ));
        }
        Ok(())
    }

    /// Delay before redelivering a message that failed on its `delivered`-th attempt.
    pub fn delay_after(&self, delivered: i64) -> Duration {
        let step = (delivered.max(1) - 1) as usize;
        self.backoff
            .get(step)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// The server's ack wait under this schedule.
    pub fn ack_wait(&self) -> Duration {
        self.backoff
            .first()
            .copied()
            .unwrap_or(Duration::from_secs(30))
    }
}

/// A durable consumer of one stream.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub stream: &'static str,
    /// Durable name, `<service>-<stream>` by convention, e.g. `email-calendar`.
    pub durable: String,
    pub filter_subjects: Vec<String>,
    pub start: StartPosition,
    pub retry: RetryPolicy,
    /// Messages handled at once by one replica (also the pull batch size).
    pub concurrency: usize,
    /// Unacknowledged messages the server lets this durable have, over all replicas.
    pub max_ack_pending: i64,
}

/// Why a handler failed, which decides what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (SMTP timeout, database busy): redelivered on the schedule.
    #[error("transient: {0}")]
    Transient(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Will never work (cannot be decoded, unknown version, invalid): not retried.
    #[error("permanent: {0}")]
    Permanent(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl HandlerError {
    pub fn transient(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError::Transient(e.into())
    }

    pub fn permanent(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError::Permanent(e.into())
    }

    /// The error and its causes, `: `-separated.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self).and_then(|s| s.source());
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// One delivered message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// `Mesh-Message-Id`: stable across redeliveries and replays.
    pub message_id: Option<String>,
    /// `Mesh-Message-Type`, e.g. `calendar.rsvp_changed`.
    pub message_type: Option<String>,
    /// `Mesh-Schema-Version`.
    pub schema_version: Option<u32>,
    /// Delivery attempt, from 1.
    pub delivered: i64,
    pub stream_sequence: u64,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// Decodes the body as `T`; a failure is permanent (redelivery cannot fix bytes).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        contracts::wire::decode(&self.payload).map_err(HandlerError::permanent)
    }
}

/// The work a subscriber does for one message.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("invalid retry policy for {durable}: {reason}")]
    Policy { durable: String, reason: String },
    #[error("cannot find stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create consumer {durable}: {source}")]
    Create {
        durable: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot pull from {durable}: {source}")]
    Pull {
        durable: String,
        #[source]
        source: consumer::StreamError,
    },
}

/// Creates the durable, or updates the settings that may change (filters, retries).
/// An existing durable keeps its position: a restart resumes where it left off.
pub async fn ensure(
    js: &jetstream::Context,
    config: &ConsumerConfig,
) -> Result<consumer::PullConsumer, ConsumerError> {
    config
        .retry
        .validate()
        .map_err(|reason| ConsumerError::Policy {
            durable: config.durable.clone(),
            reason,
        })?;
    let stream = js
        .get_stream(config.stream)
        .await
        .map_err(|source| ConsumerError::Stream {
            stream: config.stream.to_owned(),
            source,
        })?;
    let deliver_policy = match config.start {
        StartPosition::Beginning => consumer::DeliverPolicy::All,
        StartPosition::NewOnly => consumer::DeliverPolicy::New,
    };
    let pull = consumer::pull::Config {
        durable_name: Some(config.durable.clone()),
        description: Some(format!("{} on {}", config.durable, config.stream)),
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.retry.ack_wait(),
        max_deliver: config.retry.max_deliver,
        backoff: config.retry.backoff.clone(),
        filter_subjects: config.filter_subjects.clone(),
        max_ack_pending: config.max_ack_pending,
        ..Default::default()
    };
    let created = stream.create_consumer(pull.clone()).await;
    match created {
        Ok(c) => Ok(c),
        // The deliver policy of an existing durable cannot change; keep it and update
        // the rest.
        Err(_) => {
            let existing: consumer::PullConsumer = stream
                .get_consumer(&config.durable)
                .await
                .map_err(|source| ConsumerError::Create {
                    durable: config.durable.clone(),
                    source,
                })?;
            let mut update = pull;
            update.deliver_policy = existing.cached_info().config.deliver_policy;
            stream
                .update_consumer(update)
                .await
                .map_err(|source| ConsumerError::Create {
                    durable: config.durable.clone(),
                    source: source.into(),
                })
        }
    }
}

/// Pulls and handles messages until `cancel`, then drains in-flight handlers.
pub async fn run<H: Handler>(
    consumer: consumer::PullConsumer,
    config: ConsumerConfig,
    handler: Arc<H>,
    cancel: CancellationToken,
) -> Result<(), ConsumerError> {
    let batch = config.concurrency.max(1);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|source| ConsumerError::Pull {
            durable: config.durable.clone(),
            source,
        })?;
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(batch));
    let config = Arc::new(config);
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            m = messages.next() => m,
        };
        let message = match message {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Missed heartbeats and the like: the stream recovers by itself.
                tracing::warn!(durable = %config.durable, error = %e, "pull error");
                continue;
            }
        };
        let handler = handler.clone();
        let config = config.clone();
        tracker.spawn(async move {
            handle_one(message, &config, handler.as_ref()).await;
            drop(permit);
        });
    }
    // Stop pulling; messages fetched but not started are redelivered after ack wait.
    drop(messages);
    tracker.close();
    tracker.wait().await;
    tracing::info!(durable = %config.durable, "consumer drained");
    Ok(())
}

async fn handle_one<H: Handler>(message: jetstream::Message, config: &ConsumerConfig, handler: &H) {
    let (delivered, stream_sequence) = match message.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(_) => (1, 0),
    };
    let headers = message.headers.clone().unwrap_or_default();
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let delivery = Delivery {
        subject: message.subject.to_string(),
        message_id: get(contracts::subjects::headers::MESSAGE_ID),
        message_type: get(contracts::subjects::headers::MESSAGE_TYPE),
        schema_version: get(contracts::subjects::headers::SCHEMA_VERSION)
            .and_then(|v| v.parse().ok()),
        headers: headers.clone(),
        payload: message.payload.clone(),
        delivered,
        stream_sequence,
    };
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("consume {}", delivery.subject),
        otel.kind = "consumer",
        durable = %config.durable,
        subject = %delivery.subject,
        message_id = delivery.message_id.as_deref().unwrap_or(""),
        delivered,
    );
    crate::trace::set_parent(&span, Some(&headers));
    async {
        // Keep the message ours while the handler works.
        let progress_every = (config.retry.ack_wait() / 2).max(Duration::from_millis(100));
        let result = {
            let work = handler.handle(&delivery);
            tokio::pin!(work);
            let mut ticker = tokio::time::interval(progress_every);
            ticker.tick().await;
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = ticker.tick() => {
                        if let Err(e) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(error = %e, "progress ack failed");
                        }
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                if let Err(e) = message.double_ack().await {
                    // The effect is done; a redelivery is caught by the handler's dedupe.
                    tracing::warn!(error = %e, "ack not confirmed");
                }
            }
            Err(HandlerError::Transient(_)) if delivered >= config.retry.max_deliver => {
                let err = result_error_text(&result);
                tracing::error!(error = %err, delivered, "giving up: max deliveries reached");
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(HandlerError::Transient(_)) => {
                let delay = config.retry.delay_after(delivered);
                tracing::warn!(error = %result_error_text(&result), delivered, retry_in_ms = delay.as_millis() as u64, "handler failed, will retry");
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(error = %e, "nak failed; redelivered after ack wait");
                }
            }
            Err(HandlerError::Permanent(_)) => {
                tracing::error!(error = %result_error_text(&result), "handler failed permanently; message terminated");
                let _ = message.ack_with(AckKind::Term).await;
            }
        }
    }
    .instrument(span)
    .await;
}

fn result_error_text(result: &Result<(), HandlerError>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(e) => e.chain(),
    }
}

/// The processed-message ledger every idempotent subscriber keeps in its own database:
///
/// ```sql
/// CREATE TABLE processed_messages (
///     consumer     TEXT NOT NULL,
///     message_id   TEXT NOT NULL,
///     processed_at BIGINT NOT NULL,
///     PRIMARY KEY (consumer, message_id)
/// );
/// ```
pub mod ledger {
    use sqlx::{Any, Executor};

    use crate::db::{Database, to_micros};

    /// True when `consumer` already completed `message_id`.
    pub async fn is_processed(
        db: &Database,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM processed_messages WHERE consumer = $1 AND message_id = $2",
        )
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(&db.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Records `message_id` as done; false when it already was.
    pub async fn mark_processed<'c, E>(
        executor: E,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error>
    where
        E: Executor<'c, Database = Any>,
    {
        let done = sqlx::query(
            "INSERT INTO processed_messages (consumer, message_id, processed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id)
        .bind(to_micros(jiff::Timestamp::now()))
        .execute(executor)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: i64, steps: &[u64]) -> RetryPolicy {
        RetryPolicy {
            max_deliver: max,
            backoff: steps.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        }
    }

    #[test]
    fn max_deliver_must_exceed_backoff_steps() {
        assert!(policy(3, &[100, 200, 300]).validate().is_err());
        assert!(policy(4, &[100, 200, 300]).validate().is_ok());
        assert!(policy(4, &[]).validate().is_err());
        assert!(policy(4, &[0]).validate().is_err());
    }

    #[test]
    fn delay_follows_the_schedule_and_repeats_its_last_step() {
        let p = policy(6, &[100, 200, 300]);
        assert_eq!(p.delay_after(1), Duration::from_millis(100));
        assert_eq!(p.delay_after(2), Duration::from_millis(200));
        assert_eq!(p.delay_after(3), Duration::from_millis(300));
        assert_eq!(p.delay_after(5), Duration::from_millis(300));
        assert_eq!(p.ack_wait(), Duration::from_millis(100));
    }
}
