//! Calendar end-to-end tests: the service in-process against a real nats-server (own
//! port and store) and a fresh database, every scenario over SQLite and PostgreSQL.
//! Requests go over NATS exactly as the gateway sends them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod events;
mod outbox;
mod rsvps;
