//! The SQL: read models, preferences and the sent-mail record, the same `$N` text on
//! SQLite and PostgreSQL through sqlx `Any`.
//!
//! Every read-model upsert is guarded by the aggregate version (`… DO UPDATE … WHERE
//! stored.version < excluded.version`): deliveries can be reordered by retries, and an
//! older event must never overwrite a newer state. Re-applying the same event is a
//! no-op, so applying read models needs no ledger of its own.

use contracts::api::ChannelPreferences;
use contracts::events::{EventSnapshot, EventStatus, RsvpCounts, RsvpStatus};
use runtime::db::{Backend, Database, from_micros, to_micros};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored value this code cannot have written.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.into(),
    }
}

/// A known user (from `UserRegistered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub unsubscribe_token: Option<String>,
    pub version: u64,
}

/// An attendee as the read model knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttendeeRow {
    pub user_id: Uuid,
    pub status: RsvpStatus,
    pub version: u64,
}

fn version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn event_status(s: EventStatus) -> &'static str {
    match s {
        EventStatus::Scheduled => "scheduled",
        EventStatus::Cancelled => "cancelled",
    }
}

pub async fn upsert_user(conn: &mut AnyConnection, user: &UserRow) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO users (user_id, email, display_name, unsubscribe_token, version) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, \
         display_name = excluded.display_name, unsubscribe_token = excluded.unsubscribe_token, \
         version = excluded.version \
         WHERE users.version < excluded.version",
    )
    .bind(user.user_id.to_string())
    .bind(&user.email)
    .bind(&user.display_name)
    .bind(user.unsubscribe_token.clone())
    .bind(version(user.version))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn user(db: &Database, user_id: Uuid) -> Result<Option<UserRow>, StoreError> {
    let row = sqlx::query(
        "SELECT user_id, email, display_name, unsubscribe_token, version FROM users \
         WHERE user_id = $1",
    )
    .bind(user_id.to_string())
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| {
        let v: i64 = r.try_get("version")?;
        Ok(UserRow {
            user_id,
            email: r.try_get("email")?,
            display_name: r.try_get("display_name")?,
            unsubscribe_token: r.try_get("unsubscribe_token")?,
            version: u64::try_from(v).map_err(|_| corrupt("users", "negative version"))?,
        })
    })
    .transpose()
}

pub async fn upsert_preferences(
    conn: &mut AnyConnection,
    user_id: Uuid,
    email: &ChannelPreferences,
    aggregate_version: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO preferences (user_id, rsvp_confirmation, rsvp_received, event_changed, version) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id) DO UPDATE SET rsvp_confirmation = excluded.rsvp_confirmation, \
         rsvp_received = excluded.rsvp_received, event_changed = excluded.event_changed, \
         version = excluded.version \
         WHERE preferences.version < excluded.version",
    )
    .bind(user_id.to_string())
    .bind(flag(email.rsvp_confirmation))
    .bind(flag(email.rsvp_received))
    .bind(flag(email.event_changed))
    .bind(version(aggregate_version))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The user's email preferences; everything on when none were ever set.
pub async fn email_preferences(
    db: &Database,
    user_id: Uuid,
) -> Result<ChannelPreferences, StoreError> {
    let row = sqlx::query(
        "SELECT rsvp_confirmation, rsvp_received, event_changed FROM preferences \
         WHERE user_id = $1",
    )
    .bind(user_id.to_string())
    .fetch_optional(&db.pool)
    .await?;
    match row {
        None => Ok(ChannelPreferences::default()),
        Some(r) => {
            let on = |col: &str| -> Result<bool, StoreError> {
                let v: i64 = r.try_get(col)?;
                Ok(v != 0)
            };
            Ok(ChannelPreferences {
                rsvp_confirmation: on("rsvp_confirmation")?,
                rsvp_received: on("rsvp_received")?,
                event_changed: on("event_changed")?,
            })
        }
    }
}

pub async fn upsert_event(
    conn: &mut AnyConnection,
    ev: &EventSnapshot,
    aggregate_version: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO events (event_id, organizer_id, title, description, starts_at, ends_at, \
         time_zone, location, capacity, status, going, maybe, declined, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (event_id) DO UPDATE SET organizer_id = excluded.organizer_id, \
         title = excluded.title, description = excluded.description, \
         starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
         time_zone = excluded.time_zone, location = excluded.location, \
         capacity = excluded.capacity, status = excluded.status, going = excluded.going, \
         maybe = excluded.maybe, declined = excluded.declined, version = excluded.version \
         WHERE events.version < excluded.version",
    )
    .bind(ev.event_id.to_string())
    .bind(ev.organizer_id.to_string())
    .bind(&ev.title)
    .bind(&ev.description)
    .bind(to_micros(ev.starts_at))
    .bind(to_micros(ev.ends_at))
    .bind(&ev.time_zone)
    .bind(&ev.location)
    .bind(i64::from(ev.capacity))
    .bind(event_status(ev.status))
    .bind(i64::from(ev.counts.going))
    .bind(i64::from(ev.counts.maybe))
    .bind(i64::from(ev.counts.declined))
    .bind(version(aggregate_version))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An event's cancellation: the message that cancelled it, at which version and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancellation {
    pub message_id: Uuid,
    pub version: u64,
    pub occurred_at: jiff::Timestamp,
}

