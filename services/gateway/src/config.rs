//! The gateway's settings, read from the environment with documented defaults.

use std::num::NonZeroU32;
use std::time::Duration;

use runtime::ConfigError;
use runtime::config::{self, CommonConfig};

use crate::catalog::RoutePrefixes;
use crate::client_addr::TrustedProxies;

/// Where the gateway listens when `HTTP_ADDR` is unset.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

/// Everything the gateway reads at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `HTTP_ADDR` (default `127.0.0.1:8080`),
    /// `PROVISION` (create the idempotency, stream-ticket and route buckets at start,
    /// default on) and
    /// `SHUTDOWN_GRACE_MS` (how long in-flight HTTP requests may take on shutdown).
    pub common: CommonConfig,
    /// `GATEWAY_REQUEST_TIMEOUT_MS` (default 5000): how long a service may take to answer
    /// one request over NATS before the client gets 504 `timeout`.
    pub request_timeout: Duration,
    /// `GATEWAY_HTTP_TIMEOUT_MS` (default 10000): the whole HTTP request, from the first
    /// byte read to the response, including idempotency bookkeeping.
    pub http_timeout: Duration,
    /// `GATEWAY_MAX_BODY_BYTES` (default 65536): larger bodies get 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// `GATEWAY_JWKS_REFRESH_SECS` (default 300): how often the key set is fetched again
    /// from auth, so rotated keys are picked up without a restart.
    pub jwks_refresh: Duration,
    /// `GATEWAY_JWT_LEEWAY_SECS` (default 5): clock skew tolerated on `exp`.
    pub jwt_leeway_secs: u64,
    /// `GATEWAY_RATE_LIMIT_USER_PER_SEC` (default 100): sustained requests per second per
    /// authenticated user.
    pub rate_limit_user_per_sec: NonZeroU32,
    /// `GATEWAY_RATE_LIMIT_USER_BURST` (default 200).
    pub rate_limit_user_burst: NonZeroU32,
    /// `GATEWAY_RATE_LIMIT_IP_PER_SEC` (default 50): sustained requests per second per
    /// client IP on public routes (register, login, refresh, logout).
    pub rate_limit_ip_per_sec: NonZeroU32,
    /// `GATEWAY_RATE_LIMIT_IP_BURST` (default 500).
    pub rate_limit_ip_burst: NonZeroU32,
    /// `GATEWAY_CORS_ORIGINS`: comma-separated origins allowed to call the API from a
    /// browser (`*` for any). Empty (the default) sends no CORS headers at all, so
    /// browsers refuse cross-origin calls.
    pub cors_origins: Vec<String>,
    /// `GATEWAY_TRUSTED_PROXIES`: comma-separated addresses and CIDR networks of the
    /// reverse proxies in front of the gateway (`10.0.0.0/8, ::1`). Only a request whose
    /// peer is one of them has its `X-Forwarded-For` read, for the client address that
    /// per-address rate limits and login throttling count against. Empty (the default):
    /// the header is ignored and the peer is the client.
    pub trusted_proxies: TrustedProxies,
    /// `GATEWAY_IDEMPOTENCY_TTL_SECS` (default 86400): how long an `Idempotency-Key` and
    /// its stored response are kept (the bucket's max age).
    pub idempotency_ttl: Duration,
    /// `GATEWAY_IDEMPOTENCY_IN_FLIGHT_SECS` (default 60): after this long, a request
    /// still marked in flight is taken to be abandoned (its gateway died) and a retry
    /// with the same key may take it over.
    pub idempotency_abandon_after: Duration,
    /// `GATEWAY_SSE_TICKET_TTL_SECS` (default 60, at least 1): how long a ticket from
    /// `POST /v1/notifications/stream/ticket` may be used to open a notification stream
    /// (also the max age of the `gateway_sse_tickets` bucket).
    pub sse_ticket_ttl: Duration,
    /// `GATEWAY_SSE_KEEPALIVE_SECS` (default 15, at least 1): how often an idle
    /// notification stream gets a keep-alive comment, so proxies and load balancers do not
    /// close it for inactivity.
    pub sse_keepalive: Duration,
    /// `GATEWAY_CACHE_MAX_BYTES` (default 67108864, 64 MiB; `0` turns the cache off):
    /// room for GET answers of routes their services declare cacheable, kept fresh by
    /// the services' domain events (see `gateway::cache`).
    pub cache_max_bytes: u64,
    /// `GATEWAY_CACHE_MAX_AGE_SECS` (default 60, at least 1): the longest any cached
    /// answer is served, whatever a route declares.
    pub cache_max_age: Duration,
    /// `GATEWAY_COOKIE_SECURE` (`on`/`off`, default off): mark the web console's cookies
    /// (`mesh_session`, `mesh_csrf`) `Secure`, so browsers send them over HTTPS only.
    /// Turn it on whenever the gateway is reached over HTTPS (directly or behind a
    /// TLS-terminating proxy); off suits plain-HTTP development on localhost.
    pub cookie_secure: bool,
    /// `GATEWAY_ROUTE_PREFIXES` (default
    /// `auth=/v1/auth,/v1/me,/v1/unsubscribe;calendar=/v1/events;push=/v1/notifications;hospital=/v1/admin`):
    /// the path prefixes under which each service (by its NATS service name) may declare
    /// public routes; `;` between services, `,` between prefixes. A declaration outside
    /// them, by a service not listed, or on a path the gateway serves itself is rejected
    /// and logged.
    pub route_prefixes: RoutePrefixes,
    /// `GATEWAY_DISCOVERY_INTERVAL_SECS` (default 10, at least 1): how often the services'
    /// route declarations are discovered again (`$SRV.INFO`), so new endpoints and
    /// instances are picked up without a restart.
    pub discovery_interval: Duration,
    /// `GATEWAY_DISCOVERY_WINDOW_MS` (default 250, at least 1): how long the replies of
    /// the service instances to one discovery request are collected.
    pub discovery_window: Duration,
    /// `GATEWAY_DISCOVERY_ON_MISS_MS` (default 1000): a request that matches no route
    /// triggers a discovery right away (and is matched again after it), at most once per
    /// this interval; 0 turns that off.
    pub discovery_on_miss: Duration,
}

