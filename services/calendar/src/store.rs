//! The SQL store: the same `$N` SQL text on SQLite and PostgreSQL through sqlx `Any`.
//!
//! Functions take a connection (usually a write transaction's) and do one thing; the
//! service layer composes them into transactions with the outbox. Row locking: on
//! SQLite `Database::begin_write` already holds the database's write lock, on
//! PostgreSQL [`lock_event`] adds `FOR UPDATE`, so every change of one event (and its
//! outbox row) is serialized behind that event's row.

use contracts::events::{EventStatus, RsvpCounts, RsvpStatus};
use jiff::Timestamp;
use runtime::db::{Backend, from_micros, to_micros};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::domain::{EventFields, EventQuery, EventRecord, Mine, RsvpCursor, RsvpQuery};

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

const EVENT_COLUMNS: &str = "e.id, e.organizer_id, e.title, e.description, e.starts_at, \
     e.ends_at, e.time_zone, e.location, e.capacity, e.status, e.going, e.maybe, \
     e.declined, e.version, e.created_at, e.updated_at";

/// The same columns unqualified: SQLite's RETURNING cannot name a table alias.
const RETURNING_COLUMNS: &str = "id, organizer_id, title, description, starts_at, ends_at, \
     time_zone, location, capacity, status, going, maybe, declined, version, created_at, \
     updated_at";

fn status_str(s: EventStatus) -> &'static str {
    match s {
        EventStatus::Scheduled => "scheduled",
        EventStatus::Cancelled => "cancelled",
    }
}

fn uuid_col(row: &AnyRow, table: &'static str, col: &str) -> Result<Uuid, StoreError> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(table, format!("{col}: {e}")))
}

