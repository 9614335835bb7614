//! The message hospital at scale: dead letters parked straight on `dlq.<durable>` (as
//! workers do), a filtered dead-letter page at that size, and one replay of them all
//! as a group with the rate limit off, counted as acknowledged publishes on the
//! durable's replay subject in the source stream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use contracts::hospital::{Diagnosis, ErrorKind, ParkedMessage};
use futures::TryStreamExt;
use http::Method;
use serde_json::json;
use uuid::Uuid;

use super::{Ctx, baselines, require};
use crate::http::{Call, bearer};
use crate::load::{ClosedLoop, closed_loop};
use crate::mesh::{BenchMesh, MeshSpec, binary};
use crate::report::{Row, Target};

/// A durable no service consumes: replays pile up in the stream, where they are counted.
const DURABLE: &str = "bench-calendar";
const ADMIN_EMAIL: &str = "bench-ops@example.com";
const ADMIN_PASSWORD: &str = "bench ops password";
/// Replay target (msg/s).
const REPLAY_TARGET: f64 = 20_000.0;
/// Filtered page p99 target (ms).
const PAGE_P99_MS: f64 = 200.0;

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    if binary(&ctx.settings.bin_dir, "hospital").is_none() {
        ctx.report.note(format!(
            "hospital skipped: {} does not exist (no hospital service built)",
            ctx.settings.bin_dir.join("mesh-hospital").display()
        ));
        return Ok(());
    }
    let publish_baseline = baselines::js_publish(ctx).await?;
    eprintln!("bench: hospital: starting auth + calendar + hospital + gateway");
    let spec = MeshSpec::new(
        &["auth", "calendar", "hospital", "gateway"],
        ctx.settings.backend,
        &ctx.settings.bin_dir,
    )
    .with_env("auth", "AUTH_ADMIN_EMAILS", ADMIN_EMAIL)
    .with_env("hospital", "HOSPITAL_REPLAY_RATE_PER_SEC", "0");
    let mesh = BenchMesh::start(spec).await?;
    let result = body(ctx, &mesh, publish_baseline).await;
    if result.is_err() {
        eprintln!("{}", mesh.log_tails(30));
    }
    mesh.shutdown().await;
    result
}