impl Config {
    /// The defaults, around the given common settings (handy for tests).
    pub fn new(common: CommonConfig) -> Self {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Config {
            common,
            request_timeout: Duration::from_millis(5_000),
            http_timeout: Duration::from_millis(10_000),
            max_body_bytes: 64 * 1024,
            jwks_refresh: Duration::from_secs(300),
            jwt_leeway_secs: 5,
            rate_limit_user_per_sec: nz(100),
            rate_limit_user_burst: nz(200),
            rate_limit_ip_per_sec: nz(50),
            rate_limit_ip_burst: nz(500),
            cors_origins: Vec::new(),
            trusted_proxies: TrustedProxies::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_abandon_after: Duration::from_secs(60),
            sse_ticket_ttl: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(15),
            cache_max_bytes: 64 * 1024 * 1024,
            cache_max_age: Duration::from_secs(60),
            cookie_secure: false,
            route_prefixes: RoutePrefixes::default(),
            discovery_interval: Duration::from_secs(10),
            discovery_window: Duration::from_millis(250),
            discovery_on_miss: Duration::from_millis(1_000),
        }
    }

    /// Reads every setting from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Config::new(CommonConfig::from_env(DEFAULT_HTTP_ADDR)?);
        Ok(Config {
            request_timeout: config::millis(
                "GATEWAY_REQUEST_TIMEOUT_MS",
                millis(d.request_timeout),
            )?,
            http_timeout: config::millis("GATEWAY_HTTP_TIMEOUT_MS", millis(d.http_timeout))?,
            max_body_bytes: config::parse("GATEWAY_MAX_BODY_BYTES", d.max_body_bytes)?,
            jwks_refresh: config::secs("GATEWAY_JWKS_REFRESH_SECS", d.jwks_refresh.as_secs())?,
            jwt_leeway_secs: config::parse("GATEWAY_JWT_LEEWAY_SECS", d.jwt_leeway_secs)?,
            rate_limit_user_per_sec: config::parse(
                "GATEWAY_RATE_LIMIT_USER_PER_SEC",
                d.rate_limit_user_per_sec,
            )?,
            rate_limit_user_burst: config::parse(
                "GATEWAY_RATE_LIMIT_USER_BURST",
                d.rate_limit_user_burst,
            )?,
            rate_limit_ip_per_sec: config::parse(
                "GATEWAY_RATE_LIMIT_IP_PER_SEC",
                d.rate_limit_ip_per_sec,
            )?,
            rate_limit_ip_burst: config::parse(
                "GATEWAY_RATE_LIMIT_IP_BURST",
                d.rate_limit_ip_burst,
            )?,
            cors_origins: config::var("GATEWAY_CORS_ORIGINS")
                .map(|v| parse_list(&v))
                .unwrap_or_default(),
            trusted_proxies: match config::var("GATEWAY_TRUSTED_PROXIES") {
                None => d.trusted_proxies,
                Some(v) => TrustedProxies::parse(&v).map_err(|reason| ConfigError::Invalid {
                    name: "GATEWAY_TRUSTED_PROXIES".to_owned(),
                    value: v.clone(),
                    reason,
                })?,
            },
            idempotency_ttl: config::secs(
                "GATEWAY_IDEMPOTENCY_TTL_SECS",
                d.idempotency_ttl.as_secs(),
            )?,
            idempotency_abandon_after: config::secs(
                "GATEWAY_IDEMPOTENCY_IN_FLIGHT_SECS",
                d.idempotency_abandon_after.as_secs(),
            )?,
            sse_ticket_ttl: positive_secs("GATEWAY_SSE_TICKET_TTL_SECS", d.sse_ticket_ttl)?,
            sse_keepalive: positive_secs("GATEWAY_SSE_KEEPALIVE_SECS", d.sse_keepalive)?,
            cache_max_bytes: config::parse("GATEWAY_CACHE_MAX_BYTES", d.cache_max_bytes)?,
            cache_max_age: positive_secs("GATEWAY_CACHE_MAX_AGE_SECS", d.cache_max_age)?,
            cookie_secure: config::switch("GATEWAY_COOKIE_SECURE", d.cookie_secure)?,
            route_prefixes: match config::var("GATEWAY_ROUTE_PREFIXES") {
                None => d.route_prefixes,
                Some(v) => RoutePrefixes::parse(&v).map_err(|reason| ConfigError::Invalid {
                    name: "GATEWAY_ROUTE_PREFIXES".to_owned(),
                    value: v.clone(),
                    reason,
                })?,
            },
            discovery_interval: positive_secs(
                "GATEWAY_DISCOVERY_INTERVAL_SECS",
                d.discovery_interval,
            )?,
            discovery_window: positive_millis("GATEWAY_DISCOVERY_WINDOW_MS", d.discovery_window)?,
            discovery_on_miss: config::millis(
                "GATEWAY_DISCOVERY_ON_MISS_MS",
                millis(d.discovery_on_miss),
            )?,
            common: d.common,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Seconds that must not be zero: a zero bucket max age means "keep forever" to
/// JetStream, and a zero keep-alive interval would spin.
fn positive_secs(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let d = config::secs(name, default.as_secs())?;
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: "0".to_owned(),
            reason: "must be at least 1".to_owned(),
        });
    }
    Ok(d)
}

/// Milliseconds that must not be zero.
fn positive_millis(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let d = config::millis(name, millis(default))?;
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: "0".to_owned(),
            reason: "must be at least 1".to_owned(),
        });
    }
    Ok(d)
}

/// Splits a comma-separated list, dropping blanks.
fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_drop_blanks() {
        assert_eq!(
            parse_list(" https://a.example , ,https://b.example,"),
            vec!["https://a.example", "https://b.example"]
        );
        assert!(parse_list(" , ").is_empty());
    }
}
