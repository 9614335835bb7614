//! Bulk replays: 10,000 dead letters as one group, an interrupted job run again, and a
//! crash between the stream's ack and the status update. Each message reaches its
//! durable exactly once in total.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_nats::HeaderMap;
use contracts::hospital::{Diagnosis, ErrorKind, JobStatus, ParkedMessage};
use contracts::subjects::{calendar as cal, headers as h};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jiff::Timestamp;
use uuid::Uuid;

use crate::helpers::*;
use crate::{both_backends, sqlite_only};

sqlite_only!(a_paced_replay_keeps_its_rate);
both_backends!(
    ten_thousand_replayed_as_one_group,
    an_interrupted_job_run_again_sends_each_message_once,
    an_interrupted_unlimited_replay_run_again_sends_each_message_once,
    a_crash_after_the_ack_sends_nothing_twice,
);

const BULK: &str = "bulk-calendar";

/// Parks `n` messages for `durable` the way workers do (a `ParkedMessage` on
/// `dlq.<durable>`, park id as `Nats-Msg-Id`), with one cause; returns their ids.
async fn park_many(app: &TestApp, durable: &str, n: u64) -> Result<Vec<String>> {
    let now = Timestamp::now();
    let mut ids = Vec::new();
    let mut acks = FuturesUnordered::new();
    for seq in 1..=n {
        let ev = event(&format!("bulk {seq}"));
        let message_id = ev.meta.message_id.to_string();
        let park_id = ParkedMessage::park_id(durable, "CALENDAR", seq);
        let parked = ParkedMessage {
            park_id: park_id.clone(),
            diagnosis: Diagnosis {
                service: "bulk".into(),
                durable: durable.into(),
                stream: "CALENDAR".into(),
                subject: cal::EVENT_CREATED_V1.into(),
                stream_sequence: seq,
                message_id: Some(message_id.clone()),
                message_type: Some("calendar.event_created".into()),
                schema_version: Some(1),
                error_kind: ErrorKind::Transient,
                error: format!(
                    "smtp timeout after {} ms talking to mx{seq}.example.com",
                    30000 + seq
                ),
                deliveries: 8,
                first_failure_at: now,
                last_failure_at: now,
                trace_id: None,
                replay_of: None,
            },
            headers: vec![
                (h::NATS_MSG_ID.into(), message_id.clone()),
                (h::MESSAGE_ID.into(), message_id.clone()),
                (h::MESSAGE_TYPE.into(), "calendar.event_created".into()),
                (h::SCHEMA_VERSION.into(), "1".into()),
            ],
            payload: contracts::wire::encode(&ev)?,
            parked_at: now,
        };
        let mut map = HeaderMap::new();
        map.insert(h::NATS_MSG_ID, park_id.as_str());
        let ack = app
            .js
            .publish_with_headers(
                format!("dlq.{durable}"),
                map,
                contracts::wire::encode(&parked)?.into(),
            )
            .await?;
        acks.push(async move { ack.await });
        if acks.len() >= 512 {
            while let Some(ack) = acks.next().await {
                ack?;
            }
        }
        ids.push(message_id);
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(ids)
}

async fn indexed(app: &TestApp) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(&app.db.pool)
        .await?)
}

async fn wait_indexed(app: &TestApp, n: i64) -> Result<()> {
    poll_until(
        &format!("{n} indexed"),
        Duration::from_secs(120),
        || async { (indexed(app).await.ok()? >= n).then_some(()) },
    )
    .await
}

/// The replays the durable would receive: every message on its replay subject, and
/// how many distinct message ids they carry.
async fn replays_received(app: &TestApp, durable: &str) -> Result<(usize, usize, usize)> {
    let msgs = app
        .messages_on("CALENDAR", &format!("calendar.replay.{durable}.>"))
        .await?;
    let seqs: HashSet<u64> = msgs.iter().map(|(s, _)| *s).collect();
    let ids: HashSet<String> = msgs
        .iter()
        .filter_map(|(_, m)| m.get(h::MESSAGE_ID).map(|v| v.as_str().to_owned()))
        .collect();
    Ok((msgs.len(), seqs.len(), ids.len()))
}

