//! The ward's edges: a full ward refuses parks and nothing is lost; a message the server
//! gives up on (max deliveries) is rescued by the hospital, into the ward or, when the
//! ward stays full, straight into the index; retries wait their backoff and show as
//! retrying; the same park stored twice is kept once.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use contracts::hospital::{
    BulkRequest, BulkResult, DeadLetterFilter, DeadLetterStatus, Diagnosis, ErrorKind, Outcome,
    ParkedMessage, Selection, WhereaboutsList,
};
use contracts::subjects::{calendar as cal, headers as h, hospital as subj};
use futures::StreamExt;
use jiff::Timestamp;

use crate::helpers::*;
use crate::{both_backends, sqlite_only};

both_backends!(
    a_full_ward_refuses_parks_and_loses_nothing,
    a_message_given_up_while_the_ward_stays_full_is_indexed_anyway,
);
sqlite_only!(
    a_message_given_up_by_the_server_is_parked_by_the_hospital,
    retries_wait_their_backoff_and_show_as_retrying,
    the_same_park_published_twice_is_stored_once,
);

/// A ward this small holds a few parked messages at most.
const WARD_BYTES: i64 = 64 * 1024;
/// Room left in the ward after the filler: less than any parked message needs.
const LEFT_OVER: usize = 400;

/// A hospital with a tiny ward.
async fn tiny_ward(nats: &NatsServer, db: &TestDb) -> Result<TestApp> {
    let mut config = config(nats, db);
    config.dlq_max_bytes = WARD_BYTES;
    let app = TestApp::spawn_with(config).await?;
    // The process's metrics recorder is installed by the first render.
    app.metrics().await?;
    Ok(app)
}

async fn ward_bytes(app: &TestApp) -> Result<u64> {
    Ok(app.js.get_stream("DLQ").await?.info().await?.state.bytes)
}

/// Fills the ward to within [`LEFT_OVER`] bytes with one message parked for `durable`.
async fn fill_ward(app: &TestApp, durable: &str) -> Result<()> {
    let mut map = HeaderMap::new();
    map.insert(
        h::NATS_MSG_ID,
        format!("park:{durable}:CALENDAR:1").as_str(),
    );
    let size = WARD_BYTES as usize - LEFT_OVER;
    app.js
        .publish_with_headers(format!("dlq.{durable}"), map, vec![0u8; size].into())
        .await?
        .await?;
    let used = ward_bytes(app).await?;
    assert!(
        used > (WARD_BYTES as u64) - LEFT_OVER as u64 && used <= WARD_BYTES as u64,
        "the ward is nearly full: {used} of {WARD_BYTES} bytes"
    );
    app.wait_dead_letters(&[("durable", durable)], 1).await?;
    Ok(())
}

