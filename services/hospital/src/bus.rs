//! What the hospital does on the bus besides indexing: building replays, reading
//! consumer state, pausing consumers, and finding a message in the source streams.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use contracts::hospital::ConsumerState;
use contracts::subjects::{self, AUTH_STREAM, CALENDAR_STREAM, headers};
use futures::StreamExt;
use jiff::Timestamp;

use crate::store::FullRow;

/// The streams whose durables the hospital watches and replays to.
pub const SOURCE_STREAMS: [&str; 2] = [AUTH_STREAM.name, CALENDAR_STREAM.name];

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BusError(pub String);

fn err(e: impl std::fmt::Display) -> BusError {
    BusError(e.to_string())
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The original headers minus the ones a replay sets itself.
fn carried_headers(original: &[(String, String)], replaced: &[&str]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in original {
        if replaced.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            continue;
        }
        map.append(name.as_str(), value.as_str());
    }
    map
}

/// The replay of a parked message to the durable that failed it: on its replay subject
/// in the source stream, with a deterministic `Nats-Msg-Id` (a rerun after a crash
/// between the stream's ack and the status update is dropped by the stream's duplicate
/// window) and the unchanged `Mesh-Message-Id` (the consumer's own dedupe).
pub fn replay_of(row: &FullRow) -> Result<Outgoing, BusError> {
    let d = &row.row.diagnosis;
    let subject = subjects::replay_subject(&d.stream, &d.durable, &d.subject).ok_or_else(|| {
        BusError(format!(
            "no replay subject: {:?} is not a stream the hospital replays to",
            d.stream
        ))
    })?;
    let mut h = carried_headers(&row.headers, &[headers::NATS_MSG_ID, headers::REPLAY_OF]);
    h.insert(
        headers::NATS_MSG_ID,
        format!("replay:{}:{}", row.row.park_id, row.row.replays).as_str(),
    );
    h.insert(headers::REPLAY_OF, row.row.park_id.as_str());
    Ok(Outgoing {
        subject,
        headers: h,
        payload: Bytes::from(row.payload.clone()),
    })
}

/// The edited copy of a parked message: a new message id, the original's kept in
/// `Mesh-Edited-From`.
pub fn edited_replay_of(
    row: &FullRow,
    new_message_id: &str,
    payload: Vec<u8>,
) -> Result<Outgoing, BusError> {
    let d = &row.row.diagnosis;
    let subject = subjects::replay_subject(&d.stream, &d.durable, &d.subject).ok_or_else(|| {
        BusError(format!(
            "no replay subject: {:?} is not a stream the hospital replays to",
            d.stream
        ))
    })?;
    let mut h = carried_headers(
        &row.headers,
        &[
            headers::NATS_MSG_ID,
            headers::REPLAY_OF,
            headers::MESSAGE_ID,
            headers::EDITED_FROM,
        ],
    );
    h.insert(headers::MESSAGE_ID, new_message_id);
    if let Some(original) = &d.message_id {
        h.insert(headers::EDITED_FROM, original.as_str());
    }
    h.insert(headers::REPLAY_OF, row.row.park_id.as_str());
    h.insert(
        headers::NATS_MSG_ID,
        format!("edit:{}:{new_message_id}", row.row.park_id).as_str(),
    );
    Ok(Outgoing {
        subject,
        headers: h,
        payload: Bytes::from(payload),
    })
}

/// Publishes and waits for the stream's ack. A duplicate ack counts as success: the
/// message is in the stream (an earlier attempt stored it).
pub async fn publish(js: &jetstream::Context, m: Outgoing) -> Result<(), BusError> {
    let ack = js
        .publish_with_headers(m.subject, m.headers, m.payload)
        .await
        .map_err(err)?;
    ack.await.map_err(err)?;
    Ok(())
}

/// Deletes one message of the `DLQ` stream; an already missing one (aged out) is fine.
pub async fn delete_parked_copy(dlq: &stream::Stream, sequence: u64) -> Result<(), BusError> {
    match dlq.delete_message(sequence).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            stream::DeleteMessageErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(())
            }
            _ => Err(err(e)),
        },
    }
}

/// The durables of the source streams, as the server sees them.
pub async fn source_consumers(js: &jetstream::Context) -> Result<Vec<consumer::Info>, BusError> {
    let mut all = Vec::new();
    for name in SOURCE_STREAMS {
        let stream = match js.get_stream(name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(stream = name, error = %e, "stream missing");
                continue;
            }
        };
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            all.push(info.map_err(err)?);
        }
    }
    all.sort_by(|a, b| (&a.stream_name, &a.name).cmp(&(&b.stream_name, &b.name)));
    Ok(all)
}

/// The API view of one consumer's state.
pub fn consumer_state(info: &consumer::Info, parked: u64) -> ConsumerState {
    let paused = info.paused;
    ConsumerState {
        durable: info.name.clone(),
        stream: info.stream_name.clone(),
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
        parked,
        paused,
        paused_until: info
            .pause_remaining
            .filter(|_| paused)
            .and_then(|d| jiff::SignedDuration::try_from(d).ok())
            .and_then(|d| Timestamp::now().checked_add(d).ok()),
    }
}

