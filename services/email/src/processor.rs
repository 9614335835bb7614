//! The work for one delivered message: decode it, update the read models, send the mails
//! it calls for (each one checked and recorded on its own), mark it processed.
//!
//! Order of effects, and why:
//! 1. The processed-message ledger is checked first: a message handled to the end is
//!    acknowledged again without touching anything (redelivery after a lost ack, or a
//!    republish of the same event under another `Nats-Msg-Id`).
//! 2. Read models are updated, guarded by aggregate versions, so applying an event twice,
//!    or after a newer one, changes nothing.
//! 3. Each mail: skipped when the recipient turned its kind off; else its lease is
//!    taken unless `sent_mails` already holds its Message-ID (one statement,
//!    `store::claim_mail`; `mail_claims`: one replica sends a given mail at a time, so
//!    a redelivery to another replica while the first is still at the SMTP server
//!    waits and finds it sent), then rendered, handed to the SMTP server, and recorded
//!    (the lease given back in the same round trip) right after the server's 250. A
//!    crash between that 250 and the record is the one window in which a mail can go
//!    out twice (the crashed holder's lease runs out, and the next delivery sends
//!    again); it is a single INSERT wide, and the duplicate carries the same
//!    Message-ID.
//! 4. The ledger row is written last: a failure anywhere before it means redelivery,
//!    and step 3 makes the redelivery send only the mails still missing.
//!
//! Deliveries of one event are handled concurrently and out of order (retries reorder
//! them), so each rule holds in any order. Every change of one calendar event takes
//! that event's row first in its transaction (the upsert locks it on PostgreSQL; SQLite
//! has one writer), and reads what it mails from inside that transaction:
//! - a cancellation or time change tells the attendees going or maybe at that moment;
//! - an RSVP reads the event as held after it: when a cancellation newer than the
//!   answer is already there, the attendee gets that cancellation (`METHOD:CANCEL`,
//!   under the cancellation's own Message-ID, so at most one goes out) instead of an
//!   invitation to a cancelled event; when the event moved since the answer (a new
//!   time), the confirmation shows it as held now (with that version as SEQUENCE).
//!
//! So whichever of an RSVP and a cancellation is handled second sees the other.
//!
//! Mails go out only for events younger than `EMAIL_MAX_EVENT_AGE_SECS`, except a
//! replay from the message hospital: an operator asked for it, so however late, its
//! mails are sent (they were due when it failed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use contracts::api::NotificationKind;
use contracts::events::{EventSnapshot, RsvpChangedV1, RsvpStatus};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use lettre::message::Mailbox;
use runtime::consumer::{Delivery, Handler, HandlerError, ledger};
use runtime::db::Database;
use serde::Serialize;
use uuid::Uuid;

use crate::compose::{self, CalendarPart, ComposeError, Kind, Outgoing};
use crate::ics::{self, Invitation, Method, PartStat, Party};
use crate::incoming::Incoming;
use crate::store::{self, AttendeeRow, Cancellation, Claim, StoreError, StoredEvent, UserRow};
use crate::templates::{Bodies, TemplateError, Templates};
use crate::transport::{Mailer, SendError};

/// Settings of the mails themselves.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `EMAIL_FROM`.
    pub from: Mailbox,
    /// `PUBLIC_BASE_URL`, without a trailing slash.
    pub public_base_url: String,
    /// `EMAIL_MAX_EVENT_AGE_SECS`: older events only update read models.
    pub max_event_age: Duration,
    /// How long a replica holds the lease on a mail it is sending (see
    /// `store::claim_mail`); a crashed holder's lease runs out after this.
    pub send_lease: Duration,
}

/// How long a mail's lease lasts without renewal. The sender renews it every third of
/// that while the SMTP exchange runs, so only a crashed sender's lease runs out, and the
/// next delivery takes the mail over that much later.
pub const SEND_LEASE: Duration = Duration::from_secs(15);

/// Why one mail could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("user {0} is not known yet (its UserRegistered was not processed yet)")]
    UnknownUser(Uuid),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error("invalid recipient address {address:?}: {source}")]
    Address {
        address: String,
        #[source]
        source: lettre::address::AddressError,
    },
    #[error(transparent)]
    Send(#[from] SendError),
    /// Another replica holds the lease on this mail: it is being sent right now.
    #[error("mail {0} is being sent by another replica")]
    BeingSent(String),
}

