//! The live notification stream: `GET /v1/notifications/stream` as Server-Sent Events,
//! and `POST /v1/notifications/stream/ticket` for browsers. Both are answered by the
//! gateway itself, not forwarded.
//!
//! Push publishes each new notification on the core-NATS subject
//! `push.live.<user>`; every gateway replica holding a stream for that user has its own
//! subscription there, so all of them get it. A stream:
//!
//! 1. subscribes to the user's live subject *first* and makes sure the server has the
//!    subscription before answering (a round trip on the same connection), so nothing
//!    published after the response headers is lost;
//! 2. then, when the client sent `Last-Event-ID`, asks push for what it missed
//!    (`svc.push.v1.notifications.since`, oldest first, page by page);
//! 3. then relays the live subscription.
//!
//! Notification ids are UUIDv7, so ordered: a notification whose id is not above the last
//! one sent is skipped, which removes the overlap between the backlog and what the
//! subscription buffered meanwhile. If push does not answer the backlog request the
//! stream still opens (live only) with an `event: warning`.
//!
//! Memory per open stream is one NATS subscription, one keep-alive timer and a few
//! words of state; nothing per message is proportional to the number of streams. Every
//! stream ends when the gateway shuts down, so graceful shutdown never waits on them,
//! and after a NATS reconnect, so the client resumes with `Last-Event-ID` and gets what
//! was published while the connection was down.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, Subscriber};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use contracts::api::{Notification, NotificationsSince};
use contracts::rpc::{Caller, RpcReply, RpcRequest};
use contracts::subjects::{headers as mesh_headers, push};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;
use crate::proxy::{self, Gateway};
use crate::ratelimit::RateKey;
use crate::routes::AuthRule;

/// Path of the stream.
pub const STREAM_PATH: &str = "/v1/notifications/stream";
/// Path of the ticket route.
pub const TICKET_PATH: &str = "/v1/notifications/stream/ticket";
/// Notifications asked for per backlog request.
pub const BACKLOG_PAGE: u32 = 500;
/// The SSE event name of a notification.
pub const NOTIFICATION_EVENT: &str = "notification";
/// The SSE event name of a notice about the stream itself.
pub const WARNING_EVENT: &str = "warning";

/// How often the NATS connection is checked for a reconnect.
pub const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// Settings of the notification streams, and what ends them.
#[derive(Debug)]
pub struct StreamOptions {
    /// How often an idle stream gets a keep-alive comment.
    pub keepalive: Duration,
    /// Cancelled when the gateway shuts down: every open stream then ends.
    pub shutdown: CancellationToken,
    /// Ends the streams opened on the current NATS connection (a child of `shutdown`);
    /// replaced at every reconnect, see [`watch_reconnects`].
    generation: std::sync::Mutex<CancellationToken>,
}

impl StreamOptions {
    pub fn new(keepalive: Duration) -> Self {
        let shutdown = CancellationToken::new();
        StreamOptions {
            keepalive,
            generation: std::sync::Mutex::new(shutdown.child_token()),
            shutdown,
        }
    }

    /// The token a stream opened now ends with.
    fn current(&self) -> CancellationToken {
        match self.generation.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Ends every stream opened so far; later ones get a fresh token.
    fn end_generation(&self) {
        let fresh = self.shutdown.child_token();
        let old = match self.generation.lock() {
            Ok(mut g) => std::mem::replace(&mut *g, fresh),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), fresh),
        };
        old.cancel();
    }
}

/// Ends every open stream after the NATS connection was re-established.
///
/// Core NATS does not keep messages for a disconnected subscriber: what push published
/// during the gap never reaches the open streams. Ending them makes `EventSource`
/// reconnect with `Last-Event-ID`, and the backlog request fills the gap. The
/// connection counter catches a reconnect however short the gap was.
pub async fn watch_reconnects(gateway: Arc<Gateway>, cancel: CancellationToken) {
    let stats = gateway.client.statistics();
    let mut seen = stats.connects.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_CHECK) => {}
        }
        let connects = stats.connects.load(Ordering::Relaxed);
        if connects != seen {
            // The first connect (0 -> 1, in the background after start) is no reconnect:
            // streams opened on it have missed nothing.
            let reconnected = seen > 0 || connects > 1;
            seen = connects;
            if reconnected {
                tracing::info!("NATS reconnected: ending open notification streams");
                gateway.streams.end_generation();
            }
        }
    }
}

