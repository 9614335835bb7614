//! Single-use tickets that open a notification stream.
//!
//! A browser's `EventSource` cannot send an `Authorization` header, so a signed-in page
//! first asks `POST /v1/notifications/stream/ticket` (with its bearer token) for a
//! ticket and then opens `GET /v1/notifications/stream?ticket=…`. A ticket is 32 random
//! bytes (base64url), lives [`Config::sse_ticket_ttl`](crate::Config) and opens one
//! stream only; it is accepted on no other route.
//!
//! Tickets live in the JetStream KV bucket `gateway_sse_tickets`, shared by every
//! gateway replica, so a ticket issued by one replica opens a stream on any other. The
//! key is the hex SHA-256 of the ticket (KV keys only allow `[-/_=.a-zA-Z0-9]`, and the
//! bucket then never holds a usable ticket); the value is the caller. Redeeming deletes
//! the entry *at the revision read*: of two replicas racing with the same ticket exactly
//! one delete succeeds, the other gets `WrongLastRevision` and answers 401.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use contracts::Role;
use contracts::api::StreamTicket;
use contracts::rpc::Caller;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::ApiError;

/// Random bytes in a ticket.
const TICKET_BYTES: usize = 32;
/// Characters of a ticket: 32 bytes in unpadded base64url.
const TICKET_CHARS: usize = 43;

/// What a ticket stands for, as stored (JSON, readable with `nats kv get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    user_id: Uuid,
    role: Role,
    /// Milliseconds since the Unix epoch. Checked on redeem because the server removes
    /// expired entries only eventually.
    expires_at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The KV key of a ticket.
fn storage_key(ticket: &str) -> String {
    hex::encode(Sha256::digest(ticket.as_bytes()))
}

/// Whether `ticket` looks like one we issue; anything else is refused without a lookup.
fn well_formed(ticket: &str) -> bool {
    ticket.len() == TICKET_CHARS
        && ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unavailable(what: &'static str, err: &dyn std::error::Error) -> ApiError {
    tracing::warn!(error = %err, "{what}");
    ApiError::ServiceUnavailable("ticket store unavailable")
}

/// The shared ticket store.
#[derive(Debug)]
pub struct Tickets {
    /// Set once the bucket is provisioned (in the background at start).
    store: OnceCell<kv::Store>,
    ttl: Duration,
}

impl Tickets {
    pub fn new(ttl: Duration) -> Self {
        Tickets {
            store: OnceCell::new(),
            ttl,
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
            .ok_or(ApiError::ServiceUnavailable("ticket store not ready"))
    }

    /// Issues a ticket for `caller`.
    pub async fn issue(&self, caller: &Caller) -> Result<StreamTicket, ApiError> {
        let store = self.store()?;
        let mut bytes = [0u8; TICKET_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| ApiError::internal("no randomness for a stream ticket", e))?;
        let ticket = URL_SAFE_NO_PAD.encode(bytes);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let record = Record {
            user_id: caller.user_id,
            role: caller.role,
            expires_at_ms: now_ms().saturating_add(ttl_ms),
        };
        let value = serde_json::to_vec(&record)
            .map(Bytes::from)
            .map_err(|e| ApiError::internal("cannot encode a stream ticket", e))?;
        // `create`, not `put`: a collision of 256 random bits is not going to happen, but
        // if it did, nobody else's ticket must be overwritten.
        match store.create(storage_key(&ticket), value).await {
            Ok(_) => {}
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                return Err(ApiError::internal("stream ticket collision", e));
            }
            Err(e) => return Err(unavailable("cannot store a stream ticket", &e)),
        }
        Ok(StreamTicket {
            ticket,
            expires_in: self.ttl.as_secs(),
        })
    }

    /// Spends `ticket`: the caller it was issued to, or 401 when it is unknown, used or
    /// expired.
    pub async fn redeem(&self, ticket: &str) -> Result<Caller, ApiError> {
        const INVALID: ApiError = ApiError::Unauthorized("invalid, used or expired ticket");
        if !well_formed(ticket) {
            return Err(INVALID);
        }
        let store = self.store()?;
        let key = storage_key(ticket);
        let entry = store
            .entry(&key)
            .await
            .map_err(|e| unavailable("cannot read a stream ticket", &e))?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return Err(INVALID);
        };
        // Spend it before anything else, expired or not: only the replica whose delete
        // names the revision it read wins.
        match store
            .delete_expect_revision(&key, Some(entry.revision))
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => return Err(INVALID),
            Err(e) => return Err(unavailable("cannot spend a stream ticket", &e)),
        }
        let record: Record = serde_json::from_slice(&entry.value).map_err(|_| INVALID)?;
        if now_ms() >= record.expires_at_ms {
            return Err(INVALID);
        }
        Ok(Caller {
            user_id: record.user_id,
            role: record.role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tickets_are_well_formed_and_keys_valid() {
        let ticket = URL_SAFE_NO_PAD.encode([0xfbu8; TICKET_BYTES]);
        assert_eq!(ticket.len(), TICKET_CHARS);
        assert!(well_formed(&ticket));
        let key = storage_key(&ticket);
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn malformed_tickets_are_refused_up_front() {
        assert!(!well_formed(""));
        assert!(!well_formed(&"a".repeat(42)));
        assert!(!well_formed(&"a".repeat(44)));
        assert!(!well_formed(&format!("{}=", "a".repeat(42))));
        assert!(!well_formed(&format!("{}+", "a".repeat(42))));
        assert!(well_formed(&format!("{}-_", "a".repeat(41))));
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = Record {
            user_id: Uuid::now_v7(),
            role: Role::User,
            expires_at_ms: 1,
        };
        let bytes = serde_json::to_vec(&r).expect("encode");
        assert_eq!(serde_json::from_slice::<Record>(&bytes).expect("decode"), r);
    }
}
