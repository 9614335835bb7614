//! The SQL store: the same `$N` SQL text on SQLite and PostgreSQL through sqlx `Any`.
//!
//! Status changes are guarded by the status they expect (`… WHERE status = 'parked'`),
//! so two actions racing for one dead letter can never both act on it: the second
//! finds the row already changed and skips it. A replay job claims its rows
//! (`replaying`, with its job id) before publishing them; an edit-replay claims its row
//! (`editing`, with its audit entry's id), writes the audit entry with the edited body,
//! publishes, and only then marks the row `replayed`. `replaying` and `editing` rows
//! show as parked to everyone else; the sweeper gives back claims of jobs that stopped
//! and finishes edits whose request stopped half way (see [`stale_edits`]).

use contracts::hospital::{
    AuditEntry, DeadLetter, DeadLetterFilter, DeadLetterStatus, Diagnosis, ErrorKind, FailureGroup,
    Job, JobStatus,
};
use jiff::Timestamp;
use runtime::db::{Backend, Database, from_micros, to_micros};
use sqlx::any::AnyRow;
use sqlx::{Any, Row};
use uuid::Uuid;

use crate::domain::{self, Cursor, GroupQuery, Selector};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored value that this code cannot have written.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.into(),
    }
}

fn uuid_col(row: &AnyRow, table: &'static str, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(table, format!("{col}: {e}")))
}

fn u64_col(row: &AnyRow, table: &'static str, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| corrupt(table, format!("{col} = {v}")))
}

fn opt_time_col(row: &AnyRow, col: &str) -> Result<Option<Timestamp>> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.map(from_micros))
}

/// Counts and sequences are stored as BIGINT; none comes near 2^63.
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The current instant at the stored precision (microseconds).
pub fn now() -> Timestamp {
    from_micros(to_micros(Timestamp::now()))
}

// ---- a small query builder (dynamic WHERE clauses and IN lists) ----

#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
}

/// SQL text with its bound values, numbered in order (`$1…` on PostgreSQL, `?1…` on
/// SQLite, whose parse of `$N` names is quadratic in a statement's parameter count: a
/// replay's IN lists carry a thousand).
#[derive(Debug)]
struct Sql {
    text: String,
    args: Vec<Arg>,
    backend: Backend,
}

impl Sql {
    fn new(db: &Database, text: &str) -> Self {
        Sql {
            text: text.to_owned(),
            args: Vec::new(),
            backend: db.backend,
        }
    }

    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Appends a placeholder for `a`.
    fn arg(&mut self, a: Arg) -> &mut Self {
        self.args.push(a);
        let p = self.backend.param(self.args.len());
        self.text.push_str(&p);
        self
    }

    fn text(&mut self, s: impl Into<String>) -> &mut Self {
        self.arg(Arg::Text(s.into()))
    }

    fn int(&mut self, v: i64) -> &mut Self {
        self.arg(Arg::Int(v))
    }

    /// `status = …` in a statement that also names its rows by id (`id IN (…)`). On
    /// SQLite, without statistics, the planner prefers the status index over the
    /// primary key and walks every row in that status (all 100,000 parked ones for a
    /// chunk of 1,024); a unary `+` keeps that term from choosing the index.
    fn status_is(&mut self, status: &str) -> &mut Self {
        match self.backend {
            Backend::Sqlite => self.push("+status = "),
            Backend::Postgres => self.push("status = "),
        };
        self.text(status)
    }

    /// `(…, …)` of text placeholders.
    fn in_list<I: IntoIterator<Item = String>>(&mut self, items: I) -> &mut Self {
        self.push("(");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.text(item);
        }
        self.push(")")
    }

    fn query(&self) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.text.clone()));
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.clone()),
                Arg::Int(v) => q.bind(*v),
            };
        }
        q
    }

    fn scalar_i64(&self) -> sqlx::query::QueryScalar<'static, Any, i64, sqlx::any::AnyArguments> {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(self.text.clone()));
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.clone()),
                Arg::Int(v) => q.bind(*v),
            };
        }
        q
    }
}

/// `LIKE` pattern text with its wildcards escaped (`\` is the escape character).
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Stored statuses that are parked to the outside: claimed by a running replay job, or
/// by an edit-replay under way.
const PARKED_STATUSES: &str = "status IN ('parked', 'replaying', 'editing')";

/// The SQL condition of one status. `parked` includes rows a running replay job has
/// claimed but not yet sent (they are still parked for everyone else).
fn status_clause(sql: &mut Sql, status: DeadLetterStatus) {
    match status {
        DeadLetterStatus::Parked => sql.push(PARKED_STATUSES),
        other => sql.push("status = ").text(other.as_str()),
    };
}

