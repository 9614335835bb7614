//! A real SMTP server for tests: aiosmtpd writing every accepted mail into a maildir.
//!
//! [`SmtpServer::start`] runs `python3 -m aiosmtpd -n -l 127.0.0.1:<port> -c
//! aiosmtpd.handlers.Mailbox <maildir>` on a free port, with `PYTHONPATH` pointing at the
//! tools folder (`$MESH_TOOLS_DIR`, else `<repo>/.tools`, where `cargo xtask tools`
//! installs aiosmtpd; installed there with pip when missing). [`SmtpServer::messages`]
//! parses what arrived with `mail-parser`. Stop it and start it again on the same port and
//! maildir to test an SMTP outage.
//!
//! ```ignore
//! let smtp = SmtpServer::start().await?;
//! // SMTP_URL = smtp.url()
//! let mails = smtp.wait_for_count(1, Duration::from_secs(10)).await?;
//! assert_eq!(mails[0].subject.as_deref(), Some("Welcome"));
//! ```

use std::ffi::OsString;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mail_parser::{MessageParser, MimeHeaders};
use tempfile::TempDir;

use crate::{
    POLL_INTERVAL, STOP_TIMEOUT, append_line, dump_log, free_port, log_stdio, poll_until,
    read_lossy, repo_root, sys, tail_lines, terminate_child,
};

/// The folder aiosmtpd is importable from: `$MESH_TOOLS_DIR`, else `<repo>/.tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("MESH_TOOLS_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join(".tools"),
    }
}

fn python() -> OsString {
    std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into())
}

/// `PYTHONPATH` with the tools folder in front of whatever was set.
fn python_path(tools: &Path) -> Result<OsString> {
    let mut paths = vec![tools.to_path_buf()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).context("Failed to build PYTHONPATH")
}

fn aiosmtpd_importable(tools: &Path) -> Result<bool> {
    let status = Command::new(python())
        .args(["-c", "import aiosmtpd"])
        .env("PYTHONPATH", python_path(tools)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("Failed to run python3 (is it installed?)")?;
    Ok(status.success())
}

/// Makes sure aiosmtpd can be imported from [`tools_dir`], installing it there with pip
/// when it cannot (what `cargo xtask tools` does).
pub fn ensure_aiosmtpd() -> Result<PathBuf> {
    let tools = tools_dir();
    if aiosmtpd_importable(&tools)? {
        return Ok(tools);
    }
    eprintln!(
        "integration: installing aiosmtpd into {} (or run `cargo xtask tools`)",
        tools.display()
    );
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&tools)
        .arg("aiosmtpd")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .context("Failed to run `python3 -m pip`")?;
    if !status.success() || !aiosmtpd_importable(&tools)? {
        bail!(
            "aiosmtpd is not importable from {} ({status}); run `cargo xtask tools`",
            tools.display()
        );
    }
    Ok(tools)
}

/// The STARTTLS server's certificate authority, certificate and credentials.
#[derive(Debug, Clone)]
struct TlsSetup {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    user: String,
    password: String,
}

/// A CA and a certificate it signed for `localhost` and `127.0.0.1`, as PEM files in
/// `dir`.
fn make_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mesh test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

/// One attachment of a received mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedAttachment {
    /// The full `Content-Type`, e.g. `text/calendar; method=REQUEST; charset=UTF-8`
    /// (parameters in the order the mail had them).
    pub content_type: String,
    /// `text/calendar`, lowercase, without parameters.
    pub mime_type: String,
    pub filename: Option<String>,
    /// Decoded bytes.
    pub bytes: Vec<u8>,
}

impl ReceivedAttachment {
    /// A `Content-Type` parameter, e.g. `method`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.content_type.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"').to_owned())
        })
    }

    /// The bytes as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// A `text/calendar` attachment read with an RFC 5545 parser.
    pub fn invitation(&self) -> Result<crate::ics::Invitation> {
        crate::ics::parse(&self.text())
    }
}

