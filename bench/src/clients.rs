//! Many idle SSE clients, spread over child processes.
//!
//! One process may hold at most 20,000 open files on this box, so the clients live in
//! child processes (`bench sse-clients …`, a few thousand each) with their own budget.
//! A child opens its streams, reports `connected <ok> <failed> [first error]` on
//! stdout, then `received <n> <unix µs>` once every open stream got a notification
//! (with `progress <n> <unix µs>` lines meanwhile), and exits when its stdin closes.
//! Receipt times are wall-clock microseconds: child and parent share the machine's clock.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, mpsc};

use crate::sse::SseClient;

/// The SSE event name that counts as a delivered notification.
pub const NOTIFICATION_EVENT: &str = "notification";

/// Wall-clock microseconds since the epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What a client task reports to its process.
enum Report {
    Connected(Result<(), String>),
    Received(u64),
}

/// The child side: hold one stream per token in `tokens_file` open on `addr`.
pub async fn run_child(
    addr: String,
    path: String,
    tokens_file: PathBuf,
    connect_concurrency: usize,
) -> Result<()> {
    let text = std::fs::read_to_string(&tokens_file)
        .with_context(|| format!("Failed to read {}", tokens_file.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let total = tokens.len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let addr: Arc<str> = addr.into();
    let path: Arc<str> = path.into();
    for token in tokens {
        let (tx, permits, addr, path) = (tx.clone(), permits.clone(), addr.clone(), path.clone());
        tokio::spawn(async move {
            let connected = {
                let _permit = permits.acquire().await;
                SseClient::connect(&addr, &path, Some(&token)).await
            };
            let mut client = match connected {
                Ok(client) => {
                    let _ = tx.send(Report::Connected(Ok(())));
                    client
                }
                Err(err) => {
                    let _ = tx.send(Report::Connected(Err(format!("{err:#}"))));
                    return;
                }
            };
            drop(token);
            let mut told = false;
            // Keep reading so the socket stays drained; only the first notification counts.
            while let Ok(Some(event)) = client.next_event().await {
                if !told && event.event == NOTIFICATION_EVENT {
                    told = true;
                    let _ = tx.send(Report::Received(unix_micros()));
                }
            }
        });
    }
    drop(tx);

    let mut stdin = tokio::io::stdin();
    let mut stdin_buf = [0u8; 64];
    let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None::<String>);
    let (mut received, mut last_us) = (0usize, 0u64);
    let mut reported_connected = total == 0;
    if reported_connected {
        println!("connected 0 0");
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut progress_shown = 0usize;
    loop {
        tokio::select! {
            report = rx.recv() => match report {
                Some(Report::Connected(Ok(()))) => ok += 1,
                Some(Report::Connected(Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Some(Report::Received(at)) => {
                    received += 1;
                    last_us = last_us.max(at);
                    if reported_connected && received == ok {
                        println!("received {received} {last_us}");
                    }
                }
                // Every client task ended: wait for the parent to close stdin.
                None => {
                    let _ = stdin.read(&mut stdin_buf).await;
                    return Ok(());
                }
            },
            _ = tick.tick() => {
                if reported_connected && received != progress_shown {
                    progress_shown = received;
                    println!("progress {received} {last_us}");
                }
            }
            n = stdin.read(&mut stdin_buf) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
        if !reported_connected && ok + failed == total {
            reported_connected = true;
            let error = first_error
                .as_deref()
                .map(|e| format!(" {}", e.replace('\n', " ")))
                .unwrap_or_default();
            println!("connected {ok} {failed}{error}");
            if received == ok && ok > 0 {
                println!("received {received} {last_us}");
            }
        }
    }
}

/// One child process of a [`Fleet`].
struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    clients: usize,
    received: u64,
    last_us: u64,
    done: bool,
    _tokens: tempfile::NamedTempFile,
}

/// The parent side: child processes holding `tokens.len()` streams in all.
pub struct Fleet {
    members: Vec<Member>,
}

/// Connection outcome of a fleet.
#[derive(Debug, Clone, Default)]
pub struct Connected {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

/// Delivery outcome of a fleet.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Streams that got a notification.
    pub received: u64,
    /// Wall-clock µs of the last receipt.
    pub last_us: Option<u64>,
    /// Whether every open stream got one before the deadline.
    pub complete: bool,
}

impl Fleet {
    /// Spawn `ceil(tokens / per_process)` children of `exe` opening streams on `addr`.
    pub async fn spawn(
        exe: &Path,
        addr: &str,
        path: &str,
        tokens: &[String],
        per_process: usize,
        connect_concurrency: usize,
    ) -> Result<Fleet> {
        let mut members = Vec::new();
        for group in tokens.chunks(per_process.max(1)) {
            let file = tempfile::Builder::new()
                .prefix("bench-tokens-")
                .tempfile()
                .context("Failed to create a tokens file")?;
            std::fs::write(file.path(), group.join("\n"))?;
            let mut child = Command::new(exe)
                .arg("sse-clients")
                .arg("--addr")
                .arg(addr)
                .arg("--path")
                .arg(path)
                .arg("--tokens")
                .arg(file.path())
                .arg("--connect-concurrency")
                .arg(connect_concurrency.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("Failed to start {} sse-clients", exe.display()))?;
            let stdout = child.stdout.take().context("child stdout")?;
            members.push(Member {
                stdin: child.stdin.take(),
                child,
                lines: BufReader::new(stdout).lines(),
                clients: group.len(),
                received: 0,
                last_us: 0,
                done: false,
                _tokens: file,
            });
        }
        Ok(Fleet { members })
    }

    /// Number of child processes.
    pub fn processes(&self) -> usize {
        self.members.len()
    }

    /// Waits until every child tried all its connections.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<Connected> {
        let deadline = Instant::now() + timeout;
        let mut out = Connected::default();
        for member in &mut self.members {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = match tokio::time::timeout(left, member.lines.next_line()).await {
                    Ok(line) => line?,
                    Err(_) => bail!(
                        "sse clients: {} streams not all attempted within {timeout:?}",
                        member.clients
                    ),
                };
                let Some(line) = line else {
                    bail!("an sse-clients process exited before connecting");
                };
                let mut words = line.splitn(4, ' ');
                if words.next() == Some("connected") {
                    out.ok += words
                        .next()
                        .and_then(|w| w.parse::<u64>().ok())
                        .unwrap_or(0);
                    out.failed += words
                        .next()
                        .and_then(|w| w.parse::<u64>().ok())
                        .unwrap_or(0);
                    if out.first_error.is_none() {
                        out.first_error = words.next().map(str::to_owned);
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Waits until every open stream got a notification, or `timeout`.
    pub async fn wait_received(&mut self, timeout: Duration) -> Result<Received> {
        let deadline = Instant::now() + timeout;
        for member in &mut self.members {
            while !member.done {
                let left = deadline.saturating_duration_since(Instant::now());
                // After the deadline, only pick up what is already buffered.
                let wait = left.max(Duration::from_millis(20));
                let Ok(line) = tokio::time::timeout(wait, member.lines.next_line()).await else {
                    break;
                };
                let Some(line) = line? else {
                    break;
                };
                let mut words = line.split(' ');
                let kind = words.next();
                let n = words.next().and_then(|w| w.parse::<u64>().ok());
                let at = words.next().and_then(|w| w.parse::<u64>().ok());
                if let (Some("received" | "progress"), Some(n), Some(at)) = (kind, n, at) {
                    member.received = n;
                    member.last_us = at;
                    member.done = kind == Some("received");
                }
            }
        }
        let received = self.members.iter().map(|m| m.received).sum();
        let last_us = self
            .members
            .iter()
            .filter(|m| m.received > 0)
            .map(|m| m.last_us)
            .max();
        Ok(Received {
            received,
            last_us,
            complete: self.members.iter().all(|m| m.done),
        })
    }

    /// Close every child's stdin and reap it (killed if it does not exit promptly).
    pub async fn stop(mut self) {
        for member in &mut self.members {
            member.stdin.take();
        }
        for member in &mut self.members {
            if tokio::time::timeout(Duration::from_secs(5), member.child.wait())
                .await
                .is_err()
            {
                let _ = member.child.kill().await;
            }
        }
    }
}