/// Appends ` AND …` for each set field of the filter.
fn filter_clauses(sql: &mut Sql, f: &DeadLetterFilter) {
    filter_clauses_but_error(sql, f);
    error_clause(sql, f);
}

/// The error-text condition: a case-insensitive substring, the exact test whatever
/// index found the candidates (a trigram index only narrows them down).
fn error_clause(sql: &mut Sql, f: &DeadLetterFilter) {
    if let Some(e) = &f.error {
        sql.push(" AND LOWER(error) LIKE ")
            .text(format!("%{}%", like_escape(&e.to_lowercase())))
            .push(" ESCAPE '\\'");
    }
}

/// Every condition of the filter except the error text.
fn filter_clauses_but_error(sql: &mut Sql, f: &DeadLetterFilter) {
    if let Some(d) = &f.durable {
        sql.push(" AND durable = ").text(d.as_str());
    }
    if let Some(s) = &f.subject {
        // `calendar.v1.>` selects a subject tree; anything else is exact.
        match s.strip_suffix(".>") {
            Some(prefix) => {
                sql.push(" AND subject LIKE ")
                    .text(format!("{}.%", like_escape(prefix)))
                    .push(" ESCAPE '\\'");
            }
            None => {
                sql.push(" AND subject = ").text(s.as_str());
            }
        }
    }
    if let Some(t) = &f.message_type {
        sql.push(" AND message_type = ").text(t.as_str());
    }
    if let Some(k) = f.error_kind {
        sql.push(" AND error_kind = ").text(k.as_str());
    }
    if let Some(s) = f.status {
        sql.push(" AND ");
        status_clause(sql, s);
    }
    if let Some(fp) = &f.fingerprint {
        sql.push(" AND fingerprint = ").text(fp.as_str());
    }
    if let Some(from) = f.from {
        sql.push(" AND parked_at >= ").int(to_micros(from));
    }
    if let Some(to) = f.to {
        sql.push(" AND parked_at <= ").int(to_micros(to));
    }
}

fn selector_clauses(sql: &mut Sql, s: &Selector) {
    match s {
        Selector::Ids(ids) => {
            sql.push(" AND id IN ")
                .in_list(ids.iter().map(|i| i.to_string()));
        }
        Selector::Group(g) => {
            sql.push(" AND durable = ")
                .text(g.durable.as_str())
                .push(" AND fingerprint = ")
                .text(g.fingerprint.as_str());
        }
        Selector::Filter(f) => filter_clauses(sql, f),
    }
}

// ---- dead letters ----

/// A dead letter as the index stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    pub id: Uuid,
    pub park_id: String,
    pub dlq_sequence: u64,
    pub fingerprint: String,
    pub diagnosis: Diagnosis,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub parked_at: Timestamp,
}

/// Inserts a dead letter; false when its park id is already indexed.
pub async fn insert_dead_letter(db: &Database, d: &NewDeadLetter) -> Result<bool> {
    let now = to_micros(Timestamp::now());
    let headers = serde_json::to_string(&d.headers).unwrap_or_else(|_| "[]".into());
    let g = &d.diagnosis;
    let done = sqlx::query(
        "INSERT INTO dead_letters (id, park_id, dlq_sequence, status, replays, fingerprint, \
         service, durable, stream, subject, stream_sequence, message_id, message_type, \
         schema_version, error_kind, error, deliveries, first_failure_at, last_failure_at, \
         trace_id, replay_of, headers, payload, parked_at, indexed_at, updated_at) \
         VALUES ($1, $2, $3, 'parked', 0, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
         $15, $16, $17, $18, $19, $20, $21, $22, $23, $23) \
         ON CONFLICT (park_id) DO NOTHING",
    )
    .bind(d.id.to_string())
    .bind(d.park_id.clone())
    .bind(big(d.dlq_sequence))
    .bind(d.fingerprint.clone())
    .bind(g.service.clone())
    .bind(g.durable.clone())
    .bind(g.stream.clone())
    .bind(g.subject.clone())
    .bind(big(g.stream_sequence))
    .bind(g.message_id.clone())
    .bind(g.message_type.clone())
    .bind(g.schema_version.map(i64::from))
    .bind(g.error_kind.as_str())
    .bind(g.error.clone())
    .bind(g.deliveries)
    .bind(to_micros(g.first_failure_at))
    .bind(to_micros(g.last_failure_at))
    .bind(g.trace_id.clone())
    .bind(g.replay_of.clone())
    .bind(headers)
    .bind(d.payload.clone())
    .bind(to_micros(d.parked_at))
    .bind(now)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

