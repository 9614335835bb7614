//! The database handle: SQLite (embedded default) or PostgreSQL, chosen by URL.
//!
//! Both run through sqlx's `Any` driver with the same `$N` SQL text. Columns stick to
//! the types `Any` carries on both (TEXT, BIGINT, DOUBLE PRECISION, BYTEA): ids are
//! UUID strings, instants are BIGINT microseconds since the epoch, booleans BIGINT 0/1.
//! Each service has one migrations folder per backend, since DDL differs slightly.
//!
//! The bundled SQLite is built with `SQLITE_ENABLE_QPSG` (`.cargo/config.toml`): see
//! [`sqlite_has_qpsg`] for why, and a start-up warning says so when it is missing.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Row, Transaction};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported DATABASE_URL scheme in {0:?}: use sqlite:// or postgres://")]
    Scheme(String),
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
}

/// The migrations of one service, per backend.
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

/// How long database calls may wait, from the environment:
///
/// - `DATABASE_ACQUIRE_TIMEOUT_MS`: waiting for a pooled connection (default 30000 on
///   SQLite, where writers queue for the one write lock, 10000 on PostgreSQL);
/// - `DATABASE_STATEMENT_TIMEOUT_MS` (PostgreSQL): one statement's run time, enforced by
///   the server (`statement_timeout`; default 30000, 0 turns it off). SQLite has no such
///   limit; its writers wait at most 30 s for the write lock (`busy_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTimeouts {
    pub acquire: Duration,
    pub statement: Duration,
}

impl DbTimeouts {
    /// The settings for `backend`.
    pub fn from_env(backend: Backend) -> Result<DbTimeouts, crate::ConfigError> {
        let default_acquire = match backend {
            Backend::Sqlite => 30_000,
            Backend::Postgres => 10_000,
        };
        Ok(DbTimeouts {
            acquire: crate::config::millis("DATABASE_ACQUIRE_TIMEOUT_MS", default_acquire)?,
            statement: crate::config::millis("DATABASE_STATEMENT_TIMEOUT_MS", 30_000)?,
        })
    }
}

/// A connection pool and the backend it talks to.
///
/// SQLite has one write lock per database. Writers that race for it on separate
/// connections do not queue: SQLite's busy handler makes the losers sleep (1, 2, 5, 10 …
/// ms) and retry, which under load costs most of the throughput and all of the tail
/// latency. So on SQLite every write goes through [`Database::writer`], a pool of ONE
/// connection whose async acquire queue is fair and wastes no time; reads use the
/// shared `pool` beside it (WAL: readers never wait for the writer). On PostgreSQL both
/// are the same pool.
#[derive(Clone, Debug)]
pub struct Database {
    pub pool: AnyPool,
    writer: AnyPool,
    pub backend: Backend,
}

impl Database {
    /// Connects and runs the service's migrations, with the timeouts from the
    /// environment ([`DbTimeouts::from_env`]).
    pub async fn connect(url: &str, migrations: &Migrations) -> Result<Self, DbError> {
        let timeouts = DbTimeouts::from_env(backend_of(url)?)?;
        Self::connect_with(url, migrations, timeouts).await
    }

    /// [`Database::connect`] with the given timeouts.
    pub async fn connect_with(
        url: &str,
        migrations: &Migrations,
        timeouts: DbTimeouts,
    ) -> Result<Self, DbError> {
        install_default_drivers();
        let backend = backend_of(url)?;
        let (pool, writer) = match backend {
            Backend::Sqlite => {
                let url = sqlite_url(url)?;
                // The writer first: it creates the file and switches it to WAL before
                // the readers open it.
                let writer = sqlite_pool(1, timeouts.acquire, Role::Writer)
                    .connect(&url)
                    .await
                    .map_err(DbError::Connect)?;
                migrations.sqlite.run(&writer).await?;
                warn_without_qpsg(&writer).await;
                if url.contains(":memory:") {
                    // Every connection to :memory: is a database of its own.
                    (writer.clone(), writer)
                } else {
                    let pool = sqlite_pool(8, timeouts.acquire, Role::Reader)
                        .connect(&url)
                        .await
                        .map_err(DbError::Connect)?;
                    tokio::spawn(checkpoint(pool.clone(), writer.clone()));
                    (pool, writer)
                }
            }
            Backend::Postgres => {
                let statement_ms = timeouts.statement.as_millis();
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(timeouts.acquire)
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            // A query stuck on a lock or a bad plan fails instead of
                            // holding its connection (and its caller) forever; 0 = off.
                            let set = format!("SET statement_timeout = {statement_ms}");
                            conn.execute(sqlx::AssertSqlSafe(set)).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await
                    .map_err(DbError::Connect)?;
                migrations.postgres.run(&pool).await?;
                (pool.clone(), pool)
            }
        };
        Ok(Database {
            pool,
            writer,
            backend,
        })
    }

