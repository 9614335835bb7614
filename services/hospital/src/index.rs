//! The index: the hospital's durable on the `DLQ` stream turns every parked message
//! into a `dead_letters` row.
//!
//! Its own failures would be parked on `dlq.hospital-index` and come back to it, so it
//! never refuses a message: a message that does not decode is indexed with what its
//! headers tell and the error "undecodable parked message: …", and only database
//! failures are transient. Should one be parked all the same (the database was down
//! for the whole retry schedule), the index unwraps it when it comes back and indexes
//! the parked message inside, not the wrapper.

use contracts::hospital::{Diagnosis, ErrorKind, ParkedMessage};
use contracts::subjects::{self, headers};
use jiff::Timestamp;
use runtime::consumer::{Delivery, Handler, HandlerError};
use runtime::db::Database;
use uuid::Uuid;

use crate::domain;
use crate::store::{self, NewDeadLetter};

/// How deep wrappers of the index's own parks are unwrapped.
const MAX_UNWRAP: usize = 4;

/// The index consumer's handler.
#[derive(Debug, Clone)]
pub struct Indexer {
    db: Database,
}

impl Indexer {
    pub fn new(db: Database) -> Self {
        Indexer { db }
    }
}

impl Handler for Indexer {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let entry = dead_letter_of(delivery);
        let inserted = store::insert_dead_letter(&self.db, &entry)
            .await
            .map_err(HandlerError::transient)?;
        if inserted {
            tracing::info!(
                park_id = %entry.park_id,
                durable = %entry.diagnosis.durable,
                fingerprint = %entry.fingerprint,
                "dead letter indexed"
            );
        }
        Ok(())
    }
}

/// The index row of one message of the `DLQ` stream. Never fails.
pub fn dead_letter_of(delivery: &Delivery) -> NewDeadLetter {
    match contracts::wire::decode::<ParkedMessage>(&delivery.payload) {
        Ok(parked) => {
            let (parked, dlq_sequence) = unwrap_own(parked, delivery.stream_sequence);
            NewDeadLetter {
                id: Uuid::now_v7(),
                fingerprint: domain::fingerprint(
                    parked.diagnosis.error_kind,
                    &parked.diagnosis.error,
                ),
                park_id: parked.park_id,
                dlq_sequence,
                diagnosis: parked.diagnosis,
                headers: parked.headers,
                payload: parked.payload,
                parked_at: store_precision(parked.parked_at),
            }
        }
        Err(e) => undecodable(delivery, &e.to_string()),
    }
}

/// A parked message about the index itself carries the one it failed to index: index
/// that one, at its own place in the stream.
fn unwrap_own(mut parked: ParkedMessage, mut dlq_sequence: u64) -> (ParkedMessage, u64) {
    for _ in 0..MAX_UNWRAP {
        let d = &parked.diagnosis;
        if d.durable != subjects::hospital::INDEX_DURABLE || d.stream != subjects::DLQ_STREAM.name {
            break;
        }
        match contracts::wire::decode::<ParkedMessage>(&parked.payload) {
            Ok(inner) => {
                dlq_sequence = d.stream_sequence;
                parked = inner;
            }
            Err(_) => break,
        }
    }
    (parked, dlq_sequence)
}

fn store_precision(t: Timestamp) -> Timestamp {
    runtime::db::from_micros(runtime::db::to_micros(t))
}

