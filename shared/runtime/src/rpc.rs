//! Request/reply endpoints as NATS micro services.
//!
//! A service declares its endpoints as data ([`Endpoint`]: name, subject, the public
//! HTTP route it backs, and a typed async handler) and [`serve`] runs them: all replicas
//! join one queue group (each request reaches one replica), every request runs in its
//! own task under a concurrency limit, inherits the caller's trace context, and on
//! shutdown the endpoints stop taking requests while in-flight ones finish.
//!
//! A body that does not decode into the handler's request type is answered with
//! `validation_failed` and serde's explanation; handlers only see well-typed input.

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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<Vec<u8>> + Send + Sync>;

/// One request/reply endpoint.
#[derive(Clone)]
pub struct Endpoint {
    pub name: &'static str,
    pub subject: &'static str,
    /// The public route it serves, e.g. `PUT /v1/events/{id}/rsvp` (discovery metadata).
    pub http: Option<&'static str>,
    handler: Handler,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("http", &self.http)
            .finish()
    }
}

/// Builds an endpoint from a typed handler.
pub fn endpoint<B, T, F, Fut>(
    name: &'static str,
    subject: &'static str,
    http: Option<&'static str>,
    handler: F,
) -> Endpoint
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
                Ok(request) => encode_reply(&handler(request).await),
                Err(e) => {
                    let detail = match e {
                        contracts::wire::WireError::Decode(e) => e.to_string(),
                        other => other.to_string(),
                    };
                    encode_reply(&RpcReply::<()>::Err(
                        Problem::new(ErrorCode::ValidationFailed).with_detail(detail),
                    ))
                }
            }
        })
    });
    Endpoint {
        name,
        subject,
        http,
        handler,
    }
}

fn encode_reply<T: Serialize>(reply: &RpcReply<T>) -> Vec<u8> {
    contracts::wire::encode(reply).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode reply");
        contracts::wire::encode(&RpcReply::<()>::Err(Problem::new(ErrorCode::Internal)))
            .unwrap_or_default()
    })
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
    let err = |source| ServeError {
        name: spec.name,
        source,
    };
    let service = client
        .service_builder()
        .description(spec.description)
        .queue_group(contracts::subjects::RPC_QUEUE_GROUP)
        .start(spec.name, spec.version)
        .await
        .map_err(err)?;
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    let mut loops = Vec::new();
    for ep in spec.endpoints {
        let mut metadata = HashMap::new();
        if let Some(http) = ep.http {
            metadata.insert("http".to_owned(), http.to_owned());
        }
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
                tracker.spawn(
                    async move {
                        let reply = handler(request.message.payload.clone()).await;
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