const SUMMARY_COLUMNS: &str = "id, park_id, dlq_sequence, status, replays, fingerprint, service, \
     durable, stream, subject, stream_sequence, message_id, message_type, schema_version, \
     error_kind, error, deliveries, first_failure_at, last_failure_at, trace_id, replay_of, \
     parked_at, action_audit_id";

/// One index row (without the stored bytes unless fetched as [`FullRow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    pub id: Uuid,
    pub park_id: String,
    pub dlq_sequence: u64,
    /// The stored status (`replaying` is shown as parked).
    pub status: String,
    pub replays: u32,
    pub fingerprint: String,
    pub diagnosis: Diagnosis,
    pub parked_at: Timestamp,
    pub action_audit_id: Option<String>,
}

impl DeadLetterRow {
    fn from_row(row: &AnyRow) -> Result<Self> {
        const T: &str = "dead_letters";
        let kind: String = row.try_get("error_kind")?;
        let schema_version: Option<i64> = row.try_get("schema_version")?;
        let replays: i64 = row.try_get("replays")?;
        Ok(DeadLetterRow {
            id: uuid_col(row, T, "id")?,
            park_id: row.try_get("park_id")?,
            dlq_sequence: u64_col(row, T, "dlq_sequence")?,
            status: row.try_get("status")?,
            replays: u32::try_from(replays).unwrap_or(u32::MAX),
            fingerprint: row.try_get("fingerprint")?,
            diagnosis: Diagnosis {
                service: row.try_get("service")?,
                durable: row.try_get("durable")?,
                stream: row.try_get("stream")?,
                subject: row.try_get("subject")?,
                stream_sequence: u64_col(row, T, "stream_sequence")?,
                message_id: row.try_get("message_id")?,
                message_type: row.try_get("message_type")?,
                schema_version: schema_version.and_then(|v| u32::try_from(v).ok()),
                error_kind: ErrorKind::parse(&kind)
                    .ok_or_else(|| corrupt(T, format!("error_kind = {kind}")))?,
                error: row.try_get("error")?,
                deliveries: row.try_get("deliveries")?,
                first_failure_at: from_micros(row.try_get("first_failure_at")?),
                last_failure_at: from_micros(row.try_get("last_failure_at")?),
                trace_id: row.try_get("trace_id")?,
                replay_of: row.try_get("replay_of")?,
            },
            parked_at: from_micros(row.try_get("parked_at")?),
            action_audit_id: row.try_get("action_audit_id")?,
        })
    }

    pub fn status(&self) -> DeadLetterStatus {
        DeadLetterStatus::parse(&self.status).unwrap_or(DeadLetterStatus::Parked)
    }

    pub fn to_api(&self) -> DeadLetter {
        DeadLetter {
            id: self.id,
            park_id: self.park_id.clone(),
            status: self.status(),
            fingerprint: self.fingerprint.clone(),
            diagnosis: self.diagnosis.clone(),
            parked_at: self.parked_at,
            replays: self.replays,
        }
    }
}

/// A dead letter with its original headers and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullRow {
    pub row: DeadLetterRow,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl FullRow {
    fn from_row(row: &AnyRow) -> Result<Self> {
        let headers: String = row.try_get("headers")?;
        Ok(FullRow {
            row: DeadLetterRow::from_row(row)?,
            headers: serde_json::from_str(&headers)
                .map_err(|e| corrupt("dead_letters", format!("headers: {e}")))?,
            payload: row.try_get("payload")?,
        })
    }
}

/// Rows a filtered page on SQLite reads in page order before it asks the error-text
/// index instead (see [`list`]).
pub const PROBE_ROWS: u32 = 2_000;

/// One page, newest first; one row more than `limit` tells that another page exists.
///
/// An error-text filter is a substring search. PostgreSQL answers it from the trigram
/// index on `LOWER(error)` when its statistics say the text is rare, and walks the
/// page index otherwise. SQLite has no such statistics, so it is asked in two steps: the
/// newest [`PROBE_ROWS`] rows matching the other conditions are tested first (a common
/// text fills the page there); only if they hold too few matches does the trigram index
/// (`dead_letter_errors`, FTS5) name the candidates, which are then tested and sorted.
/// Texts under 3 characters have no trigram and are always tested row by row.
pub async fn list(
    db: &Database,
    filter: &DeadLetterFilter,
    after: Option<Cursor>,
    limit: u32,
) -> Result<Vec<DeadLetterRow>> {
    list_probed(db, filter, after, limit, PROBE_ROWS.max(4 * (limit + 1))).await
}

