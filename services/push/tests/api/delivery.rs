//! The consumers as a whole: what is terminated rather than retried, replicas sharing
//! the durables, health and shutdown.

use std::time::Duration;

use anyhow::Result;
use contracts::api::NotificationKind;
use contracts::events::{PasswordResetRequestedV1, RsvpStatus};
use contracts::subjects::{calendar as cal, headers as h};
use futures::StreamExt;
use jiff::Timestamp;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    unknown_types_and_bad_bytes_are_terminated_not_retried,
    two_replicas_share_the_durables_and_handle_each_event_once,
    health_discovery_and_shutdown,
);

/// Subject, headers and body of one raw message.
type Raw = (&'static str, Vec<(String, String)>, Vec<u8>);

fn headers_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn unknown_types_and_bad_bytes_are_terminated_not_retried(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let mut terminated = app
        .client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.*.{CALENDAR_DURABLE}"
        ))
        .await?;
    let mut auth_terminated = app
        .client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.*.{AUTH_DURABLE}"
        ))
        .await?;
    app.client.flush().await?;

    let organizer = id();
    let mut ev = EventFixture::new(organizer);
    let rsvp = ev.rsvp(id(), RsvpStatus::Going);
    let body = contracts::wire::encode(&rsvp)?;
    let msg_id = || id().to_string();
    let bad: Vec<Raw> = vec![
        // A schema version push does not know.
        (
            cal::RSVP_CHANGED_V1,
            headers_of(&[
                (h::NATS_MSG_ID, &msg_id()),
                (h::MESSAGE_ID, &msg_id()),
                (h::MESSAGE_TYPE, "calendar.rsvp_changed"),
                (h::SCHEMA_VERSION, "2"),
            ]),
            body.clone(),
        ),
        // A type push does not know.
        (
            "calendar.v1.event.exploded",
            headers_of(&[
                (h::NATS_MSG_ID, &msg_id()),
                (h::MESSAGE_ID, &msg_id()),
                (h::MESSAGE_TYPE, "calendar.event_exploded"),
                (h::SCHEMA_VERSION, "1"),
            ]),
            body.clone(),
        ),
        // Known type, bytes that are not one.
        (
            cal::RSVP_CHANGED_V1,
            headers_of(&[
                (h::NATS_MSG_ID, &msg_id()),
                (h::MESSAGE_ID, &msg_id()),
                (h::MESSAGE_TYPE, "calendar.rsvp_changed"),
                (h::SCHEMA_VERSION, "1"),
            ]),
            b"\xc1 not msgpack".to_vec(),
        ),
        // No contract headers at all.
        (
            cal::RSVP_CHANGED_V1,
            headers_of(&[(h::NATS_MSG_ID, &msg_id())]),
            body.clone(),
        ),
    ];
    let bad_count = bad.len();
    for (subject, headers, payload) in bad {
        app.publish_raw(subject, &headers, payload).await?;
    }
    // A contract push has no use for is acknowledged, not terminated.
    app.publish(&PasswordResetRequestedV1 {
        meta: contracts::EventMeta::new(organizer, 2),
        user_id: organizer,
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
        token: "t".into(),
        expires_at: Timestamp::now(),
    })
    .await?;
    // Good events after the bad ones still get through.
    app.publish(&ev.created()).await?;
    let good = ev.rsvp(id(), RsvpStatus::Going);
    app.publish(&good).await?;
    app.wait_history(organizer, 1).await?;

    for _ in 0..bad_count {
        tokio::time::timeout(Duration::from_secs(10), terminated.next())
            .await?
            .expect("advisory subscription open");
    }
    let info = app.wait_calendar().await?;
    let auth = app.wait_auth().await?;
    // Wait past the first backoff step: a nak'd message would be back by then.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let info_later = app.consumer_info("CALENDAR", CALENDAR_DURABLE).await?;
    assert_eq!(info_later.num_redelivered, 0);
    assert_eq!(info_later.num_ack_pending, 0);
    assert_eq!(
        info_later.delivered.consumer_sequence, info.delivered.consumer_sequence,
        "nothing was delivered again"
    );
    assert_eq!(
        info.delivered.consumer_sequence,
        bad_count as u64 + 2,
        "one delivery per message"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), terminated.next())
            .await
            .is_err(),
        "no further terminations"
    );
    assert_eq!(auth.num_redelivered, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), auth_terminated.next())
            .await
            .is_err(),
        "a known but unused contract is not terminated"
    );
    let items = app.history(organizer).await?.items;
    assert_eq!(kinds(&items), vec![NotificationKind::RsvpReceived]);
    app.stop().await
}