/// One mail as the SMTP server stored it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The `Message-ID` without its angle brackets, e.g. `3f2a…@mesh`.
    pub message_id: Option<String>,
    /// Addresses of `To`, lowercase.
    pub to: Vec<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    /// `List-Unsubscribe` as sent, e.g. `<http://…/v1/unsubscribe?token=…&kind=…>`.
    pub list_unsubscribe: Option<String>,
    pub list_unsubscribe_post: Option<String>,
    /// The first `text/plain` body.
    pub text: Option<String>,
    /// The first `text/html` body.
    pub html: Option<String>,
    pub attachments: Vec<ReceivedAttachment>,
    /// Every top-level header as (name, raw value), in order.
    pub headers: Vec<(String, String)>,
    /// The stored file, as aiosmtpd wrote it (with its `X-Peer`, `X-MailFrom`,
    /// `X-RcptTo` headers).
    pub raw: Vec<u8>,
    pub path: PathBuf,
}

impl ReceivedMail {
    /// Parses one stored mail.
    pub fn parse(raw: Vec<u8>, path: PathBuf) -> Result<Self> {
        let parsed = MessageParser::default()
            .parse(&raw)
            .with_context(|| format!("cannot parse the mail in {}", path.display()))?;
        let header = |name: &str| parsed.header_raw(name).map(|v| v.trim().to_owned());
        let to = parsed
            .to()
            .map(|list| {
                list.iter()
                    .filter_map(|a| a.address())
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        let from = parsed
            .from()
            .and_then(|list| list.first())
            .and_then(|a| a.address())
            .map(str::to_owned);
        let attachments = parsed
            .attachments()
            .map(|part| {
                let (content_type, mime_type) = match part.content_type() {
                    Some(ct) => {
                        let mime = match ct.subtype() {
                            Some(sub) => format!("{}/{}", ct.ctype(), sub),
                            None => ct.ctype().to_owned(),
                        }
                        .to_ascii_lowercase();
                        let mut full = mime.clone();
                        for attr in ct.attributes().unwrap_or_default() {
                            full.push_str(&format!("; {}={}", attr.name, attr.value));
                        }
                        (full, mime)
                    }
                    None => (
                        "application/octet-stream".into(),
                        "application/octet-stream".into(),
                    ),
                };
                ReceivedAttachment {
                    content_type,
                    mime_type,
                    filename: part.attachment_name().map(str::to_owned),
                    bytes: part.contents().to_vec(),
                }
            })
            .collect();
        Ok(ReceivedMail {
            message_id: parsed.message_id().map(str::to_owned),
            to,
            from,
            subject: parsed.subject().map(str::to_owned),
            list_unsubscribe: header("List-Unsubscribe"),
            list_unsubscribe_post: header("List-Unsubscribe-Post"),
            text: parsed.body_text(0).map(|t| t.into_owned()),
            html: parsed.body_html(0).map(|t| t.into_owned()),
            attachments,
            headers: parsed
                .headers_raw()
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect(),
            path,
            raw,
        })
    }

    /// The first header with this name (case-insensitive), raw.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when `address` is among the `To` addresses.
    pub fn is_to(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        self.to.contains(&address)
    }

    /// The first attachment of this MIME type (e.g. `text/calendar`).
    pub fn attachment(&self, mime_type: &str) -> Option<&ReceivedAttachment> {
        self.attachments
            .iter()
            .find(|a| a.mime_type.eq_ignore_ascii_case(mime_type))
    }
}

/// Where `mesh_smtp.py` (the test handler) lives.
fn handler_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// A private aiosmtpd on a free port that stores every mail in a maildir, and refuses
/// with a permanent 550 every recipient whose address starts with `reject`. While
/// [`SmtpServer::hold`] is on, mails wait at DATA (in flight on the client's side). Killed
/// on drop.
pub struct SmtpServer {
    port: u16,
    maildir: PathBuf,
    log: PathBuf,
    /// Exists while mails are held (see `mesh_smtp.py`).
    hold_file: PathBuf,
    /// STARTTLS and AUTH required (see [`SmtpServer::start_tls`]).
    tls: Option<TlsSetup>,
    tools: PathBuf,
    child: Option<Child>,
    // Last field: removed after the child is gone.
    _dir: TempDir,
}

impl SmtpServer {
    /// Starts aiosmtpd on a free port; returns once it greets with `220`.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Like [`Self::start`], but the server requires STARTTLS (with a certificate for
    /// `localhost` from a CA of its own, [`Self::ca_file`]) and then AUTH with `user` and
    /// `password`. Logs `AUTH OK <user>` / `AUTH FAILED <user>` and `DATA over TLS`.
    pub async fn start_tls(user: &str, password: &str) -> Result<Self> {
        Self::start_with(Some((user.to_owned(), password.to_owned()))).await
    }

    async fn start_with(credentials: Option<(String, String)>) -> Result<Self> {
        let tools = ensure_aiosmtpd()?;
        let dir = tempfile::Builder::new()
            .prefix("mesh-smtp-")
            .tempdir()
            .context("Failed to create a tempdir for aiosmtpd")?;
        let mut server = SmtpServer {
            port: free_port(),
            maildir: dir.path().join("maildir"),
            log: dir.path().join("aiosmtpd.log"),
            hold_file: dir.path().join("hold"),
            tls: match credentials {
                Some((user, password)) => {
                    let (ca, cert, key) = make_certificates(dir.path())?;
                    Some(TlsSetup {
                        ca,
                        cert,
                        key,
                        user,
                        password,
                    })
                }
                None => None,
            },
            tools,
            child: None,
            _dir: dir,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Starts the server again on the same port with the same maildir (after
    /// [`Self::stop`] or [`Self::kill`]): mails received before stay.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("aiosmtpd on port {} is still running", self.port);
        }
        append_line(
            &self.log,
            &format!(
                "===== integration: starting aiosmtpd on {} =====",
                self.port
            ),
        );
        let (stdout, stderr) = log_stdio(&self.log)?;
        let mut cmd = Command::new(python());
        match &self.tls {
            None => {
                cmd.args(["-m", "aiosmtpd", "-n", "-l"])
                    .arg(format!("127.0.0.1:{}", self.port))
                    .args(["-c", "mesh_smtp.RejectingMailbox"])
                    .arg(&self.maildir);
            }
            Some(tls) => {
                cmd.args(["-m", "mesh_smtp", "127.0.0.1"])
                    .arg(self.port.to_string())
                    .arg(&self.maildir)
                    .env("MESH_SMTP_TLS_CERT", &tls.cert)
                    .env("MESH_SMTP_TLS_KEY", &tls.key)
                    .env("MESH_SMTP_USER", &tls.user)
                    .env("MESH_SMTP_PASSWORD", &tls.password);
            }
        }
        cmd.env("PYTHONPATH", {
            let mut paths = vec![handler_dir()];
            paths.extend(std::env::split_paths(&python_path(&self.tools)?));
            std::env::join_paths(paths).context("Failed to build PYTHONPATH")?
        })
        .env("PYTHONUNBUFFERED", "1")
        .env("MESH_SMTP_HOLD_FILE", &self.hold_file)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().context("Failed to start python3 -m aiosmtpd")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "aiosmtpd exited during startup ({status}):\n{}",
                    tail_lines(&self.log_text(), 30)
                );
            }
            if self.greets() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "aiosmtpd on port {} did not greet within {timeout:?}:\n{}",
                    self.port,
                    tail_lines(&self.log_text(), 30)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// True when a connection gets the `220` greeting.
    fn greets(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 512];
        let greeted = matches!(stream.read(&mut buf), Ok(n) if n >= 3 && &buf[..3] == b"220");
        let _ = stream.write_all(b"QUIT\r\n");
        greeted
    }

    /// The `SMTP_URL`: `smtp://127.0.0.1:<port>` (plain, no authentication), or for
    /// [`Self::start_tls`] `smtp://<user>:<password>@localhost:<port>?tls=required`.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("smtp://127.0.0.1:{}", self.port),
            Some(tls) => format!(
                "smtp://{}:{}@localhost:{}?tls=required",
                tls.user, tls.password, self.port
            ),
        }
    }

    /// The CA the STARTTLS server's certificate is signed by (the `SMTP_TLS_CA_FILE`).
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The maildir the mails land in (`new/`, one file per mail).
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM and wait for the server to exit; connections are refused afterwards.
    /// Idempotent.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child, STOP_TIMEOUT, "aiosmtpd").await?;
        }
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Every mail received so far, oldest first (by delivery time, then file name).
    pub fn messages(&self) -> Result<Vec<ReceivedMail>> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let dir = self.maildir.join(sub);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
            };
            for entry in entries {
                let entry = entry?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                let modified = entry.metadata()?.modified()?;
                files.push((modified, entry.path()));
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|(_, path)| {
                let raw = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                ReceivedMail::parse(raw, path)
            })
            .collect()
    }

    /// The mails to `address`.
    pub fn messages_to(&self, address: &str) -> Result<Vec<ReceivedMail>> {
        Ok(self
            .messages()?
            .into_iter()
            .filter(|m| m.is_to(address))
            .collect())
    }

    /// Waits until at least `count` mails arrived, and returns all of them.
    pub async fn wait_for_count(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMail>> {
        poll_until(
            timeout,
            &format!("{count} mail(s) at {}", self.url()),
            || async { self.messages().ok().filter(|m| m.len() >= count) },
        )
        .await
    }

    /// Waits until a mail to `address` matching `pred` arrived, and returns it.
    pub async fn wait_for<F>(
        &self,
        address: &str,
        timeout: Duration,
        pred: F,
    ) -> Result<ReceivedMail>
    where
        F: Fn(&ReceivedMail) -> bool,
    {
        poll_until(timeout, &format!("a mail to {address}"), || async {
            self.messages_to(address)
                .ok()
                .and_then(|mails| mails.into_iter().find(|m| pred(m)))
        })
        .await
    }

    /// What aiosmtpd logged so far.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// From now on every mail waits at DATA, unanswered, until [`Self::release`]: the
    /// sender has it in flight. Each held mail is listed by [`Self::held`].
    pub fn hold(&self) -> Result<()> {
        std::fs::write(&self.hold_file, b"")
            .with_context(|| format!("cannot create {}", self.hold_file.display()))
    }

    /// Ends the hold: held mails are accepted (those whose sender is still connected).
    pub fn release(&self) -> Result<()> {
        match std::fs::remove_file(&self.hold_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.hold_file.display()))
            }
            _ => Ok(()),
        }
    }

    /// Message-IDs of the mails held so far (each time one was held).
    pub fn held(&self) -> Vec<String> {
        self.log_entries("HOLDING ")
    }

    /// Message-IDs of held mails whose sender disconnected before the hold ended: never
    /// accepted, so not delivered.
    pub fn lost(&self) -> Vec<String> {
        self.log_entries("LOST ")
    }

    fn log_entries(&self, prefix: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|id| id.trim().trim_matches(['<', '>']).to_owned())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            dump_log("aiosmtpd", &self.log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one mail by hand over a raw SMTP session.
    fn send_raw(port: u16, to: &str, body: &str) -> Result<()> {
        use std::io::{BufRead, BufReader, Write};
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        let mut expect = |code: &str| -> Result<()> {
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                if !line.starts_with(code) {
                    bail!("expected {code}, got {line:?}");
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(());
                }
            }
        };
        expect("220")?;
        for (cmd, code) in [
            ("EHLO test".to_owned(), "250"),
            ("MAIL FROM:<a@example.com>".to_owned(), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_owned(), "354"),
        ] {
            writer.write_all(format!("{cmd}\r\n").as_bytes())?;
            expect(code)?;
        }
        writer.write_all(body.as_bytes())?;
        writer.write_all(b"\r\n.\r\n")?;
        expect("250")?;
        writer.write_all(b"QUIT\r\n")?;
        Ok(())
    }

    #[tokio::test]
    async fn a_hold_keeps_mails_in_flight_and_a_dropped_sender_loses_its_mail() -> Result<()> {
        let smtp = SmtpServer::start().await?;
        let port = smtp.port();
        let mail = |id: &str| {
            format!("From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <{id}@mesh>\r\n\r\nhi")
        };
        smtp.hold()?;
        let kept = mail("kept");
        let sender = tokio::task::spawn_blocking(move || send_raw(port, "b@example.com", &kept));
        poll_until(Duration::from_secs(10), "a held mail", || async {
            (smtp.held() == ["kept@mesh"]).then_some(())
        })
        .await?;
        assert!(smtp.messages()?.is_empty(), "not accepted while held");
        assert!(!sender.is_finished(), "the sender waits for the reply");

        // A sender that goes away while its mail is held: never accepted.
        let dropped = mail("dropped");
        std::thread::spawn(move || {
            use std::io::Write;
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                for line in [
                    "EHLO t\r\n",
                    "MAIL FROM:<a@example.com>\r\n",
                    "RCPT TO:<b@example.com>\r\n",
                    "DATA\r\n",
                ] {
                    let _ = s.write_all(line.as_bytes());
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = s.write_all(format!("{dropped}\r\n.\r\n").as_bytes());
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        poll_until(Duration::from_secs(10), "the dropped mail lost", || async {
            (smtp.lost() == ["dropped@mesh"]).then_some(())
        })
        .await?;

        smtp.release()?;
        sender.await??;
        let got = smtp.wait_for_count(1, Duration::from_secs(10)).await?;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_id.as_deref(), Some("kept@mesh"));
        assert_eq!(smtp.lost(), ["dropped@mesh"]);
        Ok(())
    }

    #[tokio::test]
    async fn the_tls_server_refuses_mail_before_starttls() -> Result<()> {
        let smtp = SmtpServer::start_tls("mesh", "s3cret").await?;
        assert!(smtp.url().ends_with("?tls=required"), "{}", smtp.url());
        let ca = std::fs::read_to_string(smtp.ca_file().context("a CA")?)?;
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let err = send_raw(smtp.port(), "b@example.com", "Subject: x\r\n\r\nx")
            .expect_err("plain text is refused");
        assert!(err.to_string().contains("530"), "{err}");
        assert!(smtp.messages()?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn receives_parses_and_survives_a_restart() -> Result<()> {
        let mut smtp = SmtpServer::start().await?;
        let mail = "From: A <a@example.com>\r\nTo: B <b@example.com>\r\nSubject: Hi\r\n\
                    Message-ID: <abc@mesh>\r\nList-Unsubscribe: <http://x/u?t=1>\r\n\
                    MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n\
                    --XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n\
                    --XX\r\nContent-Type: text/calendar; method=CANCEL; charset=UTF-8\r\n\
                    Content-Disposition: attachment; filename=invite.ics\r\n\r\n\
                    BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n--XX--";
        send_raw(smtp.port(), "b@example.com", mail)?;
        let got = smtp.wait_for_count(1, Duration::from_secs(10)).await?;
        let m = &got[0];
        assert_eq!(m.message_id.as_deref(), Some("abc@mesh"));
        assert!(m.is_to("B@example.com"));
        assert_eq!(m.subject.as_deref(), Some("Hi"));
        assert_eq!(m.list_unsubscribe.as_deref(), Some("<http://x/u?t=1>"));
        assert_eq!(m.text.as_deref().map(str::trim), Some("hello"));
        let ics = m.attachment("text/calendar").context("no calendar")?;
        assert_eq!(ics.param("method").as_deref(), Some("CANCEL"));
        assert_eq!(ics.filename.as_deref(), Some("invite.ics"));
        assert!(ics.text().starts_with("BEGIN:VCALENDAR"));

        smtp.stop().await?;
        assert!(send_raw(smtp.port(), "b@example.com", mail).is_err());
        smtp.start_again().await?;
        send_raw(smtp.port(), "c@example.com", mail)?;
        let got = smtp.wait_for_count(2, Duration::from_secs(10)).await?;
        assert_eq!(got.len(), 2);
        assert_eq!(
            smtp.messages_to("b@example.com")?.len(),
            2,
            "To header, not envelope"
        );
        Ok(())
    }
}
