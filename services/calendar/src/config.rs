//! The calendar's settings, read from the environment.

use runtime::ConfigError;
use runtime::config::{self, CommonConfig};

/// Everything the calendar service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS, `HTTP_ADDR` (default `127.0.0.1:8082`), `PROVISION`, `SHUTDOWN_GRACE_MS`.
    pub common: CommonConfig,
    /// `DATABASE_URL`: `sqlite://…` or `postgres://…`
    /// (default `sqlite://.mesh/data/calendar.db`).
    pub database_url: String,
    /// `OUTBOX_RELAY` (`on`/`off`, default on): publish outbox rows to JetStream. Off
    /// leaves events in the outbox, e.g. while another replica relays, or in tests.
    pub outbox_relay: bool,
    /// `RPC_MAX_IN_FLIGHT` (default 64): requests handled at once by this replica.
    pub max_in_flight: usize,
    /// `CALENDAR_PUBLISH_RSVP_V2` (`on`/`off`, default off): also publish
    /// `calendar.rsvp_changed` v2 (`calendar.v2.rsvp.changed`) beside v1, in the same
    /// transaction, with the same logical message id, while consumers move to v2.
    pub publish_rsvp_v2: bool,
}

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8082";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.mesh/data/calendar.db";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_env(DEFAULT_HTTP_ADDR)?,
            database_url: config::string("DATABASE_URL", DEFAULT_DATABASE_URL),
            outbox_relay: config::switch("OUTBOX_RELAY", true)?,
            max_in_flight: config::parse("RPC_MAX_IN_FLIGHT", 64)?,
            publish_rsvp_v2: config::switch("CALENDAR_PUBLISH_RSVP_V2", false)?,
        })
    }
}