async fn ten_thousand_replayed_as_one_group(backend: Backend) -> Result<()> {
    const N: u64 = 10_000;
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let started = Instant::now();
    park_many(&app, BULK, N).await?;
    let parked_in = started.elapsed();
    wait_indexed(&app, N as i64).await?;
    let indexed_in = started.elapsed();
    let one = app.dead_letters(&[("limit", "1")]).await?.remove(0);

    let started = Instant::now();
    let r = app.replay(group_of(&one), Some(0)).await?;
    assert_eq!(r.matched, N);
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(300))
        .await?;
    let replayed_in = started.elapsed();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!((job.total, job.done, job.skipped, job.failed), (N, N, 0, 0));
    assert_eq!(job.rate_per_sec, Some(0));
    assert_eq!(
        replays_received(&app, BULK).await?,
        (N as usize, N as usize, N as usize)
    );
    eprintln!(
        "10k ({backend:?}): parked in {parked_in:?}, indexed after {indexed_in:?}, \
         replayed in {replayed_in:?} ({:.0} replays/s)",
        N as f64 / replayed_in.as_secs_f64()
    );

    // Run again: nothing is sent.
    let r = app.replay(group_of(&one), Some(0)).await?;
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(120))
        .await?;
    assert_eq!((job.total, job.done, job.skipped), (N, 0, N));
    assert_eq!(replays_received(&app, BULK).await?.0, N as usize);
    app.stop().await
}

async fn an_interrupted_job_run_again_sends_each_message_once(backend: Backend) -> Result<()> {
    // Paced, so it is still running when the hospital stops.
    interrupted_and_run_again(backend, 3_000, 1500, 300).await
}

/// Unlimited: the hospital stops with up to a window of publishes (over more than one
/// claimed chunk) unacknowledged; each of them is recorded or given back, none lost or
/// sent twice.
async fn an_interrupted_unlimited_replay_run_again_sends_each_message_once(
    backend: Backend,
) -> Result<()> {
    interrupted_and_run_again(backend, 30_000, 0, 2_500).await
}

async fn interrupted_and_run_again(
    backend: Backend,
    n: u64,
    rate: u32,
    stop_after: u64,
) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    park_many(&app, BULK, n).await?;
    wait_indexed(&app, n as i64).await?;
    let one = app.dead_letters(&[("limit", "1")]).await?.remove(0);

    let r = app.replay(group_of(&one), Some(rate)).await?;
    let id = r.job.expect("a job").id;
    poll_until(
        "the job to be under way",
        Duration::from_secs(60),
        || async {
            let job = app.job(id).await.ok()?;
            (job.done >= stop_after).then_some(())
        },
    )
    .await?;
    app.stop().await?;

    let app = TestApp::spawn(&nats, &db).await?;
    let job = app.job(id).await?;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.error.as_deref(),
        Some("interrupted; run the action again")
    );
    assert!(job.done > 0 && job.done < n, "done {}", job.done);
    let (sent, _, _) = replays_received(&app, BULK).await?;
    assert_eq!(
        sent as u64, job.done,
        "every acknowledged replay was recorded"
    );

    let r = app.replay(group_of(&one), Some(0)).await?;
    let rerun = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(120))
        .await?;
    assert_eq!(rerun.status, JobStatus::Completed);
    assert_eq!(rerun.done + job.done, n);
    assert_eq!(rerun.skipped, job.done);
    assert_eq!(
        replays_received(&app, BULK).await?,
        (n as usize, n as usize, n as usize)
    );
    app.stop().await
}