    /// The pool to write through: on SQLite the single writer connection (see the type's
    /// docs), on PostgreSQL the shared pool. Plain statements that write use it too.
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Begins a write transaction. On SQLite it runs on the single writer connection
    /// and still takes the write lock up front (`BEGIN IMMEDIATE`), since another
    /// process (a second replica, a CLI) may share the file.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
    }

    /// Sets the pool gauges (`mesh_db_pool_connections{state}`, `…_max_connections`).
    pub fn sample_pool_gauges(&self) {
        use crate::telemetry::names;
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(idle));
        metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "in_use")
            .set(f64::from(size.saturating_sub(idle)));
        metrics::gauge!(names::DB_POOL_MAX)
            .set(f64::from(self.pool.options().get_max_connections()));
    }

    /// A cheap round trip for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// How long a SQLite connection waits for another process's lock (ms).
const BUSY_TIMEOUT_MS: u32 = 30_000;
/// How often [`checkpoint`] copies the log into the database file from a reader.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// A log of this many frames (64 MiB at SQLite's 4 KiB pages) is restarted from the
/// writer (see [`checkpoint`]).
const RESTART_AT_FRAMES: i64 = 16 * 1024;
/// How long a restart waits for readers still on an older snapshot before it gives up
/// until the next round (ms). It runs on the writer, so it bounds the writers' wait.
const RESTART_READER_WAIT_MS: u32 = 20;
/// The size a WAL file is cut back to after a restart, should a burst have grown it.
const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Copies the write-ahead log into the database file and keeps the log from growing.
///
/// SQLite checkpoints by default in the connection whose commit fills the log past 1000
/// pages: on the one writer connection, every few hundred commits, a checkpoint with
/// its file syncs stalls every write queued behind it. So the writer's automatic
/// checkpoints are off, and this task, until the pools close:
///
/// - every [`CHECKPOINT_EVERY`] runs a PASSIVE checkpoint on a reader connection: it
///   copies what it can and never waits for, nor blocks, the writer or the readers;
/// - when that finds the log longer than [`RESTART_AT_FRAMES`], runs a RESTART
///   checkpoint on the writer. A passive checkpoint alone never lets the log start over
///   while writes keep coming (each one appends frames the copy has not reached, so the
///   log is never fully copied when a writer begins): under sustained load the `-wal`
///   file grew by tens of MB/s without bound, and every append to a new part of it had
///   the kernel zero fresh pages (a tenth of the email service's CPU in a profile at
///   500 RSVP/s). Queued on the writer, the restart sees no write of this process in
///   between, copies what the passive one left, and rewinds the log to its start. It
///   stalls the writes queued behind it for its file syncs, hence only past a size,
///   and it waits at most [`RESTART_READER_WAIT_MS`] for readers on older snapshots,
///   else it tries again next round.
async fn checkpoint(readers: AnyPool, writer: AnyPool) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if readers.is_closed() || writer.is_closed() {
            break;
        }
        let result = match passive_checkpoint(&readers).await {
            Ok(frames) if frames >= RESTART_AT_FRAMES => restart_log(&writer).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if readers.is_closed() || writer.is_closed() {
                break;
            }
            tracing::debug!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
}

/// A PASSIVE checkpoint; returns the frames in the log (SQLite's second column).
async fn passive_checkpoint(readers: &AnyPool) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(readers)
        .await?;
    row.try_get(1)
}

/// A RESTART checkpoint on the writer connection, waiting briefly for readers (the
/// writer's usual busy timeout is for other processes' write locks, and far longer).
async fn restart_log(writer: &AnyPool) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    let mut conn = writer.acquire().await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PRAGMA busy_timeout = {RESTART_READER_WAIT_MS}"
    )))
    .await?;
    let restarted = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .execute(&mut *conn)
        .await;
    let reset = conn
        .execute(sqlx::AssertSqlSafe(format!(
            "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"
        )))
        .await;
    if reset.is_err() {
        // A writer that would fail at once on another process's lock is worse than
        // a fresh connection.
        drop(conn.detach());
    }
    restarted?;
    reset?;
    Ok(())
}

/// Whether the linked SQLite was built with `SQLITE_ENABLE_QPSG` (the repository's
/// `.cargo/config.toml` asks for it). Without it, SQLite 3.51 treats the value bound to
/// `LIMIT $n` as one the query plan depends on, so binding it expires the prepared
/// statement and every paged query is parsed and planned again on every run (in a
/// profile of cold list reads, re-preparing was a sixth of the calendar's CPU).
pub async fn sqlite_has_qpsg(pool: &AnyPool) -> Result<bool, sqlx::Error> {
    let used: i64 = sqlx::query_scalar("SELECT sqlite_compileoption_used('ENABLE_QPSG')")
        .fetch_one(pool)
        .await?;
    Ok(used == 1)
}

async fn warn_without_qpsg(pool: &AnyPool) {
    if let Ok(false) = sqlite_has_qpsg(pool).await {
        tracing::warn!(
            "SQLite was built without SQLITE_ENABLE_QPSG: paged queries are prepared again on \
             every run; build with the repository's .cargo/config.toml"
        );
    }
}

/// What a pool of one SQLite file is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

