//! The one generic handler: match the route, authenticate, rate-limit, check the body,
//! apply idempotency, and forward over NATS request/reply to the owning service.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use contracts::rpc::{Caller, RpcReply, RpcRequest};
use contracts::subjects::headers as mesh_headers;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::auth::KeyStore;
use crate::cache::{ResponseCache, X_CACHE};
use crate::client_addr::TrustedProxies;
use crate::console;
use crate::discovery::Directory;
use crate::error::{ApiError, PROBLEM_JSON};
use crate::idempotency::{self, Begin, Idempotency, IdempotencyKey, StoredResponse};
use crate::live::LiveHub;
use crate::ratelimit::{RateKey, RateLimits};
use crate::routes::{AuthRule, Matched, Route};
use crate::stream::StreamOptions;
use crate::tickets::Tickets;

/// The request id header set (or kept) by the request-id layer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Everything the handler needs, shared by all requests.
pub struct Gateway {
    /// The route table, discovered from the services (see [`crate::discovery`]).
    pub directory: Arc<Directory>,
    pub client: async_nats::Client,
    pub keys: Arc<KeyStore>,
    pub limits: Arc<RateLimits>,
    pub idempotency: Arc<Idempotency>,
    /// Tickets that open a notification stream (see [`crate::tickets`]).
    pub tickets: Arc<Tickets>,
    /// Settings of the notification streams (see [`crate::stream`]).
    pub streams: StreamOptions,
    /// The live notifications of the open streams (see [`crate::live`]).
    pub live: Arc<LiveHub>,
    /// Answers of cacheable GET routes (see [`crate::cache`]).
    pub cache: Arc<ResponseCache>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Whose `X-Forwarded-For` names the client (see [`crate::client_addr`]).
    pub trusted_proxies: TrustedProxies,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("directory", &self.directory)
            .field("request_timeout", &self.request_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// One request ready to go on the bus.
struct Call {
    subject: String,
    payload: Bytes,
    request_id: Option<String>,
}

/// The axum fallback serving every route of the table.
pub async fn handle(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    match gateway.serve(request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

impl Gateway {
    async fn serve(self: &Arc<Self>, request: Request) -> Result<Response, ApiError> {
        let arrived = Instant::now();
        let (parts, body) = request.into_parts();
        let mut snapshot = self.directory.snapshot();
        if let Err(ApiError::RouteNotFound | ApiError::MethodNotAllowed { .. }) =
            snapshot.table.find(&parts.method, parts.uri.path())
        {
            // Perhaps deployed a moment ago: look again (rate-limited), then match again.
            self.directory.refresh_on_miss(arrived).await;
            snapshot = self.directory.snapshot();
        }
        let Matched { route, params } = snapshot.table.find(&parts.method, parts.uri.path())?;
        crate::http_metrics::record_route(&parts, &route.path);
        let span = tracing::Span::current();
        span.record("http.route", &*route.path);
        span.record("otel.name", format!("{} {}", route.method, route.path));

        let caller = self.authenticate(route, &parts).await?;
        let client_ip = self.client_ip(&parts);
        let scope = match &caller {
            Some(Caller { user_id, .. }) => RateKey::User(*user_id),
            None => RateKey::Ip(client_ip),
        };
        self.limits.check(scope)?;

        // A cacheable read is answered here when a fresh answer is stored.
        let cache_slot = if parts.method == Method::GET {
            let caller_id = caller.as_ref().map(|c| c.user_id);
            self.cache.slot(route, &params, &parts.uri, caller_id)
        } else {
            None
        };
        if let Some(slot) = &cache_slot
            && let Some(stored) = self.cache.get(slot, &parts.headers)
        {
            return Ok(with_cache_header(respond(stored, false), "hit"));
        }
        // What a successful write may have changed (see `ResponseCache::wrote`).
        let written =
            (parts.method != Method::GET).then(|| (route.service.clone(), params.clone()));

        let query = parse_query(&parts)?;
        let idempotency_key = match parts.headers.get(idempotency::HEADER) {
            Some(v) if parts.method == Method::POST && route.idempotent => {
                Some(IdempotencyKey::parse(v)?)
            }
            _ => None,
        };
        let (raw_body, body) = if route.has_body {
            require_json(&parts.headers)?;
            let raw = read_body(&parts.headers, body, self.max_body_bytes).await?;
            let json: Value =
                serde_json::from_slice(&raw).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
            (raw, json)
        } else {
            // `NoBody {}` encodes as an empty map, exactly like this.
            (Bytes::new(), Value::Object(serde_json::Map::new()))
        };

        let rpc = RpcRequest {
            caller,
            params,
            query,
            client_ip: Some(client_ip),
            body,
        };
        let payload = contracts::wire::encode(&rpc)
            .map_err(|e| ApiError::internal("cannot encode the service request", e))?;
        let call = Call {
            subject: route.subject.clone(),
            payload: payload.into(),
            request_id: parts
                .headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };

        let Some(key) = idempotency_key else {
            let stored = self.forward(&call).await?;
            if let Some(slot) = cache_slot {
                self.cache.put(slot, &stored);
                return Ok(with_cache_header(respond(stored, false), "miss"));
            }
            self.after_write(written, &stored, &snapshot);
            return Ok(respond(stored, false));
        };
        let storage_key =
            idempotency::storage_key(scope, &parts.method, &route.path, parts.uri.path(), &key);
        let request_hash = idempotency::request_hash(
            &parts.method,
            parts.uri.path(),
            parts.uri.query().unwrap_or_default(),
            &raw_body,
        );
        match self.idempotency.begin(storage_key, request_hash).await? {
            Begin::Replay(stored) => Ok(respond(stored, true)),
            Begin::Proceed(ticket) => {
                // Forward and record in a task of its own: if the client hangs up or the
                // HTTP timeout fires, the record is still completed (or released)
                // instead of staying in flight until it counts as abandoned.
                let gateway = Arc::clone(self);
                let task = async move {
                    let result = gateway.forward(&call).await;
                    gateway
                        .idempotency
                        .finish(ticket, result.as_ref().ok())
                        .await;
                    result
                };
                let stored = tokio::spawn(task.in_current_span())
                    .await
                    .map_err(|e| ApiError::internal("idempotent request task failed", e))??;
                self.after_write(written, &stored, &snapshot);
                Ok(respond(stored, false))
            }
        }
    }

    /// A write answered with success: the cached reads of its service may be stale.
    fn after_write(
        &self,
        written: Option<(String, BTreeMap<String, String>)>,
        stored: &StoredResponse,
        snapshot: &crate::discovery::Snapshot,
    ) {
        if let Some((service, params)) = written
            && stored.status < 400
        {
            self.cache.wrote(&service, snapshot.table.routes(), &params);
        }
    }

    /// The caller of a matched route. An admin route called without an `Authorization`
    /// header may be authenticated by the console's session cookie instead (and then,
    /// unless it is a GET, only with the CSRF header); every other route takes a bearer
    /// token only, so the cookie never authenticates anything outside `/v1/admin/`.
    async fn authenticate(&self, route: &Route, parts: &Parts) -> Result<Option<Caller>, ApiError> {
        if route.auth == AuthRule::Admin
            && let Some(token) = console::session_credentials(parts)?
        {
            return self
                .keys
                .authorize_token(AuthRule::Admin, token)
                .await
                .map(Some);
        }
        self.keys.authorize(route.auth, &parts.headers).await
    }

    /// Sends the call and turns the service's reply into the HTTP response to give.
    async fn forward(&self, call: &Call) -> Result<StoredResponse, ApiError> {
        let reply: RpcReply<JsonText> = self
            .request(
                &call.subject,
                call.payload.clone(),
                call.request_id.as_deref(),
            )
            .await?;
        stored_from_reply(reply)
    }

    /// One request/reply exchange with a service: the decoded reply, or the transport
    /// failure as the error the client gets.
    pub(crate) async fn request<T: DeserializeOwned>(
        &self,
        subject: &str,
        payload: Bytes,
        request_id: Option<&str>,
    ) -> Result<RpcReply<T>, ApiError> {
        // A disconnected client would queue the request until the timeout; say at once
        // that nothing can answer.
        if !runtime::nats::is_connected(&self.client) {
            return Err(ApiError::ServiceUnavailable("message bus unavailable"));
        }
        let span = tracing::info_span!(
            "rpc.client",
            otel.name = %subject,
            otel.kind = "client",
            rpc.subject = %subject,
        );
        let mut headers = async_nats::HeaderMap::new();
        // The client span is the parent of the service's server span.
        span.in_scope(|| runtime::trace::inject_current(&mut headers));
        headers.insert(mesh_headers::CONTENT_TYPE, contracts::wire::CONTENT_TYPE);
        if let Some(id) = request_id {
            headers.insert(mesh_headers::REQUEST_ID, id);
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload)
            .timeout(Some(self.request_timeout));
        let message = self
            .client
            .send_request(subject.to_owned(), request)
            .instrument(span)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::TimedOut => ApiError::Timeout,
                RequestErrorKind::NoResponders => {
                    ApiError::ServiceUnavailable("no instance of the service is answering")
                }
                RequestErrorKind::MaxPayloadExceeded => ApiError::PayloadTooLarge {
                    limit: self.max_body_bytes,
                },
                _ => ApiError::internal("request over NATS failed", e),
            })?;
        if let Some(error) = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
        {
            return Err(ApiError::internal(
                "service answered with a NATS service error",
                error.to_string(),
            ));
        }
        contracts::wire::decode(&message.payload)
            .map_err(|e| ApiError::internal("cannot decode the service reply", e))
    }
}

/// A reply body turned from MessagePack straight into JSON text while the reply is
/// decoded, without a `serde_json::Value` tree in between: that tree is a map per
/// object, and in a profile of cold `GET /v1/events` pages a sixth of the box's CPU
/// went to the gateway's allocator building and dropping it.
#[derive(Debug)]
struct JsonText(String);

impl<'de> serde::Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(decoder: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut json = Vec::with_capacity(512);
        serde_transcode::transcode(decoder, &mut serde_json::Serializer::new(&mut json))
            .map_err(D::Error::custom)?;
        String::from_utf8(json)
            .map(JsonText)
            .map_err(D::Error::custom)
    }
}

