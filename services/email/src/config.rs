//! The email service's settings, read from the environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HTTP_ADDR` | `127.0.0.1:8083` | health listener |
//! | `DATABASE_URL` | `sqlite://.mesh/data/email.db` | `sqlite://…` or `postgres://…` |
//! | `SMTP_URL` | unset | `smtp://user:pass@host:port` (plain), `smtp://…?tls=required` (STARTTLS), `smtps://…` (implicit TLS); unset writes `.eml` files instead |
//! | `SMTP_TIMEOUT_MS` | `10000` | SMTP connect/command timeout |
//! | `SMTP_TLS_CA_FILE` | unset | PEM certificates trusted for the SMTP server's certificate besides the built-in roots (a private relay's CA); needs a TLS `SMTP_URL` |
//! | `EMAIL_FILE_DIR` | `.mesh/mail` | folder of the file transport |
//! | `EMAIL_FROM` | `Mesh <no-reply@mesh.localhost>` | sender |
//! | `PUBLIC_BASE_URL` | `http://127.0.0.1:8080` | base of every link in a mail |
//! | `EMAIL_MAX_EVENT_AGE_SECS` | `86400` | older events update read models but send no mail |
//! | `EMAIL_CONCURRENCY` | `16` | messages handled at once per consumer and replica |
//! | `EMAIL_MAX_DELIVER`, `EMAIL_BACKOFF_MS` | `8`, `1000,5000,30000,120000,600000` | retry schedule ([`RetryPolicy::from_env`]) |
//!
//! Plus the common `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `PROVISION`,
//! `SHUTDOWN_GRACE_MS`.

use std::path::PathBuf;
use std::time::Duration;

use runtime::ConfigError;
use runtime::config::{self, CommonConfig};
use runtime::consumer::RetryPolicy;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8083";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.mesh/data/email.db";
pub const DEFAULT_FROM: &str = "Mesh <no-reply@mesh.localhost>";
pub const DEFAULT_PUBLIC_BASE_URL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_FILE_DIR: &str = ".mesh/mail";
/// Unacknowledged messages per durable, over all replicas.
pub const MAX_ACK_PENDING: i64 = 1000;

/// Everything the email service needs to start.
#[derive(Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub database_url: String,
    /// `None`: the file transport.
    pub smtp_url: Option<String>,
    pub smtp_timeout: Duration,
    /// `SMTP_TLS_CA_FILE`.
    pub smtp_tls_ca: Option<PathBuf>,
    pub file_dir: PathBuf,
    pub from: String,
    pub public_base_url: String,
    pub max_event_age: Duration,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub max_ack_pending: i64,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_env(DEFAULT_HTTP_ADDR)?,
            database_url: config::string("DATABASE_URL", DEFAULT_DATABASE_URL),
            smtp_url: config::var("SMTP_URL"),
            smtp_timeout: config::millis("SMTP_TIMEOUT_MS", 10_000)?,
            smtp_tls_ca: config::var("SMTP_TLS_CA_FILE").map(PathBuf::from),
            file_dir: PathBuf::from(config::string("EMAIL_FILE_DIR", DEFAULT_FILE_DIR)),
            from: config::string("EMAIL_FROM", DEFAULT_FROM),
            public_base_url: config::string("PUBLIC_BASE_URL", DEFAULT_PUBLIC_BASE_URL),
            max_event_age: config::secs("EMAIL_MAX_EVENT_AGE_SECS", 86_400)?,
            concurrency: config::parse("EMAIL_CONCURRENCY", 16usize)?.max(1),
            retry: RetryPolicy::from_env("EMAIL")?,
            max_ack_pending: MAX_ACK_PENDING,
        })
    }
}

impl std::fmt::Debug for Config {
    // Hand-written so the SMTP password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field(
                "database_url",
                &crate::transport::mask_password(&self.database_url),
            )
            .field(
                "smtp_url",
                &self
                    .smtp_url
                    .as_deref()
                    .map(crate::transport::mask_password),
            )
            .field("smtp_timeout", &self.smtp_timeout)
            .field("smtp_tls_ca", &self.smtp_tls_ca)
            .field("file_dir", &self.file_dir)
            .field("from", &self.from)
            .field("public_base_url", &self.public_base_url)
            .field("max_event_age", &self.max_event_age)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("max_ack_pending", &self.max_ack_pending)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_smtp_password() {
        let config = Config {
            common: CommonConfig {
                nats_url: "nats://127.0.0.1:4222".into(),
                nats_user: None,
                nats_password: None,
                http_addr: "127.0.0.1:0".into(),
                provision: true,
                shutdown_grace: Duration::from_secs(1),
            },
            database_url: "postgres://u:dbsecret@h/db".into(),
            smtp_url: Some("smtp://u:smtpsecret@h:25".into()),
            smtp_timeout: Duration::from_secs(1),
            smtp_tls_ca: None,
            file_dir: PathBuf::from("x"),
            from: DEFAULT_FROM.into(),
            public_base_url: DEFAULT_PUBLIC_BASE_URL.into(),
            max_event_age: Duration::from_secs(1),
            concurrency: 1,
            retry: RetryPolicy {
                max_deliver: 3,
                backoff: vec![Duration::from_millis(100)],
            },
            max_ack_pending: MAX_ACK_PENDING,
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("smtpsecret") && !text.contains("dbsecret"),
            "{text}"
        );
    }
}
