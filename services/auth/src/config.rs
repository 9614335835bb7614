//! Settings of the auth service, read from the environment.

use std::time::Duration;

use runtime::ConfigError;
use runtime::config::{self, CommonConfig};

use crate::throttle::ThrottlePolicy;

/// Everything the auth service reads from its environment.
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `NATS_URL`, `NATS_USER`, `NATS_PASSWORD` | `nats://127.0.0.1:4222` | the bus (see [`CommonConfig`]) |
/// | `HTTP_ADDR` | `127.0.0.1:8081` | `/healthz` and `/readyz` |
/// | `PROVISION` | `on` | create the `AUTH` stream at start |
/// | `SHUTDOWN_GRACE_MS` | `10000` | how long in-flight requests may take to drain |
/// | `DATABASE_URL` | `sqlite://.mesh/data/auth.db` | `sqlite://…` or `postgres://…` |
/// | `OUTBOX_RELAY` | `on` | publish outbox rows; `off` leaves them unpublished (tests) |
/// | `AUTH_ACCESS_TOKEN_TTL_SECS` | `900` | lifetime of an access token |
/// | `AUTH_REFRESH_TOKEN_TTL_SECS` | `2592000` (30 days) | lifetime of a refresh token |
/// | `AUTH_VERIFICATION_TTL_SECS` | `604800` (7 days) | lifetime of the email verification link sent at registration |
/// | `AUTH_RESET_TTL_SECS` | `1800` | lifetime of a password reset link |
/// | `AUTH_ADMIN_EMAILS` | empty | comma-separated emails that register as `admin` (case-insensitive) |
/// | `AUTH_SIGNING_KEY_PEM` | unset | an Ed25519 PKCS#8 PEM private key to sign with instead of the stored one |
/// | `AUTH_SIGNING_KEY_RELOAD_SECS` | `10` | how often a replica re-reads the active key (after `mesh-auth rotate-key`) |
/// | `AUTH_SIGNING_KEY_GRACE_SECS` | `60` | how long a replaced key stays published beyond the access-token lifetime |
/// | `AUTH_LOGIN_MAX_FAILURES` | `5` | failed logins per account per window (0: no account limit) |
/// | `AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS` | `20` | failed logins per client address per window (0: no address limit) |
/// | `AUTH_LOGIN_WINDOW_SECS` | `900` | the window failed logins are counted in |
/// | `AUTH_LOGIN_LOCKOUT_SECS` | `60` | the first lockout; each further one in a row doubles |
/// | `AUTH_LOGIN_LOCKOUT_MAX_SECS` | `900` | the longest lockout |
#[derive(Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub database_url: String,
    pub outbox_relay: bool,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// How long the verification token of a new account stays usable.
    pub verification_ttl: Duration,
    /// How long a password reset token stays usable.
    pub reset_ttl: Duration,
    /// Lowercased, trimmed.
    pub admin_emails: Vec<String>,
    /// PEM text of a PKCS#8 Ed25519 private key; `None` uses the key in the database.
    pub signing_key_pem: Option<String>,
    /// How often the active signing key is re-read (so a rotation reaches every replica).
    pub signing_key_reload: Duration,
    /// How long a replaced key stays published after the access-token lifetime (clock
    /// skew, the gateway's leeway).
    pub signing_key_grace: Duration,
    /// Brute-force limits on login.
    pub login_throttle: ThrottlePolicy,
}