/// [`list`] with the probe's size given (tests use a small one to reach the index).
pub async fn list_probed(
    db: &Database,
    filter: &DeadLetterFilter,
    after: Option<Cursor>,
    limit: u32,
    probe_rows: u32,
) -> Result<Vec<DeadLetterRow>> {
    let wanted = i64::from(limit) + 1;
    let phrase = filter.error.as_deref().and_then(trigram_phrase);
    let (Backend::Sqlite, Some(phrase)) = (db.backend, phrase) else {
        let mut sql = Sql::new(
            db,
            &format!("SELECT {SUMMARY_COLUMNS} FROM dead_letters WHERE 1 = 1"),
        );
        filter_clauses(&mut sql, filter);
        cursor_clause(&mut sql, after);
        sql.push(" ORDER BY parked_at DESC, id DESC LIMIT ")
            .int(wanted);
        return fetch_rows(db, &sql).await;
    };

    // The newest rows first: enough matches there make the page.
    let newest = |sql: &mut Sql| {
        sql.push(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM dead_letters WHERE 1 = 1"
        ));
        filter_clauses_but_error(sql, filter);
        cursor_clause(sql, after);
        sql.push(" ORDER BY parked_at DESC, id DESC LIMIT ")
            .int(i64::from(probe_rows));
    };
    let mut sql = Sql::new(db, "SELECT * FROM (");
    newest(&mut sql);
    sql.push(") WHERE 1 = 1");
    error_clause(&mut sql, filter);
    sql.push(" ORDER BY parked_at DESC, id DESC LIMIT ")
        .int(wanted);
    let rows = fetch_rows(db, &sql).await?;
    if rows.len() as i64 >= wanted {
        return Ok(rows);
    }
    // Too few: unless the probe saw every candidate, ask the trigram index.
    let mut sql = Sql::new(db, "SELECT COUNT(*) FROM (");
    newest(&mut sql);
    sql.push(")");
    let probed = sql.scalar_i64().fetch_one(&db.pool).await?;
    if probed < i64::from(probe_rows) {
        return Ok(rows);
    }
    let mut sql = Sql::new(
        db,
        &format!(
            "SELECT {SUMMARY_COLUMNS} FROM (SELECT rowid AS hit FROM dead_letter_errors \
             WHERE dead_letter_errors MATCH "
        ),
    );
    // CROSS JOIN keeps the index's hits as the outer loop.
    sql.text(phrase)
        .push(") CROSS JOIN dead_letters ON dead_letters.rowid = hit WHERE 1 = 1");
    filter_clauses(&mut sql, filter);
    cursor_clause(&mut sql, after);
    sql.push(" ORDER BY parked_at DESC, id DESC LIMIT ")
        .int(wanted);
    fetch_rows(db, &sql).await
}

/// The FTS5 query of an error filter on the trigram index: the lower-cased text as one
/// quoted phrase (which matches it as a substring, case-folded, with no operator or
/// wildcard meaning); none under 3 characters, which hold no trigram.
fn trigram_phrase(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    (lower.chars().count() >= 3).then(|| format!("\"{}\"", lower.replace('"', "\"\"")))
}

/// Keyset paging: rows after the cursor in (parked_at, id) descending order.
fn cursor_clause(sql: &mut Sql, after: Option<Cursor>) {
    if let Some(c) = after {
        sql.push(" AND (parked_at < ")
            .int(c.at)
            .push(" OR (parked_at = ")
            .int(c.at)
            .push(" AND id < ")
            .text(c.id.to_string())
            .push("))");
    }
}

async fn fetch_rows(db: &Database, sql: &Sql) -> Result<Vec<DeadLetterRow>> {
    let rows = sql.query().fetch_all(&db.pool).await?;
    rows.iter().map(DeadLetterRow::from_row).collect()
}

pub async fn get(db: &Database, id: Uuid) -> Result<Option<FullRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS}, headers, payload FROM dead_letters WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(FullRow::from_row).transpose()
}

pub async fn get_by_park_id(db: &Database, park_id: &str) -> Result<Option<DeadLetterRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM dead_letters WHERE park_id = $1"
    )))
    .bind(park_id.to_owned())
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(DeadLetterRow::from_row).transpose()
}

/// Earlier parks of one message by one durable, oldest first.
pub async fn earlier_parks(
    db: &Database,
    durable: &str,
    message_id: &str,
    before: &DeadLetterRow,
) -> Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM dead_letters WHERE durable = $1 AND message_id = $2 \
         AND id <> $3 AND (parked_at < $4 OR (parked_at = $4 AND id < $3)) \
         ORDER BY parked_at, id LIMIT 100"
    )))
    .bind(durable.to_owned())
    .bind(message_id.to_owned())
    .bind(before.id.to_string())
    .bind(to_micros(before.parked_at))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(DeadLetterRow::from_row).collect()
}