fn by_durable(durable: &str, status: Option<DeadLetterStatus>) -> Selection {
    Selection {
        filter: Some(DeadLetterFilter {
            durable: Some(durable.into()),
            status,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What ops do to make room: discard the filler's dead letter, then purge the
/// discarded ones (which deletes their copies in the ward).
async fn discard_and_purge(app: &TestApp, durable: &str) -> Result<()> {
    for (rpc, status, reason) in [
        (subj::RPC_DISCARD, None, "filler"),
        (
            subj::RPC_PURGE,
            Some(DeadLetterStatus::Discarded),
            "make room",
        ),
    ] {
        let r: BulkResult = expect_ok(
            app.post(
                rpc,
                &[],
                BulkRequest {
                    selection: by_durable(durable, status),
                    dry_run: false,
                    reason: reason.into(),
                },
            )
            .await?,
        )?;
        let job = app
            .wait_job(r.job.context("a job")?.id, Duration::from_secs(30))
            .await?;
        assert_eq!((job.done, job.failed), (1, 0), "{rpc}: {job:?}");
    }
    Ok(())
}

async fn a_full_ward_refuses_parks_and_loses_nothing(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = tiny_ward(&nats, &db).await?;
    // Both backends run at once in one process: one durable (metric label) each.
    let durable = format!("full{}-calendar", backend.name());
    let filler = format!("filler{}-calendar", backend.name());
    fill_ward(&app, &filler).await?;

    let email =
        Subscriber::start_with(&app.js, SubscriberOptions::new(&durable, Boom::Permanent)).await?;
    let boom = event("boom in a full ward");
    let seq = app.publish(&boom, &trace_id()).await?;

    // Refused, again and again: the original keeps coming back, past the policy's 3
    // deliveries, and is never terminated.
    poll_until(
        "the refused original to come back",
        Duration::from_secs(30),
        || async { (email.seen_titled(&boom.event.title).len() >= 5).then_some(()) },
    )
    .await?;
    let refused = poll_until(
        "mesh_dlq_park_refused_total on /metrics",
        Duration::from_secs(10),
        || async {
            let n = app
                .metric("mesh_dlq_park_refused_total", ("durable", &durable))
                .await
                .ok()??;
            (n >= 4.0).then_some(n)
        },
    )
    .await?;
    let info = app.consumer_info("CALENDAR", &durable).await?;
    assert_eq!(
        info.num_ack_pending, 1,
        "the original is still pending: {info:?}"
    );
    assert!(
        info.ack_floor.stream_sequence < seq,
        "not acked or terminated"
    );
    assert!(
        app.messages_on("DLQ", &format!("dlq.{durable}"))
            .await?
            .is_empty(),
        "the ward took nothing for {durable}"
    );
    assert!(app.dead_letters(&[("durable", &durable)]).await?.is_empty());
    assert!(ward_bytes(&app).await? <= WARD_BYTES as u64);

    // Room again: the next delivery parks it, with its history of deliveries.
    discard_and_purge(&app, &filler).await?;
    let parked = app.wait_dead_letters(&[("durable", &durable)], 1).await?;
    let d = &parked[0].diagnosis;
    assert_eq!(d.stream_sequence, seq);
    assert_eq!(d.error_kind, ErrorKind::Permanent);
    assert!(
        d.deliveries >= 5,
        "parked on a late delivery: {}",
        d.deliveries
    );
    assert_eq!(
        d.message_id.as_deref(),
        Some(boom.meta.message_id.to_string().as_str())
    );
    let info = app.wait_drained("CALENDAR", &durable).await?;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(
        app.messages_on("DLQ", &format!("dlq.{durable}"))
            .await?
            .len(),
        1
    );
    println!(
        "{durable}: {refused} refused parks, then parked on delivery {}",
        d.deliveries
    );
    email.stop().await;
    app.stop().await
}

async fn a_message_given_up_while_the_ward_stays_full_is_indexed_anyway(
    backend: Backend,
) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = tiny_ward(&nats, &db).await?;
    let durable = format!("givenup{}-calendar", backend.name());
    fill_ward(&app, &format!("filler{}-calendar", backend.name())).await?;

    // A margin of 2 past the policy's 3 deliveries, which the full ward uses up.
    let mut options = SubscriberOptions::new(&durable, Boom::Permanent);
    options.server_max_deliver = Some(5);
    let email = Subscriber::start_with(&app.js, options).await?;
    let boom = event("boom, given up");
    let seq = app.publish(&boom, &trace_id()).await?;

    // The worker says so on its last delivery; the server's advisory reaches the
    // hospital, which cannot park it either and indexes it without a ward copy.
    let items = app.wait_dead_letters(&[("durable", &durable)], 1).await?;
    let d = &items[0];
    assert_eq!(d.park_id, format!("park:{durable}:CALENDAR:{seq}"));
    assert_eq!(d.diagnosis.stream_sequence, seq);
    assert_eq!(d.diagnosis.deliveries, 5);
    assert_eq!(d.diagnosis.error_kind, ErrorKind::Transient);
    assert!(
        d.diagnosis
            .error
            .starts_with("given up by the server after 5 deliveries"),
        "{}",
        d.diagnosis.error
    );
    assert_eq!(
        d.diagnosis.message_id.as_deref(),
        Some(boom.meta.message_id.to_string().as_str())
    );
    assert_eq!(d.diagnosis.subject, cal::EVENT_CREATED_V1);
    let seen = email.seen_titled(&boom.event.title);
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|s| s.stream_sequence == seq && !s.ok));
    assert!(
        app.messages_on("DLQ", &format!("dlq.{durable}"))
            .await?
            .is_empty(),
        "the ward stayed full"
    );
    for (counter, at_least) in [
        ("mesh_dlq_park_refused_total", 5.0),
        ("mesh_consumer_given_up_total", 1.0),
        ("mesh_consumer_max_deliveries_total", 1.0),
    ] {
        poll_until(
            &format!("{counter} for {durable}"),
            Duration::from_secs(10),
            || async {
                let n = app.metric(counter, ("durable", &durable)).await.ok()??;
                (n >= at_least).then_some(())
            },
        )
        .await?;
    }

    // Listed like any dead letter, so ops can replay it once its cause is fixed.
    email.fix();
    let r = app.replay(ids(&[d.id]), None).await?;
    let job = app
        .wait_job(r.job.context("a job")?.id, Duration::from_secs(30))
        .await?;
    assert_eq!(job.done, 1);
    poll_until("the replay", Duration::from_secs(30), || async {
        email
            .seen_titled(&boom.event.title)
            .iter()
            .any(|s| s.ok && s.replay_of.as_deref() == Some(d.park_id.as_str()))
            .then_some(())
    })
    .await?;
    email.stop().await;
    app.stop().await
}

/// A consumer that never settles its messages (a worker crashing on every delivery)
/// reaches max deliveries without parking anything: the hospital parks it.
async fn a_message_given_up_by_the_server_is_parked_by_the_hospital(
    backend: Backend,
) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let durable = "crashy-calendar";
    let stream = app.js.get_stream("CALENDAR").await?;
    let crashy: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_deliver: 2,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let boom = event("boom, crashes its worker");
    let seq = app.publish(&boom, &trace_id()).await?;
    let mut messages = crashy.messages().await?;
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await?
            .context("a delivery")??;
        // The worker dies: the message comes back at once.
        m.ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    drop(messages);

    let items = app.wait_dead_letters(&[("durable", durable)], 1).await?;
    let d = &items[0];
    assert_eq!(d.park_id, format!("park:{durable}:CALENDAR:{seq}"));
    assert_eq!(d.diagnosis.deliveries, 2);
    assert_eq!(d.diagnosis.service, "crashy");
    assert!(
        d.diagnosis
            .error
            .starts_with("given up by the server after 2"),
        "{}",
        d.diagnosis.error
    );
    // In the ward this time, like any park.
    let in_ward = app.messages_on("DLQ", &format!("dlq.{durable}")).await?;
    assert_eq!(in_ward.len(), 1);
    assert_eq!(
        in_ward[0].1.get(h::NATS_MSG_ID).map(|v| v.as_str()),
        Some(d.park_id.as_str())
    );
    app.stop().await
}

