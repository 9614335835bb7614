//! An SMTP sink that timestamps every mail's arrival.
//!
//! Just enough SMTP for the email service's lettre client: greeting 220, 250 to
//! EHLO/HELO/MAIL/RCPT/RSET/NOOP and anything else, 354 to DATA, 250 after the lone dot,
//! 221 to QUIT. Each accepted mail becomes an [`Arrival`] (the instant its final dot was
//! read, the envelope recipients, the decoded subject and the `Message-ID`) on a channel,
//! so a scenario can match it to the request that caused it. The harness's aiosmtpd
//! writes a file per mail and would be the bottleneck at thousands of mails a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One accepted mail.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the end of its data was read.
    pub at: Instant,
    /// Envelope recipients (`RCPT TO`), lower-cased.
    pub rcpt: Vec<String>,
    /// The decoded `Subject`.
    pub subject: String,
    pub message_id: Option<String>,
}

/// The sink; stops accepting when dropped.
pub struct SmtpSink {
    port: u16,
    accepted: Arc<AtomicU64>,
    arrivals: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Arrival>>>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Listen on a free port of 127.0.0.1.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("Failed to bind the SMTP sink")?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Err(err) = session(socket, &tx, &counter).await {
                        eprintln!("bench: smtp sink session ended: {err:#}");
                    }
                });
            }
        });
        Ok(SmtpSink {
            port,
            accepted,
            arrivals: std::sync::Mutex::new(Some(rx)),
            task,
        })
    }

    /// `smtp://127.0.0.1:<port>`: the email service's `SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Mails accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The arrivals channel (once; later calls get `None`).
    pub fn take_arrivals(&self) -> Option<mpsc::UnboundedReceiver<Arrival>> {
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One SMTP connection, possibly carrying many mails (lettre pools connections).
async fn session(
    socket: TcpStream,
    tx: &mpsc::UnboundedSender<Arrival>,
    accepted: &AtomicU64,
) -> Result<()> {
    socket.set_nodelay(true)?;
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 bench-sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(256);
    let mut rcpt = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let verb = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                write
                    .write_all(b"250-bench-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await?
            }
            "MAIL" | "RSET" => {
                rcpt.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => {
                if let Some(addr) = angle_address(&text) {
                    rcpt.push(addr.to_ascii_lowercase());
                }
                write.write_all(b"250 OK\r\n").await?;
            }
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let data = read_data(&mut reader).await?;
                let at = Instant::now();
                write.write_all(b"250 OK queued\r\n").await?;
                accepted.fetch_add(1, Ordering::Relaxed);
                let (subject, message_id) = headers_of(&data);
                let _ = tx.send(Arrival {
                    at,
                    rcpt: std::mem::take(&mut rcpt),
                    subject,
                    message_id,
                });
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"250 OK\r\n").await?,
        }
    }
}

/// The mail's bytes up to the line holding a lone dot (not included).
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(4096);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            anyhow::bail!("connection closed inside DATA");
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        data.extend_from_slice(&line);
    }
}

/// `<addr>` out of `RCPT TO:<addr>`.
fn angle_address(line: &str) -> Option<String> {
    let start = line.find('<')? + 1;
    let end = start + line[start..].find('>')?;
    Some(line[start..end].trim().to_owned())
}

/// The decoded subject and the Message-ID, from the header block only.
fn headers_of(data: &[u8]) -> (String, Option<String>) {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 4);
    match mail_parser::MessageParser::new().parse_headers(&data[..end]) {
        Some(message) => (
            message.subject().unwrap_or_default().to_owned(),
            message.message_id().map(str::to_owned),
        ),
        None => (String::new(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_encoded_subjects() {
        assert_eq!(
            angle_address("RCPT TO:<Ada@Example.com>\r\n").as_deref(),
            Some("Ada@Example.com")
        );
        assert_eq!(angle_address("RCPT TO: nothing"), None);
        let mail = b"Subject: =?utf-8?b?WW91J3JlIGdvaW5nOiBiZW5jaCDinJM=?=\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n";
        let (subject, id) = headers_of(mail);
        assert_eq!(subject, "You're going: bench \u{2713}");
        assert_eq!(id.as_deref(), Some("a@b"));
    }

    #[tokio::test]
    async fn accepts_a_mail_from_a_client() -> Result<()> {
        let sink = SmtpSink::start().await?;
        let mut arrivals = sink.take_arrivals().context("arrivals")?;
        let stream = TcpStream::connect(("127.0.0.1", sink.port)).await?;
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        for command in [
            "EHLO me\r\n",
            "MAIL FROM:<a@x>\r\n",
            "RCPT TO:<B@x>\r\n",
            "DATA\r\n",
            "Subject: hi\r\nMessage-ID: <m1@x>\r\n\r\nhello\r\n.\r\n",
            "QUIT\r\n",
        ] {
            write.write_all(command.as_bytes()).await?;
        }
        let mut replies = Vec::new();
        while reader.read_line(&mut line).await? > 0 {
            replies.push(std::mem::take(&mut line));
        }
        assert!(replies.iter().any(|r| r.starts_with("354")), "{replies:?}");
        assert!(replies.last().is_some_and(|r| r.starts_with("221")));
        let arrival = arrivals.recv().await.context("one arrival")?;
        assert_eq!(arrival.rcpt, vec!["b@x".to_owned()]);
        assert_eq!(arrival.subject, "hi");
        assert_eq!(arrival.message_id.as_deref(), Some("m1@x"));
        assert_eq!(sink.accepted(), 1);
        Ok(())
    }
}
