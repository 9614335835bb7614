//! Messages the server gave up on: nothing is dropped silently.
//!
//! A worker parks a failing message itself, and when the ward refuses the park (full)
//! it leaves the original un-terminated so it comes back. Its durable's `max_deliver` is
//! the policy's plus a wide margin, but should even that run out (or should a message
//! crash its worker on every delivery, so it is never parked), the server stops
//! delivering it and publishes only a pointer:
//! `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<durable>` with the stream
//! sequence. The hospital listens (one replica per advisory, queue group `hospital`),
//! logs `MAX DELIVERIES` with the stream and sequence, counts
//! `mesh_consumer_max_deliveries_total{durable, stream}`, and rescues the message while
//! the source stream's retention still keeps it: it reads the original by sequence and
//! parks it on `dlq.<durable>` with the usual park id (a worker's earlier park of the
//! same delivery is deduplicated by the ward). If the ward still refuses, the dead
//! letter goes straight into the index (without a copy in the ward, `dlq_sequence` 0),
//! so ops see it, and can replay it, all the same.
//!
//! Advisories are core NATS messages: one published while no hospital runs is not
//! seen here; the worker's own `GIVEN UP` log line and `mesh_consumer_given_up_total`
//! cover that case.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use contracts::hospital::{Diagnosis, ErrorKind, ParkedMessage};
use contracts::subjects::{self, headers};
use futures::StreamExt;
use jiff::Timestamp;
use runtime::db::Database;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::SOURCE_STREAMS;
use crate::domain;
use crate::store::{self, NewDeadLetter};

