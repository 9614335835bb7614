//! Where mails go: an SMTP server (`SMTP_URL`), or `.eml` files in a folder (the
//! embedded default, so a local mesh needs no mail server and a developer can open
//! what would have been sent).
//!
//! SMTP failures are sorted for the consumer loop: a permanent reply (5xx) will not
//! change on retry; anything else (connection refused, timeout, 4xx, TLS trouble) may.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use lettre::transport::file::AsyncFileTransport;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncTransport, Message, Tokio1Executor};

use crate::smtp_pool::{PoolError, SmtpPool, StartTls};

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("invalid SMTP_URL {url}: {source}")]
    Url {
        /// With the password masked.
        url: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("invalid SMTP_URL {url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("SMTP_TLS_CA_FILE {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("cannot create the mail folder {path}: {source}")]
    Folder {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why one mail was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("SMTP: {0}")]
    Direct(#[from] PoolError),
    #[error("cannot write the mail file: {0}")]
    File(#[from] lettre::transport::file::Error),
}

impl SendError {
    /// True for a permanent SMTP reply (5xx): retrying the same mail cannot succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Smtp(e) | SendError::Direct(PoolError::Smtp(e)) => e.is_permanent(),
            SendError::Direct(_) | SendError::File(_) => false,
        }
    }

    /// The failure's kind, the `kind` label of `mesh_email_send_failures_total`:
    /// `permanent` (5xx), `transient` (4xx), `timeout`, `tls`, `connection` (anything
    /// else on the way to the server) or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::Smtp(e) | SendError::Direct(PoolError::Smtp(e)) => smtp_kind(e),
            SendError::Direct(PoolError::Timeout(_)) => "timeout",
            SendError::Direct(PoolError::Connect(_)) => "connection",
            SendError::File(_) => "file",
        }
    }
}

fn smtp_kind(e: &lettre::transport::smtp::Error) -> &'static str {
    if e.is_permanent() {
        "permanent"
    } else if e.is_transient() {
        "transient"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_tls() {
        "tls"
    } else {
        "connection"
    }
}