/// Dead letters of one message (by `Mesh-Message-Id`), oldest first.
pub async fn by_message_id(db: &Database, message_id: &str) -> Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM dead_letters WHERE message_id = $1 \
         ORDER BY parked_at, id LIMIT 500"
    )))
    .bind(message_id.to_owned())
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(DeadLetterRow::from_row).collect()
}

pub async fn by_trace_id(db: &Database, trace_id: &str) -> Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM dead_letters WHERE trace_id = $1 \
         ORDER BY parked_at, id LIMIT 500"
    )))
    .bind(trace_id.to_owned())
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(DeadLetterRow::from_row).collect()
}

/// Failure groups by (durable, fingerprint), newest activity first.
pub async fn groups(db: &Database, q: &GroupQuery) -> Result<Vec<FailureGroup>> {
    let mut sql = Sql::new(
        db,
        "SELECT g.durable, g.fingerprint, g.error_kind, g.total, g.parked, g.first_seen, \
         g.last_seen, (SELECT d.error FROM dead_letters d WHERE d.durable = g.durable \
         AND d.fingerprint = g.fingerprint ORDER BY d.parked_at DESC, d.id DESC LIMIT 1) \
         AS sample_error FROM (SELECT durable, fingerprint, MIN(error_kind) AS error_kind, \
         COUNT(*) AS total, \
         SUM(CASE WHEN status IN ('parked', 'replaying', 'editing') THEN 1 ELSE 0 END) AS parked, \
         MIN(parked_at) AS first_seen, MAX(parked_at) AS last_seen",
    );
    if let Some(s) = q.status {
        sql.push(", SUM(CASE WHEN ");
        status_clause(&mut sql, s);
        sql.push(" THEN 1 ELSE 0 END) AS wanted");
    } else {
        sql.push(", COUNT(*) AS wanted");
    }
    sql.push(" FROM dead_letters WHERE 1 = 1");
    if let Some(d) = &q.durable {
        sql.push(" AND durable = ").text(d.as_str());
    }
    sql.push(
        " GROUP BY durable, fingerprint) g WHERE g.wanted > 0 \
         ORDER BY g.last_seen DESC, g.durable, g.fingerprint LIMIT 500",
    );
    let rows = sql.query().fetch_all(&db.pool).await?;
    rows.iter()
        .map(|row| {
            const T: &str = "dead_letters";
            let kind: String = row.try_get("error_kind")?;
            let total: i64 = row.try_get("total")?;
            let parked: i64 = row.try_get("parked")?;
            Ok(FailureGroup {
                durable: row.try_get("durable")?,
                fingerprint: row.try_get("fingerprint")?,
                error_kind: ErrorKind::parse(&kind)
                    .ok_or_else(|| corrupt(T, format!("error_kind = {kind}")))?,
                sample_error: row
                    .try_get::<Option<String>, _>("sample_error")?
                    .unwrap_or_default(),
                total: u64::try_from(total).unwrap_or(0),
                parked: u64::try_from(parked).unwrap_or(0),
                first_seen: from_micros(row.try_get("first_seen")?),
                last_seen: from_micros(row.try_get("last_seen")?),
            })
        })
        .collect()
}

/// Parked dead letters per durable.
pub async fn parked_counts(db: &Database) -> Result<Vec<(String, u64)>> {
    let rows = sqlx::query(
        "SELECT durable, COUNT(*) AS n FROM dead_letters \
         WHERE status IN ('parked', 'replaying', 'editing') GROUP BY durable",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n")?;
            Ok((r.try_get("durable")?, u64::try_from(n).unwrap_or(0)))
        })
        .collect()
}

/// How many dead letters a selection matches, whatever their status.
pub async fn count_selection(db: &Database, s: &Selector) -> Result<u64> {
    let mut sql = Sql::new(db, "SELECT COUNT(*) FROM dead_letters WHERE 1 = 1");
    selector_clauses(&mut sql, s);
    let n = sql.scalar_i64().fetch_one(&db.pool).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The ids a selection matches, oldest first (a replay keeps the original order).
pub async fn select_ids(db: &Database, s: &Selector) -> Result<Vec<Uuid>> {
    let mut sql = Sql::new(db, "SELECT id FROM dead_letters WHERE 1 = 1");
    selector_clauses(&mut sql, s);
    sql.push(" ORDER BY parked_at, id");
    let rows = sql.query().fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| uuid_col(r, "dead_letters", "id"))
        .collect()
}

fn ids_text(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(|i| i.to_string()).collect()
}

