//! Push end-to-end tests: the service in-process against a real nats-server (own port
//! and store) and a fresh database, every scenario over SQLite and PostgreSQL. Domain
//! events are published to the streams exactly as the outbox relays publish them;
//! requests go over NATS exactly as the gateway sends them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod delivery;
mod history;
mod notifications;
mod sequence;