/// `POST /v1/notifications/stream/ticket`.
pub async fn issue_ticket(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    record_route(&axum::http::Method::POST, TICKET_PATH);
    let (parts, _) = request.into_parts();
    match gateway.issue_ticket(&parts).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// `GET /v1/notifications/stream`.
pub async fn open(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    record_route(&axum::http::Method::GET, STREAM_PATH);
    let (parts, _) = request.into_parts();
    match gateway.open_stream(&parts).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

pub(crate) fn record_route(method: &axum::http::Method, path: &'static str) {
    let span = tracing::Span::current();
    span.record("http.route", path);
    span.record("otel.name", format!("{method} {path}"));
}

/// The authenticated caller of a `User` route.
async fn bearer_caller(gateway: &Gateway, headers: &HeaderMap) -> Result<Caller, ApiError> {
    gateway
        .keys
        .authorize(AuthRule::User, headers)
        .await?
        .ok_or(ApiError::Unauthorized("missing bearer token"))
}

/// Where a reconnecting client left off: the `Last-Event-ID` header (what
/// `EventSource` sends), else the `last_event_id` query parameter; empty means none.
fn resume_point(headers: &HeaderMap, query_value: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| bad_last_event_id())?),
        None => None,
    };
    match header.or(query_value).map(str::trim) {
        None | Some("") => Ok(None),
        Some(id) => Uuid::parse_str(id)
            .map(Some)
            .map_err(|_| bad_last_event_id()),
    }
}

fn bad_last_event_id() -> ApiError {
    ApiError::BadRequest("Last-Event-ID must be the id (a UUID) of a notification".into())
}

impl Gateway {
    async fn issue_ticket(&self, parts: &Parts) -> Result<Response, ApiError> {
        let caller = bearer_caller(self, &parts.headers).await?;
        self.limits.check(RateKey::User(caller.user_id))?;
        let ticket = self.tickets.issue(&caller).await?;
        let body = serde_json::to_vec(&ticket)
            .map_err(|e| ApiError::internal("cannot encode the ticket", e))?;
        Ok((
            StatusCode::CREATED,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                // A secret: no cache may keep it.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response())
    }

    async fn open_stream(&self, parts: &Parts) -> Result<Response, ApiError> {
        let query = proxy::parse_query(parts)?;
        // Syntax first: a malformed request must not spend a ticket.
        let resume = resume_point(
            &parts.headers,
            query.get("last_event_id").map(String::as_str),
        )?;
        // A bearer token wins; the ticket is looked at only without one.
        let caller = match query.get("ticket") {
            Some(ticket) if !parts.headers.contains_key(header::AUTHORIZATION) => {
                self.tickets.redeem(ticket).await?
            }
            _ => bearer_caller(self, &parts.headers).await?,
        };
        self.limits.check(RateKey::User(caller.user_id))?;
        if !runtime::nats::is_connected(&self.client) {
            return Err(ApiError::ServiceUnavailable("message bus unavailable"));
        }
        // Taken before subscribing: a reconnect from here on ends this stream too.
        let ends = self.streams.current();

        let live = self
            .client
            .subscribe(push::live_subject(&caller.user_id))
            .await
            .map_err(|e| ApiError::internal("cannot subscribe to live notifications", e))?;
        sync_with_server(&self.client, self.request_timeout).await;
        tracing::debug!(user = %caller.user_id, resume = ?resume, "notification stream opened");

        let feed = Feed {
            client: self.client.clone(),
            caller,
            live,
            request_timeout: self.request_timeout,
            resume_floor: resume,
            recent: std::collections::VecDeque::new(),
            backlog: match resume {
                Some(after) => Backlog::Fetch { after },
                None => Backlog::Done,
            },
        };
        let events = feed.into_stream().take_until(ends.cancelled_owned());
        let mut response = Sse::new(events)
            .keep_alive(KeepAlive::new().interval(self.streams.keepalive))
            .into_response();
        // Reverse proxies (nginx) would otherwise buffer the stream.
        response
            .headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }
}

/// Returns once the server has handled everything this connection sent so far, in
/// particular the `SUB` just made: a request to a subject nobody listens on comes back
/// "no responders" only after the server processed the earlier commands. Best effort:
/// on any other outcome the stream opens anyway.
async fn sync_with_server(client: &Client, timeout: Duration) {
    let request = async_nats::Request::new()
        .payload(bytes::Bytes::new())
        .timeout(Some(timeout));
    match client.send_request(client.new_inbox(), request).await {
        Err(e) if e.kind() == RequestErrorKind::NoResponders => {}
        Ok(_) => tracing::debug!("unexpected answer to the subscription sync"),
        Err(e) => tracing::debug!(error = %e, "subscription sync failed"),
    }
}

/// Where the backlog stands.
enum Backlog {
    /// Ask push for what came after `after`.
    Fetch { after: Uuid },
    /// Emitting a page; `next` is where the following page starts, if there is one.
    Page {
        items: std::vec::IntoIter<Notification>,
        next: Option<Uuid>,
    },
    /// Live only.
    Done,
}

/// One open stream's state.
struct Feed {
    client: Client,
    caller: Caller,
    live: Subscriber,
    request_timeout: Duration,
    /// The client's `Last-Event-ID`: it has everything up to there.
    resume_floor: Option<Uuid>,
    /// Ids sent lately, so a notification that arrives both in the backlog and live is
    /// sent once. Not a high-water mark: push handles deliveries concurrently, so live
    /// notifications may arrive out of id order, and each must still be sent.
    recent: std::collections::VecDeque<Uuid>,
    backlog: Backlog,
}

/// How many sent ids a stream remembers for dedupe (backlog/live overlap is short).
const RECENT_IDS: usize = 32;

impl Feed {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut feed| async move {
            let event = feed.next_event().await?;
            Some((Ok(event), feed))
        })
    }

