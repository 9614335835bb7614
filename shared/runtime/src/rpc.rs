//! Request/reply endpoints as NATS micro services.
//!
//! A service declares its endpoints as data ([`Endpoint`]: name, subject, a typed async
//! handler and, for endpoints behind the gateway, the public [`Route`] it backs) and
//! [`serve`] runs them: all replicas join one queue group (each request reaches one
//! replica), every request runs in its own task under a concurrency limit, inherits the
//! caller's trace context, and on shutdown the endpoints stop taking requests while
//! in-flight ones finish.
//!
//! The routes are published in the NATS service metadata (`$SRV.INFO`, format in
//! [`crate::routes`]): the gateway routes from what it discovers there. A service also
//! says there which event contracts it produces and consumes ([`Contracts`], served by
//! [`serve_with`]), so ops can see which versions run side by side.
//!
//! A body that does not decode into the handler's request type is answered with
//! `validation_failed` and serde's explanation; handlers only see well-typed input.
//!
//! Every endpoint counts its requests (`mesh_rpc_requests_total{endpoint}`), its error
//! replies by code (`mesh_rpc_errors_total{endpoint, code}`) and its handling time
//! (`mesh_rpc_request_duration_seconds{endpoint}`), labelled with its subject.
//!
//! Handlers never see text with the NUL character (U+0000), which no field has a use
//! for and PostgreSQL cannot store: it is refused here, `bad_request` in a path or query
//! parameter, `validation_failed` in the body.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use bytes::Bytes;
use contracts::rpc::{RpcReply, RpcRequest};
use contracts::{ErrorCode, Problem};
use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::routes::Route;
use crate::telemetry::names;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Answers one request: the encoded reply, and the error code when it is a problem.
type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<(Vec<u8>, Option<ErrorCode>)> + Send + Sync>;

/// One request/reply endpoint.
#[derive(Clone)]
pub struct Endpoint {
    pub name: &'static str,
    pub subject: &'static str,
    /// The public route it backs, published as discovery metadata; `None` for endpoints
    /// only other services call (e.g. the key set, stream resumption).
    pub route: Option<Route>,
    handler: Handler,
}

impl Endpoint {
    /// Declares the public route this endpoint backs.
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("route", &self.route.as_ref().map(Route::http))
            .finish()
    }
}

/// Builds an endpoint from a typed handler.
pub fn endpoint<B, T, F, Fut>(name: &'static str, subject: &'static str, handler: F) -> Endpoint
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(RpcRequest<B>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RpcReply<T>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let handler: Handler = Arc::new(move |payload: Bytes| {
        let handler = handler.clone();
        Box::pin(async move {
            match contracts::wire::decode::<RpcRequest<B>>(&payload) {
                Ok(request) => match nul_in(&payload) {
                    None => {
                        let reply = handler(request).await;
                        let code = match &reply {
                            RpcReply::Ok { .. } => None,
                            RpcReply::Err(p) => Some(p.code),
                        };
                        (encode_reply(&reply), code)
                    }
                    Some(part) => {
                        let problem = nul_problem(&part);
                        let code = problem.code;
                        (encode_reply(&RpcReply::<()>::Err(problem)), Some(code))
                    }
                },
                Err(e) => {
                    let detail = match e {
                        contracts::wire::WireError::Decode(e) => e.to_string(),
                        other => other.to_string(),
                    };
                    let reply = RpcReply::<()>::Err(
                        Problem::new(ErrorCode::ValidationFailed).with_detail(detail),
                    );
                    (encode_reply(&reply), Some(ErrorCode::ValidationFailed))
                }
            }
        })
    });
    Endpoint {
        name,
        subject,
        route: None,
        handler,
    }
}