/// What the headers of an undecodable parked message still tell.
fn undecodable(delivery: &Delivery, why: &str) -> NewDeadLetter {
    let now = store::now();
    let park_id = delivery
        .header(headers::NATS_MSG_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("undecodable:DLQ:{}", delivery.stream_sequence));
    // `park:<durable>:<stream>:<sequence>`, when the id has that shape.
    let parts: Vec<&str> = park_id.split(':').collect();
    let from_id = (parts.len() == 4 && parts[0] == "park")
        .then(|| (parts[1], parts[2], parts[3].parse::<u64>().unwrap_or(0)));
    let durable = from_id
        .map(|(d, _, _)| d.to_owned())
        .or_else(|| delivery.subject.strip_prefix("dlq.").map(str::to_owned))
        .unwrap_or_default();
    let error = format!("undecodable parked message: {why}");
    let kind = ErrorKind::Permanent;
    NewDeadLetter {
        id: Uuid::now_v7(),
        fingerprint: domain::fingerprint(kind, &error),
        dlq_sequence: delivery.stream_sequence,
        diagnosis: Diagnosis {
            service: durable.split('-').next().unwrap_or_default().to_owned(),
            durable: durable.clone(),
            stream: from_id.map(|(_, s, _)| s.to_owned()).unwrap_or_default(),
            subject: String::new(),
            stream_sequence: from_id.map(|(_, _, n)| n).unwrap_or(0),
            message_id: delivery.message_id.clone(),
            message_type: delivery.message_type.clone(),
            schema_version: delivery.schema_version,
            error_kind: kind,
            error,
            deliveries: 0,
            first_failure_at: now,
            last_failure_at: now,
            trace_id: delivery
                .header(headers::TRACEPARENT)
                .and_then(|tp| tp.split('-').nth(1))
                .map(str::to_owned),
            replay_of: None,
        },
        park_id,
        headers: delivery
            .headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_owned()))
            })
            .collect(),
        payload: delivery.payload.to_vec(),
        parked_at: now,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use async_nats::HeaderMap;

    fn diagnosis(durable: &str, stream: &str, seq: u64) -> Diagnosis {
        Diagnosis {
            service: "email".into(),
            durable: durable.into(),
            stream: stream.into(),
            subject: "calendar.v1.event.created".into(),
            stream_sequence: seq,
            message_id: Some("m1".into()),
            message_type: Some("calendar.event_created".into()),
            schema_version: Some(1),
            error_kind: ErrorKind::Permanent,
            error: "bad".into(),
            deliveries: 1,
            first_failure_at: Timestamp::now(),
            last_failure_at: Timestamp::now(),
            trace_id: None,
            replay_of: None,
        }
    }

    fn delivery(payload: Vec<u8>, headers: HeaderMap) -> Delivery {
        Delivery {
            subject: "dlq.email-calendar".into(),
            headers,
            payload: payload.into(),
            message_id: None,
            message_type: None,
            schema_version: None,
            delivered: 1,
            stream_sequence: 42,
            replay_of: None,
        }
    }

    #[test]
    fn undecodable_messages_are_indexed_from_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(headers::NATS_MSG_ID, "park:email-calendar:CALENDAR:7");
        let d = dead_letter_of(&delivery(b"\xc1 not msgpack".to_vec(), h));
        assert_eq!(d.park_id, "park:email-calendar:CALENDAR:7");
        assert_eq!(d.diagnosis.durable, "email-calendar");
        assert_eq!(d.diagnosis.stream, "CALENDAR");
        assert_eq!(d.diagnosis.stream_sequence, 7);
        assert_eq!(d.dlq_sequence, 42);
        assert!(
            d.diagnosis
                .error
                .starts_with("undecodable parked message: ")
        );
    }

    #[test]
    fn the_index_unwraps_its_own_parks() {
        let inner = ParkedMessage {
            park_id: "park:email-calendar:CALENDAR:7".into(),
            diagnosis: diagnosis("email-calendar", "CALENDAR", 7),
            headers: vec![],
            payload: vec![1, 2, 3],
            parked_at: Timestamp::now(),
        };
        let outer = ParkedMessage {
            park_id: "park:hospital-index:DLQ:5".into(),
            diagnosis: diagnosis(subjects::hospital::INDEX_DURABLE, "DLQ", 5),
            headers: vec![],
            payload: contracts::wire::encode(&inner).unwrap(),
            parked_at: Timestamp::now(),
        };
        let d = dead_letter_of(&delivery(
            contracts::wire::encode(&outer).unwrap(),
            HeaderMap::new(),
        ));
        assert_eq!(d.park_id, inner.park_id);
        assert_eq!(d.dlq_sequence, 5);
        assert_eq!(d.payload, vec![1, 2, 3]);
    }
}
