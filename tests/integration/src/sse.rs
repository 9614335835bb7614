//! A minimal Server-Sent Events reader for the gateway's notification stream.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::Value;

use crate::Api;

/// Path of the notification stream.
pub const STREAM_PATH: &str = "/v1/notifications/stream";

/// One event with data.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An open stream.
pub struct SseStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseStream {
    /// Opens the stream with a bearer token, or with `?ticket=` in `query`.
    pub async fn open(api: &Api, token: Option<&str>, query: &str) -> Result<Self> {
        Self::resume(api, token, query, None).await
    }

    /// Like [`SseStream::open`], resuming after `last_event_id` when given (the
    /// `Last-Event-ID` header, as `EventSource` sends it on reconnect).
    pub async fn resume(
        api: &Api,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self> {
        let mut request = api
            .http()
            .get(api.url(&format!("{STREAM_PATH}{query}")))
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(3600));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            bail!("stream answered {status}: {body}");
        }
        Ok(SseStream {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        })
    }

    /// The next event that carries data (comments and keep-alives are skipped).
    pub async fn next(&mut self, timeout: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if !event.data.is_empty() {
                    return Ok(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .context("no SSE event before the deadline")?
                .context("the stream ended")??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }

    /// The next `notification` event: its id and its JSON.
    pub async fn next_notification(&mut self, timeout: Duration) -> Result<(String, Value)> {
        loop {
            let event = self.next(timeout).await?;
            if event.event.as_deref() == Some("notification") {
                let id = event.id.context("notification without id")?;
                return Ok((id, serde_json::from_str(&event.data)?));
            }
        }
    }
}