/// The part of a request (`params`, `query`, `body`, …) holding text with a NUL
/// character, if any. Runs after the typed decode succeeded, so the payload is a
/// well-formed request; walks it without allocating.
fn nul_in(payload: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

    /// Any value, read to the end: whether a string (or map key) in it holds U+0000.
    struct HasNul(bool);
    impl<'de> serde::Deserialize<'de> for HasNul {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(HasNulVisitor)
        }
    }
    struct HasNulVisitor;
    impl<'de> Visitor<'de> for HasNulVisitor {
        type Value = HasNul;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<HasNul, E> {
            Ok(HasNul(false))
        }
        fn visit_i64<E>(self, _: i64) -> Result<HasNul, E> {
            Ok(HasNul(false))
        }
        fn visit_u64<E>(self, _: u64) -> Result<HasNul, E> {
            Ok(HasNul(false))
        }
        fn visit_f64<E>(self, _: f64) -> Result<HasNul, E> {
            Ok(HasNul(false))
        }
        fn visit_str<E>(self, v: &str) -> Result<HasNul, E> {
            Ok(HasNul(v.contains('\0')))
        }
        fn visit_bytes<E>(self, _: &[u8]) -> Result<HasNul, E> {
            Ok(HasNul(false))
        }
        fn visit_none<E>(self) -> Result<HasNul, E> {
            Ok(HasNul(false))
        }
        fn visit_unit<E>(self) -> Result<HasNul, E> {
            Ok(HasNul(false))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<HasNul, D::Error> {
            d.deserialize_any(HasNulVisitor)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<HasNul, D::Error> {
            d.deserialize_any(HasNulVisitor)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HasNul, A::Error> {
            let mut found = false;
            while let Some(HasNul(nul)) = seq.next_element()? {
                found |= nul;
            }
            Ok(HasNul(found))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HasNul, A::Error> {
            let mut found = false;
            while let Some((HasNul(k), HasNul(v))) = map.next_entry()? {
                found |= k || v;
            }
            Ok(HasNul(found))
        }
    }

    /// The request's top level: the first part that holds a NUL.
    struct Parts(Option<String>);
    impl<'de> serde::Deserialize<'de> for Parts {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(PartsVisitor)
        }
    }
    struct PartsVisitor;
    impl<'de> Visitor<'de> for PartsVisitor {
        type Value = Parts;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a request")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
            let mut first = None;
            while let Some((key, HasNul(nul))) = map.next_entry::<String, HasNul>()? {
                if nul && first.is_none() {
                    first = Some(key);
                }
            }
            Ok(Parts(first))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parts, A::Error> {
            // The positional form: caller, params, query, body.
            let mut first = None;
            let mut names = ["caller", "params", "query", "body"].into_iter();
            while let Some(HasNul(nul)) = seq.next_element()? {
                let name = names.next().unwrap_or("body");
                if nul && first.is_none() {
                    first = Some(name.to_owned());
                }
            }
            Ok(Parts(first))
        }
    }

    // It decoded as a request a moment ago; should it not read as parts, say nothing.
    contracts::wire::decode::<Parts>(payload)
        .ok()
        .and_then(|Parts(part)| part)
}

/// The answer to text with a NUL character in `part` of a request.
fn nul_problem(part: &str) -> Problem {
    let detail = format!("text must not contain the NUL character (U+0000) (in {part})");
    match part {
        "params" | "query" => Problem::new(ErrorCode::BadRequest).with_detail(detail),
        _ => Problem::new(ErrorCode::ValidationFailed).with_detail(detail),
    }
}

/// Attaches each `(subject, route)` to the endpoint with that subject: a service keeps
/// its public routes in one table beside its handlers. A route naming no endpoint is a
/// bug; it is logged and left out.
pub fn with_routes(
    mut endpoints: Vec<Endpoint>,
    routes: Vec<(&'static str, Route)>,
) -> Vec<Endpoint> {
    for (subject, route) in routes {
        match endpoints.iter_mut().find(|e| e.subject == subject) {
            Some(e) => e.route = Some(route),
            None => tracing::error!(
                subject,
                route = %route.http(),
                "route declared for an endpoint that does not exist"
            ),
        }
    }
    endpoints
}

/// The service-level discovery metadata of `endpoints` (the schemas their routes name,
/// see [`crate::routes::service_metadata`]).
pub fn service_metadata(endpoints: &[Endpoint]) -> HashMap<String, String> {
    crate::routes::service_metadata(endpoints.iter().filter_map(|e| e.route.as_ref()))
}

fn encode_reply<T: Serialize>(reply: &RpcReply<T>) -> Vec<u8> {
    contracts::wire::encode(reply).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode reply");
        contracts::wire::encode(&RpcReply::<()>::Err(Problem::new(ErrorCode::Internal)))
            .unwrap_or_default()
    })
}

/// The event contracts a service produces and consumes, as `type@version`
/// (`contracts::events::contract_ref`), published in its service-level discovery
/// metadata under `contracts.produces` / `contracts.consumes` (JSON lists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contracts {
    pub produces: Vec<String>,
    pub consumes: Vec<String>,
}