    /// The next event to send; `None` when the live subscription has ended.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            match &mut self.backlog {
                Backlog::Page { items, next } => match items.next() {
                    Some(n) => {
                        if let Some(event) = self.event_for(&n) {
                            return Some(event);
                        }
                    }
                    None => {
                        self.backlog = match next.take() {
                            Some(after) => Backlog::Fetch { after },
                            None => Backlog::Done,
                        };
                    }
                },
                Backlog::Fetch { after } => {
                    let after = *after;
                    match self.fetch_page(after).await {
                        Ok(page) => {
                            // A full page means there may be more; the next one starts
                            // after its last item (which must move forward, or a broken
                            // answer would loop forever).
                            let last = page.last().map(|n| n.id).filter(|id| *id > after);
                            let full = page.len() >= BACKLOG_PAGE as usize;
                            self.backlog = Backlog::Page {
                                items: page.into_iter(),
                                next: last.filter(|_| full),
                            };
                        }
                        Err(warning) => {
                            self.backlog = Backlog::Done;
                            return Some(Event::default().event(WARNING_EVENT).data(warning));
                        }
                    }
                }
                Backlog::Done => {
                    let message = self.live.next().await?;
                    match contracts::wire::decode::<Notification>(&message.payload) {
                        Ok(n) => {
                            if let Some(event) = self.event_for(&n) {
                                return Some(event);
                            }
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            subject = %message.subject,
                            "undecodable live notification"
                        ),
                    }
                }
            }
        }
    }

    /// The SSE event for `n`, unless it was already sent.
    fn event_for(&mut self, n: &Notification) -> Option<Event> {
        if self.resume_floor.is_some_and(|floor| n.id <= floor) || self.recent.contains(&n.id) {
            return None;
        }
        match Event::default()
            .id(n.id.to_string())
            .event(NOTIFICATION_EVENT)
            .json_data(n)
        {
            Ok(event) => {
                if self.recent.len() >= RECENT_IDS {
                    self.recent.pop_front();
                }
                self.recent.push_back(n.id);
                Some(event)
            }
            Err(e) => {
                tracing::warn!(error = %e, notification = %n.id, "cannot encode a notification");
                None
            }
        }
    }

    /// One page of the backlog, or the text of the warning to send instead.
    async fn fetch_page(&self, after: Uuid) -> Result<Vec<Notification>, &'static str> {
        const UNAVAILABLE: &str =
            "missed notifications cannot be loaded right now; new ones will still arrive";
        let request = RpcRequest::new(NotificationsSince {
            after,
            limit: BACKLOG_PAGE,
        })
        .with_caller(self.caller.clone());
        let payload = contracts::wire::encode(&request).map_err(|e| {
            tracing::error!(error = %e, "cannot encode the backlog request");
            UNAVAILABLE
        })?;
        let mut headers = async_nats::HeaderMap::new();
        runtime::trace::inject_current(&mut headers);
        headers.insert(mesh_headers::CONTENT_TYPE, contracts::wire::CONTENT_TYPE);
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload.into())
            .timeout(Some(self.request_timeout));
        let reply = self
            .client
            .send_request(push::RPC_NOTIFICATIONS_SINCE, request)
            .await
            .map_err(|e| {
                if e.kind() == RequestErrorKind::NoResponders {
                    tracing::debug!("no push instance answers the backlog request");
                } else {
                    tracing::warn!(error = %e, "backlog request failed");
                }
                UNAVAILABLE
            })?;
        if let Some(error) = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
        {
            tracing::warn!(error = %error, "push answered the backlog request with an error");
            return Err(UNAVAILABLE);
        }
        let reply: RpcReply<Vec<Notification>> =
            contracts::wire::decode(&reply.payload).map_err(|e| {
                tracing::warn!(error = %e, "cannot decode the backlog reply");
                UNAVAILABLE
            })?;
        reply.into_result().map_err(|problem| {
            tracing::warn!(code = %problem.code, "push refused the backlog request");
            UNAVAILABLE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "last-event-id",
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn resume_point_prefers_the_header_and_requires_a_uuid() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let none = HeaderMap::new();
        assert_eq!(resume_point(&none, None).ok(), Some(None));
        assert_eq!(resume_point(&with_header(""), None).ok(), Some(None));
        assert_eq!(
            resume_point(&none, Some(&b.to_string())).ok(),
            Some(Some(b))
        );
        assert_eq!(
            resume_point(&with_header(&a.to_string()), Some(&b.to_string())).ok(),
            Some(Some(a))
        );
        assert!(resume_point(&with_header("42"), None).is_err());
        assert!(resume_point(&none, Some("nope")).is_err());
    }
}