/// The response to send (and, for idempotent requests, to store) for a service reply.
fn stored_from_reply(reply: RpcReply<JsonText>) -> Result<StoredResponse, ApiError> {
    match reply {
        RpcReply::Ok { status, body } => {
            let status = StatusCode::from_u16(status)
                .map_err(|e| ApiError::internal("service answered an invalid status", e))?;
            if status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
                || status.is_informational()
            {
                return Ok(StoredResponse {
                    status: status.as_u16(),
                    content_type: None,
                    body: String::new(),
                    retry_after: None,
                });
            }
            Ok(StoredResponse {
                status: status.as_u16(),
                content_type: Some("application/json".to_owned()),
                body: body.0,
                retry_after: None,
            })
        }
        RpcReply::Err(problem) => {
            // Reuse the error mapping (status sanity, trace id) so the body is exactly
            // what the client would get without idempotency.
            let mut problem = ApiError::Upstream(problem).problem();
            if problem.trace_id.is_none() {
                problem.trace_id = runtime::trace::current_trace_id();
            }
            let body = serde_json::to_string(&problem)
                .map_err(|e| ApiError::internal("cannot encode the problem as JSON", e))?;
            Ok(StoredResponse {
                status: problem.status,
                content_type: Some(PROBLEM_JSON.to_owned()),
                body,
                retry_after: problem.retry_after,
            })
        }
    }
}