impl MailError {
    /// Retrying cannot help: a 5xx reply, an address or template that cannot work.
    pub fn is_permanent(&self) -> bool {
        match self {
            MailError::Store(_) | MailError::UnknownUser(_) | MailError::BeingSent(_) => false,
            MailError::Template(_) | MailError::Compose(_) | MailError::Address { .. } => true,
            MailError::Send(e) => e.is_permanent(),
        }
    }

    /// The database or the SMTP server is unwell: trying the other mails of the same
    /// event now would only fail the same way.
    fn stops_the_batch(&self) -> bool {
        match self {
            MailError::Store(_) => true,
            MailError::Send(e) => !e.is_permanent(),
            _ => false,
        }
    }
}

impl From<MailError> for HandlerError {
    fn from(e: MailError) -> Self {
        if e.is_permanent() {
            HandlerError::permanent(e)
        } else {
            HandlerError::transient(e)
        }
    }
}

/// What handling one message did (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The ledger already had it: nothing was done.
    pub already_processed: bool,
    /// Older than the mail age limit: read models only.
    pub too_old: bool,
    pub sent: usize,
    /// Already in `sent_mails` (a redelivery after a partial failure).
    pub already_sent: usize,
    /// Turned off by the recipient's preferences.
    pub suppressed: usize,
}

/// Who a mail goes to: an address given by the event itself (account mails), or a user
/// resolved through the users read model.
#[derive(Debug, Clone)]
enum Target {
    Account {
        user_id: Uuid,
        email: String,
        name: String,
    },
    User(Uuid),
}

#[derive(Debug, Clone)]
enum Content<'a> {
    Welcome {
        verification_token: Option<&'a str>,
    },
    PasswordReset {
        token: &'a str,
        expires_at: Timestamp,
    },
    RsvpConfirmation {
        rsvp: &'a RsvpChangedV1,
        /// The event as the confirmation shows it: the RSVP's snapshot, or the read
        /// model's when the event moved since (a time change handled first).
        event: &'a EventSnapshot,
        /// The invitation's SEQUENCE: the version of `event`.
        version: u64,
    },
    RsvpReceived(&'a RsvpChangedV1),
    EventUpdated {
        event: &'a EventSnapshot,
        version: u64,
        stamp: Timestamp,
        status: RsvpStatus,
    },
    EventCancelled {
        event: &'a EventSnapshot,
        version: u64,
        stamp: Timestamp,
        status: RsvpStatus,
    },
}

#[derive(Debug, Clone)]
struct Job<'a> {
    kind: Kind,
    to: Target,
    content: Content<'a>,
    /// The message the mail is about, when not the one being handled (its Message-ID
    /// derives from it): a cancellation sent on behalf of a later-handled RSVP.
    source: Option<Uuid>,
}

/// What applying an event found out, for planning its mails: read in the same
/// transaction, behind the event's row.
#[derive(Debug, Clone)]
enum Applied {
    Nothing,
    /// A cancellation or time change: who was going or maybe at that moment.
    Attendees(Vec<AttendeeRow>),
    /// An RSVP: the event as held after it (newer than the RSVP's own snapshot when a
    /// later change was handled first).
    Event(StoredEvent),
}

/// A resolved recipient.
#[derive(Debug, Clone)]
struct Recipient {
    user_id: Uuid,
    email: String,
    name: String,
    unsubscribe_token: Option<String>,
}

enum Outcome {
    Sent,
    AlreadySent,
    Suppressed,
}

/// Decodes, applies and mails; shared by both consumers.
pub struct Processor {
    db: Database,
    mailer: Mailer,
    templates: Templates,
    settings: MailSettings,
    /// This process, as the holder of mail leases.
    holder: String,
}