impl Contracts {
    pub fn new() -> Self {
        Contracts::default()
    }

    /// Declares that the service publishes `E`.
    pub fn produces<E: contracts::DomainEvent>(mut self) -> Self {
        self.produces.push(contracts::events::contract_ref::<E>());
        self
    }

    /// Declares that the service reads `E` (and acts on it).
    pub fn consumes<E: contracts::DomainEvent>(mut self) -> Self {
        self.consumes.push(contracts::events::contract_ref::<E>());
        self
    }

    /// The service-level metadata entries (none for an empty side).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        use contracts::subjects::discovery::{CONTRACTS_CONSUMES, CONTRACTS_PRODUCES};
        let mut m = HashMap::new();
        for (key, list) in [
            (CONTRACTS_PRODUCES, &self.produces),
            (CONTRACTS_CONSUMES, &self.consumes),
        ] {
            if !list.is_empty()
                && let Ok(json) = serde_json::to_string(list)
            {
                m.insert(key.to_owned(), json);
            }
        }
        m
    }

    /// Reads them back from discovery metadata; a missing or unreadable entry is empty
    /// (an instance of an older build that did not declare them).
    pub fn from_metadata(m: &impl crate::routes::Metadata) -> Self {
        use contracts::subjects::discovery::{CONTRACTS_CONSUMES, CONTRACTS_PRODUCES};
        let list = |key| {
            m.value(key)
                .and_then(|json| serde_json::from_str::<Vec<String>>(json).ok())
                .unwrap_or_default()
        };
        Contracts {
            produces: list(CONTRACTS_PRODUCES),
            consumes: list(CONTRACTS_CONSUMES),
        }
    }
}

/// A service to run.
pub struct ServiceSpec {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub endpoints: Vec<Endpoint>,
    /// Requests handled at once by this replica.
    pub max_in_flight: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start NATS service {name}: {source}")]
pub struct ServeError {
    name: &'static str,
    #[source]
    source: async_nats::Error,
}

/// Registers the service and its endpoints; the returned task runs until `cancel`,
/// then drains in-flight requests.
pub async fn serve(
    client: async_nats::Client,
    spec: ServiceSpec,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    serve_with(client, spec, &Contracts::default(), cancel).await
}

/// [`serve`], also declaring the event contracts the service produces and consumes in
/// its discovery metadata. A service with no endpoints is still discoverable.
pub async fn serve_with(
    client: async_nats::Client,
    spec: ServiceSpec,
    contracts: &Contracts,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let err = |source| ServeError {
        name: spec.name,
        source,
    };
    let mut metadata = service_metadata(&spec.endpoints);
    metadata.extend(contracts.to_metadata());
    let service = client
        .service_builder()
        .description(spec.description)
        .metadata(metadata)
        .queue_group(contracts::subjects::RPC_QUEUE_GROUP)
        .start(spec.name, spec.version)
        .await
        .map_err(err)?;
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    let mut loops = Vec::new();
    for ep in spec.endpoints {
        let metadata = ep
            .route
            .as_ref()
            .map(Route::to_metadata)
            .unwrap_or_default();
        let mut stream = service
            .endpoint_builder()
            .name(ep.name)
            .metadata(metadata)
            .add(ep.subject)
            .await
            .map_err(err)?;
        let cancel = cancel.clone();
        let tracker = tracker.clone();
        let limit = limit.clone();
        // Known before the first request, so a rate over them is defined from the start.
        metrics::counter!(names::RPC_REQUESTS, "endpoint" => ep.subject).absolute(0);
        loops.push(tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = stream.next() => match r { Some(r) => r, None => break },
                };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let handler = ep.handler.clone();
                let span = tracing::info_span!(
                    "rpc.server",
                    otel.name = ep.subject,
                    otel.kind = "server",
                    rpc.endpoint = ep.name,
                );
                crate::trace::set_parent(&span, request.message.headers.as_ref());
                let subject = ep.subject;
                tracker.spawn(
                    async move {
                        let started = std::time::Instant::now();
                        let (reply, error) = handler(request.message.payload.clone()).await;
                        let took = started.elapsed();
                        metrics::histogram!(names::RPC_DURATION, "endpoint" => subject)
                            .record(took.as_secs_f64());
                        tracing::debug!(
                            elapsed_ms = took.as_millis() as u64,
                            error = error.map(ErrorCode::as_str),
                            "request handled"
                        );
                        metrics::counter!(names::RPC_REQUESTS, "endpoint" => subject).increment(1);
                        if let Some(code) = error {
                            metrics::counter!(
                                names::RPC_ERRORS,
                                "endpoint" => subject,
                                "code" => code.as_str(),
                            )
                            .increment(1);
                        }
                        if let Err(e) = request.respond(Ok(reply.into())).await {
                            tracing::warn!(error = %e, "cannot send reply");
                        }
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            if let Err(e) = stream.stop().await {
                tracing::debug!(error = %e, "endpoint stop");
            }
        }));
    }
    let drain_timeout = spec.drain_timeout;
    let name = spec.name;
    Ok(tokio::spawn(async move {
        if loops.is_empty() {
            // No endpoints (a consumer-only service, discoverable only): nothing ends
            // the loops, so stay registered until shutdown.
            cancel.cancelled().await;
        }
        for l in loops {
            let _ = l.await;
        }
        tracker.close();
        if tokio::time::timeout(drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = name,
                "in-flight requests did not finish before the drain timeout"
            );
        }
        if let Err(e) = service.stop().await {
            tracing::debug!(error = %e, "service stop");
        }
        tracing::info!(service = name, "request endpoints drained");
    }))
}

