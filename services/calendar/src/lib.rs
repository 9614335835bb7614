//! The calendar bounded context: events, their organizers' edits and cancellations,
//! and attendees' RSVPs against a seat capacity.
//!
//! It is reached only over NATS request/reply (`svc.calendar.v1.*`, one NATS micro
//! service named `calendar`) and publishes its domain events (`calendar.v1.*`) to the
//! `CALENDAR` stream through a transactional outbox. It owns its database (SQLite or
//! PostgreSQL) and nothing else.
//!
//! - [`domain`]: the rules (validation, time zones, who may do what, RSVP counts), pure.
//! - [`store`]: the SQL, the same text on both backends.
//! - [`service`]: the use cases, one transaction each, domain event included.
//! - [`handlers`]: the request/reply endpoints.
//! - [`app`]: startup, the outbox relay, health, shutdown.
//!
//! Architecture invariant: capacity is never overbooked. Every change of an event is
//! serialized behind its row (SQLite: the write lock; PostgreSQL: `FOR UPDATE`) and
//! a seat is only taken by an UPDATE whose condition checks that one is free.

pub mod app;
pub mod config;
pub mod domain;
pub mod handlers;
pub mod rsvp_writer;
pub mod service;
pub mod store;

pub use app::{Application, MIGRATIONS, StartError};
pub use config::Config;
