//! The SQL store: the same `$N` SQL text on SQLite and PostgreSQL through sqlx `Any`.
//!
//! Read-model writes keep the highest aggregate version per row: an upsert only
//! overwrites a row whose version is lower, so redeliveries and reordered deliveries
//! cannot roll a row back. Every change of one calendar event is serialized behind
//! its `events` row ([`apply_snapshot`] locks it: SQLite's `BEGIN IMMEDIATE` holds the
//! only write lock, PostgreSQL takes `FOR UPDATE`), so an RSVP and a cancellation of
//! the same event never both miss each other.

use contracts::api::{ChannelPreferences, Notification, NotificationKind};
use contracts::events::{EventSnapshot, EventStatus, RsvpStatus};
use jiff::Timestamp;
use runtime::db::{Backend, from_micros, to_micros};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::domain::{Draft, EventView, ListQuery, Milestone};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored value that this code cannot have written.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.into(),
    }
}

fn uuid_col(row: &AnyRow, table: &'static str, col: &str) -> Result<Uuid, StoreError> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(table, format!("{col}: {e}")))
}

fn opt_uuid_col(row: &AnyRow, table: &'static str, col: &str) -> Result<Option<Uuid>, StoreError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(table, format!("{col}: {e}"))))
        .transpose()
}

fn version_col(row: &AnyRow, table: &'static str, col: &str) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| corrupt(table, format!("{col} = {v}")))
}

/// Aggregate versions are stored as BIGINT; no aggregate comes near 2^63 changes.
fn version_param(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn event_status_str(s: EventStatus) -> &'static str {
    match s {
        EventStatus::Scheduled => "scheduled",
        EventStatus::Cancelled => "cancelled",
    }
}

// ---- users and preferences ----

/// Records a user's display name; false when a newer one is held.
pub async fn upsert_user(
    conn: &mut AnyConnection,
    user_id: Uuid,
    display_name: &str,
    version: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO users (user_id, display_name, version) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, \
         version = excluded.version WHERE users.version < excluded.version",
    )
    .bind(user_id.to_string())
    .bind(display_name)
    .bind(version_param(version))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn display_name(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT display_name FROM users WHERE user_id = $1")
            .bind(user_id.to_string())
            .fetch_optional(conn)
            .await?,
    )
}

/// Records the push channel of a user's preferences; false when newer ones are held.
pub async fn upsert_preferences(
    conn: &mut AnyConnection,
    user_id: Uuid,
    push: &ChannelPreferences,
    version: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO preferences (user_id, rsvp_confirmation, rsvp_received, event_changed, \
         version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id) DO UPDATE SET rsvp_confirmation = excluded.rsvp_confirmation, \
         rsvp_received = excluded.rsvp_received, event_changed = excluded.event_changed, \
         version = excluded.version WHERE preferences.version < excluded.version",
    )
    .bind(user_id.to_string())
    .bind(i64::from(push.rsvp_confirmation))
    .bind(i64::from(push.rsvp_received))
    .bind(i64::from(push.event_changed))
    .bind(version_param(version))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The push channel of a user's preferences; everything on when none were published.
pub async fn push_preferences(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<ChannelPreferences, StoreError> {
    let row = sqlx::query(
        "SELECT rsvp_confirmation, rsvp_received, event_changed FROM preferences \
         WHERE user_id = $1",
    )
    .bind(user_id.to_string())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(ChannelPreferences::default());
    };
    let on = |col: &str| -> Result<bool, StoreError> { Ok(row.try_get::<i64, _>(col)? != 0) };
    Ok(ChannelPreferences {
        rsvp_confirmation: on("rsvp_confirmation")?,
        rsvp_received: on("rsvp_received")?,
        event_changed: on("event_changed")?,
    })
}

// ---- events and attendees ----

const EVENT_COLUMNS: &str = "id, organizer_id, title, starts_at, ends_at, time_zone, location, \
     status, version, cancel_message_id, cancel_version, cancelled_at, \
     time_change_message_id, time_change_version, time_changed_at";