fn u32_col(row: &AnyRow, table: &'static str, col: &str) -> Result<u32, StoreError> {
    let n: i64 = row.try_get(col)?;
    u32::try_from(n).map_err(|_| corrupt(table, format!("{col} = {n}")))
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let status = match status.as_str() {
        "scheduled" => EventStatus::Scheduled,
        "cancelled" => EventStatus::Cancelled,
        other => return Err(corrupt("events", format!("status = {other}"))),
    };
    let version: i64 = row.try_get("version")?;
    Ok(EventRecord {
        id: uuid_col(row, "events", "id")?,
        organizer_id: uuid_col(row, "events", "organizer_id")?,
        fields: EventFields {
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            starts_at: from_micros(row.try_get("starts_at")?),
            ends_at: from_micros(row.try_get("ends_at")?),
            time_zone: row.try_get("time_zone")?,
            location: row.try_get("location")?,
            capacity: u32_col(row, "events", "capacity")?,
        },
        status,
        counts: RsvpCounts {
            going: u32_col(row, "events", "going")?,
            maybe: u32_col(row, "events", "maybe")?,
            declined: u32_col(row, "events", "declined")?,
        },
        version: u64::try_from(version).map_err(|_| corrupt("events", "negative version"))?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn rsvp_status(s: Option<String>) -> Result<Option<RsvpStatus>, StoreError> {
    s.map(|s| RsvpStatus::parse(&s).ok_or_else(|| corrupt("rsvps", format!("status = {s}"))))
        .transpose()
}

pub async fn insert_event(conn: &mut AnyConnection, ev: &EventRecord) -> Result<(), StoreError> {
    let f = &ev.fields;
    sqlx::query(
        "INSERT INTO events (id, organizer_id, title, description, starts_at, ends_at, \
         time_zone, location, capacity, status, going, maybe, declined, version, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(ev.id.to_string())
    .bind(ev.organizer_id.to_string())
    .bind(&f.title)
    .bind(&f.description)
    .bind(to_micros(f.starts_at))
    .bind(to_micros(f.ends_at))
    .bind(&f.time_zone)
    .bind(&f.location)
    .bind(i64::from(f.capacity))
    .bind(status_str(ev.status))
    .bind(i64::from(ev.counts.going))
    .bind(i64::from(ev.counts.maybe))
    .bind(i64::from(ev.counts.declined))
    .bind(ev.version as i64)
    .bind(to_micros(ev.created_at))
    .bind(to_micros(ev.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads an event with the viewer's own RSVP.
pub async fn get_event(
    conn: &mut AnyConnection,
    id: Uuid,
    viewer: Uuid,
) -> Result<Option<(EventRecord, Option<RsvpStatus>)>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, r.status AS my_rsvp FROM events e \
         LEFT JOIN rsvps r ON r.event_id = e.id AND r.user_id = $2 WHERE e.id = $1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(viewer.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|row| Ok((event_from_row(&row)?, rsvp_status(row.try_get("my_rsvp")?)?)))
        .transpose()
}

/// Reads an event inside a write transaction, locking its row on PostgreSQL.
pub async fn lock_event(
    conn: &mut AnyConnection,
    backend: Backend,
    id: Uuid,
) -> Result<Option<EventRecord>, StoreError> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        // BEGIN IMMEDIATE already holds the only write lock SQLite has.
        Backend::Sqlite => "",
    };
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = $1{lock}");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// Reads the events `ids` inside a write transaction (locking their rows on
/// PostgreSQL, in id order so two writers cannot deadlock); missing ids are absent.
pub async fn lock_events(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: &[Uuid],
) -> Result<Vec<EventRecord>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let placeholders = (1..=ids.len())
        .map(|i| backend.param(i))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.id IN ({placeholders}) ORDER BY e.id{lock}"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        query = query.bind(id.to_string());
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(event_from_row).collect()
}

/// The RSVPs of the given (event, user) pairs that exist.
pub async fn rsvps_of(
    conn: &mut AnyConnection,
    pairs: &[(Uuid, Uuid)],
) -> Result<Vec<RsvpRecord>, StoreError> {
    let backend = Backend::of(conn);
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let conds = (0..pairs.len())
        .map(|i| {
            let (e, u) = (backend.param(2 * i + 1), backend.param(2 * i + 2));
            format!("(event_id = {e} AND user_id = {u})")
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let sql = format!("SELECT event_id, user_id, status, updated_at FROM rsvps WHERE {conds}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (event, user) in pairs {
        query = query.bind(event.to_string()).bind(user.to_string());
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(rsvp_from_row).collect()
}

/// Writes the counts, version and `updated_at` of events changed in memory, in one
/// statement. Each row is written only if its stored version is still `from_version`
/// (the caller holds the rows' locks, so anything else is a bug); returns how many rows
/// were written.
pub async fn write_counts(
    conn: &mut AnyConnection,
    changes: &[(&EventRecord, u64)],
) -> Result<u64, StoreError> {
    let backend = Backend::of(conn);
    if changes.is_empty() {
        return Ok(0);
    }
    // CASE id WHEN … THEN CAST(… AS BIGINT): PostgreSQL cannot infer a parameter's type
    // inside CASE, and SQLite accepts the cast as well.
    let mut binds: Vec<Bind> = Vec::new();
    let mut push = |b: Bind| {
        binds.push(b);
        backend.param(binds.len())
    };
    let mut cases: [String; 5] = Default::default();
    let mut ids = Vec::with_capacity(changes.len());
    let mut guards = Vec::with_capacity(changes.len());
    for (ev, from_version) in changes {
        let id = push(Bind::Text(ev.id.to_string()));
        let values = [
            i64::from(ev.counts.going),
            i64::from(ev.counts.maybe),
            i64::from(ev.counts.declined),
            ev.version as i64,
            to_micros(ev.updated_at),
        ];
        for (case, value) in cases.iter_mut().zip(values) {
            let v = push(Bind::Int(value));
            case.push_str(&format!(" WHEN {id} THEN CAST({v} AS BIGINT)"));
        }
        let from = push(Bind::Int(*from_version as i64));
        guards.push(format!("(id = {id} AND version = {from})"));
        ids.push(id);
    }
    let [going, maybe, declined, version, updated_at] = cases;
    let sql = format!(
        "UPDATE events SET going = CASE id{going} END, maybe = CASE id{maybe} END, \
         declined = CASE id{declined} END, version = CASE id{version} END, \
         updated_at = CASE id{updated_at} END WHERE {}",
        guards.join(" OR ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s),
            Bind::Int(n) => query.bind(n),
        };
    }
    Ok(query.execute(conn).await?.rows_affected())
}

/// Inserts or replaces many answers in one statement. Each (event, user) pair must
/// appear once (PostgreSQL refuses to update one row twice in a statement).
pub async fn upsert_rsvps(
    conn: &mut AnyConnection,
    rsvps: &[RsvpRecord],
) -> Result<(), StoreError> {
    let backend = Backend::of(conn);
    const ROWS_PER_STATEMENT: usize = 250;
    for chunk in rsvps.chunks(ROWS_PER_STATEMENT) {
        let values = (0..chunk.len())
            .map(|i| {
                let b = i * 4;
                let p = |n| backend.param(b + n);
                format!("({}, {}, {}, {})", p(1), p(2), p(3), p(4))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO rsvps (event_id, user_id, status, updated_at) VALUES {values} \
             ON CONFLICT (event_id, user_id) DO UPDATE SET status = excluded.status, \
             updated_at = excluded.updated_at"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            query = query
                .bind(r.event_id.to_string())
                .bind(r.user_id.to_string())
                .bind(r.status.as_str())
                .bind(to_micros(r.updated_at));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes the editable fields, bumping the version; returns the new row. The
/// `going <= capacity` guard repeats the domain check at the row (0 rows: refused).
pub async fn update_fields(
    conn: &mut AnyConnection,
    id: Uuid,
    f: &EventFields,
    now: Timestamp,
) -> Result<Option<EventRecord>, StoreError> {
    let sql = format!(
        "UPDATE events SET title = $2, description = $3, starts_at = $4, ends_at = $5, \
         time_zone = $6, location = $7, capacity = $8, version = version + 1, updated_at = $9 \
         WHERE id = $1 AND going <= $8 RETURNING {RETURNING_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(&f.title)
        .bind(&f.description)
        .bind(to_micros(f.starts_at))
        .bind(to_micros(f.ends_at))
        .bind(&f.time_zone)
        .bind(&f.location)
        .bind(i64::from(f.capacity))
        .bind(to_micros(now))
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// Marks the event cancelled, bumping the version; returns the new row.
pub async fn set_cancelled(
    conn: &mut AnyConnection,
    id: Uuid,
    now: Timestamp,
) -> Result<Option<EventRecord>, StoreError> {
    let sql = format!(
        "UPDATE events SET status = 'cancelled', version = version + 1, updated_at = $2 \
         WHERE id = $1 AND status <> 'cancelled' RETURNING {RETURNING_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(to_micros(now))
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// The user's current answer to the event.
pub async fn rsvp_of(
    conn: &mut AnyConnection,
    event_id: Uuid,
    user_id: Uuid,
) -> Result<Option<RsvpStatus>, StoreError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM rsvps WHERE event_id = $1 AND user_id = $2")
            .bind(event_id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(conn)
            .await?;
    rsvp_status(status)
}

/// One RSVP row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsvpRecord {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub status: RsvpStatus,
    pub updated_at: Timestamp,
}

fn rsvp_from_row(row: &AnyRow) -> Result<RsvpRecord, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(RsvpRecord {
        event_id: uuid_col(row, "rsvps", "event_id")?,
        user_id: uuid_col(row, "rsvps", "user_id")?,
        status: RsvpStatus::parse(&status)
            .ok_or_else(|| corrupt("rsvps", format!("status = {status}")))?,
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

/// Positional binds of a query built at run time.
enum Bind {
    Text(String),
    Int(i64),
}

/// One page of events (at most `q.limit + 1` rows: the extra one says more remain),
/// each with the viewer's own RSVP.
pub async fn list_events(
    conn: &mut AnyConnection,
    viewer: Uuid,
    q: &EventQuery,
) -> Result<Vec<(EventRecord, Option<RsvpStatus>)>, StoreError> {
    let mut binds = vec![Bind::Text(viewer.to_string())];
    let mut conds: Vec<String> = Vec::new();
    let push = |binds: &mut Vec<Bind>, b: Bind| {
        binds.push(b);
        format!("${}", binds.len())
    };
    if let Some(from) = q.from {
        let p = push(&mut binds, Bind::Int(to_micros(from)));
        conds.push(format!("e.starts_at >= {p}"));
    }
    if let Some(to) = q.to {
        let p = push(&mut binds, Bind::Int(to_micros(to)));
        conds.push(format!("e.starts_at < {p}"));
    }
    match q.mine {
        None => {}
        // $1 is the viewer.
        Some(Mine::Organizing) => conds.push("e.organizer_id = $1".into()),
        Some(Mine::Attending) => conds.push("r.status IN ('going', 'maybe')".into()),
    }
    if let Some(c) = q.after {
        let ts = push(&mut binds, Bind::Int(c.starts_at_us));
        let id = push(&mut binds, Bind::Text(c.id.to_string()));
        conds.push(format!(
            "(e.starts_at > {ts} OR (e.starts_at = {ts} AND e.id > {id}))"
        ));
    }
    let limit = push(&mut binds, Bind::Int(i64::from(q.limit) + 1));
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, r.status AS my_rsvp FROM events e \
         LEFT JOIN rsvps r ON r.event_id = e.id AND r.user_id = $1 \
         {filter} ORDER BY e.starts_at, e.id LIMIT {limit}"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s),
            Bind::Int(n) => query.bind(n),
        };
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter()
        .map(|row| Ok((event_from_row(row)?, rsvp_status(row.try_get("my_rsvp")?)?)))
        .collect()
}

/// One page of an event's RSVPs ordered by user id (at most `q.limit + 1` rows).
pub async fn list_rsvps(
    conn: &mut AnyConnection,
    event_id: Uuid,
    q: &RsvpQuery,
) -> Result<Vec<RsvpRecord>, StoreError> {
    let mut sql =
        String::from("SELECT event_id, user_id, status, updated_at FROM rsvps WHERE event_id = $1");
    let mut binds = vec![Bind::Text(event_id.to_string())];
    if let Some(s) = q.status {
        binds.push(Bind::Text(s.as_str().to_owned()));
        sql.push_str(&format!(" AND status = ${}", binds.len()));
    }
    if let Some(RsvpCursor { user_id }) = q.after {
        binds.push(Bind::Text(user_id.to_string()));
        sql.push_str(&format!(" AND user_id > ${}", binds.len()));
    }
    binds.push(Bind::Int(i64::from(q.limit) + 1));
    sql.push_str(&format!(" ORDER BY user_id LIMIT ${}", binds.len()));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s),
            Bind::Int(n) => query.bind(n),
        };
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(rsvp_from_row).collect()
}
