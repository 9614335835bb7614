//! Configuration from environment variables with documented defaults.

use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

/// The variable's value, or `None` when unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value, or `default` when unset.
pub fn string(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_owned())
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parse<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            }),
    }
}

/// An `on`/`off` switch (`true`/`false`, `1`/`0` also accepted).
pub fn switch(name: &str, default: bool) -> Result<bool, ConfigError> {
    match var(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "on" | "true" | "1" | "yes" => Ok(true),
            "off" | "false" | "0" | "no" => Ok(false),
            _ => Err(ConfigError::Invalid {
                name: name.to_owned(),
                value: v,
                reason: "expected on or off".into(),
            }),
        },
    }
}

/// A duration given in milliseconds.
pub fn millis(name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
    parse(name, default_ms).map(Duration::from_millis)
}

/// A duration given in seconds.
pub fn secs(name: &str, default_s: u64) -> Result<Duration, ConfigError> {
    parse(name, default_s).map(Duration::from_secs)
}

/// Settings every service reads the same way.
#[derive(Clone)]
pub struct CommonConfig {
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `NATS_USER` / `NATS_PASSWORD`, optional.
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    /// `HTTP_ADDR`: the service's HTTP listener (health, readiness; the gateway's API).
    pub http_addr: String,
    /// `PROVISION`: create streams and buckets at start (default on).
    pub provision: bool,
    /// `SHUTDOWN_GRACE_MS`: how long in-flight work may take to drain (default 10000).
    pub shutdown_grace: Duration,
}

impl CommonConfig {
    pub fn from_env(default_http_addr: &str) -> Result<Self, ConfigError> {
        Ok(CommonConfig {
            nats_url: string("NATS_URL", "nats://127.0.0.1:4222"),
            nats_user: var("NATS_USER"),
            nats_password: var("NATS_PASSWORD"),
            http_addr: string("HTTP_ADDR", default_http_addr),
            provision: switch("PROVISION", true)?,
            shutdown_grace: millis("SHUTDOWN_GRACE_MS", 10_000)?,
        })
    }
}

impl std::fmt::Debug for CommonConfig {
    // Hand-written so the NATS password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonConfig")
            .field("nats_url", &self.nats_url)
            .field("nats_user", &self.nats_user)
            .field(
                "nats_password",
                &self.nats_password.as_ref().map(|_| "<redacted>"),
            )
            .field("http_addr", &self.http_addr)
            .field("provision", &self.provision)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}