/// Every durable's max-deliveries advisory.
pub const MAX_DELIVERIES: &str = subjects::MAX_DELIVERIES_ADVISORIES;
/// Replicas of the hospital share the advisories: each is handled once.
const QUEUE_GROUP: &str = "hospital";

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` the hospital uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct MaxDeliveries {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: i64,
}

/// What became of one given-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescue {
    /// Parked in the ward under this park id (the index picks it up).
    Parked(String),
    /// The ward refused it; indexed without a copy in the ward.
    Indexed(String),
    /// Retention had already removed it from its stream.
    Gone,
    /// Not a durable of a source stream (e.g. the index itself): logged and counted.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum RescueError {
    #[error("cannot read {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot encode the parked copy: {0}")]
    Encode(String),
}

/// Listens for max-deliveries advisories until `cancel`.
pub async fn watch(
    client: async_nats::Client,
    js: jetstream::Context,
    db: Database,
    cancel: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut advisories = loop {
        match client
            .queue_subscribe(MAX_DELIVERIES, QUEUE_GROUP.to_owned())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                attempt = attempt.saturating_add(1);
                let delay = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
                tracing::warn!(error = %e, "cannot subscribe to max-deliveries advisories yet");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            m = advisories.next() => m,
        };
        let Some(message) = message else { break };
        let advisory = match serde_json::from_slice::<MaxDeliveries>(&message.payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "unreadable max-deliveries advisory");
                continue;
            }
        };
        handle(&js, &db, &advisory).await;
    }
    let _ = advisories.unsubscribe().await;
}

/// Logs, counts and rescues one given-up message.
pub async fn handle(js: &jetstream::Context, db: &Database, a: &MaxDeliveries) -> Option<Rescue> {
    metrics::counter!(
        "mesh_consumer_max_deliveries_total",
        "durable" => a.consumer.clone(),
        "stream" => a.stream.clone()
    )
    .increment(1);
    let result = rescue(js, db, a).await;
    match &result {
        Ok(Rescue::Parked(park_id)) => tracing::error!(
            stream = %a.stream, stream_sequence = a.stream_seq, durable = %a.consumer,
            deliveries = a.deliveries, park_id,
            "MAX DELIVERIES: the server gave the message up; the hospital parked it from the stream"
        ),
        Ok(Rescue::Indexed(park_id)) => tracing::error!(
            stream = %a.stream, stream_sequence = a.stream_seq, durable = %a.consumer,
            deliveries = a.deliveries, park_id,
            "MAX DELIVERIES: the server gave the message up and the ward refused it; indexed without a copy in the ward"
        ),
        Ok(Rescue::Gone) => tracing::error!(
            stream = %a.stream, stream_sequence = a.stream_seq, durable = %a.consumer,
            deliveries = a.deliveries,
            "MAX DELIVERIES: the server gave the message up and retention has already removed it from its stream"
        ),
        Ok(Rescue::Ignored) => tracing::error!(
            stream = %a.stream, stream_sequence = a.stream_seq, durable = %a.consumer,
            deliveries = a.deliveries,
            "MAX DELIVERIES: the server gave the message up (not a source stream's durable: not rescued)"
        ),
        Err(e) => tracing::error!(
            stream = %a.stream, stream_sequence = a.stream_seq, durable = %a.consumer,
            deliveries = a.deliveries, error = %e,
            "MAX DELIVERIES: the server gave the message up and the hospital could not rescue it; find it in its stream by this sequence"
        ),
    }
    result.ok()
}

async fn rescue(
    js: &jetstream::Context,
    db: &Database,
    a: &MaxDeliveries,
) -> Result<Rescue, RescueError> {
    if !SOURCE_STREAMS.contains(&a.stream.as_str()) {
        return Ok(Rescue::Ignored);
    }
    let stream_err = |e: &dyn std::fmt::Display| RescueError::Stream {
        stream: a.stream.clone(),
        reason: e.to_string(),
    };
    let stream = js.get_stream(&a.stream).await.map_err(|e| stream_err(&e))?;
    let original = match stream.get_raw_message(a.stream_seq).await {
        Ok(m) => m,
        Err(e) => {
            if matches!(
                e.kind(),
                jetstream::stream::RawMessageErrorKind::NoMessageFound
            ) {
                return Ok(Rescue::Gone);
            }
            return Err(stream_err(&e));
        }
    };
    let last_failure = last_failure(js, a).await;
    let parked = parked_copy(
        a,
        &original.subject,
        &original.headers,
        &original.payload,
        last_failure,
    );
    let park_id = parked.park_id.clone();
    let body = contracts::wire::encode(&parked).map_err(|e| RescueError::Encode(e.to_string()))?;
    let mut h = HeaderMap::new();
    h.insert(headers::NATS_MSG_ID, park_id.as_str());
    h.insert(headers::CONTENT_TYPE, contracts::wire::CONTENT_TYPE);
    if let Some(id) = &parked.diagnosis.message_id {
        h.insert(headers::MESSAGE_ID, id.as_str());
    }
    let published = match js
        .publish_with_headers(subjects::dlq_subject(&a.consumer), h, body.into())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        Ok(()) => Ok(Rescue::Parked(park_id)),
        Err(refused) => {
            tracing::warn!(park_id, error = %refused, "the ward refused the rescued message");
            let entry = NewDeadLetter {
                id: Uuid::now_v7(),
                park_id: park_id.clone(),
                dlq_sequence: 0,
                fingerprint: domain::fingerprint(
                    parked.diagnosis.error_kind,
                    &parked.diagnosis.error,
                ),
                diagnosis: parked.diagnosis,
                headers: parked.headers,
                payload: parked.payload,
                parked_at: store::now(),
            };
            store::insert_dead_letter(db, &entry).await?;
            Ok(Rescue::Indexed(park_id))
        }
    }
}

/// The first failure time and the last error the worker recorded for this delivery in
/// the `consumer_failures` bucket, if any.
async fn last_failure(js: &jetstream::Context, a: &MaxDeliveries) -> Option<(Timestamp, String)> {
    #[derive(serde::Deserialize)]
    struct FailureRecord {
        first_failure_at: Timestamp,
        error: String,
    }
    let kv = js
        .get_key_value(subjects::buckets::CONSUMER_FAILURES)
        .await
        .ok()?;
    let key = format!("{}.{}.{}", a.consumer, a.stream, a.stream_seq);
    let bytes = kv.get(key).await.ok()??;
    let record: FailureRecord = serde_json::from_slice(&bytes).ok()?;
    Some((record.first_failure_at, record.error))
}

/// The parked copy of a message the server gave up on, with what the hospital knows.
pub fn parked_copy(
    a: &MaxDeliveries,
    raw_subject: &str,
    original_headers: &HeaderMap,
    payload: &[u8],
    last_failure: Option<(Timestamp, String)>,
) -> ParkedMessage {
    let get = |name: &str| original_headers.get(name).map(|v| v.as_str().to_owned());
    let now = store::now();
    let (first_failure_at, cause) = match last_failure {
        Some((at, error)) => (at, format!("; last failure: {error}")),
        None => (now, String::new()),
    };
    let error = format!(
        "given up by the server after {} deliveries without being parked (the ward refused \
         the park or the worker never finished){cause}",
        a.deliveries
    );
    ParkedMessage {
        park_id: ParkedMessage::park_id(&a.consumer, &a.stream, a.stream_seq),
        diagnosis: Diagnosis {
            service: a
                .consumer
                .split('-')
                .next()
                .unwrap_or(&a.consumer)
                .to_owned(),
            durable: a.consumer.clone(),
            stream: a.stream.clone(),
            subject: subjects::original_of_replay(raw_subject)
                .unwrap_or(raw_subject)
                .to_owned(),
            stream_sequence: a.stream_seq,
            message_id: get(headers::MESSAGE_ID),
            message_type: get(headers::MESSAGE_TYPE),
            schema_version: get(headers::SCHEMA_VERSION).and_then(|v| v.parse().ok()),
            error_kind: ErrorKind::Transient,
            error,
            deliveries: a.deliveries,
            first_failure_at,
            last_failure_at: now,
            trace_id: get(headers::TRACEPARENT)
                .and_then(|tp| tp.split('-').nth(1).map(str::to_owned)),
            replay_of: get(headers::REPLAY_OF),
        },
        headers: original_headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_owned()))
            })
            .collect(),
        payload: payload.to_vec(),
        parked_at: now,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_advisory_is_read() {
        let json = r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x",
            "timestamp":"2030-01-01T00:00:00Z","stream":"CALENDAR","consumer":"email-calendar",
            "stream_seq":42,"deliveries":1008}"#;
        let a: MaxDeliveries = serde_json::from_str(json).unwrap();
        assert_eq!(
            a,
            MaxDeliveries {
                stream: "CALENDAR".into(),
                consumer: "email-calendar".into(),
                stream_seq: 42,
                deliveries: 1008,
            }
        );
    }

    #[test]
    fn the_parked_copy_keeps_the_original_and_says_why() {
        let a = MaxDeliveries {
            stream: "CALENDAR".into(),
            consumer: "email-calendar".into(),
            stream_seq: 42,
            deliveries: 1008,
        };
        let mut h = HeaderMap::new();
        h.insert(headers::MESSAGE_ID, "m1");
        h.insert(headers::MESSAGE_TYPE, "calendar.rsvp_changed");
        h.insert(headers::SCHEMA_VERSION, "1");
        h.insert(
            headers::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let first = Timestamp::from_second(1_900_000_000).unwrap();
        let p = parked_copy(
            &a,
            "calendar.replay.email-calendar.calendar.v1.rsvp.changed",
            &h,
            b"bytes",
            Some((first, "transient: smtp timeout".into())),
        );
        assert_eq!(p.park_id, "park:email-calendar:CALENDAR:42");
        let d = &p.diagnosis;
        assert_eq!(d.service, "email");
        assert_eq!(d.subject, "calendar.v1.rsvp.changed");
        assert_eq!(d.message_id.as_deref(), Some("m1"));
        assert_eq!(d.schema_version, Some(1));
        assert_eq!(d.deliveries, 1008);
        assert_eq!(d.first_failure_at, first);
        assert_eq!(
            d.trace_id.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert!(
            d.error
                .starts_with("given up by the server after 1008 deliveries")
        );
        assert!(d.error.ends_with("; last failure: transient: smtp timeout"));
        assert_eq!(p.payload, b"bytes");
    }
}