async fn body(ctx: &mut Ctx, mesh: &BenchMesh, publish_baseline: f64) -> Result<()> {
    let n = ctx.settings.parked;
    let gateway = mesh.gateway_urls()[0].clone();
    let http = ctx.http.clone();
    http.json_ok(
        &gateway,
        &Call::with_json(
            Method::POST,
            "/v1/auth/register",
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "display_name": "Ops"}),
        ),
    )
    .await?;
    let login = http
        .json_ok(
            &gateway,
            &Call::with_json(
                Method::POST,
                "/v1/auth/login",
                None,
                &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
            ),
        )
        .await?;
    let admin = bearer(
        login["access_token"]
            .as_str()
            .context("no access token in the admin login")?,
    )?;

    eprintln!("bench: hospital: parking {n} messages on dlq.{DURABLE}");
    let started = Instant::now();
    park(mesh, n).await?;
    let park_rate = n as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let fingerprint = integration::poll_until(
        ctx.settings.setup_timeout,
        &format!("{n} dead letters indexed"),
        || async {
            let call = Call::get(
                format!("/v1/admin/dlq/groups?durable={DURABLE}&status=parked"),
                Some(&admin),
            );
            let groups = http.json_ok(&gateway, &call).await.ok()?;
            let group = groups["items"].as_array()?.first()?.clone();
            (group["parked"].as_u64()? >= n as u64)
                .then(|| group["fingerprint"].as_str().map(str::to_owned))
                .flatten()
        },
    )
    .await?;
    let index_rate = n as f64 / started.elapsed().as_secs_f64();
    ctx.report.push(
        Row::new("hospital", "dead letters indexed", index_rate, "msg/s")
            .note(format!("{n} parked at {park_rate:.0} msg/s")),
    );

    // Filtered pages at n parked: one filter matching all, one matching a single letter.
    let spec = ClosedLoop {
        concurrency: 4,
        warmup: Duration::ZERO,
        measure: Duration::from_secs(120),
        max_requests: Some(ctx.settings.page_requests),
    };
    let mut pages = serde_json::Map::new();
    for (label, filter) in [
        ("broad", "error=timeout".to_owned()),
        ("narrow", format!("error=after%20{}%20ms", n / 2)),
    ] {
        eprintln!("bench: hospital: filtered page ({label}: {filter})");
        let path = format!("/v1/admin/dlq/messages?durable={DURABLE}&{filter}&limit=50");
        let auth = admin.clone();
        let outcome = closed_loop(
            &ctx.http,
            std::slice::from_ref(&gateway),
            &spec,
            move |_| Call::get(path.clone(), Some(&auth)),
        )
        .await;
        require(&outcome, "dead-letter page")?;
        ctx.report.push(
            Row::new(
                "hospital",
                &format!("filtered dead-letter page p99 ({label}, {n} parked)"),
                outcome.latency.p99_ms,
                "ms",
            )
            .target(Target::Below(PAGE_P99_MS))
            .note(format!("p50 {:.1} ms", outcome.latency.p50_ms)),
        );
        pages.insert(label.to_owned(), serde_json::to_value(&outcome)?);
    }

    eprintln!("bench: hospital: replaying the group of {n} with no rate limit");
    let js = mesh.jetstream().await?;
    let before = replays_in_stream(&js).await?;
    let started = Instant::now();
    let result = http
        .json_ok(
            &gateway,
            &Call::with_json(
                Method::POST,
                "/v1/admin/dlq/replay",
                Some(&admin),
                &json!({
                    "selection": {"group": {"durable": DURABLE, "fingerprint": fingerprint}},
                    "rate_per_sec": 0,
                    "reason": "bench replay",
                }),
            ),
        )
        .await?;
    let deadline = started + ctx.settings.setup_timeout;
    let mut series: Vec<(f64, u64)> = Vec::new();
    let replayed = loop {
        let count = replays_in_stream(&js).await?.saturating_sub(before);
        series.push((started.elapsed().as_secs_f64(), count));
        if count >= n as u64 {
            break count;
        }
        if Instant::now() >= deadline {
            bail!("only {count} of {n} replays reached the stream within the set-up timeout");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed().as_secs_f64();
    let rate = replayed as f64 / took;
    // A moment later the count must not have grown: each letter replayed once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = replays_in_stream(&js).await?.saturating_sub(before);
    let mut row = Row::new("hospital", "replay publishes acknowledged", rate, "msg/s")
        .baseline("JetStream publish", publish_baseline)
        .target(Target::AtLeast(REPLAY_TARGET));
    row = row.note(if settled == n as u64 {
        format!("{n} replayed, each once")
    } else {
        format!("{settled} replays for {n} letters")
    });
    ctx.report.push(row);
    ctx.report.note(
        "hospital: mails delivered by a replay are not measured (the parked letters belong to a \
         durable no service consumes, so the replay rate is the hospital's alone)",
    );
    ctx.report.detail(
        "hospital",
        json!({
            "parked": n, "park_rate": park_rate, "index_rate": index_rate,
            "pages": pages, "replay_rate": rate, "replay_secs": took,
            "replayed": settled, "job": result, "series": series,
        }),
    );
    Ok(())
}

/// Publishes `n` parked copies for [`DURABLE`] on the DLQ, 512 acks outstanding.
async fn park(mesh: &BenchMesh, n: usize) -> Result<()> {
    let js = mesh.jetstream().await?;
    let mut window = VecDeque::new();
    let now = jiff::Timestamp::now();
    for i in 0..n {
        let sequence = 1_000_000 + i as u64;
        let park_id = ParkedMessage::park_id(DURABLE, "CALENDAR", sequence);
        let message_id = Uuid::now_v7().to_string();
        let parked = ParkedMessage {
            park_id: park_id.clone(),
            diagnosis: Diagnosis {
                service: "bench".into(),
                durable: DURABLE.into(),
                stream: "CALENDAR".into(),
                subject: "calendar.v1.rsvp.changed".into(),
                stream_sequence: sequence,
                message_id: Some(message_id.clone()),
                message_type: Some("calendar.rsvp_changed".into()),
                schema_version: Some(1),
                error_kind: ErrorKind::Transient,
                error: format!("upstream timeout after {i} ms"),
                deliveries: 3,
                first_failure_at: now,
                last_failure_at: now,
                trace_id: None,
                replay_of: None,
            },
            headers: vec![
                ("Mesh-Message-Id".into(), message_id),
                ("Mesh-Message-Type".into(), "calendar.rsvp_changed".into()),
                ("Mesh-Schema-Version".into(), "1".into()),
            ],
            payload: contracts::wire::encode(&json!({ "n": i }))?,
            parked_at: now,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", park_id.as_str());
        let ack = js
            .publish_with_headers(
                contracts::subjects::dlq_subject(DURABLE),
                headers,
                contracts::wire::encode(&parked)?.into(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("park: {e}"))?;
        window.push_back(ack);
        if window.len() >= baselines::PUBLISH_WINDOW
            && let Some(ack) = window.pop_front()
        {
            ack.await.map_err(|e| anyhow::anyhow!("park ack: {e}"))?;
        }
    }
    for ack in window {
        ack.await.map_err(|e| anyhow::anyhow!("park ack: {e}"))?;
    }
    Ok(())
}

/// Messages on [`DURABLE`]'s replay subjects in the CALENDAR stream.
async fn replays_in_stream(js: &jetstream::Context) -> Result<u64> {
    let stream = js
        .get_stream("CALENDAR")
        .await
        .map_err(|e| anyhow::anyhow!("stream CALENDAR: {e}"))?;
    let filter = contracts::subjects::replay_filter("CALENDAR", DURABLE)
        .unwrap_or_else(|| format!("calendar.replay.{DURABLE}.>"));
    let mut info = stream
        .info_with_subjects(filter)
        .await
        .map_err(|e| anyhow::anyhow!("stream info: {e}"))?;
    let mut total = 0;
    while let Some((_, count)) = info
        .try_next()
        .await
        .map_err(|e| anyhow::anyhow!("stream subjects: {e}"))?
    {
        total += count as u64;
    }
    Ok(total)
}
