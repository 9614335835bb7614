//! A small OTLP/HTTP trace receiver: the services export to it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` = [`OtlpReceiver::endpoint`]) and a test reads the
//! spans back, decoded with the `opentelemetry-proto` types the exporter encodes with.
//!
//! It accepts `POST /v1/traces` with a protobuf `ExportTraceServiceRequest` (what the
//! services' `http-proto` exporter sends) and answers an empty
//! `ExportTraceServiceResponse`; anything else is refused, so a wrong encoding fails the
//! test instead of passing silently.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use tokio::task::JoinHandle;

/// One received span, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that exported it.
    pub service: String,
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// String (and stringified other) attributes.
    pub attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
}

/// The receiver, listening on a free loopback port until dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("OTLP receiver stopped: {e}");
            }
        });
        Ok(OtlpReceiver { addr, spans, task })
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter adds `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/x-protobuf" {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected application/x-protobuf, got {content_type:?}"),
        )
            .into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| attribute_value(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), value_text(kv)?)))
                        .collect(),
                });
            }
        }
    }
    spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(received);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn attribute_value(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(value_text)
}

fn value_text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Checks that `spans` form one tree: every parent is in the set, and exactly one span
/// is the root. Returns the root, or a description of what is wrong.
pub fn one_tree(spans: &[ReceivedSpan]) -> std::result::Result<&ReceivedSpan, String> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let orphans: Vec<String> = spans
        .iter()
        .filter(|s| !s.is_root() && !ids.contains(s.parent_span_id.as_str()))
        .map(|s| {
            format!(
                "{}/{} (parent {} not in the trace)",
                s.service, s.name, s.parent_span_id
            )
        })
        .collect();
    let roots: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.is_root()).collect();
    match (orphans.is_empty(), roots.as_slice()) {
        (true, [root]) => Ok(root),
        _ => Err(format!(
            "not one tree: roots {:?}, orphans {orphans:?}",
            roots
                .iter()
                .map(|r| format!("{}/{}", r.service, r.name))
                .collect::<Vec<_>>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, id: &str, parent: &str) -> ReceivedSpan {
        ReceivedSpan {
            service: service.into(),
            name: id.into(),
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            kind: 1,
            attributes: HashMap::new(),
        }
    }

    #[test]
    fn a_tree_has_one_root_and_no_orphans() {
        let tree = [span("a", "1", ""), span("b", "2", "1"), span("c", "3", "2")];
        assert_eq!(one_tree(&tree).map(|r| r.span_id.clone()), Ok("1".into()));
        let orphan = [span("a", "1", ""), span("b", "2", "9")];
        assert!(one_tree(&orphan).unwrap_err().contains("b/2"));
        let forest = [span("a", "1", ""), span("b", "2", "")];
        assert!(one_tree(&forest).is_err());
    }

    #[tokio::test]
    async fn receives_what_the_sdk_exports() -> Result<()> {
        let receiver = OtlpReceiver::start().await?;
        let endpoint = format!("{}/v1/traces", receiver.endpoint());
        // The SDK's blocking HTTP client must run off the runtime's threads.
        std::thread::spawn(move || -> Result<()> {
            use opentelemetry::trace::{Span as _, TraceContextExt, Tracer, TracerProvider as _};
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("harness")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("harness");
            let parent = tracer.start("parent");
            let cx = opentelemetry::Context::current_with_span(parent);
            let mut child = tracer.start_with_context("child", &cx);
            child.end();
            cx.span().end();
            provider.shutdown()?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the exporting thread panicked"))??;
        let spans = crate::poll_until(
            std::time::Duration::from_secs(10),
            "both spans at the receiver",
            || async { (receiver.spans().len() >= 2).then(|| receiver.spans()) },
        )
        .await?;
        let root = one_tree(&spans).map_err(anyhow::Error::msg)?;
        assert_eq!(root.name, "parent");
        assert!(spans.iter().all(|s| s.service == "harness"));
        assert!(spans.iter().all(|s| s.trace_id == root.trace_id));
        Ok(())
    }
}