/// An event as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub snapshot: EventSnapshot,
    pub version: u64,
    pub cancel: Option<Cancellation>,
}

/// The event as the read model holds it.
pub async fn event(
    conn: &mut AnyConnection,
    event_id: Uuid,
) -> Result<Option<StoredEvent>, StoreError> {
    let row = sqlx::query(
        "SELECT organizer_id, title, description, starts_at, ends_at, time_zone, location, \
         capacity, status, going, maybe, declined, version, cancel_message_id, \
         cancel_version, cancelled_at FROM events WHERE event_id = $1",
    )
    .bind(event_id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        let (snapshot, version) = event_from_row(event_id, &r)?;
        let cancel_id: Option<String> = r.try_get("cancel_message_id")?;
        let cancel_version: Option<i64> = r.try_get("cancel_version")?;
        let cancelled_at: Option<i64> = r.try_get("cancelled_at")?;
        let cancel = match (cancel_id, cancel_version, cancelled_at) {
            (None, _, _) => None,
            (Some(id), Some(v), Some(at)) => Some(Cancellation {
                message_id: Uuid::parse_str(&id)
                    .map_err(|e| corrupt("events", format!("cancel_message_id: {e}")))?,
                version: u64::try_from(v)
                    .map_err(|_| corrupt("events", format!("cancel_version = {v}")))?,
                occurred_at: from_micros(at),
            }),
            _ => return Err(corrupt("events", "cancel_message_id without its version")),
        };
        Ok(StoredEvent {
            snapshot,
            version,
            cancel,
        })
    })
    .transpose()
}

/// Records the event's cancellation (there is only one; the first record stays).
pub async fn record_cancel(
    conn: &mut AnyConnection,
    event_id: Uuid,
    cancel: &Cancellation,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE events SET cancel_message_id = $2, cancel_version = $3, cancelled_at = $4 \
         WHERE event_id = $1 AND cancel_message_id IS NULL",
    )
    .bind(event_id.to_string())
    .bind(cancel.message_id.to_string())
    .bind(version(cancel.version))
    .bind(to_micros(cancel.occurred_at))
    .execute(conn)
    .await?;
    Ok(())
}

fn event_from_row(event_id: Uuid, r: &AnyRow) -> Result<(EventSnapshot, u64), StoreError> {
    let u32_col = |col: &str| -> Result<u32, StoreError> {
        let n: i64 = r.try_get(col)?;
        u32::try_from(n).map_err(|_| corrupt("events", format!("{col} = {n}")))
    };
    let organizer: String = r.try_get("organizer_id")?;
    let status: String = r.try_get("status")?;
    let v: i64 = r.try_get("version")?;
    Ok((
        EventSnapshot {
            event_id,
            organizer_id: Uuid::parse_str(&organizer)
                .map_err(|e| corrupt("events", format!("organizer_id: {e}")))?,
            title: r.try_get("title")?,
            description: r.try_get("description")?,
            starts_at: from_micros(r.try_get("starts_at")?),
            ends_at: from_micros(r.try_get("ends_at")?),
            time_zone: r.try_get("time_zone")?,
            location: r.try_get("location")?,
            capacity: u32_col("capacity")?,
            status: match status.as_str() {
                "scheduled" => EventStatus::Scheduled,
                "cancelled" => EventStatus::Cancelled,
                other => return Err(corrupt("events", format!("status = {other}"))),
            },
            counts: RsvpCounts {
                going: u32_col("going")?,
                maybe: u32_col("maybe")?,
                declined: u32_col("declined")?,
            },
        },
        u64::try_from(v).map_err(|_| corrupt("events", "negative version"))?,
    ))
}

pub async fn upsert_attendee(
    conn: &mut AnyConnection,
    event_id: Uuid,
    user_id: Uuid,
    status: RsvpStatus,
    aggregate_version: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO attendees (event_id, user_id, status, version) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (event_id, user_id) DO UPDATE SET status = excluded.status, \
         version = excluded.version \
         WHERE attendees.version < excluded.version",
    )
    .bind(event_id.to_string())
    .bind(user_id.to_string())
    .bind(status.as_str())
    .bind(version(aggregate_version))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Attendees who said going or maybe: the people told about a change.