/// Default `HTTP_ADDR` of the auth service.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8081";
/// Default `DATABASE_URL` of the auth service.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.mesh/data/auth.db";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let access_token_ttl = config::secs("AUTH_ACCESS_TOKEN_TTL_SECS", 900)?;
        let refresh_token_ttl = config::secs("AUTH_REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?;
        let verification_ttl = config::secs("AUTH_VERIFICATION_TTL_SECS", 7 * 24 * 3600)?;
        let reset_ttl = config::secs("AUTH_RESET_TTL_SECS", 1800)?;
        let signing_key_reload = config::secs("AUTH_SIGNING_KEY_RELOAD_SECS", 10)?;
        let d = ThrottlePolicy::default();
        let login_throttle = ThrottlePolicy {
            account_max: config::parse("AUTH_LOGIN_MAX_FAILURES", d.account_max)?,
            address_max: config::parse("AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS", d.address_max)?,
            window: config::secs("AUTH_LOGIN_WINDOW_SECS", d.window.as_secs())?,
            lockout: config::secs("AUTH_LOGIN_LOCKOUT_SECS", d.lockout.as_secs())?,
            lockout_max: config::secs("AUTH_LOGIN_LOCKOUT_MAX_SECS", d.lockout_max.as_secs())?,
        };
        for (name, ttl) in [
            ("AUTH_ACCESS_TOKEN_TTL_SECS", access_token_ttl),
            ("AUTH_REFRESH_TOKEN_TTL_SECS", refresh_token_ttl),
            ("AUTH_VERIFICATION_TTL_SECS", verification_ttl),
            ("AUTH_RESET_TTL_SECS", reset_ttl),
            ("AUTH_SIGNING_KEY_RELOAD_SECS", signing_key_reload),
            ("AUTH_LOGIN_WINDOW_SECS", login_throttle.window),
            ("AUTH_LOGIN_LOCKOUT_SECS", login_throttle.lockout),
            ("AUTH_LOGIN_LOCKOUT_MAX_SECS", login_throttle.lockout_max),
        ] {
            if ttl.is_zero() {
                return Err(ConfigError::Invalid {
                    name: name.to_owned(),
                    value: "0".to_owned(),
                    reason: "must be at least 1 second".to_owned(),
                });
            }
        }
        Ok(Config {
            common: CommonConfig::from_env(DEFAULT_HTTP_ADDR)?,
            database_url: database_url(),
            outbox_relay: config::switch("OUTBOX_RELAY", true)?,
            access_token_ttl,
            refresh_token_ttl,
            verification_ttl,
            reset_ttl,
            admin_emails: parse_admin_emails(&config::string("AUTH_ADMIN_EMAILS", "")),
            signing_key_pem: config::var("AUTH_SIGNING_KEY_PEM"),
            signing_key_reload,
            signing_key_grace: config::secs("AUTH_SIGNING_KEY_GRACE_SECS", 60)?,
            login_throttle,
        })
    }

    /// How long a key that stopped signing stays in the JWKS: until every access token
    /// it signed has expired, plus the grace.
    pub fn signing_key_keep(&self) -> Duration {
        self.access_token_ttl + self.signing_key_grace
    }

    /// True when `email` (already normalized) is listed in `AUTH_ADMIN_EMAILS`.
    pub fn is_admin_email(&self, email: &str) -> bool {
        self.admin_emails.iter().any(|e| e == email)
    }
}

/// `DATABASE_URL`, or the default SQLite file.
pub fn database_url() -> String {
    config::string("DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// Splits a comma list into normalized emails, skipping empty entries.
pub fn parse_admin_emails(list: &str) -> Vec<String> {
    list.split(',')
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty())
        .collect()
}

// Hand-written so the private signing key never reaches a log line.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("database_url", &redact_url(&self.database_url))
            .field("outbox_relay", &self.outbox_relay)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("verification_ttl", &self.verification_ttl)
            .field("reset_ttl", &self.reset_ttl)
            .field("admin_emails", &self.admin_emails)
            .field(
                "signing_key_pem",
                &self.signing_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("signing_key_reload", &self.signing_key_reload)
            .field("signing_key_grace", &self.signing_key_grace)
            .field("login_throttle", &self.login_throttle)
            .finish()
    }
}

/// The URL with any password replaced, for logs.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_emails_are_normalized() {
        assert_eq!(
            parse_admin_emails(" Ada@Example.com, ,bob@x.io,"),
            vec!["ada@example.com".to_owned(), "bob@x.io".to_owned()]
        );
        assert!(parse_admin_emails("").is_empty());
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://me:secret@db:5432/auth"),
            "postgres://me:***@db:5432/auth"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
