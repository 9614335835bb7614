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
//!   milliseconds); its first failure time is kept in the `consumer_failures` KV bucket;
//! - [`HandlerError::Permanent`], or a transient failure on the last allowed delivery →
//!   parked: the original bytes and headers with their [`Diagnosis`] are published to
//!   the `DLQ` stream, the publish ack awaited, and only then the original terminated.
//!   If the hospital's stream refuses the park (full: discard-new), the original is NOT
//!   terminated but redelivered later, and a log line and the
//!   `mesh_dlq_park_refused_total` counter say so.
//!
//! The server's `max_deliver` is the policy's plus [`PARK_RETRY_MARGIN`]: the loop parks
//! at the policy's count itself, and the margin keeps a refused park's message coming
//! back (at the last backoff step) instead of being dropped by the server. Should even
//! the margin run out (the ward full for that long), nothing goes silently: the last
//! delivery logs `GIVEN UP` with the stream and sequence and counts
//! `mesh_consumer_given_up_total`, and the hospital records the server's
//! `MAX_DELIVERIES` advisory and rescues the message from the source stream.
//!
//! Every durable also filters on its own replay subject (`<context>.replay.<durable>.>`,
//! see `contracts::subjects::replay_filter`), where the hospital re-sends parked messages
//! to that durable alone; handlers see the original subject and the `replay_of` park id.
//!
//! [`Diagnosis`]: contracts::hospital::Diagnosis
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

use contracts::hospital::{Diagnosis, ErrorKind, ParkedMessage};
use contracts::subjects::{self, headers};

use crate::config::ConfigError;