impl Processor {
    pub fn new(db: Database, mailer: Mailer, templates: Templates, settings: MailSettings) -> Self {
        Processor {
            db,
            mailer,
            templates,
            settings,
            holder: Uuid::new_v4().to_string(),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Handles one delivery for `consumer` (the durable's name, the ledger's key).
    pub async fn process(
        &self,
        consumer: &str,
        delivery: &Delivery,
    ) -> Result<Report, HandlerError> {
        let incoming = Incoming::decode(delivery)?;
        let meta = incoming.meta();
        let source = meta.message_id.to_string();
        let mut report = Report::default();
        if ledger::is_processed(&self.db, consumer, &source)
            .await
            .map_err(HandlerError::transient)?
        {
            tracing::debug!(message_id = %source, "already processed");
            report.already_processed = true;
            return Ok(report);
        }
        let applied = self
            .apply(&incoming)
            .await
            .map_err(HandlerError::transient)?;
        if delivery.replay_of.is_some() || self.is_fresh(meta.occurred_at) {
            let jobs = self.plan(&incoming, &applied);
            self.deliver(&source, &jobs, &mut report).await?;
        } else {
            // A first start replays the streams to build the read models; mailing
            // that history would spam everyone.
            tracing::debug!(message_id = %source, occurred_at = %meta.occurred_at, "too old to mail; read models only");
            report.too_old = true;
        }
        ledger::mark_processed(self.db.writer(), consumer, &source)
            .await
            .map_err(HandlerError::transient)?;
        tracing::debug!(
            message_id = %source,
            r#type = incoming.type_name(),
            sent = report.sent,
            already_sent = report.already_sent,
            suppressed = report.suppressed,
            "processed"
        );
        Ok(report)
    }

    fn is_fresh(&self, occurred_at: Timestamp) -> bool {
        let age_us = Timestamp::now()
            .as_microsecond()
            .saturating_sub(occurred_at.as_microsecond());
        let limit_us = i64::try_from(self.settings.max_event_age.as_micros()).unwrap_or(i64::MAX);
        age_us < limit_us
    }

    /// Updates the read models an event touches.
    async fn apply(&self, incoming: &Incoming) -> Result<Applied, StoreError> {
        let meta = incoming.meta();
        let version = meta.aggregate_version;
        let applied = match incoming {
            Incoming::UserRegistered(e) => {
                let mut conn = self.db.writer().acquire().await?;
                store::upsert_user(
                    &mut conn,
                    &UserRow {
                        user_id: e.user_id,
                        email: e.email.clone(),
                        display_name: e.display_name.clone(),
                        unsubscribe_token: e.unsubscribe_token.clone(),
                        version,
                    },
                )
                .await?;
                Applied::Nothing
            }
            Incoming::PreferencesChanged(e) => {
                let mut conn = self.db.writer().acquire().await?;
                store::upsert_preferences(&mut conn, e.user_id, &e.preferences.email, version)
                    .await?;
                Applied::Nothing
            }
            Incoming::PasswordResetRequested(_) => Applied::Nothing,
            Incoming::EventCreated(e) => {
                let mut conn = self.db.writer().acquire().await?;
                store::upsert_event(&mut conn, &e.event, version).await?;
                Applied::Nothing
            }
            // The event's row first: it orders this change with the event's RSVPs.
            Incoming::EventUpdated(e) => {
                let mut tx = self.db.begin_write().await?;
                store::upsert_event(&mut tx, &e.event, version).await?;
                let attendees = if e.time_changed {
                    store::active_attendees(&mut tx, e.event.event_id).await?
                } else {
                    Vec::new()
                };
                tx.commit().await?;
                Applied::Attendees(attendees)
            }
            Incoming::EventCancelled(e) => {
                let mut tx = self.db.begin_write().await?;
                store::upsert_event(&mut tx, &e.event, version).await?;
                let cancel = Cancellation {
                    message_id: meta.message_id,
                    version,
                    occurred_at: meta.occurred_at,
                };
                store::record_cancel(&mut tx, e.event.event_id, &cancel).await?;
                let attendees = store::active_attendees(&mut tx, e.event.event_id).await?;
                tx.commit().await?;
                Applied::Attendees(attendees)
            }
            Incoming::RsvpChanged(e) => {
                let mut tx = self.db.begin_write().await?;
                store::upsert_event(&mut tx, &e.event, version).await?;
                store::upsert_attendee(&mut tx, e.event.event_id, e.attendee_id, e.status, version)
                    .await?;
                let held = store::event(&mut tx, e.event.event_id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt {
                        table: "events",
                        detail: format!("event {} missing after its upsert", e.event.event_id),
                    })?;
                tx.commit().await?;
                Applied::Event(held)
            }
        };
        Ok(applied)
    }

    /// The mails an event calls for.
    fn plan<'a>(&self, incoming: &'a Incoming, applied: &'a Applied) -> Vec<Job<'a>> {
        let meta = incoming.meta();
        let attendees: &[AttendeeRow] = match applied {
            Applied::Attendees(a) => a,
            _ => &[],
        };
        match incoming {
            Incoming::UserRegistered(e) => vec![Job {
                kind: Kind::Welcome,
                to: Target::Account {
                    user_id: e.user_id,
                    email: e.email.clone(),
                    name: e.display_name.clone(),
                },
                content: Content::Welcome {
                    verification_token: e.verification_token.as_deref(),
                },
                source: None,
            }],
            Incoming::PasswordResetRequested(e) => vec![Job {
                kind: Kind::PasswordReset,
                to: Target::Account {
                    user_id: e.user_id,
                    email: e.email.clone(),
                    name: e.display_name.clone(),
                },
                content: Content::PasswordReset {
                    token: &e.token,
                    expires_at: e.expires_at,
                },
                source: None,
            }],
            Incoming::RsvpChanged(e) => {
                let version = meta.aggregate_version;
                let newer = match applied {
                    Applied::Event(held) if held.version > version => Some(held),
                    _ => None,
                };
                // Moved since the answer (a time change handled first, which did not
                // know this attendee): the confirmation shows the event as it is now.
                // Other changes since (counts, wording) leave the answer's snapshot.
                let moved = newer.filter(|held| {
                    (
                        held.snapshot.starts_at,
                        held.snapshot.ends_at,
                        &held.snapshot.time_zone,
                    ) != (e.event.starts_at, e.event.ends_at, &e.event.time_zone)
                });
                let cancelled_since = newer.and_then(|held| {
                    held.cancel
                        .filter(|c| c.version > version)
                        .map(|c| (held, c))
                });
                let attends = matches!(e.status, RsvpStatus::Going | RsvpStatus::Maybe);
                let mut jobs = vec![match cancelled_since {
                    // Given before a cancellation that was handled first (which did
                    // not know this answer): the attendee gets the cancellation.
                    Some((held, cancel)) if attends => Job {
                        kind: Kind::Notification(NotificationKind::EventChanged),
                        to: Target::User(e.attendee_id),
                        content: Content::EventCancelled {
                            event: &held.snapshot,
                            version: cancel.version,
                            stamp: cancel.occurred_at,
                            status: e.status,
                        },
                        source: Some(cancel.message_id),
                    },
                    _ => {
                        let (event, version) = match moved {
                            Some(held) => (&held.snapshot, held.version),
                            None => (&e.event, version),
                        };
                        Job {
                            kind: Kind::Notification(NotificationKind::RsvpConfirmation),
                            to: Target::User(e.attendee_id),
                            content: Content::RsvpConfirmation {
                                rsvp: e,
                                event,
                                version,
                            },
                            source: None,
                        }
                    }
                }];
                // An organizer answering their own event needs no report of it.
                if e.attendee_id != e.event.organizer_id {
                    jobs.push(Job {
                        kind: Kind::Notification(NotificationKind::RsvpReceived),
                        to: Target::User(e.event.organizer_id),
                        content: Content::RsvpReceived(e),
                        source: None,
                    });
                }
                jobs
            }
            Incoming::EventUpdated(e) if e.time_changed => attendees
                .iter()
                .map(|a| Job {
                    kind: Kind::Notification(NotificationKind::EventChanged),
                    to: Target::User(a.user_id),
                    content: Content::EventUpdated {
                        event: &e.event,
                        version: meta.aggregate_version,
                        stamp: meta.occurred_at,
                        status: a.status,
                    },
                    source: None,
                })
                .collect(),
            Incoming::EventCancelled(e) => attendees
                .iter()
                .map(|a| Job {
                    kind: Kind::Notification(NotificationKind::EventChanged),
                    to: Target::User(a.user_id),
                    content: Content::EventCancelled {
                        event: &e.event,
                        version: meta.aggregate_version,
                        stamp: meta.occurred_at,
                        status: a.status,
                    },
                    source: None,
                })
                .collect(),
            Incoming::EventUpdated(_)
            | Incoming::EventCreated(_)
            | Incoming::PreferencesChanged(_) => Vec::new(),
        }
    }

    /// Sends every job not sent yet. A failing mail does not stop the others unless the
    /// database or the SMTP server itself is the problem; the error returned is the most
    /// retryable one seen, so a redelivery comes back for what is missing.
    async fn deliver(
        &self,
        source: &str,
        jobs: &[Job<'_>],
        report: &mut Report,
    ) -> Result<(), HandlerError> {
        let mut deferred: Option<MailError> = None;
        for job in jobs {
            match self.deliver_one(source, job).await {
                Ok(Outcome::Sent) => report.sent += 1,
                Ok(Outcome::AlreadySent) => report.already_sent += 1,
                Ok(Outcome::Suppressed) => report.suppressed += 1,
                Err(e) if e.stops_the_batch() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(kind = job.kind.as_str(), error = %e, "mail not sent");
                    deferred = match deferred {
                        Some(prev) if !prev.is_permanent() => Some(prev),
                        _ => Some(e),
                    };
                }
            }
        }
        match deferred {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }

    async fn deliver_one(&self, source: &str, job: &Job<'_>) -> Result<Outcome, MailError> {
        let about = job.source.map(|id| id.to_string());
        let source = about.as_deref().unwrap_or(source);
        if let (Some(kind), Target::User(user_id)) = (job.kind.preference(), &job.to) {
            let prefs = store::email_preferences(&self.db, *user_id).await?;
            if !prefs.allows(kind) {
                tracing::debug!(user_id = %user_id, kind = kind.as_str(), "turned off by preferences");
                return Ok(Outcome::Suppressed);
            }
        }
        let recipient = self.recipient(&job.to).await?;
        let message_id = compose::message_id(source, &recipient.email, job.kind);
        // One sender at a time: a redelivery to another replica while this mail is at
        // the SMTP server waits for the lease instead of sending it again. The lease is
        // only taken while the mail is unsent, which also covers a lease taken over
        // from a crashed holder that did send.
        let (now, until) = self.lease_window();
        let claim = match store::claim_mail(&self.db, &message_id, &self.holder, now, until).await?
        {
            // Wait for the holder (the consumer loop keeps this delivery alive) rather
            // than fail it: the mail is then sent, or the lease ran out and is ours.
            Claim::Held => self.await_lease(&message_id).await?,
            claim => claim,
        };
        if claim == Claim::Sent {
            return Ok(Outcome::AlreadySent);
        }
        let sent = self.send_leased(job, &recipient, source, &message_id).await;
        if sent.is_err()
            && let Err(e) = store::release_mail(&self.db, &message_id, &self.holder).await
        {
            // It runs out on its own.
            tracing::debug!(error = %e, "cannot release a mail lease");
        }
        sent
    }

    /// Waits until this process holds the mail's lease (the other holder finishes and
    /// gives it back, or its lease runs out) or the mail is recorded sent. Gives up
    /// after twice the lease.
    async fn await_lease(&self, message_id: &str) -> Result<Claim, MailError> {
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (now, until) = self.lease_window();
            match store::claim_mail(&self.db, message_id, &self.holder, now, until).await? {
                Claim::Held => {}
                settled => return Ok(settled),
            }
            if started.elapsed() > self.settings.send_lease * 2 {
                return Err(MailError::BeingSent(message_id.to_owned()));
            }
        }
    }

    /// Now and the end of a lease taken now, in µs.
    fn lease_window(&self) -> (i64, i64) {
        let now = jiff::Timestamp::now().as_microsecond();
        let lease = i64::try_from(self.settings.send_lease.as_micros()).unwrap_or(i64::MAX);
        (now, now.saturating_add(lease))
    }

    /// Renders, sends and records one mail whose lease this process holds, renewing the
    /// lease while the SMTP exchange runs.
    async fn send_leased(
        &self,
        job: &Job<'_>,
        recipient: &Recipient,
        source: &str,
        message_id: &str,
    ) -> Result<Outcome, MailError> {
        let outgoing = self.render(job, recipient, message_id.to_owned()).await?;
        let message = compose::build(&self.settings.from, &outgoing)?;
        let send = self.mailer.send(message);
        tokio::pin!(send);
        let mut renew = tokio::time::interval(self.settings.send_lease / 3);
        renew.tick().await; // the first tick is immediate
        let file = loop {
            tokio::select! {
                sent = &mut send => break sent?,
                _ = renew.tick() => {
                    let (now, until) = self.lease_window();
                    if let Err(e) = store::claim_mail(&self.db, message_id, &self.holder, now, until).await {
                        tracing::warn!(error = %e, "cannot renew a mail lease");
                    }
                }
            }
        };
        // Accepted by the server: record it at once (see the module docs for the window).
        self.record_sent(message_id, source, &recipient.email, job.kind)
            .await?;
        log_sent(job.kind, message_id, recipient.user_id, file);
        Ok(Outcome::Sent)
    }

    /// A few quick attempts: failing here means the mail goes out again on redelivery.
    async fn record_sent(
        &self,
        message_id: &str,
        source: &str,
        recipient: &str,
        kind: Kind,
    ) -> Result<(), StoreError> {
        let mut attempt = 0u64;
        loop {
            match store::record_sent(
                &self.db,
                message_id,
                source,
                recipient,
                kind.as_str(),
                &self.holder,
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 3 => return Err(e),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot record a sent mail yet");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
            }
        }
    }

    async fn recipient(&self, target: &Target) -> Result<Recipient, MailError> {
        match target {
            Target::Account {
                user_id,
                email,
                name,
            } => Ok(Recipient {
                user_id: *user_id,
                email: email.clone(),
                name: name.clone(),
                unsubscribe_token: None,
            }),
            Target::User(user_id) => {
                let user = store::user(&self.db, *user_id)
                    .await?
                    .ok_or(MailError::UnknownUser(*user_id))?;
                Ok(Recipient {
                    user_id: user.user_id,
                    email: user.email,
                    name: user.display_name,
                    unsubscribe_token: user.unsubscribe_token,
                })
            }
        }
    }

    /// The organizer as the invitation names them; the sender address stands in while
    /// the organizer's UserRegistered has not been processed yet.
    async fn organizer(&self, organizer_id: Uuid) -> Result<Party, MailError> {
        Ok(match store::user(&self.db, organizer_id).await? {
            Some(u) => Party {
                name: u.display_name,
                email: u.email,
            },
            None => Party {
                name: self
                    .settings
                    .from
                    .name
                    .clone()
                    .unwrap_or_else(|| "Mesh".to_owned()),
                email: self.settings.from.email.to_string(),
            },
        })
    }

    async fn render(
        &self,
        job: &Job<'_>,
        to: &Recipient,
        message_id: String,
    ) -> Result<Outgoing, MailError> {
        let base = self.settings.public_base_url.trim_end_matches('/');
        let unsubscribe_url = match (job.kind.preference(), &to.unsubscribe_token) {
            (Some(_), Some(token)) => Some(compose::unsubscribe_url(base, token, job.kind)),
            _ => None,
        };
        let me = Party {
            name: to.name.clone(),
            email: to.email.clone(),
        };
        let (subject, bodies, calendar) = match &job.content {
            Content::Welcome { verification_token } => {
                let verify_url = verification_token.map(|t| {
                    format!(
                        "{base}/v1/auth/verify-email?token={}",
                        compose::percent_encode(t)
                    )
                });
                let bodies = self.templates.render(
                    "welcome",
                    &WelcomeContext {
                        name: &to.name,
                        verify_url,
                        base_url: base,
                    },
                )?;
                (format!("Welcome to Mesh, {}", to.name), bodies, None)
            }
            Content::PasswordReset { token, expires_at } => {
                let bodies = self.templates.render(
                    "password_reset",
                    &PasswordResetContext {
                        name: &to.name,
                        token,
                        reset_url: format!(
                            "{base}/reset-password?token={}",
                            compose::percent_encode(token)
                        ),
                        confirm_url: format!("{base}/v1/auth/password-reset/confirm"),
                        expires_at: expires_at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
                        base_url: base,
                    },
                )?;
                ("Reset your Mesh password".to_owned(), bodies, None)
            }
            Content::RsvpConfirmation {
                rsvp: e,
                event,
                version,
            } => {
                let method = if e.status == RsvpStatus::Declined {
                    Method::Cancel
                } else {
                    Method::Request
                };
                let organizer = self.organizer(event.organizer_id).await?;
                let ics = ics::render(&Invitation {
                    method,
                    event,
                    sequence: *version,
                    stamp: e.meta.occurred_at,
                    organizer,
                    attendee: me,
                    partstat: PartStat::from(e.status),
                });
                let bodies = self.templates.render(
                    "rsvp_confirmation",
                    &RsvpContext {
                        name: &to.name,
                        status: e.status.as_str(),
                        previous_status: e.previous_status.map(RsvpStatus::as_str),
                        event: EventView::new(event, base),
                        base_url: base,
                        unsubscribe_url: unsubscribe_url.clone(),
                    },
                )?;
                let subject = match e.status {
                    RsvpStatus::Going => format!("You're going: {}", event.title),
                    RsvpStatus::Maybe => format!("You might go: {}", event.title),
                    RsvpStatus::Declined => format!("You declined: {}", event.title),
                };
                (subject, bodies, Some(CalendarPart { method, ics }))
            }
            Content::RsvpReceived(e) => {
                let attendee = store::user(&self.db, e.attendee_id)
                    .await?
                    .ok_or(MailError::UnknownUser(e.attendee_id))?;
                let bodies = self.templates.render(
                    "rsvp_received",
                    &RsvpReceivedContext {
                        name: &to.name,
                        attendee_name: &attendee.display_name,
                        status: e.status.as_str(),
                        previous_status: e.previous_status.map(RsvpStatus::as_str),
                        counts: Counts {
                            going: e.event.counts.going,
                            maybe: e.event.counts.maybe,
                            declined: e.event.counts.declined,
                        },
                        event: EventView::new(&e.event, base),
                        base_url: base,
                        unsubscribe_url: unsubscribe_url.clone(),
                    },
                )?;
                let subject = format!(
                    "{} answered {}: {}",
                    attendee.display_name,
                    e.status.as_str(),
                    e.event.title
                );
                (subject, bodies, None)
            }
            Content::EventUpdated {
                event,
                version,
                stamp,
                status,
            } => {
                let organizer = self.organizer(event.organizer_id).await?;
                let ics = ics::render(&Invitation {
                    method: Method::Request,
                    event,
                    sequence: *version,
                    stamp: *stamp,
                    organizer,
                    attendee: me,
                    partstat: PartStat::from(*status),
                });
                let bodies = self.templates.render(
                    "event_updated",
                    &EventChangedContext {
                        name: &to.name,
                        event: EventView::new(event, base),
                        base_url: base,
                        unsubscribe_url: unsubscribe_url.clone(),
                    },
                )?;
                (
                    format!("New time: {}", event.title),
                    bodies,
                    Some(CalendarPart {
                        method: Method::Request,
                        ics,
                    }),
                )
            }
            Content::EventCancelled {
                event,
                version,
                stamp,
                status,
            } => {
                let organizer = self.organizer(event.organizer_id).await?;
                let ics = ics::render(&Invitation {
                    method: Method::Cancel,
                    event,
                    sequence: *version,
                    stamp: *stamp,
                    organizer,
                    attendee: me,
                    partstat: PartStat::from(*status),
                });
                let bodies = self.templates.render(
                    "event_cancelled",
                    &EventChangedContext {
                        name: &to.name,
                        event: EventView::new(event, base),
                        base_url: base,
                        unsubscribe_url: unsubscribe_url.clone(),
                    },
                )?;
                (
                    format!("Cancelled: {}", event.title),
                    bodies,
                    Some(CalendarPart {
                        method: Method::Cancel,
                        ics,
                    }),
                )
            }
        };
        let Bodies { text, html } = bodies;
        let address = to
            .email
            .parse::<lettre::Address>()
            .map_err(|source| MailError::Address {
                address: to.email.clone(),
                source,
            })?;
        Ok(Outgoing {
            kind: job.kind,
            message_id,
            to: Mailbox::new(Some(to.name.clone()), address),
            subject,
            text,
            html,
            calendar,
            unsubscribe_url,
        })
    }
}

fn log_sent(kind: Kind, message_id: &str, user_id: Uuid, file: Option<PathBuf>) {
    match file {
        Some(path) => tracing::info!(
            kind = kind.as_str(),
            message_id,
            user_id = %user_id,
            path = %path.display(),
            "mail written to file"
        ),
        None => tracing::info!(kind = kind.as_str(), message_id, user_id = %user_id, "mail sent"),
    }
}

/// An event as the templates show it: times in its own zone.
#[derive(Debug, Serialize)]
struct EventView {
    id: String,
    title: String,
    description: String,
    location: String,
    starts: String,
    ends: String,
    time_zone: String,
    capacity: u32,
    url: String,
}

impl EventView {
    fn new(ev: &EventSnapshot, base: &str) -> Self {
        EventView {
            id: ev.event_id.to_string(),
            title: ev.title.clone(),
            description: ev.description.clone(),
            location: ev.location.clone(),
            starts: local_time(ev.starts_at, &ev.time_zone),
            ends: end_time(ev.starts_at, ev.ends_at, &ev.time_zone),
            time_zone: ev.time_zone.clone(),
            capacity: ev.capacity,
            url: format!("{base}/v1/events/{}", ev.event_id),
        }
    }
}

/// `Saturday, 1 March 2025, 18:00` in `zone` (UTC if the zone is unknown).
pub fn local_time(ts: Timestamp, zone: &str) -> String {
    const FORMAT: &str = "%A, %-d %B %Y, %H:%M";
    match TimeZone::get(zone) {
        Ok(tz) => ts.to_zoned(tz).strftime(FORMAT).to_string(),
        Err(_) => format!("{} UTC", ts.strftime(FORMAT)),
    }
}

/// The end as [`local_time`] does, or only `20:00` when it falls on the start's day.
pub fn end_time(start: Timestamp, end: Timestamp, zone: &str) -> String {
    match TimeZone::get(zone) {
        Ok(tz) => {
            let (s, e) = (start.to_zoned(tz.clone()), end.to_zoned(tz));
            if s.date() == e.date() {
                e.strftime("%H:%M").to_string()
            } else {
                e.strftime("%A, %-d %B %Y, %H:%M").to_string()
            }
        }
        Err(_) => local_time(end, zone),
    }
}

#[derive(Serialize)]
struct WelcomeContext<'a> {
    name: &'a str,
    verify_url: Option<String>,
    base_url: &'a str,
}

#[derive(Serialize)]
struct PasswordResetContext<'a> {
    name: &'a str,
    token: &'a str,
    reset_url: String,
    confirm_url: String,
    expires_at: String,
    base_url: &'a str,
}