/// Claims the still-parked ones among `ids` for a replay job; returns them with their
/// headers and bytes.
pub async fn claim_for_replay(db: &Database, ids: &[Uuid], job: Uuid) -> Result<Vec<FullRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(
        db,
        "UPDATE dead_letters SET status = 'replaying', claim_job = ",
    );
    sql.text(job.to_string())
        .push(", updated_at = ")
        .int(to_micros(Timestamp::now()))
        .push(" WHERE ")
        .status_is("parked")
        .push(" AND id IN ")
        .in_list(ids_text(ids))
        .push(&format!(" RETURNING {SUMMARY_COLUMNS}, headers, payload"));
    let rows = sql.query().fetch_all(db.writer()).await?;
    let mut rows: Vec<FullRow> = rows.iter().map(FullRow::from_row).collect::<Result<_>>()?;
    // RETURNING gives no order; keep the job's.
    let order: std::collections::HashMap<Uuid, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    rows.sort_by_key(|r| order.get(&r.row.id).copied());
    Ok(rows)
}

/// Marks claimed rows replayed once their publish was acknowledged.
pub async fn finish_replay(db: &Database, ids: &[Uuid], job: Uuid, audit_id: Uuid) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut sql = Sql::new(
        db,
        "UPDATE dead_letters SET status = 'replayed', replays = replays + 1, claim_job = NULL, \
         action_audit_id = ",
    );
    sql.text(audit_id.to_string())
        .push(", updated_at = ")
        .int(to_micros(Timestamp::now()))
        .push(" WHERE ")
        .status_is("replaying")
        .push(" AND claim_job = ")
        .text(job.to_string())
        .push(" AND id IN ")
        .in_list(ids_text(ids));
    Ok(sql.query().execute(db.writer()).await?.rows_affected())
}

/// Gives claimed rows back (their publish failed or the job stopped before them).
pub async fn release_claims(db: &Database, ids: &[Uuid], job: Uuid) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut sql = Sql::new(
        db,
        "UPDATE dead_letters SET status = 'parked', claim_job = NULL WHERE ",
    );
    sql.status_is("replaying")
        .push(" AND claim_job = ")
        .text(job.to_string())
        .push(" AND id IN ")
        .in_list(ids_text(ids));
    Ok(sql.query().execute(db.writer()).await?.rows_affected())
}

/// Discards the still-parked ones among `ids`; returns how many.
pub async fn discard(db: &Database, ids: &[Uuid], audit_id: Uuid) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut sql = Sql::new(
        db,
        "UPDATE dead_letters SET status = 'discarded', action_audit_id = ",
    );
    sql.text(audit_id.to_string())
        .push(", updated_at = ")
        .int(to_micros(Timestamp::now()))
        .push(" WHERE ")
        .status_is("parked")
        .push(" AND id IN ")
        .in_list(ids_text(ids));
    Ok(sql.query().execute(db.writer()).await?.rows_affected())
}

/// The rows among `ids` in `status`, with their DLQ sequence (purge candidates).
pub async fn in_status(
    db: &Database,
    ids: &[Uuid],
    status: DeadLetterStatus,
) -> Result<Vec<(Uuid, u64)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(db, "SELECT id, dlq_sequence FROM dead_letters WHERE ");
    sql.status_is(status.as_str())
        .push(" AND id IN ")
        .in_list(ids_text(ids));
    let rows = sql.query().fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            Ok((
                uuid_col(r, "dead_letters", "id")?,
                u64_col(r, "dead_letters", "dlq_sequence")?,
            ))
        })
        .collect()
}

/// Deletes index rows still in `status`; returns how many.
pub async fn delete(db: &Database, ids: &[Uuid], status: DeadLetterStatus) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut sql = Sql::new(db, "DELETE FROM dead_letters WHERE ");
    sql.status_is(status.as_str())
        .push(" AND id IN ")
        .in_list(ids_text(ids));
    Ok(sql.query().execute(db.writer()).await?.rows_affected())
}

/// Claims one parked dead letter for an edited replay (`editing`, tagged with the audit
/// entry the edit writes next); false when it is not parked.
pub async fn claim_for_edit(db: &Database, id: Uuid, audit_id: Uuid) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE dead_letters SET status = 'editing', action_audit_id = $1, updated_at = $2 \
         WHERE id = $3 AND status = 'parked'",
    )
    .bind(audit_id.to_string())
    .bind(to_micros(Timestamp::now()))
    .bind(id.to_string())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a claimed edit replayed once its edited copy was acknowledged; false when the
