//! The baseline servers, run as child processes of the bench (the bench binary itself
//! with `BENCH_SERVE=<role>`), so each has its own runtime and its own RSS, like a
//! mesh service.
//!
//! Roles (all listen on `HTTP_ADDR` and answer `/readyz`, as the harness expects):
//! - `hello`: `GET /hello` answers a fixed text: the ceiling of axum on this box;
//! - `nats`: `GET /nats` does one NATS request/reply on [`ECHO_SUBJECT`] and answers
//!   the reply: the ceiling of a gateway that forwards to a service;
//! - `responder`: answers [`ECHO_SUBJECT`] with the request's payload (the trivial
//!   service behind `nats`);
//! - `sse`: `GET /sse` holds an idle Server-Sent Events stream with keep-alives: the
//!   memory an idle stream costs in plain axum.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::StreamExt;

/// The env variable naming the role.
pub const ROLE_ENV: &str = "BENCH_SERVE";
/// Subject of the request/reply baseline (outside every stream).
pub const ECHO_SUBJECT: &str = "bench.echo";
/// Queue group of the responders.
const ECHO_QUEUE: &str = "bench";
/// The payload the `nats` handler sends, about the size of a small RPC request.
const ECHO_PAYLOAD: &[u8] = &[0x5a; 96];

/// Runs the role until SIGTERM or Ctrl-C.
pub async fn run(role: &str) -> Result<()> {
    let addr = std::env::var("HTTP_ADDR").context("HTTP_ADDR is not set")?;
    let nats_url = std::env::var("NATS_URL").ok();
    let ready = Router::new().route("/readyz", get(|| async { "ok" }));
    let app = match role {
        "hello" => ready.route("/hello", get(|| async { "Hello, World!" })),
        "sse" => ready.route("/sse", get(idle_stream)),
        "nats" => {
            let client = connect(nats_url.as_deref()).await?;
            ready.route("/nats", get(forward).with_state(client))
        }
        "responder" => {
            let client = connect(nats_url.as_deref()).await?;
            tokio::spawn(respond(client));
            ready
        }
        other => bail!("unknown {ROLE_ENV} role {other:?}"),
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("Failed to bind {addr}"))?;
    let serve = axum::serve(listener, app);
    // Streams never end on their own, so no graceful drain: the signal ends the process.
    tokio::select! {
        result = serve => result.context("server failed")?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}

async fn connect(url: Option<&str>) -> Result<async_nats::Client> {
    let url = url.context("NATS_URL is not set")?;
    async_nats::connect(url)
        .await
        .with_context(|| format!("Failed to connect to {url}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn forward(State(client): State<async_nats::Client>) -> Result<Vec<u8>, StatusCode> {
    match client
        .request(ECHO_SUBJECT, bytes::Bytes::from_static(ECHO_PAYLOAD))
        .await
    {
        Ok(reply) => Ok(reply.payload.to_vec()),
        Err(_) => Err(StatusCode::BAD_GATEWAY),
    }
}

async fn respond(client: async_nats::Client) {
    let mut requests = match client
        .queue_subscribe(ECHO_SUBJECT, ECHO_QUEUE.to_owned())
        .await
    {
        Ok(sub) => sub,
        Err(err) => {
            eprintln!("responder: cannot subscribe: {err}");
            return;
        }
    };
    while let Some(message) = requests.next().await {
        if let Some(reply) = message.reply {
            let _ = client.publish(reply, message.payload).await;
        }
    }
}

async fn idle_stream() -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    Sse::new(futures::stream::pending()).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    )
}