/// The source stream holding `durable`, if any.
pub async fn find_durable(
    js: &jetstream::Context,
    durable: &str,
) -> Result<Option<stream::Stream>, BusError> {
    for name in SOURCE_STREAMS {
        let Ok(stream) = js.get_stream(name).await else {
            continue;
        };
        if stream.consumer_info(durable).await.is_ok() {
            return Ok(Some(stream));
        }
    }
    Ok(None)
}

pub async fn pause(
    stream: &stream::Stream,
    durable: &str,
    until: Timestamp,
) -> Result<consumer::Info, BusError> {
    let until = async_nats::datetime::from_nanos(until.as_nanosecond()).map_err(err)?;
    stream.pause_consumer(durable, until).await.map_err(err)?;
    stream.consumer_info(durable).await.map_err(err)
}

pub async fn resume(stream: &stream::Stream, durable: &str) -> Result<consumer::Info, BusError> {
    stream.resume_consumer(durable).await.map_err(err)?;
    stream.consumer_info(durable).await.map_err(err)
}

/// True when the consumer's filters take `subject` (no filter takes everything).
pub fn consumer_takes(info: &consumer::Info, subject: &str) -> bool {
    let c = &info.config;
    let mut filters: Vec<&str> = c.filter_subjects.iter().map(String::as_str).collect();
    if !c.filter_subject.is_empty() {
        filters.push(&c.filter_subject);
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| subjects::subject_matches(f, subject))
}

/// A message found in a source stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub stream: String,
    pub sequence: u64,
    pub subject: String,
    pub message_id: Option<String>,
    /// Set when the message was a replay, which only this durable could see.
    pub only_durable: Option<String>,
}

/// What a scan looks for.
#[derive(Debug, Clone, Copy)]
pub enum Needle<'a> {
    MessageId(&'a str),
    TraceId(&'a str),
}

/// Scans the newest `limit` messages of each source stream (headers only, through a
/// short-lived ephemeral consumer) for a message id or a trace id. Replays (on replay
/// subjects) are skipped: the original is what is asked for.
pub async fn scan(
    js: &jetstream::Context,
    needle: Needle<'_>,
    limit: u64,
) -> Result<Vec<Found>, BusError> {
    let mut found = Vec::new();
    if limit == 0 {
        return Ok(found);
    }
    for name in SOURCE_STREAMS {
        let Ok(mut stream) = js.get_stream(name).await else {
            continue;
        };
        let state = stream.info().await.map_err(err)?.state.clone();
        if state.messages == 0 {
            continue;
        }
        let last = state.last_sequence;
        let start = last
            .saturating_sub(limit - 1)
            .max(state.first_sequence)
            .max(1);
        let scanner = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: consumer::AckPolicy::None,
                headers_only: true,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let scanner_name = scanner.cached_info().name.clone();
        let result = scan_one(&scanner, name, needle, last, &mut found).await;
        if let Err(e) = stream.delete_consumer(&scanner_name).await {
            tracing::debug!(error = %e, "cannot delete the scan consumer; it expires by itself");
        }
        result?;
    }
    Ok(found)
}

async fn scan_one(
    scanner: &consumer::PullConsumer,
    stream: &str,
    needle: Needle<'_>,
    last: u64,
    found: &mut Vec<Found>,
) -> Result<(), BusError> {
    let mut messages = scanner
        .stream()
        .max_messages_per_batch(500)
        .expires(Duration::from_secs(1))
        .heartbeat(Duration::from_millis(500))
        .messages()
        .await
        .map_err(err)?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(3), messages.next()).await;
        let message = match next {
            // Nothing more within the window (the rest was deleted): done.
            Err(_) | Ok(None) => return Ok(()),
            Ok(Some(m)) => m.map_err(err)?,
        };
        let (sequence, pending) = match message.info() {
            Ok(i) => (i.stream_sequence, i.pending),
            Err(_) => continue,
        };
        let subject = message.subject.to_string();
        let h = message.headers.clone().unwrap_or_default();
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
        let hit = subjects::original_of_replay(&subject).is_none()
            && match needle {
                Needle::MessageId(id) => get(headers::MESSAGE_ID).as_deref() == Some(id),
                Needle::TraceId(t) => {
                    get(headers::TRACEPARENT)
                        .and_then(|tp| tp.split('-').nth(1).map(str::to_ascii_lowercase))
                        .as_deref()
                        == Some(t)
                }
            };
        if hit {
            found.push(Found {
                stream: stream.to_owned(),
                sequence,
                subject,
                message_id: get(headers::MESSAGE_ID),
                only_durable: None,
            });
            if matches!(needle, Needle::MessageId(_)) {
                return Ok(());
            }
        }
        if sequence >= last || pending == 0 {
            return Ok(());
        }
    }
}

/// True when the `consumer_failures` bucket holds a retry record for this delivery.
pub async fn is_retrying(
    kv: Option<&jetstream::kv::Store>,
    durable: &str,
    stream: &str,
    sequence: u64,
) -> bool {
    let Some(kv) = kv else { return false };
    matches!(
        kv.get(format!("{durable}.{stream}.{sequence}")).await,
        Ok(Some(_))
    )
}