/// claim is no longer there (someone else finished or released it).
pub async fn finish_edit(db: &Database, id: Uuid, audit_id: Uuid) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE dead_letters SET status = 'replayed', replays = replays + 1, updated_at = $1 \
         WHERE id = $2 AND status = 'editing' AND action_audit_id = $3",
    )
    .bind(to_micros(Timestamp::now()))
    .bind(id.to_string())
    .bind(audit_id.to_string())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives an edit's claim back (nothing was sent).
pub async fn unclaim_edit(db: &Database, id: Uuid, audit_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE dead_letters SET status = 'parked', action_audit_id = NULL \
         WHERE id = $1 AND status = 'editing' AND action_audit_id = $2",
    )
    .bind(id.to_string())
    .bind(audit_id.to_string())
    .execute(db.writer())
    .await?;
    Ok(())
}

/// Edits claimed before `before` and never finished (their process stopped between the
/// claim and the status update): (dead letter id, audit entry id).
pub async fn stale_edits(db: &Database, before: Timestamp) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query(
        "SELECT id, action_audit_id FROM dead_letters \
         WHERE status = 'editing' AND updated_at < $1 ORDER BY updated_at LIMIT 100",
    )
    .bind(to_micros(before))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let audit: Option<String> = r.try_get("action_audit_id")?;
            let audit = audit.unwrap_or_default();
            Ok((
                uuid_col(r, "dead_letters", "id")?,
                Uuid::parse_str(&audit)
                    .map_err(|e| corrupt("dead_letters", format!("action_audit_id: {e}")))?,
            ))
        })
        .collect()
}

// ---- jobs ----

const JOB_COLUMNS: &str = "id, kind, status, total, done, skipped, failed, rate_per_sec, actor, \
     reason, error, created_at, finished_at";

fn job_from_row(row: &AnyRow) -> Result<Job> {
    const T: &str = "jobs";
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    let rate: Option<i64> = row.try_get("rate_per_sec")?;
    Ok(Job {
        id: uuid_col(row, T, "id")?,
        kind: domain::parse_job_kind(&kind).ok_or_else(|| corrupt(T, format!("kind = {kind}")))?,
        status: match status.as_str() {
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            other => return Err(corrupt(T, format!("status = {other}"))),
        },
        total: u64_col(row, T, "total")?,
        done: u64_col(row, T, "done")?,
        skipped: u64_col(row, T, "skipped")?,
        failed: u64_col(row, T, "failed")?,
        rate_per_sec: rate.and_then(|r| u32::try_from(r).ok()),
        actor: uuid_col(row, T, "actor")?,
        reason: row.try_get("reason")?,
        error: row.try_get("error")?,
        created_at: from_micros(row.try_get("created_at")?),
        finished_at: opt_time_col(row, "finished_at")?,
    })
}

pub fn job_status_str(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Running => "running",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
    }
}

pub async fn insert_job(
    db: &Database,
    job: &Job,
    selection: &serde_json::Value,
    audit_id: Uuid,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (id, kind, status, total, done, skipped, failed, rate_per_sec, actor, \
         reason, selection, audit_id, error, created_at, heartbeat_at, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, $13, $13, NULL)",
    )
    .bind(job.id.to_string())
    .bind(domain::job_kind_str(job.kind))
    .bind(job_status_str(job.status))
    .bind(big(job.total))
    .bind(big(job.done))
    .bind(big(job.skipped))
    .bind(big(job.failed))
    .bind(job.rate_per_sec.map(i64::from))
    .bind(job.actor.to_string())
    .bind(job.reason.clone())
    .bind(selection.to_string())
    .bind(audit_id.to_string())
    .bind(to_micros(job.created_at))
    .execute(db.writer())
    .await?;
    Ok(())
}

/// Records progress (and, with a final status, the end) of a job.
pub async fn save_job(db: &Database, job: &Job) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET status = $1, done = $2, skipped = $3, failed = $4, error = $5, \
         heartbeat_at = $6, finished_at = $7 WHERE id = $8",
    )
    .bind(job_status_str(job.status))
    .bind(big(job.done))
    .bind(big(job.skipped))
    .bind(big(job.failed))
    .bind(job.error.clone())
    .bind(to_micros(Timestamp::now()))
    .bind(job.finished_at.map(to_micros))
    .bind(job.id.to_string())
    .execute(db.writer())
    .await?;
    Ok(())
}

pub async fn get_job(db: &Database, id: Uuid) -> Result<Option<Job>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(job_from_row).transpose()
}

pub async fn list_jobs(db: &Database, limit: u32) -> Result<Vec<Job>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT $1"
    )))
    .bind(i64::from(limit))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(job_from_row).collect()
}

pub const INTERRUPTED: &str = "interrupted; run the action again";