async fn two_replicas_share_the_durables_and_handle_each_event_once(
    backend: Backend,
) -> Result<()> {
    const RSVPS: usize = 40;
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let mut cfg = config(&nats, &db);
    // Small batches, so both replicas get a share.
    cfg.concurrency = 4;
    let a = TestApp::spawn_with(cfg.clone()).await?;
    let b = TestApp::spawn_with(cfg).await?;
    let organizer = id();
    let mut live = a.live(organizer).await?;

    let mut ev = EventFixture::new(organizer);
    a.publish(&ev.created()).await?;
    let attendees: Vec<_> = (0..RSVPS).map(|_| id()).collect();
    for who in &attendees {
        a.publish(&ev.rsvp(*who, RsvpStatus::Going)).await?;
    }
    let mut received = Vec::new();
    for _ in 0..RSVPS {
        received.push(live.next().await?.notification.id);
    }
    a.wait_calendar().await?;
    live.expect_silence().await?;
    received.sort();
    received.dedup();
    assert_eq!(received.len(), RSVPS, "one live message per RSVP");

    let items = a.history(organizer).await?.items;
    assert_eq!(items.len(), RSVPS);
    assert_eq!(a.count("notifications").await?, 2 * RSVPS as i64);
    let (applied_a, applied_b) = (a.stats.applied(), b.stats.applied());
    eprintln!("replica a applied {applied_a}, replica b applied {applied_b}");
    assert_eq!(
        applied_a + applied_b,
        RSVPS as u64 + 1,
        "every event handled once in total"
    );
    assert_eq!(a.stats.published() + b.stats.published(), 2 * RSVPS as u64);
    // One shared durable per stream, no per-replica consumers.
    let stream = a.js.get_stream("CALENDAR").await?;
    let names: Vec<String> = stream
        .consumer_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert_eq!(names, vec![CALENDAR_DURABLE.to_owned()]);
    a.stop().await?;
    b.stop().await
}

async fn health_discovery_and_shutdown(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    assert_eq!(app.http_status("/healthz").await?, 200);
    assert_eq!(app.http_status("/readyz").await?, 200);

    let info = app
        .client
        .request("$SRV.INFO.push", "".into())
        .await
        .map_err(|e| anyhow::anyhow!("$SRV.INFO: {e}"))?;
    let info: serde_json::Value = serde_json::from_slice(&info.payload)?;
    let text = info.to_string();
    for expected in [
        "svc.push.v1.notifications.list",
        "GET /v1/notifications",
        "svc.push.v1.notifications.read",
        "POST /v1/notifications/{id}/read",
        "svc.push.v1.notifications.since",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
    let durable = app.consumer_info("CALENDAR", CALENDAR_DURABLE).await?;
    // Its own events, and the hospital's replays addressed to this durable alone.
    assert_eq!(
        durable.config.filter_subjects,
        vec![
            "calendar.v1.>".to_owned(),
            format!("calendar.replay.{CALENDAR_DURABLE}.>")
        ]
    );
    assert_eq!(durable.config.max_ack_pending, 1000);
    assert_eq!(
        durable.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::All
    );
    let durable = app.consumer_info("AUTH", AUTH_DURABLE).await?;
    assert_eq!(
        durable.config.filter_subjects,
        vec![
            "auth.v1.>".to_owned(),
            format!("auth.replay.{AUTH_DURABLE}.>")
        ]
    );
    app.stop().await
}
