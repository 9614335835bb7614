//! The live notification stream: `GET /v1/notifications/stream` as Server-Sent Events,
//! and `POST /v1/notifications/stream/ticket` for browsers. Both are answered by the
//! gateway itself, not forwarded.
//!
//! Push publishes each new notification on the core-NATS subject
//! `push.live.<user>`; every gateway replica holds one subscription to all of them and
//! hands each to the streams open there for that user ([`crate::live`]). A stream:
//!
//! 1. without `Last-Event-ID`, asks push for the user's newest notification number
//!    (`seq`) first: the stream starts after it;
//! 2. registers with the hub (whose subscription the server already has), so nothing
//!    the hub receives from then on is lost;
//! 3. asks push for what came after the starting point (`Last-Event-ID`, or the number
//!    from step 1) (`svc.push.v1.notifications.since`, oldest first, page by page);
//! 4. then relays the live subscription.
//!
//! Events go out in `seq` order, each once, and the event id is the `seq`. Push numbers
//! each user's notifications in commit order (a per-user lock in the storing
//! transaction), so when number n is visible every lower one is too. Push publishes
//! live after commit, concurrently, so live messages can arrive out of order: one whose
//! number is not the next expected one makes the stream fetch the gap from push (all of
//! it committed) before going on. A number at or below the last one sent is skipped,
//! which removes the overlap between the backlog and what the subscription buffered
//! meanwhile. So a client resuming from the last id it received misses nothing: every
//! lower number was sent before it. (UUIDv7 ids cannot serve: made before commit, a
//! lower one can become visible after a higher one was sent.) If push does not answer
//! the backlog request the stream still opens (live only) with an `event: warning`.
//!
//! Notifications without `seq` (from a push older than the field) and resume points that
//! are notification ids (from a stream before it) are handled as before: by id, with a
//! short memory of ids sent.
//!
//! Memory per open stream is a small channel in the hub, one keep-alive timer and a
//! few words of state; nothing per message is proportional to the number of streams. A
//! stream whose client reads too slowly for the live messages is marked lagged by the
//! hub and fetches what it missed from push before going on. Every
//! stream ends when the gateway shuts down, so graceful shutdown never waits on them,
//! and after a NATS reconnect, so the client resumes with `Last-Event-ID` and gets what
//! was published while the connection was down.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Client;
use async_nats::client::RequestErrorKind;
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
use crate::live::LiveFeed;
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

/// Where a reconnecting client left off: the id of the last event it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumePoint {
    /// A notification's `seq`: what streams send as the event id.
    Seq(u64),
    /// A notification's id: what streams sent before `seq` existed.
    Id(Uuid),
}

/// The `Last-Event-ID` header (what `EventSource` sends), else the `last_event_id` query
/// parameter; empty means none.
fn resume_point(
    headers: &HeaderMap,
    query_value: Option<&str>,
) -> Result<Option<ResumePoint>, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| bad_last_event_id())?),
        None => None,
    };
    match header.or(query_value).map(str::trim) {
        None | Some("") => Ok(None),
        Some(id) => match id.parse::<u64>() {
            Ok(seq) => Ok(Some(ResumePoint::Seq(seq))),
            Err(_) => Uuid::parse_str(id)
                .map(|id| Some(ResumePoint::Id(id)))
                .map_err(|_| bad_last_event_id()),
        },
    }
}

