//! SMTP connections of the email service's own making, for `smtp://` servers (plain, or
//! upgraded with STARTTLS).
//!
//! lettre's pooled transport opens its sockets with Nagle's algorithm on and writes a
//! mail's data and its closing `.` line in two writes. The second then waits until the
//! server acknowledges the first, and the server delays that acknowledgement (Linux:
//! 40 ms) because it has nothing to answer before the closing line: every mail costs
//! 40 ms of idle wire, which capped one connection at ~25 mails/s. Here the socket is
//! opened with `TCP_NODELAY`, and lettre's connection (`AsyncSmtpConnection`) speaks
//! SMTP over it. Connections are kept for reuse; one idle for a while is checked with
//! `NOOP` before it carries a mail, and one idle too long is closed.
//!
//! `smtps://` (TLS from the first byte) stays with lettre's transport: its connection
//! can only be built over a plain stream.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

/// Connections kept open for reuse.
const MAX_IDLE: usize = 32;
/// A connection idle for longer is checked with `NOOP` before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(5);
/// A connection idle for longer is closed (servers drop idle clients after minutes).
const MAX_IDLE_TIME: Duration = Duration::from_secs(60);

/// STARTTLS, as `SMTP_URL` asks.
#[derive(Clone)]
pub enum StartTls {
    Off,
    Required(TlsParameters),
    /// When the server offers it.
    Opportunistic(TlsParameters),
}

/// Why a mail did not get through this pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("cannot connect to the SMTP server: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the SMTP server did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where and how to connect.
pub struct SmtpPool {
    host: String,
    port: u16,
    tls: StartTls,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl SmtpPool {
    pub fn new(
        host: String,
        port: u16,
        tls: StartTls,
        credentials: Option<Credentials>,
        hello: ClientId,
        timeout: Duration,
    ) -> Self {
        SmtpPool {
            host,
            port,
            tls,
            credentials,
            hello,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(AsyncSmtpConnection, Instant)>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sends one mail; the connection goes back to the pool unless it broke.
    pub async fn send(&self, envelope: &Envelope, mail: &[u8]) -> Result<(), PoolError> {
        let mut connection = self.checkout().await?;
        let outcome = tokio::time::timeout(self.timeout, connection.send(envelope, mail)).await;
        match outcome {
            Ok(Ok(_)) if !connection.has_broken() => {
                let mut idle = self.idle();
                if idle.len() < MAX_IDLE {
                    idle.push((connection, Instant::now()));
                }
                Ok(())
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                // A refused mail leaves the session usable; anything else may not have.
                if e.is_permanent() || e.is_transient() {
                    let mut idle = self.idle();
                    if idle.len() < MAX_IDLE && !connection.has_broken() {
                        idle.push((connection, Instant::now()));
                    }
                }
                Err(e.into())
            }
            Err(_) => Err(PoolError::Timeout(self.timeout)),
        }
    }

    /// A kept connection that still works, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, PoolError> {
        loop {
            let kept = self.idle().pop();
            let Some((mut connection, since)) = kept else {
                break;
            };
            let idle_for = since.elapsed();
            if idle_for > MAX_IDLE_TIME {
                tokio::spawn(async move {
                    let _ = connection.quit().await;
                });
                continue;
            }
            if idle_for <= CHECK_AFTER {
                return Ok(connection);
            }
            let alive = tokio::time::timeout(self.timeout, connection.test_connected()).await;
            if matches!(alive, Ok(true)) {
                return Ok(connection);
            }
        }
        tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| PoolError::Timeout(self.timeout))?
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, PoolError> {
        let socket = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(PoolError::Connect)?;
        socket.set_nodelay(true).map_err(PoolError::Connect)?;
        let mut connection =
            AsyncSmtpConnection::connect_with_transport(Box::new(socket), &self.hello).await?;
        match &self.tls {
            StartTls::Off => {}
            StartTls::Required(parameters) => {
                connection.starttls(parameters.clone(), &self.hello).await?;
            }
            StartTls::Opportunistic(parameters) => {
                if connection.can_starttls() {
                    connection.starttls(parameters.clone(), &self.hello).await?;
                }
            }
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(connection)
    }
}
