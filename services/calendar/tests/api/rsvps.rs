//! RSVPs: capacity under concurrency, seat release, repeats, refusals, the guest list.

use anyhow::Result;
use contracts::ErrorCode;
use contracts::api::{RsvpPage, UpdateEventRequest};
use contracts::events::{RsvpChangedV1, RsvpStatus};
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::calendar as subj;
use futures::future::join_all;
use jiff::SignedDuration;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    concurrent_rsvps_never_overbook,
    seats_are_freed_and_repeats_change_nothing,
    started_events_take_no_rsvps,
    only_the_organizer_sees_the_guest_list,
);

async fn concurrent_rsvps_never_overbook(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = user();
    let ev = app
        .create_ok(&organizer, &event_at(days(2), "Europe/Berlin", 10))
        .await?;

    let users: Vec<_> = (0..50).map(|_| user()).collect();
    let replies = join_all(users.iter().map(|u| app.rsvp(u, ev.id, RsvpStatus::Going))).await;
    let (mut ok, mut full) = (0, 0);
    for r in replies {
        match r? {
            RpcReply::Ok { status: 200, body } => {
                assert!(body.changed);
                assert!(body.counts.going <= 10);
                ok += 1;
            }
            RpcReply::Err(p) if p.code == ErrorCode::EventFull => full += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert_eq!((ok, full), (10, 40));
    let after = expect_status(app.get(&organizer, ev.id).await?, 200)?;
    assert_eq!(after.counts.going, 10);
    assert_eq!(after.version, 11);

    // One creation and ten RSVP changes, versions 1..=11, nothing else.
    let msgs = wait_for_messages(&app.js, 11).await?;
    let metas = check_messages(&msgs)?;
    check_versions_increase(&metas)?;
    assert_eq!(count_subject(&metas, subj::EVENT_CREATED_V1), 1);
    assert_eq!(count_subject(&metas, subj::RSVP_CHANGED_V1), 10);
    let versions: Vec<u64> = metas.iter().map(|(_, m)| m.aggregate_version).collect();
    assert_eq!(versions, (1..=11).collect::<Vec<_>>());
    // Each RSVP event carries the counts after it.
    for (i, m) in msgs.iter().enumerate().skip(1) {
        let e: RsvpChangedV1 = contracts::wire::decode(&m.payload)?;
        assert_eq!(e.event.counts.going as usize, i);
        assert_eq!((e.previous_status, e.status), (None, RsvpStatus::Going));
    }
    poll_until(
        "an empty outbox",
        std::time::Duration::from_secs(10),
        || async { (app.outbox_backlog().await.ok()? == 0).then_some(()) },
    )
    .await?;
    assert_eq!(stream_messages(&app.js).await?.len(), 11);
    app.stop().await
}

async fn seats_are_freed_and_repeats_change_nothing(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = user();
    let (ann, ben, cat) = (user(), user(), user());
    let ev = app
        .create_ok(&organizer, &event_at(days(1), "Asia/Kolkata", 2))
        .await?;

    let r = expect_status(app.rsvp(&ann, ev.id, RsvpStatus::Going).await?, 200)?;
    assert!(r.changed);
    assert_eq!(r.rsvp.status, RsvpStatus::Going);
    expect_status(app.rsvp(&ben, ev.id, RsvpStatus::Going).await?, 200)?;
    expect_problem(
        app.rsvp(&cat, ev.id, RsvpStatus::Going).await?,
        ErrorCode::EventFull,
    )?;
    // Maybe and declined take no seat.
    let r = expect_status(app.rsvp(&cat, ev.id, RsvpStatus::Maybe).await?, 200)?;
    assert_eq!((r.counts.going, r.counts.maybe), (2, 1));

    // Leaving going frees the seat for someone else.
    let r = expect_status(app.rsvp(&ann, ev.id, RsvpStatus::Declined).await?, 200)?;
    assert_eq!((r.counts.going, r.counts.declined), (1, 1));
    let r = expect_status(app.rsvp(&cat, ev.id, RsvpStatus::Going).await?, 200)?;
    assert_eq!(
        (r.counts.going, r.counts.maybe, r.counts.declined),
        (2, 0, 1)
    );
    // created 1 + 5 changes = 6 messages so far.
    let before = wait_for_messages(&app.js, 6).await?;
    let version = expect_status(app.get(&cat, ev.id).await?, 200)?.version;
    assert_eq!(version, 6);

    // Repeating the current answer changes nothing: no version bump, no message.
    let r = expect_status(app.rsvp(&cat, ev.id, RsvpStatus::Going).await?, 200)?;
    assert!(!r.changed);
    assert_eq!(r.counts.going, 2);
    let got = expect_status(app.get(&cat, ev.id).await?, 200)?;
    assert_eq!(got.version, 6);
    assert_eq!(got.my_rsvp, Some(RsvpStatus::Going));
    // A later change is published right after the earlier ones: had the repeat
    // produced a message, it would sit in between.
    let marker = expect_status(
        app.update(
            &organizer,
            ev.id,
            UpdateEventRequest {
                location: Some("Hall B".into()),
                ..Default::default()
            },
        )
        .await?,
        200,
    )?;
    assert_eq!(marker.version, 7);
    let msgs = wait_for_messages(&app.js, before.len() + 1).await?;
    let metas = check_messages(&msgs)?;
    check_versions_increase(&metas)?;
    assert_eq!(metas.len(), 7);
    assert_eq!(metas[6].0, subj::EVENT_UPDATED_V1);
    let change: RsvpChangedV1 = contracts::wire::decode(&msgs[5].payload)?;
    assert_eq!(change.attendee_id, cat.user_id);
    assert_eq!(
        (change.previous_status, change.status),
        (Some(RsvpStatus::Maybe), RsvpStatus::Going)
    );
    assert_eq!(change.event.counts.going, 2);
    assert_eq!(change.meta.aggregate_version, 6);
    app.stop().await
}

async fn started_events_take_no_rsvps(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = user();
    let running = app
        .create_ok(
            &organizer,
            &event_at(-SignedDuration::from_mins(30), "Europe/London", 5),
        )
        .await?;
    expect_problem(
        app.rsvp(&user(), running.id, RsvpStatus::Going).await?,
        ErrorCode::EventPast,
    )?;
    let later = app
        .create_ok(&organizer, &event_at(days(1), "Europe/London", 5))
        .await?;
    expect_status(app.cancel(&organizer, later.id).await?, 200)?;
    expect_problem(
        app.rsvp(&user(), later.id, RsvpStatus::Maybe).await?,
        ErrorCode::EventCancelled,
    )?;
    app.stop().await
}

async fn only_the_organizer_sees_the_guest_list(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = user();
    let ev = app
        .create_ok(&organizer, &event_at(days(1), "UTC", 100))
        .await?;
    let guests: Vec<_> = (0..5).map(|_| user()).collect();
    for (i, g) in guests.iter().enumerate() {
        let status = if i % 2 == 0 {
            RsvpStatus::Going
        } else {
            RsvpStatus::Maybe
        };
        expect_status(app.rsvp(g, ev.id, status).await?, 200)?;
    }
    let list = |who: &contracts::rpc::Caller, q: &[(&str, &str)]| {
        let mut req = RpcRequest::new(NoBody {})
            .with_caller(who.clone())
            .with_param("id", ev.id.to_string());
        for (k, v) in q {
            req = req.with_query(k, *v);
        }
        let app = &app;
        async move { app.call::<_, RsvpPage>(subj::RPC_LIST_RSVPS, &req).await }
    };
    expect_problem(list(&guests[0], &[]).await?, ErrorCode::Forbidden)?;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "2")];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let page = expect_status(list(&organizer, &q).await?, 200)?;
        seen.extend(page.items.iter().map(|r| r.user_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected: Vec<_> = guests.iter().map(|g| g.user_id).collect();
    expected.sort();
    assert_eq!(seen, expected);

    let going = expect_status(list(&organizer, &[("status", "going")]).await?, 200)?;
    assert_eq!(going.items.len(), 3);
    assert!(going.items.iter().all(|r| r.status == RsvpStatus::Going));
    expect_problem(
        list(&organizer, &[("limit", "x")]).await?,
        ErrorCode::BadRequest,
    )?;
    app.stop().await
}
