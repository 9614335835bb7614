//! The hospital's settings, read from the environment.

use std::time::Duration;

use runtime::ConfigError;
use runtime::config::{self, CommonConfig};
use runtime::consumer::RetryPolicy;

/// Everything the hospital needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS, `HTTP_ADDR` (default `127.0.0.1:8085`), `PROVISION`, `SHUTDOWN_GRACE_MS`.
    pub common: CommonConfig,
    /// `DATABASE_URL`: `sqlite://…` or `postgres://…`
    /// (default `sqlite://.mesh/data/hospital.db`). Replicas share it.
    pub database_url: String,
    /// `HOSPITAL_DLQ_MAX_BYTES` (default 1 GiB, `contracts::subjects::DLQ_MAX_BYTES`):
    /// size limit of the `DLQ` stream; when full it refuses new parks (discard-new).
    pub dlq_max_bytes: i64,
    /// `HOSPITAL_DLQ_MAX_AGE_SECS` (default 30 days): how long the `DLQ` stream keeps a
    /// parked copy. The index keeps its own copy of the bytes beyond that.
    pub dlq_max_age: Duration,
    /// `HOSPITAL_REPLAY_RATE_PER_SEC` (default 100): replays per second when a request
    /// names no rate; 0 = unlimited (a window of 2,048 outstanding publish acks).
    pub replay_rate_per_sec: u32,
    /// `HOSPITAL_WHERE_SCAN_LIMIT` (default 10000): how many of the newest messages of
    /// AUTH and CALENDAR "where is this message?" scans for a message never parked.
    pub where_scan_limit: u64,
    /// `HOSPITAL_MAX_DELIVER` (default 8) and `HOSPITAL_BACKOFF_MS` (default
    /// `1000,5000,30000,120000,600000`): the retry schedule of the index consumer (only
    /// database failures are retried; nothing it reads is refused).
    pub retry: RetryPolicy,
    /// `HOSPITAL_INDEX_CONCURRENCY` (default 16): parked messages indexed at once.
    pub index_concurrency: usize,
    /// `RPC_MAX_IN_FLIGHT` (default 64): admin requests handled at once by this replica.
    pub max_in_flight: usize,
}

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8085";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.mesh/data/hospital.db";
pub const DEFAULT_DLQ_MAX_AGE_SECS: u64 = 30 * 24 * 3600;
pub const DEFAULT_REPLAY_RATE_PER_SEC: u32 = 100;
pub const DEFAULT_WHERE_SCAN_LIMIT: u64 = 10_000;

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let index_concurrency: usize = config::parse("HOSPITAL_INDEX_CONCURRENCY", 16)?;
        if index_concurrency == 0 {
            return Err(ConfigError::Invalid {
                name: "HOSPITAL_INDEX_CONCURRENCY".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let dlq_max_bytes: i64 =
            config::parse("HOSPITAL_DLQ_MAX_BYTES", contracts::subjects::DLQ_MAX_BYTES)?;
        if dlq_max_bytes == 0 || dlq_max_bytes < -1 {
            return Err(ConfigError::Invalid {
                name: "HOSPITAL_DLQ_MAX_BYTES".into(),
                value: dlq_max_bytes.to_string(),
                reason: "must be positive (or -1 for no limit)".into(),
            });
        }
        Ok(Config {
            common: CommonConfig::from_env(DEFAULT_HTTP_ADDR)?,
            database_url: config::string("DATABASE_URL", DEFAULT_DATABASE_URL),
            dlq_max_bytes,
            dlq_max_age: config::secs("HOSPITAL_DLQ_MAX_AGE_SECS", DEFAULT_DLQ_MAX_AGE_SECS)?,
            replay_rate_per_sec: config::parse(
                "HOSPITAL_REPLAY_RATE_PER_SEC",
                DEFAULT_REPLAY_RATE_PER_SEC,
            )?,
            where_scan_limit: config::parse("HOSPITAL_WHERE_SCAN_LIMIT", DEFAULT_WHERE_SCAN_LIMIT)?,
            retry: RetryPolicy::from_env("HOSPITAL")?,
            index_concurrency,
            max_in_flight: config::parse("RPC_MAX_IN_FLIGHT", 64)?,
        })
    }
}
