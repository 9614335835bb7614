//! `Idempotency-Key` on POST: a retried request gets the first one's response instead
//! of doing the work twice.
//!
//! Records live in the JetStream KV bucket `gateway_idempotency`, shared by every
//! gateway replica. A request first *creates* its record as in flight (put-if-absent,
//! atomic on the server), so of two racing replicas exactly one forwards; when the
//! service has answered, the record becomes done with the response. A 5xx or a timeout
//! deletes the record instead, so the client's retry can go through.
//!
//! Keys are scoped to the caller (user id, or client IP on public routes) and the route,
//! and hashed: KV keys only allow `[-/_=.a-zA-Z0-9]`. Records are JSON, so an operator
//! can read them with `nats kv get`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use axum::http::{HeaderValue, Method};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error::ApiError;
use crate::ratelimit::RateKey;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A validated `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &HeaderValue) -> Result<Self, ApiError> {
        let bytes = value.as_bytes();
        let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
        if bytes.is_empty() || bytes.len() > 255 || !visible {
            return Err(ApiError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            ));
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(bytes).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Length-prefixes each part so that no two different tuples hash alike.
fn hash_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The KV key of a record: the caller, the route (method and template), the concrete
/// path and the client's key, hashed.
pub fn storage_key(
    scope: RateKey,
    method: &Method,
    template: &str,
    path: &str,
    key: &IdempotencyKey,
) -> String {
    let scope = match scope {
        RateKey::User(id) => format!("user:{id}"),
        RateKey::Ip(ip) => format!("ip:{ip}"),
    };
    hash_parts(&[
        scope.as_bytes(),
        method.as_str().as_bytes(),
        template.as_bytes(),
        path.as_bytes(),
        key.as_str().as_bytes(),
    ])
}

/// What makes two requests "the same": method, path, query and body bytes.
pub fn request_hash(method: &Method, path: &str, query: &str, body: &[u8]) -> String {
    hash_parts(&[
        method.as_str().as_bytes(),
        path.as_bytes(),
        query.as_bytes(),
        body,
    ])
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The body exactly as sent (JSON text, or empty).
    #[serde(default)]
    pub body: String,
    /// The `Retry-After` seconds of a problem that carried them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Record {
    InFlight {
        request_hash: String,
        /// Milliseconds since the Unix epoch.
        started_at_ms: u64,
    },
    Done {
        request_hash: String,
        response: StoredResponse,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn to_bytes(record: &Record) -> Result<Bytes, ApiError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal("cannot encode an idempotency record", e))
}

/// The right to forward a request: its record is ours, at `revision`.
#[derive(Debug)]
pub struct Ticket {
    key: String,
    revision: u64,
    request_hash: String,
}

/// What to do with a request carrying a key.
#[derive(Debug)]
pub enum Begin {
    /// Forward it, then [`Idempotency::finish`] with the ticket.
    Proceed(Ticket),
    /// Answer with the stored response and do not forward.
    Replay(StoredResponse),
}

/// The shared store of idempotency records.
#[derive(Debug)]
pub struct Idempotency {
    /// Set once the bucket is provisioned (in the background at start).
    store: OnceCell<kv::Store>,
    abandon_after: Duration,
}

fn unavailable(what: &'static str, err: &dyn std::error::Error) -> ApiError {
    tracing::warn!(error = %err, "{what}");
    ApiError::ServiceUnavailable("idempotency store unavailable")
}

impl Idempotency {
    pub fn new(abandon_after: Duration) -> Self {
        Idempotency {
            store: OnceCell::new(),
            abandon_after,
        }
    }

    /// Hands over the provisioned bucket.
    pub fn set_store(&self, store: kv::Store) {
        let _ = self.store.set(store);
    }

    pub fn is_ready(&self) -> bool {
        self.store.initialized()
    }

    fn store(&self) -> Result<&kv::Store, ApiError> {
        self.store
            .get()
            .ok_or(ApiError::ServiceUnavailable("idempotency store not ready"))
    }

    /// Claims `key` for a request with `request_hash`, or says why not.
    pub async fn begin(&self, key: String, request_hash: String) -> Result<Begin, ApiError> {
        let store = self.store()?;
        let in_flight = to_bytes(&Record::InFlight {
            request_hash: request_hash.clone(),
            started_at_ms: now_ms(),
        })?;
        // A record can vanish between our create and our read (deleted after a 5xx,
        // or expired): then we simply try to create it again.
        for _ in 0..3 {
            let err = match store.create(&key, in_flight.clone()).await {
                Ok(revision) => {
                    return Ok(Begin::Proceed(Ticket {
                        key,
                        revision,
                        request_hash,
                    }));
                }
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => e,
                Err(e) => return Err(unavailable("cannot create an idempotency record", &e)),
            };
            let entry = store
                .entry(&key)
                .await
                .map_err(|e| unavailable("cannot read an idempotency record", &e))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                tracing::debug!(error = %err, "idempotency record vanished, creating again");
                continue;
            };
            let record: Option<Record> = serde_json::from_slice(&entry.value).ok();
            match record {
                Some(Record::Done {
                    request_hash: stored,
                    response,
                }) => {
                    return if stored == request_hash {
                        Ok(Begin::Replay(response))
                    } else {
                        Err(ApiError::IdempotencyKeyReused)
                    };
                }
                Some(Record::InFlight {
                    request_hash: stored,
                    ..
                }) if stored != request_hash => return Err(ApiError::IdempotencyKeyReused),
                Some(Record::InFlight { started_at_ms, .. })
                    if Duration::from_millis(now_ms().saturating_sub(started_at_ms))
                        < self.abandon_after =>
                {
                    return Err(ApiError::IdempotencyKeyInFlight);
                }
                // Abandoned (its gateway died mid-request) or unreadable: take it over,
                // unless another retry beats us to it.
                _ => {
                    return match store.update(&key, in_flight, entry.revision).await {
                        Ok(revision) => {
                            tracing::info!("taking over an abandoned idempotency record");
                            Ok(Begin::Proceed(Ticket {
                                key,
                                revision,
                                request_hash,
                            }))
                        }
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                            Err(ApiError::IdempotencyKeyInFlight)
                        }
                        Err(e) => Err(unavailable("cannot take over an idempotency record", &e)),
                    };
                }
            }
        }
        Err(ApiError::IdempotencyKeyInFlight)
    }

    /// Records the outcome: the response when the service answered below 500, else
    /// (`None`, or a 5xx) removes the record so a retry is forwarded again.
    pub async fn finish(&self, ticket: Ticket, response: Option<&StoredResponse>) {
        let Ok(store) = self.store() else { return };
        match response.filter(|r| r.status < 500) {
            Some(response) => {
                let record = Record::Done {
                    request_hash: ticket.request_hash,
                    response: response.clone(),
                };
                let Ok(bytes) = to_bytes(&record) else { return };
                if let Err(e) = store.update(&ticket.key, bytes, ticket.revision).await {
                    tracing::warn!(error = %e, "cannot store an idempotent response");
                }
            }
            None => {
                if let Err(e) = store
                    .delete_expect_revision(&ticket.key, Some(ticket.revision))
                    .await
                {
                    tracing::warn!(error = %e, "cannot release an idempotency record");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use uuid::Uuid;

    fn key(s: &[u8]) -> Result<IdempotencyKey, ApiError> {
        IdempotencyKey::parse(&HeaderValue::from_bytes(s).expect("header value"))
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(key(b"a").is_ok());
        assert!(key(b"0b0e5f4e-7a2c-4c8e-9d1e-3f2a1b0c9d8e").is_ok());
        assert!(key(&[b'x'; 255]).is_ok());
        assert!(key(&[b'x'; 256]).is_err());
        assert!(key(b"").is_err());
        assert!(key(b"has space").is_err());
        assert!(key(b"tab\there").is_err());
        assert!(key("caf\u{e9}".as_bytes()).is_err());
    }

    #[test]
    fn storage_keys_are_valid_kv_keys_and_scoped() {
        let k = key(b"k1").expect("valid");
        let user = RateKey::User(Uuid::now_v7());
        let other = RateKey::User(Uuid::now_v7());
        let ip = RateKey::Ip(IpAddr::from([127, 0, 0, 1]));
        let a = storage_key(user, &Method::POST, "/v1/events", "/v1/events", &k);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(
            a,
            storage_key(other, &Method::POST, "/v1/events", "/v1/events", &k)
        );
        assert_ne!(
            a,
            storage_key(ip, &Method::POST, "/v1/events", "/v1/events", &k)
        );
        assert_ne!(
            a,
            storage_key(user, &Method::POST, "/v1/auth/login", "/v1/auth/login", &k)
        );
        assert_eq!(
            a,
            storage_key(user, &Method::POST, "/v1/events", "/v1/events", &k)
        );
    }

    #[test]
    fn request_hash_covers_every_part() {
        let base = request_hash(&Method::POST, "/a", "x=1", b"{}");
        assert_ne!(base, request_hash(&Method::PUT, "/a", "x=1", b"{}"));
        assert_ne!(base, request_hash(&Method::POST, "/b", "x=1", b"{}"));
        assert_ne!(base, request_hash(&Method::POST, "/a", "x=2", b"{}"));
        assert_ne!(base, request_hash(&Method::POST, "/a", "x=1", b"{ }"));
        // Length prefixes keep boundaries apart.
        assert_ne!(
            request_hash(&Method::POST, "/a", "b", b""),
            request_hash(&Method::POST, "/ab", "", b"")
        );
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = Record::Done {
            request_hash: "h".into(),
            response: StoredResponse {
                status: 201,
                content_type: Some("application/json".into()),
                body: "{\"a\":1}".into(),
                retry_after: None,
            },
        };
        let bytes = serde_json::to_vec(&r).expect("encode");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\"state\":\"done\""));
        assert_eq!(serde_json::from_slice::<Record>(&bytes).expect("decode"), r);
    }
}