/// The configured way out.
#[derive(Clone)]
pub enum Mailer {
    /// `smtp://`: connections of our own (see [`crate::smtp_pool`]).
    Direct {
        pool: Arc<SmtpPool>,
        /// For logs, password masked.
        url: String,
    },
    /// `smtps://`: lettre's pooled transport.
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// For logs, password masked.
        url: String,
    },
    File {
        transport: AsyncFileTransport<Tokio1Executor>,
        dir: PathBuf,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mailer {
    /// SMTP when `smtp_url` is set (`smtp://user:pass@host:port` plain,
    /// `smtp://…?tls=required` STARTTLS, `smtps://…` implicit TLS), else files in
    /// `file_dir`. `tls_ca`: a PEM file of certificates trusted for the server's
    /// certificate besides the built-in roots (a private relay's own CA).
    pub fn new(
        smtp_url: Option<&str>,
        timeout: Duration,
        file_dir: &Path,
        tls_ca: Option<&Path>,
    ) -> Result<Self, MailerError> {
        match smtp_url {
            Some(url) => {
                let masked = mask_password(url);
                let url_error = |source| MailerError::Url {
                    url: masked.clone(),
                    source,
                };
                // lettre checks the URL (scheme, TLS parameter, credentials) either way.
                let mut builder =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(url_error)?;
                let tls = match tls_ca {
                    Some(path) => Some(tls_trusting(url, path)?),
                    None => None,
                };
                if let Some(pool) = direct_pool(url, tls.clone(), timeout, &masked)? {
                    return Ok(Mailer::Direct {
                        pool: Arc::new(pool),
                        url: masked,
                    }
                    .with_metrics());
                }
                if let Some(tls) = tls {
                    builder = builder.tls(tls);
                }
                let transport = builder.timeout(Some(timeout)).build();
                Ok(Mailer::Smtp {
                    transport,
                    url: masked,
                }
                .with_metrics())
            }
            None => {
                std::fs::create_dir_all(file_dir).map_err(|source| MailerError::Folder {
                    path: file_dir.display().to_string(),
                    source,
                })?;
                Ok(Mailer::File {
                    transport: AsyncFileTransport::<Tokio1Executor>::new(file_dir),
                    dir: file_dir.to_path_buf(),
                }
                .with_metrics())
            }
        }
    }

    /// `smtp smtp://127.0.0.1:2525` or `files in .mesh/mail`.
    pub fn describe(&self) -> String {
        match self {
            Mailer::Smtp { url, .. } | Mailer::Direct { url, .. } => format!("smtp {url}"),
            Mailer::File { dir, .. } => format!("files in {}", dir.display()),
        }
    }

    /// The mail counters exist at 0 from the start, so rates and alerts over them are
    /// defined before the first mail.
    fn with_metrics(self) -> Self {
        use runtime::telemetry::names;
        let transport = self.transport_label();
        metrics::counter!(names::EMAIL_SENT, "transport" => transport).absolute(0);
        let kinds: &[&'static str] = match self {
            Mailer::Smtp { .. } | Mailer::Direct { .. } => {
                &["permanent", "transient", "timeout", "tls", "connection"]
            }
            Mailer::File { .. } => &["file"],
        };
        for kind in kinds {
            metrics::counter!(names::EMAIL_SEND_FAILURES, "transport" => transport, "kind" => *kind)
                .absolute(0);
        }
        self
    }

    /// The `transport` label of the mail metrics.
    fn transport_label(&self) -> &'static str {
        match self {
            Mailer::Smtp { .. } | Mailer::Direct { .. } => "smtp",
            Mailer::File { .. } => "file",
        }
    }

    /// Hands one mail over (timed and counted, see `runtime::telemetry::names`).
    /// Returns the file written by the file transport.
    pub async fn send(&self, message: Message) -> Result<Option<PathBuf>, SendError> {
        use runtime::telemetry::names;
        let transport = self.transport_label();
        let started = std::time::Instant::now();
        let result = self.hand_over(message).await;
        metrics::histogram!(names::EMAIL_SEND_DURATION, "transport" => transport)
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics::counter!(names::EMAIL_SENT, "transport" => transport).increment(1),
            Err(e) => metrics::counter!(
                names::EMAIL_SEND_FAILURES,
                "transport" => transport,
                "kind" => e.kind(),
            )
            .increment(1),
        }
        result
    }

    async fn hand_over(&self, message: Message) -> Result<Option<PathBuf>, SendError> {
        match self {
            Mailer::Direct { pool, .. } => {
                pool.send(message.envelope(), &message.formatted()).await?;
                Ok(None)
            }
            Mailer::Smtp { transport, .. } => {
                transport.send(message).await?;
                Ok(None)
            }
            Mailer::File { transport, dir } => {
                let id = transport.send(message).await?;
                Ok(Some(dir.join(format!("{id}.eml"))))
            }
        }
    }
}