fn bad_last_event_id() -> ApiError {
    ApiError::BadRequest(
        "Last-Event-ID must be the id of a notification event (a number, or a UUID)".into(),
    )
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
        // Before subscribing: whatever is stored after this number is fetched below, and
        // whatever is stored after the subscription also arrives live.
        let newest = match resume {
            Some(ResumePoint::Seq(_)) => None,
            Some(ResumePoint::Id(_)) | None => {
                newest_seq(&self.client, &caller, self.request_timeout).await
            }
        };

        if !self.live.wait_subscribed(self.request_timeout).await {
            return Err(ApiError::ServiceUnavailable(
                "live notifications are not subscribed yet",
            ));
        }
        let live = self.live.register(caller.user_id);
        tracing::debug!(user = %caller.user_id, resume = ?resume, "notification stream opened");

        let (sent_up_to, id_floor, backlog) = match resume {
            Some(ResumePoint::Seq(seq)) => (Some(seq), None, Backlog::Fetch(Missed::AfterSeq(seq))),
            Some(ResumePoint::Id(id)) => (newest, Some(id), Backlog::Fetch(Missed::AfterId(id))),
            None => match newest {
                Some(seq) => (Some(seq), None, Backlog::Fetch(Missed::AfterSeq(seq))),
                // Push did not answer (or predates `seq`): live only, nothing was missed.
                None => (None, None, Backlog::Done),
            },
        };
        let feed = Feed {
            client: self.client.clone(),
            caller,
            live,
            request_timeout: self.request_timeout,
            sent_up_to,
            id_floor,
            recent: std::collections::VecDeque::new(),
            pending_live: None,
            backlog,
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

/// The caller's newest notification number, or 0 without any; `None` when push does
/// not answer or predates `seq`.
async fn newest_seq(client: &Client, caller: &Caller, timeout: Duration) -> Option<u64> {
    let page = fetch(client, caller, timeout, NotificationsSince::newest())
        .await
        .ok()?;
    match page.first() {
        None => Some(0),
        Some(n) => n.seq,
    }
}

/// Which missed notifications to ask push for.
#[derive(Debug, Clone, Copy)]
enum Missed {
    AfterSeq(u64),
    /// By id, for a resume point from before `seq`.
    AfterId(Uuid),
}

/// Where the backlog stands.
enum Backlog {
    /// Ask push for what it names.
    Fetch(Missed),
    /// Emitting a page; `next` is where the following page starts, if there is one.
    Page {
        items: std::vec::IntoIter<Notification>,
        by_id: bool,
        next: Option<Missed>,
    },
    /// Live only.
    Done,
}

/// One open stream's state.
struct Feed {
    client: Client,
    caller: Caller,
    live: LiveFeed,
    request_timeout: Duration,
    /// The highest `seq` the client has: every lower one was sent before (or it had it).
    /// `None` until known (push did not answer at the start).
    sent_up_to: Option<u64>,
    /// A resume point from before `seq`: the client has the ids up to there.
    id_floor: Option<Uuid>,
    /// Ids sent lately, for notifications without `seq` (and backlogs by id), so one that
    /// arrives both in the backlog and live is sent once.
    recent: std::collections::VecDeque<Uuid>,
    /// A live notification that arrived ahead of its turn; sent after the gap before it
    /// was fetched (if the fetch did not bring it).
    pending_live: Option<Notification>,
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
                Backlog::Page { items, by_id, next } => match items.next() {
                    Some(n) => {
                        let by_id = *by_id;
                        if let Some(event) = self.event_for(&n, by_id) {
                            return Some(event);
                        }
                    }
                    None => {
                        self.backlog = match next.take() {
                            Some(missed) => Backlog::Fetch(missed),
                            None => Backlog::Done,
                        };
                    }
                },
                Backlog::Fetch(missed) => {
                    let missed = *missed;
                    match self.fetch_page(missed).await {
                        Ok(page) => {
                            // A full page means there may be more; the next one starts
                            // after its last item (which must move forward, or a broken
                            // answer would loop forever).
                            let full = page.len() >= BACKLOG_PAGE as usize;
                            let next = match (missed, page.last()) {
                                (Missed::AfterSeq(after), Some(last)) => {
                                    last.seq.filter(|seq| *seq > after).map(Missed::AfterSeq)
                                }
                                (Missed::AfterId(after), Some(last)) => {
                                    (last.id > after).then_some(Missed::AfterId(last.id))
                                }
                                (_, None) => None,
                            };
                            self.backlog = Backlog::Page {
                                items: page.into_iter(),
                                by_id: matches!(missed, Missed::AfterId(_)),
                                next: next.filter(|_| full),
                            };
                        }
                        Err(warning) => {
                            self.backlog = Backlog::Done;
                            return Some(Event::default().event(WARNING_EVENT).data(warning));
                        }
                    }
                }
                Backlog::Done => {
                    if let Some(n) = self.pending_live.take() {
                        if let Some(event) = self.event_for(&n, false) {
                            return Some(event);
                        }
                        continue;
                    }
                    if self.live.take_lagged() {
                        // The hub dropped live messages for this stream: fetch what
                        // came after the last one sent (all of it committed).
                        if let Some(sent) = self.sent_up_to {
                            self.backlog = Backlog::Fetch(Missed::AfterSeq(sent));
                            continue;
                        }
                    }
                    let payload = self.live.next().await?;
                    match contracts::wire::decode::<Notification>(&payload) {
                        Ok(n) => {
                            if let Some(after) = self.gap_before(&n) {
                                // Lower numbers are committed but not here yet (or their
                                // live message was lost): fetch them, then this one.
                                self.pending_live = Some(n);
                                self.backlog = Backlog::Fetch(Missed::AfterSeq(after));
                            } else if let Some(event) = self.event_for(&n, false) {
                                return Some(event);
                            }
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            user = %self.caller.user_id,
                            "undecodable live notification"
                        ),
                    }
                }
            }
        }
    }

    /// For a live notification that is not the next number: the last number sent.
    fn gap_before(&self, n: &Notification) -> Option<u64> {
        let (Some(seq), Some(sent)) = (n.seq, self.sent_up_to) else {
            return None;
        };
        (seq > sent.saturating_add(1)).then_some(sent)
    }

    /// The SSE event for `n`, unless the client has it. `by_id`: `n` comes from a
    /// backlog by id, whose `seq`s are not in order.
    fn event_for(&mut self, n: &Notification, by_id: bool) -> Option<Event> {
        let seen = match n.seq {
            Some(seq) if !by_id => self.sent_up_to.is_some_and(|sent| seq <= sent),
            _ => self.id_floor.is_some_and(|floor| n.id <= floor) || self.recent.contains(&n.id),
        };
        if seen {
            return None;
        }
        let id = match n.seq {
            Some(seq) => seq.to_string(),
            None => n.id.to_string(),
        };
        match Event::default()
            .id(id)
            .event(NOTIFICATION_EVENT)
            .json_data(n)
        {
            Ok(event) => {
                if let Some(seq) = n.seq {
                    self.sent_up_to = Some(self.sent_up_to.map_or(seq, |sent| sent.max(seq)));
                }
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
    async fn fetch_page(&self, missed: Missed) -> Result<Vec<Notification>, &'static str> {
        let query = match missed {
            Missed::AfterSeq(after) => NotificationsSince::after_seq(after, BACKLOG_PAGE),
            Missed::AfterId(after) => NotificationsSince::after_id(after, BACKLOG_PAGE),
        };
        fetch(&self.client, &self.caller, self.request_timeout, query).await
    }
}

/// Asks push for missed notifications; on failure, the text of the warning to send.
async fn fetch(
    client: &Client,
    caller: &Caller,
    timeout: Duration,
    query: NotificationsSince,
) -> Result<Vec<Notification>, &'static str> {
    const UNAVAILABLE: &str =
        "missed notifications cannot be loaded right now; new ones will still arrive";
    let request = RpcRequest::new(query).with_caller(caller.clone());
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
        .timeout(Some(timeout));
    let reply = client
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
    fn resume_point_prefers_the_header_and_takes_a_seq_or_an_old_id() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let none = HeaderMap::new();
        assert_eq!(resume_point(&none, None).ok(), Some(None));
        assert_eq!(resume_point(&with_header(""), None).ok(), Some(None));
        assert_eq!(
            resume_point(&none, Some(&b.to_string())).ok(),
            Some(Some(ResumePoint::Id(b)))
        );
        assert_eq!(
            resume_point(&with_header(&a.to_string()), Some("7")).ok(),
            Some(Some(ResumePoint::Id(a)))
        );
        assert_eq!(
            resume_point(&with_header(" 42 "), Some(&b.to_string())).ok(),
            Some(Some(ResumePoint::Seq(42)))
        );
        assert!(resume_point(&with_header("-1"), None).is_err());
        assert!(resume_point(&none, Some("nope")).is_err());
    }
}
