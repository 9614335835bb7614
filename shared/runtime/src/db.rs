//! The database handle: SQLite (embedded default) or PostgreSQL, chosen by URL.
//!
//! Both run through sqlx's `Any` driver with the same `$N` SQL text. Columns stick to
//! the types `Any` carries on both (TEXT, BIGINT, DOUBLE PRECISION, BYTEA): ids are
//! UUID strings, instants are BIGINT microseconds since the epoch, booleans BIGINT 0/1.
//! Each service has one migrations folder per backend, since DDL differs slightly.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};

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
}

/// The migrations of one service, per backend.
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

/// A connection pool and the backend it talks to.
#[derive(Clone, Debug)]
pub struct Database {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Database {
    /// Connects and runs the service's migrations.
    pub async fn connect(url: &str, migrations: &Migrations) -> Result<Self, DbError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::Scheme(url.to_owned()));
        };
        let pool = match backend {
            Backend::Sqlite => {
                let url = sqlite_url(url)?;
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            // WAL lets readers run beside the one writer; the busy
                            // timeout makes writers queue instead of failing.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA busy_timeout = 30000").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
            }
        }
        .map_err(DbError::Connect)?;
        match backend {
            Backend::Sqlite => migrations.sqlite.run(&pool).await?,
            Backend::Postgres => migrations.postgres.run(&pool).await?,
        }
        Ok(Database { pool, backend })
    }

    /// Begins a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes fails with
    /// `SQLITE_BUSY` when another writer got in between, without waiting.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
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