/// Logs an unexpected error with its cause chain and turns it into an opaque 500.
pub fn internal(err: &(dyn std::error::Error + 'static)) -> Problem {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(error = %chain, "internal error");
    let mut p = Problem::new(ErrorCode::Internal);
    p.trace_id = crate::trace::current_trace_id();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::events::{RsvpChangedV1, RsvpChangedV2, UserRegisteredV1};

    #[test]
    fn nul_characters_are_found_where_they_are() {
        let request = |query: &str, body: serde_json::Value| {
            let r = RpcRequest::new(body).with_query("q", query);
            contracts::wire::encode(&r).expect("encodes")
        };
        let clean = request("fine", serde_json::json!({"a": ["b", 1, {"c": "d"}]}));
        assert_eq!(nul_in(&clean), None);
        let in_query = request("x\0y", serde_json::json!({}));
        assert_eq!(nul_in(&in_query).as_deref(), Some("query"));
        let deep = request("fine", serde_json::json!({"a": [{"b": ["\u{0}"]}]}));
        assert_eq!(nul_in(&deep).as_deref(), Some("body"));
        let key = request("fine", serde_json::json!({"a\0": 1}));
        assert_eq!(nul_in(&key).as_deref(), Some("body"));
        assert_eq!(nul_problem("query").code, ErrorCode::BadRequest);
        assert_eq!(nul_problem("body").code, ErrorCode::ValidationFailed);
    }

    #[tokio::test]
    async fn handlers_never_see_nul_characters() {
        let ep = endpoint(
            "echo",
            "svc.test.echo",
            |r: RpcRequest<serde_json::Value>| async move { RpcReply::ok(r.body) },
        );
        let ask = |body: serde_json::Value| {
            let ep = ep.clone();
            async move {
                let payload = contracts::wire::encode(&RpcRequest::new(body)).expect("encodes");
                let (reply, _code) = (ep.handler)(payload.into()).await;
                contracts::wire::decode::<RpcReply<serde_json::Value>>(&reply).expect("decodes")
            }
        };
        let ok = ask(serde_json::json!({"name": "Ada"})).await;
        assert_eq!(ok, RpcReply::ok(serde_json::json!({"name": "Ada"})));
        match ask(serde_json::json!({"name": "A\0da"})).await {
            RpcReply::Err(p) => {
                assert_eq!(p.code, ErrorCode::ValidationFailed);
                assert!(p.detail.unwrap_or_default().contains("U+0000"));
            }
            other => panic!("expected a problem, got {other:?}"),
        }
    }

    #[test]
    fn contracts_round_trip_through_metadata() {
        let c = Contracts::new()
            .produces::<RsvpChangedV1>()
            .produces::<RsvpChangedV2>()
            .consumes::<UserRegisteredV1>();
        let m = c.to_metadata();
        assert_eq!(
            m["contracts.produces"],
            r#"["calendar.rsvp_changed@1","calendar.rsvp_changed@2"]"#
        );
        assert_eq!(Contracts::from_metadata(&m), c);
        assert!(Contracts::new().to_metadata().is_empty());
        assert_eq!(Contracts::from_metadata(&HashMap::new()), Contracts::new());
    }
}