fn milestone(
    row: &AnyRow,
    id_col: &str,
    version_col_name: &str,
    at_col: &str,
) -> Result<Option<Milestone>, StoreError> {
    let Some(message_id) = opt_uuid_col(row, "events", id_col)? else {
        return Ok(None);
    };
    let version: Option<i64> = row.try_get(version_col_name)?;
    let at: Option<i64> = row.try_get(at_col)?;
    match (version, at) {
        (Some(v), Some(at)) => Ok(Some(Milestone {
            message_id,
            version: u64::try_from(v)
                .map_err(|_| corrupt("events", format!("{version_col_name} = {v}")))?,
            occurred_at: from_micros(at),
        })),
        _ => Err(corrupt("events", format!("{id_col} without its version"))),
    }
}

fn event_from_row(row: &AnyRow) -> Result<EventView, StoreError> {
    let status: String = row.try_get("status")?;
    let status = match status.as_str() {
        "scheduled" => EventStatus::Scheduled,
        "cancelled" => EventStatus::Cancelled,
        other => return Err(corrupt("events", format!("status = {other}"))),
    };
    Ok(EventView {
        id: uuid_col(row, "events", "id")?,
        organizer_id: uuid_col(row, "events", "organizer_id")?,
        title: row.try_get("title")?,
        starts_at: from_micros(row.try_get("starts_at")?),
        ends_at: from_micros(row.try_get("ends_at")?),
        time_zone: row.try_get("time_zone")?,
        location: row.try_get("location")?,
        status,
        version: version_col(row, "events", "version")?,
        cancel: milestone(row, "cancel_message_id", "cancel_version", "cancelled_at")?,
        time_change: milestone(
            row,
            "time_change_message_id",
            "time_change_version",
            "time_changed_at",
        )?,
    })
}

/// Brings an event's read model up to `snapshot` (if `version` is newer than the one
/// held), locks its row for the rest of the transaction and returns it.
pub async fn apply_snapshot(
    conn: &mut AnyConnection,
    backend: Backend,
    snapshot: &EventSnapshot,
    version: u64,
) -> Result<EventView, StoreError> {
    sqlx::query(
        "INSERT INTO events (id, organizer_id, title, starts_at, ends_at, time_zone, \
         location, status, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET organizer_id = excluded.organizer_id, \
         title = excluded.title, starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
         time_zone = excluded.time_zone, location = excluded.location, \
         status = excluded.status, version = excluded.version \
         WHERE events.version < excluded.version",
    )
    .bind(snapshot.event_id.to_string())
    .bind(snapshot.organizer_id.to_string())
    .bind(&snapshot.title)
    .bind(to_micros(snapshot.starts_at))
    .bind(to_micros(snapshot.ends_at))
    .bind(&snapshot.time_zone)
    .bind(&snapshot.location)
    .bind(event_status_str(snapshot.status))
    .bind(version_param(version))
    .execute(&mut *conn)
    .await?;
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        // BEGIN IMMEDIATE already holds the only write lock SQLite has.
        Backend::Sqlite => "",
    };
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1{lock}");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(snapshot.event_id.to_string())
        .fetch_one(conn)
        .await?;
    event_from_row(&row)
}