pub async fn active_attendees(
    conn: &mut AnyConnection,
    event_id: Uuid,
) -> Result<Vec<AttendeeRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT user_id, status, version FROM attendees \
         WHERE event_id = $1 AND status IN ('going', 'maybe') ORDER BY user_id",
    )
    .bind(event_id.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("user_id")?;
            let status: String = r.try_get("status")?;
            let v: i64 = r.try_get("version")?;
            Ok(AttendeeRow {
                user_id: Uuid::parse_str(&id)
                    .map_err(|e| corrupt("attendees", format!("user_id: {e}")))?,
                status: RsvpStatus::parse(&status)
                    .ok_or_else(|| corrupt("attendees", format!("status = {status}")))?,
                version: u64::try_from(v).map_err(|_| corrupt("attendees", "negative version"))?,
            })
        })
        .collect()
}

/// True when the mail with this `Message-ID` was already accepted.
pub async fn is_sent(db: &Database, message_id_header: &str) -> Result<bool, StoreError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM sent_mails WHERE message_id_header = $1")
            .bind(message_id_header)
            .fetch_optional(&db.pool)
            .await?;
    Ok(found.is_some())
}

/// What taking a mail's lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The lease is the caller's, and the mail was not recorded sent.
    Taken,
    /// The mail is recorded sent: nothing to do (no lease was kept).
    Sent,
    /// Another holder's lease is still running.
    Held,
}

/// Takes the lease on sending `message_id_header` for `holder` until `expires_at`
/// (µs), unless the mail is recorded sent or another holder's lease is still running.
///
/// One statement in the common case: the lease is taken only while `sent_mails` lacks
/// the mail. On SQLite that statement runs under the one write lock, after every
/// committed record; on PostgreSQL its check reads the snapshot the statement started
/// with, so a record committed while it waited on the lease's row is not seen, and a
/// second read (a new snapshot) confirms the mail is still unsent.
pub async fn claim_mail(
    db: &Database,
    message_id_header: &str,
    holder: &str,
    now: i64,
    expires_at: i64,
) -> Result<Claim, StoreError> {
    let taken = sqlx::query(
        "INSERT INTO mail_claims (message_id_header, holder, expires_at) \
         SELECT $1, $2, $3 WHERE NOT EXISTS \
         (SELECT 1 FROM sent_mails WHERE message_id_header = $1) \
         ON CONFLICT (message_id_header) DO UPDATE SET holder = excluded.holder, \
         expires_at = excluded.expires_at \
         WHERE mail_claims.holder = excluded.holder OR mail_claims.expires_at < $4",
    )
    .bind(message_id_header)
    .bind(holder)
    .bind(expires_at)
    .bind(now)
    .execute(db.writer())
    .await?
    .rows_affected()
        == 1;
    if taken && db.backend == Backend::Sqlite {
        return Ok(Claim::Taken);
    }
    if !is_sent(db, message_id_header).await? {
        return Ok(if taken { Claim::Taken } else { Claim::Held });
    }
    if taken {
        release_mail(db, message_id_header, holder).await?;
    }
    Ok(Claim::Sent)
}

/// Gives the lease back (when sending failed; [`record_sent`] gives it back itself).
pub async fn release_mail(
    db: &Database,
    message_id_header: &str,
    holder: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM mail_claims WHERE message_id_header = $1 AND holder = $2")
        .bind(message_id_header)
        .bind(holder)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// Records an accepted mail and gives `holder`'s lease on it back, in one round trip
/// (two statements in one call on SQLite, a data-modifying `WITH` on PostgreSQL); a
/// second record of the same id is ignored.
pub async fn record_sent(
    db: &Database,
    message_id_header: &str,
    source_message_id: &str,
    recipient: &str,
    kind: &str,
    holder: &str,
) -> Result<(), StoreError> {
    const INSERT: &str = "INSERT INTO sent_mails \
         (message_id_header, source_message_id, recipient, kind, sent_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id_header) DO NOTHING";
    const RELEASE: &str = "DELETE FROM mail_claims WHERE message_id_header = $1 AND holder = $6";
    let sql = match db.backend {
        Backend::Sqlite => format!("{INSERT}; {RELEASE}"),
        Backend::Postgres => format!("WITH released AS ({RELEASE}) {INSERT}"),
    };
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(message_id_header)
        .bind(source_message_id)
        .bind(recipient)
        .bind(kind)
        .bind(to_micros(jiff::Timestamp::now()))
        .bind(holder)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// One row of `sent_mails`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMail {
    pub message_id_header: String,
    pub source_message_id: String,
    pub recipient: String,
    pub kind: String,
}

/// Every recorded mail, oldest first (for tests and operators).
pub async fn sent_mails(db: &Database) -> Result<Vec<SentMail>, StoreError> {
    let rows = sqlx::query(
        "SELECT message_id_header, source_message_id, recipient, kind FROM sent_mails \
         ORDER BY sent_at, message_id_header",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SentMail {
                message_id_header: r.try_get("message_id_header")?,
                source_message_id: r.try_get("source_message_id")?,
                recipient: r.try_get("recipient")?,
                kind: r.try_get("kind")?,
            })
        })
        .collect()
}