/// For an `smtp://` URL (already checked by lettre), the pool speaking to it; `None`
/// for `smtps://`. `tls`: the STARTTLS parameters with a trusted CA, if one is set.
fn direct_pool(
    url: &str,
    tls: Option<Tls>,
    timeout: Duration,
    masked: &str,
) -> Result<Option<SmtpPool>, MailerError> {
    let invalid = |reason: String| MailerError::Invalid {
        url: masked.to_owned(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if parsed.scheme() != "smtp" {
        return Ok(None);
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| invalid("no host".into()))?
        .to_owned();
    let tls_param = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let plain_parameters =
        || TlsParameters::new(host.clone()).map_err(|e| invalid(format!("TLS parameters: {e}")));
    // The same defaults as lettre's: port 25 plain, 587 (submission) with STARTTLS.
    let (start_tls, default_port) = match (tls_param.as_deref(), tls) {
        (None, _) => (StartTls::Off, 25),
        (Some("required"), Some(Tls::Required(p))) => (StartTls::Required(p), 587),
        (Some("required"), _) => (StartTls::Required(plain_parameters()?), 587),
        (Some("opportunistic"), Some(Tls::Opportunistic(p))) => (StartTls::Opportunistic(p), 587),
        (Some("opportunistic"), _) => (StartTls::Opportunistic(plain_parameters()?), 587),
        (Some(other), _) => return Err(invalid(format!("unknown tls={other}"))),
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|e| invalid(format!("credentials: {e}")))
    };
    let credentials = match parsed.password() {
        Some(password) => Some(Credentials::new(
            decode(parsed.username())?,
            decode(password)?,
        )),
        None => None,
    };
    let hello = match parsed.path().trim_matches('/') {
        "" => ClientId::default(),
        name => ClientId::Domain(name.to_owned()),
    };
    Ok(Some(SmtpPool::new(
        host,
        parsed.port().unwrap_or(default_port),
        start_tls,
        credentials,
        hello,
        timeout,
    )))
}

/// The TLS mode `url` asks for, trusting the certificates in `ca_file` as well.
fn tls_trusting(url: &str, ca_file: &Path) -> Result<Tls, MailerError> {
    let ca_error = |reason: String| MailerError::Ca {
        path: ca_file.display().to_string(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| ca_error(format!("SMTP_URL: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| ca_error("SMTP_URL has no host".into()))?
        .to_owned();
    let tls_param = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let pem = std::fs::read(ca_file).map_err(|e| ca_error(e.to_string()))?;
    // lettre accepts a file without any certificate (and then trusts nothing more).
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ca_error("holds no PEM certificate".into()));
    }
    let certificate = Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
    let parameters = TlsParameters::builder(host)
        .add_root_certificate(certificate)
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
    match (parsed.scheme(), tls_param.as_deref()) {
        ("smtps", _) => Ok(Tls::Wrapper(parameters)),
        ("smtp", Some("required")) => Ok(Tls::Required(parameters)),
        ("smtp", Some("opportunistic")) => Ok(Tls::Opportunistic(parameters)),
        _ => Err(ca_error(
            "set, but SMTP_URL uses no TLS (`?tls=required` or `smtps://`)".into(),
        )),
    }
}

/// The URL with its password replaced by `***`, for logs and errors.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &url[scheme_end + at..]
                ),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("smtp://user:secret@127.0.0.1:2525?tls=required"),
            "smtp://user:***@127.0.0.1:2525?tls=required"
        );
        assert_eq!(
            mask_password("smtp://127.0.0.1:2525"),
            "smtp://127.0.0.1:2525"
        );
        assert_eq!(mask_password("smtps://u@h"), "smtps://u@h");
    }

    // The pooled SMTP transport spawns its reaper task: it needs a runtime.
    #[tokio::test]
    async fn urls_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(1);
        assert!(Mailer::new(Some("smtp://127.0.0.1:2525"), t, dir.path(), None).is_ok());
        assert!(Mailer::new(Some("smtp://h:25?tls=required"), t, dir.path(), None).is_ok());
        assert!(Mailer::new(Some("smtps://u:p@h"), t, dir.path(), None).is_ok());
        let err = Mailer::new(Some("http://u:pw@h"), t, dir.path(), None).unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
        // A CA file: readable PEM, and only with a TLS URL.
        let missing = dir.path().join("missing.pem");
        let err =
            Mailer::new(Some("smtp://h?tls=required"), t, dir.path(), Some(&missing)).unwrap_err();
        assert!(err.to_string().contains("SMTP_TLS_CA_FILE"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        assert!(Mailer::new(Some("smtp://h?tls=required"), t, dir.path(), Some(&garbage)).is_err());
    }

    #[tokio::test]
    async fn the_file_transport_writes_eml_files() {
        let dir = tempfile::tempdir().unwrap();
        let mailer =
            Mailer::new(None, Duration::from_secs(1), &dir.path().join("mail"), None).unwrap();
        let message = Message::builder()
            .from("a@example.com".parse().unwrap())
            .to("b@example.com".parse().unwrap())
            .subject("hi")
            .body("body".to_owned())
            .unwrap();
        let path = mailer.send(message).await.unwrap().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("Subject: hi"), "{text}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("smtp://127.0.0.1:{port}");
        let mailer = Mailer::new(Some(&url), Duration::from_secs(2), dir.path(), None).unwrap();
        let message = Message::builder()
            .from("a@example.com".parse().unwrap())
            .to("b@example.com".parse().unwrap())
            .subject("hi")
            .body("body".to_owned())
            .unwrap();
        let err = mailer.send(message).await.unwrap_err();
        assert!(!err.is_permanent(), "{err}");
        assert_eq!(err.kind(), "connection", "{err}");
    }
}
