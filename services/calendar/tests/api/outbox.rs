//! The transactional outbox survives a NATS outage: events written while nothing
//! publishes reach the stream exactly once when NATS and the relay are back.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use contracts::events::RsvpStatus;
use contracts::subjects::calendar as subj;

use crate::both_backends;
use crate::helpers::*;

both_backends!(events_survive_a_nats_outage);

async fn events_survive_a_nats_outage(backend: Backend) -> Result<()> {
    const RSVPS: usize = 20;
    let mut nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;

    // 1. Relay off: state changes pile up in the outbox, the stream stays empty.
    let app = TestApp::spawn_with(&nats, &db, false).await?;
    let organizer = user();
    let ev = app
        .create_ok(&organizer, &event_at(days(7), "Australia/Sydney", 100))
        .await?;
    for _ in 0..RSVPS {
        expect_status(app.rsvp(&user(), ev.id, RsvpStatus::Going).await?, 200)?;
    }
    assert_eq!(app.outbox_backlog().await?, RSVPS as i64 + 1);
    // The stream was provisioned at start, but nothing was published.
    let js = app.js.clone();
    poll_until("the CALENDAR stream", Duration::from_secs(10), || async {
        js.get_stream(contracts::subjects::CALENDAR_STREAM.name)
            .await
            .ok()
    })
    .await?;
    assert!(stream_messages(&app.js).await?.is_empty());
    app.stop().await?;

    // 2. NATS goes down; the service starts anyway, relay on, and keeps retrying.
    nats.stop();
    let app = TestApp::start(config(&nats, &db, true)).await?;
    assert_eq!(app.http_status("/healthz").await?, 200);
    assert_eq!(app.http_status("/readyz").await?, 503);
    // The outage itself: the service must stay up through it, retrying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.http_status("/healthz").await?, 200);
    assert_eq!(app.http_status("/readyz").await?, 503);
    assert_eq!(app.outbox_backlog().await?, RSVPS as i64 + 1);

    // 3. NATS comes back on the same port and store: the backlog drains, once.
    nats.start_again().await?;
    poll_until("an empty outbox", Duration::from_secs(60), || async {
        (app.outbox_backlog().await.ok()? == 0).then_some(())
    })
    .await?;
    let msgs = wait_for_messages(&app.js, RSVPS + 1).await?;
    let metas = check_messages(&msgs)?; // also: no duplicate message ids
    check_versions_increase(&metas)?;
    let mut per_subject: HashMap<&str, usize> = HashMap::new();
    for (s, _) in &metas {
        *per_subject.entry(s.as_str()).or_default() += 1;
    }
    assert_eq!(per_subject.get(subj::EVENT_CREATED_V1), Some(&1));
    assert_eq!(per_subject.get(subj::RSVP_CHANGED_V1), Some(&RSVPS));
    assert_eq!(metas.len(), RSVPS + 1);
    poll_until(
        "the service to be ready",
        Duration::from_secs(20),
        || async { (app.http_status("/readyz").await.ok()? == 200).then_some(()) },
    )
    .await?;

    // It serves requests again and publishes new changes right away.
    app.wait_until_serving().await?;
    expect_status(app.rsvp(&user(), ev.id, RsvpStatus::Maybe).await?, 200)?;
    let msgs = wait_for_messages(&app.js, RSVPS + 2).await?;
    let metas = check_messages(&msgs)?;
    check_versions_increase(&metas)?;
    assert_eq!(metas.len(), RSVPS + 2);
    app.stop().await
}