#[derive(Serialize)]
struct RsvpContext<'a> {
    name: &'a str,
    status: &'static str,
    previous_status: Option<&'static str>,
    event: EventView,
    base_url: &'a str,
    unsubscribe_url: Option<String>,
}

#[derive(Serialize)]
struct Counts {
    going: u32,
    maybe: u32,
    declined: u32,
}

#[derive(Serialize)]
struct RsvpReceivedContext<'a> {
    name: &'a str,
    attendee_name: &'a str,
    status: &'static str,
    previous_status: Option<&'static str>,
    counts: Counts,
    event: EventView,
    base_url: &'a str,
    unsubscribe_url: Option<String>,
}

#[derive(Serialize)]
struct EventChangedContext<'a> {
    name: &'a str,
    event: EventView,
    base_url: &'a str,
    unsubscribe_url: Option<String>,
}

/// The [`Handler`] of one durable consumer: the shared processor plus the durable's
/// name, which keys the processed-message ledger.
pub struct EmailHandler {
    processor: Arc<Processor>,
    consumer: &'static str,
}

impl EmailHandler {
    pub fn new(processor: Arc<Processor>, consumer: &'static str) -> Self {
        EmailHandler {
            processor,
            consumer,
        }
    }
}

impl Handler for EmailHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        self.processor
            .process(self.consumer, delivery)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_uses_the_event_zone() {
        let ts: Timestamp = "2025-03-01T17:00:00Z".parse().unwrap();
        assert_eq!(
            local_time(ts, "Europe/Berlin"),
            "Saturday, 1 March 2025, 18:00"
        );
        assert_eq!(
            local_time(ts, "Nowhere/Special"),
            "Saturday, 1 March 2025, 17:00 UTC"
        );
        let same_day: Timestamp = "2025-03-01T19:30:00Z".parse().unwrap();
        let next_day: Timestamp = "2025-03-01T23:30:00Z".parse().unwrap();
        assert_eq!(end_time(ts, same_day, "Europe/Berlin"), "20:30");
        assert_eq!(
            end_time(ts, next_day, "Europe/Berlin"),
            "Sunday, 2 March 2025, 00:30"
        );
    }

    #[test]
    fn mail_errors_are_sorted_for_the_consumer_loop() {
        let unknown = MailError::UnknownUser(Uuid::nil());
        assert!(!unknown.is_permanent());
        assert!(!unknown.stops_the_batch());
        assert!(matches!(
            HandlerError::from(unknown),
            HandlerError::Transient(_)
        ));
        let address = MailError::Address {
            address: "nope".into(),
            source: "nope".parse::<lettre::Address>().unwrap_err(),
        };
        assert!(address.is_permanent());
        assert!(matches!(
            HandlerError::from(address),
            HandlerError::Permanent(_)
        ));
    }
}
