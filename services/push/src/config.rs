//! Push's settings, read from the environment.

use std::time::Duration;

use runtime::ConfigError;
use runtime::config::{self, CommonConfig};
use runtime::consumer::RetryPolicy;

/// Everything the push service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS, `HTTP_ADDR` (default `127.0.0.1:8084`), `PROVISION`, `SHUTDOWN_GRACE_MS`.
    pub common: CommonConfig,
    /// `DATABASE_URL`: `sqlite://…` or `postgres://…`
    /// (default `sqlite://.mesh/data/push.db`). Replicas share it.
    pub database_url: String,
    /// `PUSH_MAX_DELIVER` (default 8) and `PUSH_BACKOFF_MS` (default
    /// `1000,5000,30000,120000,600000`): the retry schedule of both durable consumers.
    pub retry: RetryPolicy,
    /// `PUSH_CONCURRENCY` (default 32): messages one replica handles at once, per consumer.
    pub concurrency: usize,
    /// `PUSH_MAX_ACK_PENDING` (default 1000): unacknowledged messages a durable may
    /// have over all replicas.
    pub max_ack_pending: i64,
    /// `PUSH_MAX_EVENT_AGE_SECS` (default 86400): events that happened longer ago only
    /// update the read models and notify nobody (see the crate docs on replays).
    pub max_event_age: Duration,
    /// `RPC_MAX_IN_FLIGHT` (default 64): requests handled at once by this replica.
    pub max_in_flight: usize,
}

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8084";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.mesh/data/push.db";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let concurrency: usize = config::parse("PUSH_CONCURRENCY", 32)?;
        if concurrency == 0 {
            return Err(ConfigError::Invalid {
                name: "PUSH_CONCURRENCY".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Config {
            common: CommonConfig::from_env(DEFAULT_HTTP_ADDR)?,
            database_url: config::string("DATABASE_URL", DEFAULT_DATABASE_URL),
            retry: RetryPolicy::from_env("PUSH")?,
            concurrency,
            max_ack_pending: config::parse("PUSH_MAX_ACK_PENDING", 1000)?,
            max_event_age: config::secs("PUSH_MAX_EVENT_AGE_SECS", 86_400)?,
            max_in_flight: config::parse("RPC_MAX_IN_FLIGHT", 64)?,
        })
    }
}