async fn a_crash_after_the_ack_sends_nothing_twice(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    park_many(&app, BULK, 3).await?;
    wait_indexed(&app, 3).await?;
    let all = app.dead_letters(&[]).await?;
    let victim = &all[0];

    // A process published the victim's replay, the stream acknowledged it, and the
    // process died before recording it: its job is still "running", the row claimed.
    let dead_job = Uuid::now_v7();
    let long_ago = runtime::db::to_micros(Timestamp::now()) - 3_600_000_000;
    sqlx::query(
        "INSERT INTO jobs (id, kind, status, total, done, skipped, failed, rate_per_sec, actor, \
         reason, selection, audit_id, error, created_at, heartbeat_at, finished_at) \
         VALUES ($1, 'replay', 'running', 3, 0, 0, 0, 0, $2, 'before the crash', '{}', $3, \
         NULL, $4, $4, NULL)",
    )
    .bind(dead_job.to_string())
    .bind(Uuid::now_v7().to_string())
    .bind(Uuid::now_v7().to_string())
    .bind(long_ago)
    .execute(&app.db.pool)
    .await?;
    sqlx::query("UPDATE dead_letters SET status = 'replaying', claim_job = $1 WHERE id = $2")
        .bind(dead_job.to_string())
        .bind(victim.id.to_string())
        .execute(&app.db.pool)
        .await?;
    let mut map = HeaderMap::new();
    map.insert(
        h::NATS_MSG_ID,
        format!("replay:{}:0", victim.park_id).as_str(),
    );
    map.insert(
        h::MESSAGE_ID,
        victim
            .diagnosis
            .message_id
            .clone()
            .unwrap_or_default()
            .as_str(),
    );
    map.insert(h::REPLAY_OF, victim.park_id.as_str());
    app.js
        .publish_with_headers(
            format!("calendar.replay.{BULK}.{}", cal::EVENT_CREATED_V1),
            map,
            b"already sent".to_vec().into(),
        )
        .await?
        .await?;
    app.stop().await?;

    // The next start marks the dead job failed and gives its claim back; the rerun's
    // publish of the victim is dropped by the stream as a duplicate.
    let app = TestApp::spawn(&nats, &db).await?;
    let job = app.job(dead_job).await?;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.error.as_deref(),
        Some("interrupted; run the action again")
    );
    let r = app.replay(group_of(victim), Some(0)).await?;
    let rerun = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(30))
        .await?;
    assert_eq!((rerun.total, rerun.done, rerun.skipped), (3, 3, 0));
    assert_eq!(replays_received(&app, BULK).await?, (3, 3, 3));
    app.stop().await
}

/// A bulk replay with a rate spreads its publishes: 60 at 20 per second take about three
/// seconds, not a burst. Generous bounds: a behaviour check, not a speed target.
async fn a_paced_replay_keeps_its_rate(backend: Backend) -> Result<()> {
    const N: u64 = 60;
    const RATE: u32 = 20;
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    park_many(&app, BULK, N).await?;
    wait_indexed(&app, N as i64).await?;
    let one = app.dead_letters(&[("limit", "1")]).await?.remove(0);

    let started = Instant::now();
    let r = app.replay(group_of(&one), Some(RATE)).await?;
    assert_eq!(r.job.as_ref().and_then(|j| j.rate_per_sec), Some(RATE));
    // What reached the stream one second in: about one second's worth, not all 60.
    tokio::time::sleep_until((started + Duration::from_secs(1)).into()).await;
    let after_one_second = replays_received(&app, BULK).await?.0;
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(60))
        .await?;
    let took = started.elapsed();
    assert_eq!((job.status, job.done), (JobStatus::Completed, N));
    assert_eq!(replays_received(&app, BULK).await?.0, N as usize);
    println!("{N} replays at {RATE}/s: {after_one_second} after 1 s, all after {took:?}");
    assert!(
        after_one_second <= 25,
        "{after_one_second} replays in the first second at {RATE}/s"
    );
    assert!(
        took >= Duration::from_millis(2500),
        "{N} replays at {RATE}/s took only {took:?}"
    );
    app.stop().await
}
