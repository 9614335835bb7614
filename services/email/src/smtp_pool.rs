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
            // lettre aborts the session on any error (even a refused recipient): the
            // connection is not kept.
            Ok(Err(e)) => Err(e.into()),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use lettre::Address;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A minimal SMTP server counting connections and accepted mails.
    async fn server(connections: Arc<AtomicUsize>, mails: Arc<AtomicUsize>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let mails = mails.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 test\r\n").await.ok()?;
                    let mut in_data = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply: &[u8] = if in_data {
                            if line != "." {
                                continue;
                            }
                            in_data = false;
                            mails.fetch_add(1, Ordering::SeqCst);
                            b"250 queued\r\n"
                        } else if line.starts_with("EHLO") {
                            b"250 test\r\n"
                        } else if line.starts_with("DATA") {
                            in_data = true;
                            b"354 go on\r\n"
                        } else if line.starts_with("QUIT") {
                            b"221 bye\r\n"
                        } else {
                            b"250 OK\r\n"
                        };
                        write.write_all(reply).await.ok()?;
                    }
                    Some(())
                });
            }
        });
        port
    }

    /// A pool of plain-SMTP connections to the local `port`.
    fn plain_pool(port: u16) -> SmtpPool {
        SmtpPool::new(
            "127.0.0.1".into(),
            port,
            StartTls::Off,
            None,
            ClientId::Domain("test".into()),
            Duration::from_secs(5),
        )
    }

    fn envelope() -> Envelope {
        let from: Address = "a@example.com".parse().expect("address");
        let to: Address = "b@example.com".parse().expect("address");
        Envelope::new(Some(from), vec![to]).expect("envelope")
    }

    #[tokio::test]
    async fn one_connection_carries_mail_after_mail() {
        let (connections, mails) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let pool = plain_pool(server(connections.clone(), mails.clone()).await);
        let envelope = envelope();
        for _ in 0..3 {
            pool.send(&envelope, b"Subject: hi\r\n\r\nhello\r\n")
                .await
                .expect("sent");
        }
        assert_eq!(mails.load(Ordering::SeqCst), 3);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the connection was reused"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_connection_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let err = plain_pool(port)
            .send(&envelope(), b"x")
            .await
            .expect_err("no server");
        assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
    }
}