/// Marks running jobs whose process stopped sending signs of life before `stale_before`
/// failed, and gives back the rows they had claimed. Returns how many jobs.
pub async fn fail_stale_jobs(db: &Database, stale_before: Timestamp) -> Result<u64> {
    let now = to_micros(Timestamp::now());
    let failed = sqlx::query(
        "UPDATE jobs SET status = 'failed', error = $1, finished_at = $2 \
         WHERE status = 'running' AND heartbeat_at < $3",
    )
    .bind(INTERRUPTED)
    .bind(now)
    .bind(to_micros(stale_before))
    .execute(db.writer())
    .await?
    .rows_affected();
    release_orphan_claims(db).await?;
    Ok(failed)
}

/// Claims of jobs that are no longer running go back to parked. A rerun then sends
/// them with the same `Nats-Msg-Id`, which the source stream's duplicate window drops
/// if the first publish was stored after all.
pub async fn release_orphan_claims(db: &Database) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE dead_letters SET status = 'parked', claim_job = NULL \
         WHERE status = 'replaying' AND (claim_job IS NULL OR claim_job NOT IN \
         (SELECT id FROM jobs WHERE status = 'running'))",
    )
    .execute(db.writer())
    .await?
    .rows_affected())
}

// ---- audit ----

#[derive(Debug, Clone)]
pub struct NewAudit {
    pub id: Uuid,
    pub actor: Uuid,
    pub action: String,
    pub target: String,
    pub target_id: Option<Uuid>,
    pub count: u64,
    pub reason: String,
    pub detail: serde_json::Value,
}

pub async fn insert_audit(db: &Database, a: &NewAudit) -> Result<AuditEntry> {
    let at = now();
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, target, target_id, count, reason, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(a.id.to_string())
    .bind(to_micros(at))
    .bind(a.actor.to_string())
    .bind(a.action.clone())
    .bind(a.target.clone())
    .bind(a.target_id.map(|t| t.to_string()))
    .bind(big(a.count))
    .bind(a.reason.clone())
    .bind(a.detail.to_string())
    .execute(db.writer())
    .await?;
    Ok(AuditEntry {
        id: a.id,
        at,
        actor: a.actor,
        action: a.action.clone(),
        target: a.target.clone(),
        count: a.count,
        reason: a.reason.clone(),
        detail: a.detail.clone(),
    })
}

/// Updates an audit entry's count and detail (a bulk action records its outcome).
pub async fn update_audit(
    db: &Database,
    id: Uuid,
    count: u64,
    detail: &serde_json::Value,
) -> Result<()> {
    sqlx::query("UPDATE audit SET count = $1, detail = $2 WHERE id = $3")
        .bind(big(count))
        .bind(detail.to_string())
        .bind(id.to_string())
        .execute(db.writer())
        .await?;
    Ok(())
}

const AUDIT_COLUMNS: &str = "id, at, actor, action, target, count, reason, detail";

fn audit_from_row(row: &AnyRow) -> Result<AuditEntry> {
    const T: &str = "audit";
    let detail: String = row.try_get("detail")?;
    Ok(AuditEntry {
        id: uuid_col(row, T, "id")?,
        at: from_micros(row.try_get("at")?),
        actor: uuid_col(row, T, "actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        count: u64_col(row, T, "count")?,
        reason: row.try_get("reason")?,
        detail: serde_json::from_str(&detail).map_err(|e| corrupt(T, format!("detail: {e}")))?,
    })
}

pub async fn get_audit(db: &Database, id: Uuid) -> Result<Option<AuditEntry>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(audit_from_row).transpose()
}

/// Newest first, keyset on (at, id).
pub async fn list_audit(
    db: &Database,
    after: Option<Cursor>,
    limit: u32,
) -> Result<Vec<AuditEntry>> {
    let mut sql = Sql::new(
        db,
        &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE 1 = 1"),
    );
    if let Some(c) = after {
        sql.push(" AND (at < ")
            .int(c.at)
            .push(" OR (at = ")
            .int(c.at)
            .push(" AND id < ")
            .text(c.id.to_string())
            .push("))");
    }
    sql.push(" ORDER BY at DESC, id DESC LIMIT ")
        .int(i64::from(limit) + 1);
    let rows = sql.query().fetch_all(&db.pool).await?;
    rows.iter().map(audit_from_row).collect()
}

/// Audit entries about one dead letter: those naming it, and the bulk action that
/// changed its status. Oldest first.
pub async fn audit_for(
    db: &Database,
    id: Uuid,
    action_audit_id: Option<&str>,
) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE target_id = $1 OR id = $2 \
         ORDER BY at, id LIMIT 200"
    )))
    .bind(id.to_string())
    .bind(action_audit_id.unwrap_or("").to_owned())
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(audit_from_row).collect()
}