/// Pool options for one SQLite file: WAL lets readers run beside the one writer;
/// the busy timeout makes a writer of another process queue instead of failing; the
/// writer leaves checkpoints to [`checkpoint`] unless the file is in memory. No ping
/// before each acquire (sqlx's default): a SQLite connection has no network to go stale
/// on, and the ping was one more round trip to the connection's thread per statement
/// or transaction (a profile of email under load: over half its time in thread wakeups).
fn sqlite_pool(max_connections: u32, acquire_timeout: Duration, role: Role) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"
                )))
                .await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}"
                )))
                .await?;
                if role == Role::Writer {
                    conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                }
                Ok(())
            })
        })
}

/// The backend a `DATABASE_URL` names.
fn backend_of(url: &str) -> Result<Backend, DbError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Backend::Postgres)
    } else {
        Err(DbError::Scheme(url.to_owned()))
    }
}

/// Makes sure the SQLite file's folder exists and the file is created on first use.
fn sqlite_url(url: &str) -> Result<String, DbError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.is_empty()
        && path != ":memory:"
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| DbError::Folder {
            path: parent.display().to_string(),
            source,
        })?;
    }
    let mut query = query.to_owned();
    if !query.contains("mode=") {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("mode=rwc");
    }
    Ok(format!("sqlite://{path}?{query}"))
}

impl Backend {
    /// The backend `conn` talks to.
    pub fn of(conn: &sqlx::AnyConnection) -> Backend {
        if conn.backend_name() == "SQLite" {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }

    /// The `i`-th (1-based) positional parameter as this backend writes it: `$i` on
    /// PostgreSQL, `?i` on SQLite. Both read `$i`, but SQLite takes it for a *named*
    /// parameter and looks every name up in a list while parsing, so a statement with
    /// hundreds of parameters (the many-row statements of batch writers) parses in
    /// quadratic time; `?i` is a plain number.
    pub fn param(self, i: usize) -> String {
        match self {
            Backend::Sqlite => format!("?{i}"),
            Backend::Postgres => format!("${i}"),
        }
    }
}

/// Microseconds since the Unix epoch, the mesh's stored form of an instant.
pub fn to_micros(ts: jiff::Timestamp) -> i64 {
    ts.as_microsecond()
}

/// The inverse of [`to_micros`]; out-of-range values clamp (they cannot come from us).
pub fn from_micros(us: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_microsecond(us).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// True when the error is a unique-constraint violation (on either backend).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.code().as_deref() == Some("23505")
                || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" => Ok(Backend::Postgres),
            other => Err(format!("unknown backend {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

    fn no_migrations() -> Migrations {
        Migrations {
            sqlite: &NO_MIGRATIONS,
            postgres: &NO_MIGRATIONS,
        }
    }

    /// The build links a SQLite with the query planner stability guarantee, so a bound
    /// `LIMIT` does not make SQLite prepare the statement again on every run.
    #[tokio::test]
    async fn the_linked_sqlite_keeps_prepared_plans() {
        let timeouts = DbTimeouts {
            acquire: Duration::from_secs(5),
            statement: Duration::from_secs(5),
        };
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("qpsg.db").display());
        let db = Database::connect_with(&url, &no_migrations(), timeouts)
            .await
            .unwrap();
        assert!(
            sqlite_has_qpsg(&db.pool).await.unwrap(),
            "SQLite was built without SQLITE_ENABLE_QPSG (see .cargo/config.toml)"
        );
    }

    /// Under sustained writes with readers always busy, a passive checkpoint alone never
    /// lets the log start over; the restart from the writer keeps the `-wal` file near
    /// its limit instead of growing with everything ever written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_sustained_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wal.db");
        let url = format!("sqlite://{}", file.display());
        let db = Database::connect_with(
            &url,
            &no_migrations(),
            DbTimeouts {
                acquire: Duration::from_secs(30),
                statement: Duration::from_secs(30),
            },
        )
        .await
        .unwrap();
        sqlx::query("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .execute(db.writer())
            .await
            .unwrap();

        // Readers that never pause, as a busy service's are.
        let stop = tokio_util::sync::CancellationToken::new();
        let mut readers = Vec::new();
        for _ in 0..2 {
            let (pool, stop) = (db.pool.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let _: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM blobs")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                }
            }));
        }

        // 4,000 rows of 64 KiB: about 250 MiB of log frames, four times the limit.
        let wal = dir.path().join("wal.db-wal");
        let body = vec![7u8; 64 * 1024];
        let mut largest = 0u64;
        for i in 0..4_000i64 {
            sqlx::query("DELETE FROM blobs WHERE id = $1")
                .bind(i - 8)
                .execute(db.writer())
                .await
                .unwrap();
            sqlx::query("INSERT INTO blobs (id, body) VALUES ($1, $2)")
                .bind(i)
                .bind(body.clone())
                .execute(db.writer())
                .await
                .unwrap();
            if i % 100 == 0 {
                largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            }
        }
        stop.cancel();
        for r in readers {
            r.await.unwrap();
        }
        let limit = WAL_SIZE_LIMIT;
        assert!(
            largest < 2 * limit,
            "the -wal file reached {largest} bytes; a restart is due past {limit}"
        );
        assert!(
            largest > limit / 4,
            "the test wrote too little to show anything ({largest} bytes of log at most)"
        );
    }
}
