//! The message hospital: it owns the dead-letter index, replay state and the audit
//! trail of ops actions, in its own database (SQLite or PostgreSQL).
//!
//! Workers park a message they cannot handle on `dlq.<durable>` in the `DLQ` stream
//! (the ward, which the hospital provisions with its size and age limits). The
//! hospital's durable `hospital-index` reads the ward from the beginning and keeps one
//! `dead_letters` row per park id: the full diagnosis, a fingerprint grouping failures
//! of one cause, the original headers and bytes. Admins work on that index through a
//! NATS micro service (`hospital`, `svc.hospital.v1.*`, routed by the gateway under
//! `/v1/admin/…`): list, inspect, group, replay, edit and replay, discard, purge,
//! consumer statistics, pause and resume, "where is this message?", and the audit.
//!
//! Replay semantics: a replay goes only to the durable that failed, on its replay
//! subject (`<context>.replay.<durable>.<original subject>`) in the source stream, with
//! the original headers, `Mesh-Replay-Of` = park id and a deterministic `Nats-Msg-Id`
//! (`replay:<park id>:<replays>`). A dead letter is marked replayed only after the
//! stream acknowledged its replay, and every status change is guarded by the status it
//! expects, so reruns and concurrent actions send each message once.
//!
//! Bulk actions (replay, discard, purge) take a selection (ids, a failure group or a
//! filter) and act only on members that are still parked; the others are counted as
//! skipped, which makes every action safe to run again. One exception keeps cleanup
//! simple: a purge whose filter names a status explicitly (`status=discarded`) removes
//! members in that status. Discard only changes the status; purge deletes the index
//! row and the parked copy in the `DLQ` stream.
//!
//! - [`domain`]: fingerprints, query and request parsing, pure.
//! - [`store`]: the SQL, the same text on both backends.
//! - [`index`]: the DLQ consumer's handler.
//! - [`bus`]: replays, consumer state, pause/resume, stream scans.
//! - [`service`] and [`jobs`]: the admin use cases and the bulk jobs behind them.
//! - [`handlers`]: the endpoints (admins only).
//! - [`advisories`]: messages the server gave up on (max deliveries), rescued.
//! - [`app`]: startup, provisioning, the index consumer, the job sweeper, shutdown.
//!
//! Architecture invariant: the hospital never publishes to a subject another durable
//! reads; a replay reaches the one consumer that failed it.

pub mod advisories;
pub mod app;
pub mod bus;
pub mod config;
pub mod domain;
pub mod handlers;
pub mod index;
pub mod jobs;
pub mod service;
pub mod store;

pub use app::{Application, MIGRATIONS, StartError, index_consumer_config, ward_config};
pub use config::Config;
