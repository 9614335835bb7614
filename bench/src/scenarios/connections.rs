//! Idle notification streams on one gateway: its RSS per stream against plain axum's,
//! and the time one notification takes to reach every connected user (published on
//! each user's `push.live.<user>`, as push does; measured until the last client got it).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use contracts::api::{Notification, NotificationKind};
use contracts::subjects::push;
use uuid::Uuid;

use super::{Ctx, authority, baselines};
use crate::clients::unix_micros;
use crate::mesh::{BenchMesh, MeshSpec};
use crate::report::{Row, Target};

/// Gateway RSS per stream at most this share of plain axum's.
const RSS_RATIO: f64 = 0.5;
/// One notification to every connected user within this (ms).
const FANOUT_MS: f64 = 500.0;
/// The stream route.
const STREAM_PATH: &str = "/v1/notifications/stream";

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let baseline = baselines::sse(ctx).await?;
    eprintln!("bench: connections: starting auth + gateway");
    let spec = MeshSpec::new(
        &["auth", "gateway"],
        ctx.settings.backend,
        &ctx.settings.bin_dir,
    )
    .with_env("auth", "AUTH_SIGNING_KEY_PEM", ctx.signer.pem());
    let mesh = BenchMesh::start(spec).await?;
    let result = body(ctx, &mesh, baseline).await;
    if result.is_err() {
        eprintln!("{}", mesh.log_tails(30));
    }
    mesh.shutdown().await;
    result
}

async fn body(ctx: &mut Ctx, mesh: &BenchMesh, baseline: baselines::SseBaseline) -> Result<()> {
    let n = ctx.settings.sse_clients;
    let gateway = mesh.service("gateway")?;
    let pid = gateway.pid().context("gateway pid")?;
    let addr = authority(&gateway.url("")).to_owned();
    let users: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    eprintln!("bench: connections: {n} idle streams on one gateway");
    let signer = ctx.signer.clone();
    let (held, mut fleet) = baselines::hold_streams(ctx, pid, &addr, STREAM_PATH, n, |i| {
        signer.user_token(users[i])
    })
    .await?;
    ctx.report.push(
        Row::new(
            "connections",
            "gateway RSS per idle SSE stream",
            held.kib_per_connection,
            "KiB/conn",
        )
        .baseline("axum SSE", baseline.kib_per_connection)
        .target(Target::RatioAtMost(RSS_RATIO))
        .note(format!("{} streams", held.connections)),
    );

    // Fan-out: one notification per user on its live subject.
    let client = mesh.nats().client().await?;
    let started_us = unix_micros();
    for user in &users {
        let notification = Notification {
            id: Uuid::now_v7(),
            seq: None,
            kind: NotificationKind::RsvpReceived,
            title: "bench fan-out".to_owned(),
            body: String::new(),
            event_id: None,
            created_at: jiff::Timestamp::now(),
            read_at: None,
        };
        let payload = contracts::wire::encode(&notification)?;
        client
            .publish(push::live_subject(user), payload.into())
            .await
            .context("publish a live notification")?;
    }
    client
        .flush()
        .await
        .context("flush the live notifications")?;
    let received = fleet.wait_received(Duration::from_secs(60)).await?;
    fleet.stop().await;
    let Some(last_us) = received.last_us else {
        bail!("no stream received the notification");
    };
    let fanout_ms = last_us.saturating_sub(started_us) as f64 / 1000.0;
    let mut row = Row::new(
        "connections",
        &format!("one notification to {} users", held.connections),
        fanout_ms,
        "ms",
    )
    .target(Target::Below(FANOUT_MS));
    if !received.complete {
        row = row.note(format!(
            "only {} of {} received within 60 s",
            received.received, held.connections
        ));
        row.met = Some(false);
    }
    ctx.report.push(row);
    ctx.report.detail(
        "connections",
        serde_json::json!({
            "streams": held,
            "fanout_ms": fanout_ms,
            "received": received.received,
            "complete": received.complete,
        }),
    );
    Ok(())
}
