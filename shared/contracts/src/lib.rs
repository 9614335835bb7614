//! The mesh's wire contracts: every message that crosses NATS is defined here and only here.
//!
//! - [`subjects`]: stream, subject, KV bucket and header names (one place, so a typo
//!   cannot route a message into the void).
//! - [`wire`]: the MessagePack encoding every service uses (named fields, human-readable
//!   ids and timestamps, so fields can be added without breaking old readers).
//! - [`events`]: versioned domain events published through the outboxes.
//! - [`rpc`]: the request/reply envelope the gateway sends to services.
//! - [`api`]: the request and response bodies of the public REST API.
//! - [`error`]: the stable error codes the API returns.
//! - [`hospital`]: parked messages and the dead-letter admin API.
//! - [`permissions`]: each NATS identity's subject permissions (least privilege).
//! - [`redact`]: `Debug` that hides the passwords and tokens some bodies carry.
//!
//! API boundary: services convert these types into their own domain types; nothing
//! else defines a wire type.

pub mod api;
pub mod error;
pub mod events;
pub mod hospital;
pub mod permissions;
pub mod redact;
pub mod rpc;
pub mod subjects;
pub mod wire;

pub use error::{ErrorCode, FieldError, Problem};
pub use events::{DomainEvent, EventMeta};
pub use rpc::{Caller, Role, RpcReply, RpcRequest};
