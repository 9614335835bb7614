//! The email subscriber: it owns the mails the mesh sends and nothing else. Publishers
//! never know it exists; it reads their domain events through its own durable JetStream
//! consumers (`email-auth` on AUTH, `email-calendar` on CALENDAR; replicas share them)
//! and keeps, in its own database, the read models it needs to address and render mails:
//! users, email preferences, events and attendees.
//!
//! Mails: a welcome mail with a verification link (`UserRegistered`), a password reset
//! mail (`PasswordResetRequested`), an RSVP confirmation with an `.ics` invitation to the
//! attendee and a note to the organizer (`RsvpChanged`), and an updated or cancelled
//! invitation to every going/maybe attendee when an event's time changes or it is
//! cancelled. Account mails are always sent; the others follow the recipient's email
//! preferences and carry a one-click `List-Unsubscribe` link.
//!
//! First start and history: both durables start at the beginning of their streams, since
//! the AUTH stream keeps every `UserRegistered` forever and the CALENDAR stream its last
//! 90 days, and the read models are rebuilt from them. Mail is only sent for events whose
//! `meta.occurred_at` is younger than `EMAIL_MAX_EVENT_AGE_SECS` (default one day); older
//! events only update the read models, so a new deployment does not mail ancient history.
//!
//! Delivery guarantees: at least once per mail, with duplicates made visible. Every mail
//! has a deterministic `Message-ID` (from the event's message id, the recipient and the
//! kind); `sent_mails` records it right after the SMTP server accepted the mail, and a
//! redelivered event sends only the mails not recorded yet. The one window left is
//! between the server's 250 and that INSERT: a crash there sends the mail again, with the
//! same Message-ID. Messages are acknowledged only after their mails went out.
//!
//! Discovery: email serves no requests, but it runs a NATS micro service named `email`
//! without endpoints, so `$SRV.INFO` (and `meshctl services`) shows its instances, its
//! version and the contract versions it consumes ([`incoming::consumed`]).
//!
//! - [`incoming`]: decoding by contract type and version (unknown → parked).
//! - [`processor`]: the work for one message (read models, mails, idempotency).
//! - [`store`]: the SQL, the same text on SQLite and PostgreSQL.
//! - [`templates`], [`compose`], [`ics`]: the mail texts, the MIME message, the invitation.
//! - [`transport`]: SMTP via lettre, or `.eml` files when `SMTP_URL` is unset.
//! - [`app`]: startup, the consumer loops, health, shutdown; [`config`]: the environment.

pub mod app;
pub mod compose;
pub mod config;
pub mod ics;
pub mod incoming;
pub mod processor;
pub mod smtp_pool;
pub mod store;
pub mod templates;
pub mod transport;

pub use app::{Application, MIGRATIONS, SERVICE, StartError};
pub use config::Config;
