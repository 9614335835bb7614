//! Same-run baselines: what plain axum, plain NATS and plain JetStream do on this box
//! through the same load generator, so every mesh figure is read as a ratio.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use integration::{NatsServer, ServiceProcess};
use serde::Serialize;

use super::{Ctx, authority, require};
use crate::clients::Fleet;
use crate::http::Call;
use crate::load::{Outcome, closed_loop};
use crate::mesh::vm_rss_kib;
use crate::report::Row;
use crate::serve::ROLE_ENV;

/// Acks a JetStream publisher keeps outstanding.
pub const PUBLISH_WINDOW: usize = 512;

/// Baselines measured so far in this run.
#[derive(Default)]
pub struct Baselines {
    nats: Option<NatsServer>,
    pub hello: Option<Outcome>,
    pub axum_nats: Option<Outcome>,
    pub js_publish: Option<f64>,
    pub pull: Option<f64>,
    pub sse: Option<SseBaseline>,
}

/// Memory of idle streams in plain axum.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SseBaseline {
    pub connections: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_connection: f64,
}

/// Every baseline.
pub async fn all(ctx: &mut Ctx) -> Result<()> {
    hello(ctx).await?;
    axum_nats(ctx).await?;
    js_publish(ctx).await?;
    pull(ctx).await?;
    sse(ctx).await?;
    Ok(())
}

/// The baselines' own nats-server (not the mesh's, so their streams stay apart).
async fn nats_url(ctx: &mut Ctx) -> Result<String> {
    if ctx.baselines.nats.is_none() {
        ctx.baselines.nats = Some(NatsServer::start().await?);
    }
    ctx.baselines
        .nats
        .as_ref()
        .map(NatsServer::url)
        .context("baseline nats-server")
}

/// The bench binary as a baseline server with `role`, ready.
async fn serve(ctx: &Ctx, role: &str, nats: Option<&str>) -> Result<ServiceProcess> {
    let mut env = HashMap::from([(ROLE_ENV.to_owned(), role.to_owned())]);
    if let Some(url) = nats {
        env.insert("NATS_URL".to_owned(), url.to_owned());
    }
    let mut process = ServiceProcess::spawn_binary(ctx.exe.clone(), env)?;
    process.wait_ready(Duration::from_secs(30)).await?;
    Ok(process)
}

fn push_http_row(ctx: &mut Ctx, metric: &str, outcome: &Outcome) {
    ctx.report.push(
        Row::new("baseline", metric, outcome.throughput, "req/s").note(format!(
            "p50 {:.2} ms, p99 {:.2} ms, c={}",
            outcome.latency.p50_ms, outcome.latency.p99_ms, ctx.settings.closed.concurrency
        )),
    );
}

/// Raw axum hello-world.
pub async fn hello(ctx: &mut Ctx) -> Result<f64> {
    if let Some(o) = &ctx.baselines.hello {
        return Ok(o.throughput);
    }
    eprintln!("bench: baseline: axum hello-world");
    let mut server = serve(ctx, "hello", None).await?;
    let outcome = closed_loop(&ctx.http, &[server.url("")], &ctx.settings.closed, |_| {
        Call::get("/hello", None)
    })
    .await;
    let _ = server.terminate().await;
    require(&outcome, "axum hello-world")?;
    push_http_row(ctx, "axum hello-world", &outcome);
    ctx.report.detail("baseline_axum_hello", &outcome);
    let throughput = outcome.throughput;
    ctx.baselines.hello = Some(outcome);
    Ok(throughput)
}

/// Raw axum handler doing one NATS request/reply to a trivial responder (another process).
pub async fn axum_nats(ctx: &mut Ctx) -> Result<f64> {
    if let Some(o) = &ctx.baselines.axum_nats {
        return Ok(o.throughput);
    }
    eprintln!("bench: baseline: axum + NATS request/reply");
    let url = nats_url(ctx).await?;
    let mut responder = serve(ctx, "responder", Some(&url)).await?;
    let mut server = serve(ctx, "nats", Some(&url)).await?;
    let outcome = closed_loop(&ctx.http, &[server.url("")], &ctx.settings.closed, |_| {
        Call::get("/nats", None)
    })
    .await;
    let _ = server.terminate().await;
    let _ = responder.terminate().await;
    require(&outcome, "axum + NATS request/reply")?;
    push_http_row(ctx, "axum + NATS request/reply", &outcome);
    ctx.report.detail("baseline_axum_nats", &outcome);
    let throughput = outcome.throughput;
    ctx.baselines.axum_nats = Some(outcome);
    Ok(throughput)
}

/// The stream both JetStream baselines use.
async fn bench_stream(js: &jetstream::Context) -> Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.js.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("create stream BENCH: {e}"))
}