async fn where_is(app: &TestApp, message_id: &str, durable: &str) -> Option<Outcome> {
    let w: WhereaboutsList = expect_ok(
        app.get(subj::RPC_WHERE, &[], &[("message_id", message_id)])
            .await
            .ok()?,
    )
    .ok()?;
    w.items
        .first()?
        .consumers
        .iter()
        .find(|c| c.durable == durable)
        .map(|c| c.outcome)
}

async fn retries_wait_their_backoff_and_show_as_retrying(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let durable = "slow-calendar";
    let step = Duration::from_millis(1500);
    let mut options = SubscriberOptions::new(durable, Boom::Transient);
    options.retry.backoff = vec![step, step];
    let email = Subscriber::start_with(&app.js, options).await?;
    let boom = event("boom, try later");
    let id = boom.meta.message_id.to_string();
    app.publish(&boom, &trace_id()).await?;

    // Between deliveries "where is this message?" says retrying.
    poll_until("where: retrying", Duration::from_secs(20), || async {
        (where_is(&app, &id, durable).await? == Outcome::Retrying).then_some(())
    })
    .await?;
    let items = app.wait_dead_letters(&[("durable", durable)], 1).await?;
    assert_eq!(items[0].diagnosis.error_kind, ErrorKind::Transient);
    assert_eq!(items[0].diagnosis.deliveries, 3);
    let seen = email.seen_titled(&boom.event.title);
    assert_eq!(seen.len(), 3);
    // Each redelivery waited its backoff step (a plain Nak comes back within ms).
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= step - Duration::from_millis(100),
            "redelivered after {gap:?}, before the {step:?} backoff step"
        );
    }
    assert_eq!(
        seen.iter().map(|s| s.delivered).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(where_is(&app, &id, durable).await, Some(Outcome::Parked));
    email.stop().await;
    app.stop().await
}

async fn the_same_park_published_twice_is_stored_once(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let durable = "twice-calendar";
    let ward = app.js.get_stream("DLQ").await?.info().await?.config.clone();
    assert_eq!(ward.duplicate_window, Duration::from_secs(2 * 3600));
    assert_eq!(ward.discard, jetstream::stream::DiscardPolicy::New);

    // A worker parked, crashed before terminating, and parked the redelivery again.
    let now = Timestamp::now();
    let ev = event("parked twice");
    let park_id = ParkedMessage::park_id(durable, "CALENDAR", 7);
    let parked = ParkedMessage {
        park_id: park_id.clone(),
        diagnosis: Diagnosis {
            service: "twice".into(),
            durable: durable.into(),
            stream: "CALENDAR".into(),
            subject: cal::EVENT_CREATED_V1.into(),
            stream_sequence: 7,
            message_id: Some(ev.meta.message_id.to_string()),
            message_type: Some("calendar.event_created".into()),
            schema_version: Some(1),
            error_kind: ErrorKind::Permanent,
            error: "invalid".into(),
            deliveries: 1,
            first_failure_at: now,
            last_failure_at: now,
            trace_id: None,
            replay_of: None,
        },
        headers: vec![],
        payload: contracts::wire::encode(&ev)?,
        parked_at: now,
    };
    let mut duplicates = Vec::new();
    for _ in 0..2 {
        let mut map = HeaderMap::new();
        map.insert(h::NATS_MSG_ID, park_id.as_str());
        let ack = app
            .js
            .publish_with_headers(
                format!("dlq.{durable}"),
                map,
                contracts::wire::encode(&parked)?.into(),
            )
            .await?
            .await?;
        duplicates.push(ack.duplicate);
    }
    assert_eq!(duplicates, vec![false, true]);
    assert_eq!(
        app.messages_on("DLQ", &format!("dlq.{durable}"))
            .await?
            .len(),
        1
    );
    app.wait_drained("DLQ", subj::INDEX_DURABLE).await?;
    assert_eq!(app.dead_letters(&[("durable", durable)]).await?.len(), 1);
    app.stop().await
}