/// Deliveries the server allows beyond the policy's `max_deliver`, so a message whose
/// park was refused comes back later instead of being given up.
pub const PARK_RETRY_MARGIN: i64 = 1000;

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

    /// The error and its causes, `: `-separated. Many errors already print their
    /// source in their own message; a cause whose text is already there is not repeated.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self).and_then(|s| s.source());
        while let Some(s) = source {
            let part = s.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
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
    /// For a replay from the hospital: the park id of the dead letter it replays.
    pub replay_of: Option<String>,
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
    provision_ward(js).await;
    let mut filter_subjects = config.filter_subjects.clone();
    if let Some(replay) = subjects::replay_filter(config.stream, &config.durable)
        && !filter_subjects.contains(&replay)
    {
        filter_subjects.push(replay);
    }
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
        max_deliver: config.retry.max_deliver + PARK_RETRY_MARGIN,
        backoff: config.retry.backoff.clone(),
        filter_subjects,
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

/// Pulls and handles messages until `cancel`, then drains in-flight handlers. `js` is
/// used to park messages in the hospital.
pub async fn run<H: Handler>(
    js: &jetstream::Context,
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
    let server_max_deliver = consumer.cached_info().config.max_deliver;
    let ward = Arc::new(Ward::open(js, &config, server_max_deliver).await);
    let config = Arc::new(config);
    start_metrics(&config.durable);
    // Stream sequences this process is handling right now. When progress acks are lost
    // (a NATS node dies), the server redelivers a message while its first delivery still
    // runs here; handling both at once would do the effect twice.
    let in_flight: Arc<std::sync::Mutex<std::collections::HashSet<u64>>> = Arc::default();
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
        let ward = ward.clone();
        let sequence = message.info().map(|i| i.stream_sequence).ok();
        let first = sequence.is_none_or(|s| {
            in_flight
                .lock()
                .map(|mut set| set.insert(s))
                .unwrap_or(true)
        });
        if !first {
            // The earlier delivery settles it; ask for this one again later, in case
            // that delivery fails.
            tracing::debug!(durable = %config.durable, ?sequence, "redelivered while still in flight here");
            let _ = message
                .ack_with(AckKind::Nak(Some(config.retry.ack_wait())))
                .await;
            continue;
        }
        let in_flight = in_flight.clone();
        tracker.spawn(async move {
            handle_one(message, &config, &ward, handler.as_ref()).await;
            if let (Some(s), Ok(mut set)) = (sequence, in_flight.lock()) {
                set.remove(&s);
            }
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

async fn handle_one<H: Handler>(
    message: jetstream::Message,
    config: &ConsumerConfig,
    ward: &Ward,
    handler: &H,
) {
    let (delivered, stream_sequence) = match message.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(_) => (1, 0),
    };
    let headers = message.headers.clone().unwrap_or_default();
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let raw_subject = message.subject.to_string();
    let delivery = Delivery {
        subject: subjects::original_of_replay(&raw_subject)
            .unwrap_or(&raw_subject)
            .to_owned(),
        message_id: get(headers::MESSAGE_ID),
        message_type: get(headers::MESSAGE_TYPE),
        schema_version: get(headers::SCHEMA_VERSION).and_then(|v| v.parse().ok()),
        replay_of: get(headers::REPLAY_OF),
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
        let started = std::time::Instant::now();
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
        record_handling(&config.durable, delivered, started.elapsed());
        let durable = config.durable.clone();
        match result {
            Ok(()) => {
                metrics::counter!("mesh_consumer_messages_total", "durable" => durable, "outcome" => "handled").increment(1);
                if let Err(e) = message.double_ack().await {
                    // The effect is done; a redelivery is caught by the handler's dedupe.
                    tracing::warn!(error = %e, "ack not confirmed");
                }
                if delivered > 1 {
                    ward.forget_failure(config, stream_sequence).await;
                }
            }
            Err(HandlerError::Transient(_)) if delivered < config.retry.max_deliver => {
                metrics::counter!("mesh_consumer_messages_total", "durable" => durable, "outcome" => "retried").increment(1);
                let delay = config.retry.delay_after(delivered);
                let error = result_error_text(&result);
                tracing::warn!(error = %error, delivered, retry_in_ms = delay.as_millis() as u64, "handler failed, will retry");
                ward.remember_failure(config, stream_sequence, &error, delivered).await;
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(error = %e, "nak failed; redelivered after ack wait");
                }
            }
            Err(ref e) => {
                let kind = match e {
                    HandlerError::Permanent(_) => ErrorKind::Permanent,
                    HandlerError::Transient(_) => ErrorKind::Transient,
                };
                let error = result_error_text(&result);
                let diagnosis = ward.diagnose(config, &delivery, kind, &error).await;
                match ward.park(&delivery, diagnosis).await {
                    Ok(park_id) => {
                        metrics::counter!("mesh_dlq_parked_total", "durable" => durable, "kind" => kind.as_str()).increment(1);
                        tracing::error!(error = %error, kind = kind.as_str(), delivered, park_id, "message parked in the hospital");
                        if let Err(e) = message.double_ack_with(AckKind::Term).await {
                            // Parked but not terminated: the redelivery parks again,
                            // which the DLQ stream drops as a duplicate.
                            tracing::warn!(error = %e, "terminate after park not confirmed");
                        }
                        ward.forget_failure(config, stream_sequence).await;
                    }
                    Err(park_error) => {
                        metrics::counter!("mesh_dlq_park_refused_total", "durable" => durable.clone()).increment(1);
                        let delay = config.retry.backoff.last().copied().unwrap_or(Duration::from_secs(60));
                        if ward.is_last_delivery(delivered) {
                            // Nothing more can be done here: say it loudly, with what ops
                            // need to find the message while the stream still keeps it.
                            // The hospital also records the server's max-deliveries
                            // advisory for it.
                            metrics::counter!("mesh_consumer_given_up_total", "durable" => durable, "stream" => config.stream).increment(1);
                            tracing::error!(
                                error = %error,
                                park_error = %park_error,
                                stream = config.stream,
                                stream_sequence,
                                server_max_deliver = ward.server_max_deliver,
                                "GIVEN UP: the park was refused on the server's last delivery; the server delivers this message no more (it stays in its stream at this sequence until retention removes it)"
                            );
                        } else {
                            tracing::error!(
                                error = %error,
                                park_error = %park_error,
                                retry_in_ms = delay.as_millis() as u64,
                                "PARK REFUSED: the dead-letter stream did not take the message; it stays un-terminated and comes back later"
                            );
                        }
                        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Where failing messages are recorded and parked: the `DLQ` stream and the
/// `consumer_failures` bucket.
struct Ward {
    js: jetstream::Context,
    failures: Option<jetstream::kv::Store>,
    /// The durable's `max_deliver` as the server has it (the policy's plus
    /// [`PARK_RETRY_MARGIN`] when created by [`ensure`]); zero or less: unlimited.
    server_max_deliver: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FailureRecord {
    first_failure_at: jiff::Timestamp,
    last_failure_at: jiff::Timestamp,
    deliveries: i64,
    error: String,
}

impl Ward {
    async fn open(
        js: &jetstream::Context,
        config: &ConsumerConfig,
        server_max_deliver: i64,
    ) -> Self {
        let failures = match js.get_key_value(subjects::buckets::CONSUMER_FAILURES).await {
            Ok(store) => Some(store),
            Err(e) => {
                tracing::warn!(durable = %config.durable, error = %e, "no consumer_failures bucket; first failure times fall back to the park time");
                None
            }
        };
        Ward {
            js: js.clone(),
            failures,
            server_max_deliver,
        }
    }

    /// True when the server will not deliver a message again after this delivery.
    fn is_last_delivery(&self, delivered: i64) -> bool {
        self.server_max_deliver > 0 && delivered >= self.server_max_deliver
    }

    fn failure_key(config: &ConsumerConfig, sequence: u64) -> String {
        format!("{}.{}.{sequence}", config.durable, config.stream)
    }

    async fn remember_failure(
        &self,
        config: &ConsumerConfig,
        sequence: u64,
        error: &str,
        deliveries: i64,
    ) {
        let Some(kv) = &self.failures else { return };
        let key = Self::failure_key(config, sequence);
        let now = jiff::Timestamp::now();
        let first = match kv.get(&key).await {
            Ok(Some(bytes)) => serde_json::from_slice::<FailureRecord>(&bytes)
                .map(|r| r.first_failure_at)
                .unwrap_or(now),
            _ => now,
        };
        let record = FailureRecord {
            first_failure_at: first,
            last_failure_at: now,
            deliveries,
            error: error.chars().take(2000).collect(),
        };
        if let Ok(bytes) = serde_json::to_vec(&record)
            && let Err(e) = kv.put(&key, bytes.into()).await
        {
            tracing::debug!(error = %e, "cannot record failure");
        }
    }

    async fn forget_failure(&self, config: &ConsumerConfig, sequence: u64) {
        if let Some(kv) = &self.failures {
            let _ = kv.purge(Self::failure_key(config, sequence)).await;
        }
    }

    async fn diagnose(
        &self,
        config: &ConsumerConfig,
        delivery: &Delivery,
        kind: ErrorKind,
        error: &str,
    ) -> Diagnosis {
        let now = jiff::Timestamp::now();
        let mut first = now;
        if let Some(kv) = &self.failures
            && let Ok(Some(bytes)) = kv
                .get(Self::failure_key(config, delivery.stream_sequence))
                .await
            && let Ok(record) = serde_json::from_slice::<FailureRecord>(&bytes)
        {
            first = record.first_failure_at;
        }
        Diagnosis {
            service: config
                .durable
                .split('-')
                .next()
                .unwrap_or(&config.durable)
                .to_owned(),
            durable: config.durable.clone(),
            stream: config.stream.to_owned(),
            subject: delivery.subject.clone(),
            stream_sequence: delivery.stream_sequence,
            message_id: delivery.message_id.clone(),
            message_type: delivery.message_type.clone(),
            schema_version: delivery.schema_version,
            error_kind: kind,
            error: error.to_owned(),
            deliveries: delivery.delivered,
            first_failure_at: first,
            last_failure_at: now,
            trace_id: delivery
                .header(headers::TRACEPARENT)
                .and_then(|tp| tp.split('-').nth(1))
                .map(str::to_owned)
                .or_else(crate::trace::current_trace_id),
            replay_of: delivery.replay_of.clone(),
        }
    }

    /// Publishes the parked copy and waits for the stream's ack; returns the park id.
    async fn park(&self, delivery: &Delivery, diagnosis: Diagnosis) -> Result<String, ParkError> {
        let park_id = ParkedMessage::park_id(
            &diagnosis.durable,
            &diagnosis.stream,
            diagnosis.stream_sequence,
        );
        let subject = subjects::dlq_subject(&diagnosis.durable);
        let original_headers: Vec<(String, String)> = delivery
            .headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_owned()))
            })
            .collect();
        let parked = ParkedMessage {
            park_id: park_id.clone(),
            diagnosis,
            headers: original_headers,
            payload: delivery.payload.to_vec(),
            parked_at: jiff::Timestamp::now(),
        };
        let body = contracts::wire::encode(&parked).map_err(|e| ParkError(e.to_string()))?;
        let mut h = HeaderMap::new();
        h.insert(headers::NATS_MSG_ID, park_id.as_str());
        h.insert(headers::CONTENT_TYPE, contracts::wire::CONTENT_TYPE);
        if let Some(id) = &delivery.message_id {
            h.insert(headers::MESSAGE_ID, id.as_str());
        }
        crate::trace::inject_current(&mut h);
        let ack = self
            .js
            .publish_with_headers(subject, h, body.into())
            .await
            .map_err(|e| ParkError(e.to_string()))?;
        ack.await.map_err(|e| ParkError(e.to_string()))?;
        Ok(park_id)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ParkError(String);

/// The dead-letter stream's configuration: limits retention (browsable), discard-new
/// (a full ward refuses parks instead of dropping old ones), an explicit duplicate window
/// (parking twice after a crash is stored once).
pub fn dlq_stream_config(max_bytes: i64) -> jetstream::stream::Config {
    let mut config = crate::nats::stream_config(&subjects::DLQ_STREAM);
    config.max_bytes = max_bytes;
    config.discard = jetstream::stream::DiscardPolicy::New;
    config
}

/// Creates the DLQ stream (if absent: the hospital owns its limits) and the failures
/// bucket, so a subscriber can park even before the hospital ever ran.
async fn provision_ward(js: &jetstream::Context) {
    if js.get_stream(subjects::DLQ_STREAM.name).await.is_err()
        && let Err(e) = js
            .create_stream(dlq_stream_config(subjects::DLQ_MAX_BYTES))
            .await
    {
        tracing::warn!(error = %e, "cannot create the DLQ stream");
    }
    if js
        .get_key_value(subjects::buckets::CONSUMER_FAILURES)
        .await
        .is_err()
        && let Err(e) = js
            .create_key_value(jetstream::kv::Config {
                bucket: subjects::buckets::CONSUMER_FAILURES.to_owned(),
                max_age: Duration::from_secs(7 * 24 * 3600),
                history: 1,
                num_replicas: crate::nats::stream_replicas(),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
    {
        tracing::warn!(error = %e, "cannot create the consumer_failures bucket");
    }
}

/// The durable's counters exist from its start at 0, so rates and alerts over them are
/// defined before the first failure.
fn start_metrics(durable: &str) {
    use crate::telemetry::names;
    let d = durable.to_owned();
    for outcome in ["handled", "retried"] {
        metrics::counter!(names::CONSUMER_MESSAGES, "durable" => d.clone(), "outcome" => outcome)
            .absolute(0);
    }
    for kind in [ErrorKind::Permanent, ErrorKind::Transient] {
        metrics::counter!(names::DLQ_PARKED, "durable" => d.clone(), "kind" => kind.as_str())
            .absolute(0);
    }
    metrics::counter!(names::DLQ_PARK_REFUSED, "durable" => d.clone()).absolute(0);
    metrics::counter!(names::CONSUMER_REDELIVERIES, "durable" => d).absolute(0);
}

/// Handler time, and whether this was a redelivery.
fn record_handling(durable: &str, delivered: i64, took: Duration) {
    use crate::telemetry::names;
    metrics::histogram!(names::CONSUMER_HANDLE_DURATION, "durable" => durable.to_owned())
        .record(took.as_secs_f64());
    if delivered > 1 {
        metrics::counter!(names::CONSUMER_REDELIVERIES, "durable" => durable.to_owned())
            .increment(1);
    }
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

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[derive(Debug, thiserror::Error)]
    enum Smtp {
        // Prints its source itself, as many library errors do.
        #[error("SMTP connection error: {0}")]
        Connect(#[source] Refused),
        #[error("SMTP send failed")]
        Send(#[source] Refused),
    }

    #[test]
    fn error_chain_names_each_cause_once() {
        let printed = HandlerError::transient(Smtp::Connect(Refused));
        assert_eq!(
            printed.chain(),
            "transient: SMTP connection error: connection refused"
        );
        let chained = HandlerError::permanent(Smtp::Send(Refused));
        assert_eq!(
            chained.chain(),
            "permanent: SMTP send failed: connection refused"
        );
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