/// Raw JetStream publish with [`PUBLISH_WINDOW`] acks outstanding: msg/s acknowledged.
pub async fn js_publish(ctx: &mut Ctx) -> Result<f64> {
    if let Some(rate) = ctx.baselines.js_publish {
        return Ok(rate);
    }
    eprintln!("bench: baseline: JetStream publish, {PUBLISH_WINDOW} acks in flight");
    let url = nats_url(ctx).await?;
    let client = async_nats::connect(&url).await?;
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(PUBLISH_WINDOW * 2)
        .backpressure_on_inflight(true)
        .build(client);
    bench_stream(&js).await?;
    let n = ctx.settings.js_messages;
    let payload = bytes::Bytes::from(vec![0x42u8; 256]);
    let started = Instant::now();
    let mut window: VecDeque<jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(PUBLISH_WINDOW);
    for i in 0..n {
        if window.len() >= PUBLISH_WINDOW
            && let Some(ack) = window.pop_front()
        {
            ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
        }
        let ack = js
            .publish(format!("bench.js.{}", i % 16), payload.clone())
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        window.push_back(ack);
    }
    for ack in window {
        ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    ctx.report.push(
        Row::new("baseline", "JetStream publish", rate, "msg/s")
            .note(format!("{PUBLISH_WINDOW} acks in flight, {n} × 256 B")),
    );
    ctx.baselines.js_publish = Some(rate);
    Ok(rate)
}

/// Raw pull-consumer throughput over the messages [`js_publish`] stored: msg/s acked.
pub async fn pull(ctx: &mut Ctx) -> Result<f64> {
    if let Some(rate) = ctx.baselines.pull {
        return Ok(rate);
    }
    js_publish(ctx).await?;
    eprintln!("bench: baseline: JetStream pull consumer");
    let url = nats_url(ctx).await?;
    let js = jetstream::new(async_nats::connect(&url).await?);
    let stream = bench_stream(&js).await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench-pull".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
    let n = ctx.settings.js_messages;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("consume: {e}"))?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < n {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .context("the pull consumer stalled")?;
        let Some(message) = next else {
            bail!("the pull consumer ended after {got} messages");
        };
        let message = message.map_err(|e| anyhow::anyhow!("pull: {e}"))?;
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        got += 1;
    }
    let rate = got as f64 / started.elapsed().as_secs_f64();
    ctx.report.push(
        Row::new("baseline", "JetStream pull consumer", rate, "msg/s")
            .note(format!("{got} messages, explicit acks")),
    );
    ctx.baselines.pull = Some(rate);
    Ok(rate)
}

/// Raw axum holding idle SSE streams (a child process): KiB of RSS per stream.
pub async fn sse(ctx: &mut Ctx) -> Result<SseBaseline> {
    if let Some(b) = ctx.baselines.sse {
        return Ok(b);
    }
    let n = ctx.settings.sse_clients;
    eprintln!("bench: baseline: axum holding {n} idle SSE streams");
    let mut server = serve(ctx, "sse", None).await?;
    let pid = server.pid().context("sse server pid")?;
    let baseline = hold_streams(ctx, pid, authority(&server.url("")), "/sse", n, |_| {
        Ok("unused".to_owned())
    })
    .await;
    let _ = server.terminate().await;
    let (baseline, fleet) = baseline?;
    fleet.stop().await;
    ctx.report.push(
        Row::new(
            "baseline",
            "axum idle SSE stream RSS",
            baseline.kib_per_connection,
            "KiB/conn",
        )
        .note(format!("{} streams", baseline.connections)),
    );
    ctx.report.detail("baseline_sse", baseline);
    ctx.baselines.sse = Some(baseline);
    Ok(baseline)
}

/// Opens `n` streams on `addr` from client processes and measures the RSS growth of
/// `pid`; returns the figures and the fleet (still connected).
pub async fn hold_streams(
    ctx: &Ctx,
    pid: u32,
    addr: &str,
    path: &str,
    n: usize,
    token: impl Fn(usize) -> Result<String>,
) -> Result<(SseBaseline, Fleet)> {
    let tokens = (0..n).map(token).collect::<Result<Vec<_>>>()?;
    let before = vm_rss_kib(pid)?;
    let mut fleet = Fleet::spawn(
        &ctx.exe,
        addr,
        path,
        &tokens,
        ctx.settings.sse_per_process,
        64,
    )
    .await?;
    let connected = fleet.wait_connected(ctx.settings.setup_timeout).await?;
    if connected.ok == 0 {
        bail!(
            "no SSE stream opened ({} failed: {})",
            connected.failed,
            connected.first_error.as_deref().unwrap_or("?")
        );
    }
    if connected.failed > 0 {
        eprintln!(
            "bench:   {} of {n} streams failed to open: {}",
            connected.failed,
            connected.first_error.as_deref().unwrap_or("?")
        );
    }
    // Let allocator caches and lazily grown buffers settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vm_rss_kib(pid)?;
    let per = after.saturating_sub(before) as f64 / connected.ok as f64;
    eprintln!(
        "bench:   {} streams over {} processes: RSS {before} KiB -> {after} KiB",
        connected.ok,
        fleet.processes()
    );
    Ok((
        SseBaseline {
            connections: connected.ok,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_connection: per,
        },
        fleet,
    ))
}