/// Records the event's cancellation (the first one wins; there is only one).
pub async fn record_cancel(
    conn: &mut AnyConnection,
    event_id: Uuid,
    m: &Milestone,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE events SET cancel_message_id = $2, cancel_version = $3, cancelled_at = $4 \
         WHERE id = $1 AND (cancel_version IS NULL OR cancel_version < $3)",
    )
    .bind(event_id.to_string())
    .bind(m.message_id.to_string())
    .bind(version_param(m.version))
    .bind(to_micros(m.occurred_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the event's latest time change.
pub async fn record_time_change(
    conn: &mut AnyConnection,
    event_id: Uuid,
    m: &Milestone,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE events SET time_change_message_id = $2, time_change_version = $3, \
         time_changed_at = $4 \
         WHERE id = $1 AND (time_change_version IS NULL OR time_change_version < $3)",
    )
    .bind(event_id.to_string())
    .bind(m.message_id.to_string())
    .bind(version_param(m.version))
    .bind(to_micros(m.occurred_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an attendee's answer; false when a newer answer of theirs is held.
pub async fn upsert_attendee(
    conn: &mut AnyConnection,
    event_id: Uuid,
    user_id: Uuid,
    status: RsvpStatus,
    version: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO attendees (event_id, user_id, status, version) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (event_id, user_id) DO UPDATE SET status = excluded.status, \
         version = excluded.version WHERE attendees.version < excluded.version",
    )
    .bind(event_id.to_string())
    .bind(user_id.to_string())
    .bind(status.as_str())
    .bind(version_param(version))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Attendees going or maybe whose answer predates `version` (a later answer was given
/// to the changed event, so it needs no notice).
pub async fn attending_before(
    conn: &mut AnyConnection,
    event_id: Uuid,
    version: u64,
) -> Result<Vec<Uuid>, StoreError> {
    let rows = sqlx::query(
        "SELECT user_id FROM attendees WHERE event_id = $1 AND version < $2 \
         AND status IN ('going', 'maybe') ORDER BY user_id",
    )
    .bind(event_id.to_string())
    .bind(version_param(version))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| uuid_col(r, "attendees", "user_id"))
        .collect()
}

// ---- notifications ----

/// One stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub id: Uuid,
    /// The user's sequence number, in commit order (see [`insert_notification`]).
    pub seq: u64,
    pub user_id: Uuid,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub event_id: Option<Uuid>,
    pub created_at: Timestamp,
    pub read_at: Option<Timestamp>,
}

impl NotificationRecord {
    pub fn to_api(&self) -> Notification {
        Notification {
            id: self.id,
            seq: Some(self.seq),
            kind: self.kind,
            title: self.title.clone(),
            body: self.body.clone(),
            event_id: self.event_id,
            created_at: self.created_at,
            read_at: self.read_at,
        }
    }
}

const NOTIFICATION_COLUMNS: &str =
    "id, seq, user_id, kind, title, body, event_id, created_at, read_at";

fn notification_from_row(row: &AnyRow) -> Result<NotificationRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let read_at: Option<i64> = row.try_get("read_at")?;
    let seq: Option<i64> = row.try_get("seq")?;
    Ok(NotificationRecord {
        id: uuid_col(row, "notifications", "id")?,
        seq: seq
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| corrupt("notifications", format!("seq = {seq:?}")))?,
        user_id: uuid_col(row, "notifications", "user_id")?,
        kind: NotificationKind::parse(&kind)
            .ok_or_else(|| corrupt("notifications", format!("kind = {kind}")))?,
        title: row.try_get("title")?,
        body: row.try_get("body")?,
        event_id: opt_uuid_col(row, "notifications", "event_id")?,
        created_at: from_micros(row.try_get("created_at")?),
        read_at: read_at.map(from_micros),
    })
}

/// Takes the user's next sequence number. The upsert locks the user's row until the
/// transaction ends (PostgreSQL: a row lock; SQLite: `BEGIN IMMEDIATE` holds the only
/// write lock), so a concurrent transaction storing for the same user waits here until
/// this one commits and then gets the next number: numbers become visible in order.
async fn next_seq(conn: &mut AnyConnection, user_id: Uuid) -> Result<u64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO notification_sequences (user_id, last_seq) VALUES ($1, 1) \
         ON CONFLICT (user_id) DO UPDATE SET last_seq = notification_sequences.last_seq + 1 \
         RETURNING last_seq",
    )
    .bind(user_id.to_string())
    .fetch_one(conn)
    .await?;
    u64::try_from(seq).map_err(|_| corrupt("notification_sequences", format!("last_seq = {seq}")))
}

