//! The push subscriber: each user's notification history, and live delivery of new
//! notifications to every gateway replica holding an open stream for that user.
//!
//! It consumes the `AUTH` stream (display names, notification preferences) and the
//! `CALENDAR` stream (events, RSVPs) through two durable JetStream consumers,
//! `push-auth` and `push-calendar`, shared by all replicas (each message is handled by
//! one of them). For each event it updates its read models and stores the
//! notifications the event causes in ONE transaction with the processed-message ledger
//! row; after commit it publishes each new notification on the core-NATS subject
//! `push.live.<user>` (outside every stream), which gateways subscribe to per
//! connected user. History is served over NATS request/reply (`svc.push.v1.*`, one
//! NATS micro service named `push`). It owns its database (SQLite or PostgreSQL).
//!
//! Who is told what (each kind only if the user's push preferences allow it):
//! an RSVP tells the organizer (`rsvp_received`) and the attendee
//! (`rsvp_confirmation`); a cancellation, or an update that moves the event's time,
//! tells every attendee going or maybe (`event_changed`).
//!
//! Start position: both durables start at the BEGINNING of their stream when first
//! created, because the read models (attendees of every event, names, preferences)
//! can only be rebuilt from history; starting with new messages only would leave a
//! new deployment blind to every RSVP given before it. Replaying 90 days of calendar
//! history must not flood users with stale notifications, so notifications are only
//! created for events whose `meta.occurred_at` is younger than
//! `PUSH_MAX_EVENT_AGE_SECS` (default one day); older events only update the read
//! models, unless they come as a replay from the message hospital (an operator asked
//! for that one, however late). A restarted durable resumes after its last acknowledged message. To
//! rebuild a lost database, delete the two durables as well.
//!
//! - [`domain`]: the rules and texts, pure.
//! - [`store`]: the SQL, the same text on both backends.
//! - [`projector`]: the consumers' handler (decode, apply once, send live).
//! - [`service`] and [`handlers`]: the history queries and their endpoints.
//! - [`app`]: startup, provisioning, the consumers, health, shutdown.
//!
//! Architecture invariant: a notification is stored at most once per (source event,
//! user, kind), and sent live only by the transaction that stored it.

pub mod app;
pub mod config;
pub mod domain;
pub mod handlers;
pub mod projector;
pub mod service;
pub mod store;

pub use app::{Application, MIGRATIONS, StartError, consumer_configs};
pub use config::Config;
pub use projector::Stats;
