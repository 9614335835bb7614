//! A minimal Server-Sent Events client over a raw TCP socket.
//!
//! Thousands of these are held open at once to measure a server's memory per idle
//! stream, so each is a socket, a small buffer and a task: one `GET` with a bearer
//! token, the response head checked for 200, then the chunked body decoded and split
//! into events (`event:`, `data:`, `id:`; comments, i.e. keep-alives, skipped).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the response head may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// One event of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty means `message`).
    pub event: String,
    /// `data:` lines joined by `\n`.
    pub data: String,
    pub id: Option<String>,
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// This many data bytes left in the current chunk.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last chunk was read.
    Done,
    /// Not chunked: everything is body.
    Identity,
}

/// An open stream.
pub struct SseClient {
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    chunk: Chunk,
}

impl SseClient {
    /// `GET path` on `addr` (`host:port`) with an optional bearer token; returns once the
    /// server answered 200.
    pub async fn connect(addr: &str, path: &str, token: Option<&str>) -> Result<Self> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(addr, path, token))
            .await
            .with_context(|| format!("no response head within {CONNECT_TIMEOUT:?}"))?
    }

    async fn connect_inner(addr: &str, path: &str, token: Option<&str>) -> Result<Self> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{auth}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(i) = find(&raw, b"\r\n\r\n") {
                break i + 4;
            }
            if raw.len() > 64 * 1024 {
                bail!("response head too large");
            }
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let first = head.lines().next().unwrap_or("");
            let rest = String::from_utf8_lossy(&raw[head_end..raw.len().min(head_end + 300)]);
            bail!("{first}: {rest}");
        }
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        raw.drain(..head_end);
        raw.shrink_to(256);
        Ok(SseClient {
            stream,
            raw,
            body: Vec::new(),
            chunk: if chunked {
                Chunk::Size
            } else {
                Chunk::Identity
            },
        })
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>> {
        loop {
            self.decode()?;
            if let Some(event) = self.take_event() {
                return Ok(Some(event));
            }
            if self.chunk == Chunk::Done {
                return Ok(None);
            }
            let mut buf = [0u8; 2048];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    /// Moves what can be decoded from `raw` to `body`.
    fn decode(&mut self) -> Result<()> {
        loop {
            match self.chunk {
                Chunk::Identity => {
                    self.body.append(&mut self.raw);
                    return Ok(());
                }
                Chunk::Done => return Ok(()),
                Chunk::Size => {
                    let Some(eol) = find(&self.raw, b"\r\n") else {
                        return Ok(());
                    };
                    let line = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size {line:?}"))?;
                    self.raw.drain(..eol + 2);
                    self.chunk = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if self.raw.is_empty() {
                        return Ok(());
                    }
                    let take = left.min(self.raw.len());
                    self.body.extend_from_slice(&self.raw[..take]);
                    self.raw.drain(..take);
                    self.chunk = if take == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::DataEnd => {
                    if self.raw.len() < 2 {
                        return Ok(());
                    }
                    self.raw.drain(..2);
                    self.chunk = Chunk::Size;
                }
            }
        }
    }

    /// One complete event out of `body`, skipping comment-only blocks.
    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = find(&self.body, b"\n\n")?;
            let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
            self.body.drain(..end + 2);
            if let Some(event) = parse_block(&block) {
                return Some(event);
            }
        }
    }
}

/// An event block; `None` when it holds only comments.
fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut any = false;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        any = true;
        match field {
            "event" => event.event = value.to_owned(),
            "data" => data.push(value),
            "id" => event.id = Some(value.to_owned()),
            _ => {}
        }
    }
    event.data = data.join("\n");
    any.then_some(event)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn blocks_parse() {
        assert_eq!(parse_block(":keep-alive"), None);
        let e = parse_block("id: 7\nevent: notification\ndata: {\"a\":1}\ndata: x").unwrap();
        assert_eq!(e.event, "notification");
        assert_eq!(e.id.as_deref(), Some("7"));
        assert_eq!(e.data, "{\"a\":1}\nx");
    }

    #[tokio::test]
    async fn reads_chunked_events_split_anywhere() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await?;
            let body = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
                        c\r\n:keep-alive\n\r\n\
                        1d\r\nevent: notification\ndata: one\r\n\
                        2\r\n\n\n\r\n\
                        0\r\n\r\n";
            for piece in body.as_bytes().chunks(7) {
                s.write_all(piece).await?;
                s.flush().await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        });
        let mut client = SseClient::connect(&addr, "/s", Some("t")).await?;
        let event = client.next_event().await?.context("one event")?;
        assert_eq!(event.event, "notification");
        assert_eq!(event.data, "one");
        assert_eq!(client.next_event().await?, None);
        Ok(())
    }
}