/// Stores a notification unless its source already told this user this kind of thing;
/// returns it only when it is new.
///
/// It gets the user's next `seq` (see [`next_seq`]): callers storing for several users
/// in one transaction do it in user-id order, so two transactions never wait on each
/// other's users in a cycle.
pub async fn insert_notification(
    conn: &mut AnyConnection,
    draft: &Draft,
    now: Timestamp,
) -> Result<Option<NotificationRecord>, StoreError> {
    let seq = next_seq(conn, draft.user_id).await?;
    let record = NotificationRecord {
        id: Uuid::now_v7(),
        seq,
        user_id: draft.user_id,
        kind: draft.kind,
        title: draft.title.clone(),
        body: draft.body.clone(),
        event_id: draft.event_id,
        created_at: now,
        read_at: None,
    };
    let done = sqlx::query(
        "INSERT INTO notifications (id, seq, user_id, kind, title, body, event_id, \
         source_message_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (source_message_id, user_id, kind) DO NOTHING",
    )
    .bind(record.id.to_string())
    .bind(version_param(seq))
    .bind(record.user_id.to_string())
    .bind(record.kind.as_str())
    .bind(&record.title)
    .bind(&record.body)
    .bind(record.event_id.map(|id| id.to_string()))
    .bind(draft.source_message_id.to_string())
    .bind(to_micros(now))
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Some(record));
    }
    // Already told: give the number back (the lock is still ours, nobody took a later
    // one), so the user's numbers stay gapless.
    sqlx::query("UPDATE notification_sequences SET last_seq = last_seq - 1 WHERE user_id = $1")
        .bind(draft.user_id.to_string())
        .execute(conn)
        .await?;
    Ok(None)
}

/// One page of a user's notifications, newest first; fetches `limit + 1` rows so the
/// caller knows whether another page follows.
pub async fn list(
    conn: &mut AnyConnection,
    user_id: Uuid,
    q: &ListQuery,
) -> Result<Vec<NotificationRecord>, StoreError> {
    let mut sql = format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = $1");
    if q.after.is_some() {
        sql.push_str(" AND id < $3");
    }
    match q.unread {
        Some(true) => sql.push_str(" AND read_at IS NULL"),
        Some(false) => sql.push_str(" AND read_at IS NOT NULL"),
        None => {}
    }
    sql.push_str(" ORDER BY id DESC LIMIT $2");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_string())
        .bind(i64::from(q.limit) + 1);
    if let Some(after) = q.after {
        query = query.bind(after.id.to_string());
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(notification_from_row).collect()
}

pub async fn unread_count(conn: &mut AnyConnection, user_id: Uuid) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
    )
    .bind(user_id.to_string())
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Marks a user's notification read, keeping the first read time; `None` when the user
/// has no such notification.
pub async fn mark_read(
    conn: &mut AnyConnection,
    user_id: Uuid,
    id: Uuid,
    now: Timestamp,
) -> Result<Option<NotificationRecord>, StoreError> {
    let sql = format!(
        "UPDATE notifications SET read_at = COALESCE(read_at, $3) \
         WHERE id = $1 AND user_id = $2 RETURNING {NOTIFICATION_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(user_id.to_string())
        .bind(to_micros(now))
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(notification_from_row).transpose()
}

/// A user's notifications with a `seq` above `after_seq`, in `seq` order.
pub async fn since_seq(
    conn: &mut AnyConnection,
    user_id: Uuid,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<NotificationRecord>, StoreError> {
    let sql = format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = $1 AND seq > $2 \
         ORDER BY seq ASC LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_string())
        .bind(version_param(after_seq))
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    rows.iter().map(notification_from_row).collect()
}

/// A user's newest notification by `seq`.
pub async fn newest(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<Option<NotificationRecord>, StoreError> {
    let sql = format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = $1 \
         ORDER BY seq DESC LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(notification_from_row).transpose()
}

/// A user's notifications with an id above `after`, in id order (resume points from
/// before `seq`).
pub async fn since(
    conn: &mut AnyConnection,
    user_id: Uuid,
    after: Uuid,
    limit: u32,
) -> Result<Vec<NotificationRecord>, StoreError> {
    let sql = format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = $1 AND id > $2 \
         ORDER BY id ASC LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_string())
        .bind(after.to_string())
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    rows.iter().map(notification_from_row).collect()
}