/// Builds the HTTP response; `replayed` marks an idempotent replay.
fn respond(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Body::from(stored.body)).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = stored
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(secs) = stored.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if replayed {
        headers.insert(
            idempotency::REPLAYED_HEADER,
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// Marks a cacheable route's answer as served from the cache or not.
fn with_cache_header(mut response: Response, value: &'static str) -> Response {
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(value));
    response
}

impl Gateway {
    /// The client's address: the peer (set by `into_make_service_with_connect_info`;
    /// unspecified when the router runs without a socket), or what a trusted proxy
    /// reports in `X-Forwarded-For`.
    pub(crate) fn client_ip(&self, parts: &Parts) -> IpAddr {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        self.trusted_proxies.client_ip(peer, &parts.headers)
    }
}

/// Query parameters; the last value of a repeated key wins.
pub(crate) fn parse_query(parts: &Parts) -> Result<BTreeMap<String, String>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?;
    Ok(pairs.into_iter().collect())
}

/// Bodies must be declared JSON (parameters such as `charset` are allowed).
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Reads the body, refusing more than `limit` bytes (by `Content-Length` up front, and
/// while reading for chunked bodies).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let mut buf = BytesMut::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::{ErrorCode, Problem};

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(ct).expect("header"),
            );
        }
        h
    }

    #[test]
    fn content_type_must_be_json() {
        assert!(require_json(&headers(Some("application/json"))).is_ok());
        assert!(require_json(&headers(Some("Application/JSON; charset=utf-8"))).is_ok());
        assert!(require_json(&headers(Some("text/plain"))).is_err());
        assert!(require_json(&headers(Some("application/jsonx"))).is_err());
        assert!(require_json(&headers(None)).is_err());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let ok = read_body(&HeaderMap::new(), Body::from("12345"), 5).await;
        assert_eq!(ok.expect("fits").len(), 5);
        let err = read_body(&HeaderMap::new(), Body::from("123456"), 5)
            .await
            .expect_err("too large");
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
        let err = read_body(&h, Body::empty(), 5)
            .await
            .expect_err("declared too large");
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn query_last_value_wins() {
        let req = axum::http::Request::builder()
            .uri("/v1/events?limit=1&mine=organizing&limit=20&cursor=a%20b")
            .body(())
            .expect("request");
        let (parts, ()) = req.into_parts();
        let q = parse_query(&parts).expect("parses");
        assert_eq!(q.get("limit").map(String::as_str), Some("20"));
        assert_eq!(q.get("cursor").map(String::as_str), Some("a b"));
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn message_pack_replies_become_the_same_json() {
        let body = serde_json::json!({
            "id": "0190f1e2-7a3b-7c4d-8e5f-123456789abc",
            "negative": -3,
            "largest": u64::MAX,
            "half": 1.5,
            "absent": null,
            "list": [1, "x", {"nested": true}, []],
            "text": "grüße \"quoted\"\n\u{1F600}",
        });
        let packed = contracts::wire::encode(&RpcReply::Ok {
            status: 200,
            body: body.clone(),
        })
        .expect("encode");
        let reply: RpcReply<JsonText> = contracts::wire::decode(&packed).expect("decode");
        let RpcReply::Ok {
            status: 200,
            body: text,
        } = reply
        else {
            panic!("not the reply sent: {reply:?}");
        };
        let back: Value = serde_json::from_str(&text.0).expect("valid JSON");
        assert_eq!(back, body);
    }

    #[test]
    fn replies_become_responses() {
        let ok = stored_from_reply(RpcReply::Ok {
            status: 201,
            body: JsonText(r#"{"id":1}"#.to_owned()),
        })
        .expect("ok");
        assert_eq!(ok.status, 201);
        assert_eq!(ok.body, r#"{"id":1}"#);
        let empty = stored_from_reply(RpcReply::Ok {
            status: 204,
            body: JsonText("null".to_owned()),
        })
        .expect("ok");
        assert_eq!(
            (empty.status, empty.body.as_str(), empty.content_type),
            (204, "", None)
        );
        let problem =
            stored_from_reply(RpcReply::Err(Problem::new(ErrorCode::EventFull))).expect("ok");
        assert_eq!(problem.status, 409);
        assert_eq!(problem.content_type.as_deref(), Some(PROBLEM_JSON));
        assert!(
            stored_from_reply(RpcReply::Ok {
                status: 1000,
                body: JsonText("null".to_owned())
            })
            .is_err()
        );
    }
}
