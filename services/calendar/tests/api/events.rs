//! Creating, reading, editing, cancelling and listing events.

use anyhow::Result;
use contracts::api::{CreateEventRequest, EventPage, UpdateEventRequest};
use contracts::events::{EventStatus, EventUpdatedV1, RsvpStatus};
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::calendar as subj;
use contracts::{ErrorCode, api::Event};
use uuid::Uuid;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    lifecycle_is_published_once_per_change,
    invalid_events_are_refused,
    edits_are_checked,
    lists_filter_and_page,
);

async fn lifecycle_is_published_once_per_change(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = user();
    let guest = user();

    let created = app
        .create_ok(
            &organizer,
            &CreateEventRequest {
                starts_at: "2031-07-01T18:00:00+02:00".into(),
                ends_at: "2031-07-01T21:30:00+02:00".into(),
                ..event_at(days(1), "Europe/Berlin", 20)
            },
        )
        .await?;
    assert_eq!(created.version, 1);
    assert_eq!(created.organizer_id, organizer.user_id);
    assert_eq!(created.status, EventStatus::Scheduled);
    assert_eq!(created.starts_at, "2031-07-01T18:00:00+02:00");
    assert_eq!(created.ends_at, "2031-07-01T21:30:00+02:00");
    assert_eq!(created.time_zone, "Europe/Berlin");

    let got = expect_status(app.get(&guest, created.id).await?, 200)?;
    assert_eq!(got, created);

    // A PATCH that changes something bumps the version once.
    let updated = expect_status(
        app.update(
            &organizer,
            created.id,
            UpdateEventRequest {
                title: Some("Rust meetup #2".into()),
                capacity: Some(30),
                ..Default::default()
            },
        )
        .await?,
        200,
    )?;
    assert_eq!((updated.version, updated.capacity), (2, 30));
    assert_eq!(updated.title, "Rust meetup #2");

    // A PATCH that repeats the stored values changes nothing.
    let same = expect_status(
        app.update(
            &organizer,
            created.id,
            UpdateEventRequest {
                title: Some("Rust meetup #2".into()),
                starts_at: Some("2031-07-01T18:00:00+02:00".into()),
                ..Default::default()
            },
        )
        .await?,
        200,
    )?;
    assert_eq!(same.version, 2);

    // Moving the event is a time change.
    let moved = expect_status(
        app.update(
            &organizer,
            created.id,
            UpdateEventRequest {
                starts_at: Some("2031-07-02T18:00:00+02:00".into()),
                ends_at: Some("2031-07-02T20:00:00+02:00".into()),
                ..Default::default()
            },
        )
        .await?,
        200,
    )?;
    assert_eq!(moved.version, 3);
    assert_eq!(moved.starts_at, "2031-07-02T18:00:00+02:00");

    // Only the organizer edits or cancels.
    expect_problem(
        app.update(
            &guest,
            created.id,
            UpdateEventRequest {
                title: Some("mine now".into()),
                ..Default::default()
            },
        )
        .await?,
        ErrorCode::Forbidden,
    )?;
    expect_problem(app.cancel(&guest, created.id).await?, ErrorCode::Forbidden)?;

    let cancelled = expect_status(app.cancel(&organizer, created.id).await?, 200)?;
    assert_eq!(
        (cancelled.status, cancelled.version),
        (EventStatus::Cancelled, 4)
    );
    // Cancelling again is a no-op with the same answer.
    let again = expect_status(app.cancel(&organizer, created.id).await?, 200)?;
    assert_eq!((again.status, again.version), (EventStatus::Cancelled, 4));

    // A cancelled event takes no edits and no RSVPs.
    expect_problem(
        app.update(
            &organizer,
            created.id,
            UpdateEventRequest {
                title: Some("back".into()),
                ..Default::default()
            },
        )
        .await?,
        ErrorCode::EventCancelled,
    )?;
    expect_problem(
        app.rsvp(&guest, created.id, RsvpStatus::Going).await?,
        ErrorCode::EventCancelled,
    )?;

    // Exactly one message per change, in order, with headers and versions 1..=4.
    let msgs = wait_for_messages(&app.js, 4).await?;
    let metas = check_messages(&msgs)?;
    check_versions_increase(&metas)?;
    let subjects: Vec<&str> = metas.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            subj::EVENT_CREATED_V1,
            subj::EVENT_UPDATED_V1,
            subj::EVENT_UPDATED_V1,
            subj::EVENT_CANCELLED_V1
        ]
    );
    let versions: Vec<u64> = metas.iter().map(|(_, m)| m.aggregate_version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    let first_update: EventUpdatedV1 = contracts::wire::decode(&msgs[1].payload)?;
    assert_eq!(first_update.changed_fields, ["title", "capacity"]);
    assert!(!first_update.time_changed);
    let second_update: EventUpdatedV1 = contracts::wire::decode(&msgs[2].payload)?;
    assert_eq!(second_update.changed_fields, ["starts_at", "ends_at"]);
    assert!(second_update.time_changed);
    assert_eq!(
        second_update.event.starts_at,
        "2031-07-02T16:00:00Z".parse::<jiff::Timestamp>()?
    );

    poll_until(
        "an empty outbox",
        std::time::Duration::from_secs(10),
        || async { (app.outbox_backlog().await.ok()? == 0).then_some(()) },
    )
    .await?;
    assert_eq!(stream_messages(&app.js).await?.len(), 4);
    app.stop().await
}

async fn invalid_events_are_refused(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let me = user();
    let base = event_at(days(3), "Europe/Berlin", 10);

    // The offset of another zone (New York in summer) for a Berlin event.
    let p = expect_problem(
        app.create(
            &me,
            &CreateEventRequest {
                starts_at: "2031-07-01T18:00:00-04:00".into(),
                ends_at: "2031-07-01T20:00:00-04:00".into(),
                ..base.clone()
            },
        )
        .await?,
        ErrorCode::TimeZoneMismatch,
    )?;
    assert_eq!(p.status, 422);
    // A zone that does not exist.
    let p = app
        .create(
            &me,
            &CreateEventRequest {
                time_zone: "Mars/Olympus_Mons".into(),
                ..base.clone()
            },
        )
        .await?;
    match p {
        RpcReply::Err(p) => {
            assert!(matches!(
                p.code,
                ErrorCode::TimeZoneMismatch | ErrorCode::ValidationFailed
            ));
            assert!(p.errors.iter().any(|e| e.field == "time_zone"), "{p:?}");
        }
        other => panic!("unknown zone accepted: {other:?}"),
    }
    // End before start.
    let p = expect_problem(
        app.create(
            &me,
            &CreateEventRequest {
                starts_at: "2031-07-01T18:00:00+02:00".into(),
                ends_at: "2031-07-01T17:00:00+02:00".into(),
                ..base.clone()
            },
        )
        .await?,
        ErrorCode::ValidationFailed,
    )?;
    assert!(p.errors.iter().any(|e| e.field == "ends_at"), "{p:?}");
    // A local time without offset.
    expect_problem(
        app.create(
            &me,
            &CreateEventRequest {
                starts_at: "2031-07-01T18:00:00".into(),
                ..base.clone()
            },
        )
        .await?,
        ErrorCode::ValidationFailed,
    )?;
    // Out-of-range fields.
    let p = expect_problem(
        app.create(
            &me,
            &CreateEventRequest {
                title: String::new(),
                capacity: 0,
                ..base.clone()
            },
        )
        .await?,
        ErrorCode::ValidationFailed,
    )?;
    let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["title", "capacity"]);
    // A body of the wrong shape is refused by the runtime before the handler.
    let wrong: RpcReply<Event> = app
        .call(
            subj::RPC_CREATE_EVENT,
            &RpcRequest::new(serde_json::json!({"title": 5})).with_caller(me.clone()),
        )
        .await?;
    expect_problem(wrong, ErrorCode::ValidationFailed)?;
    // No caller: unauthorized, on every route.
    let anonymous: RpcReply<Event> = app
        .call(subj::RPC_CREATE_EVENT, &RpcRequest::new(base.clone()))
        .await?;
    expect_problem(anonymous, ErrorCode::Unauthorized)?;
    let anonymous: RpcReply<EventPage> = app
        .call(subj::RPC_LIST_EVENTS, &RpcRequest::new(NoBody {}))
        .await?;
    expect_problem(anonymous, ErrorCode::Unauthorized)?;
    // Ids that are not UUIDs, or unknown, name no event.
    let bad_id: RpcReply<Event> = app
        .call(
            subj::RPC_GET_EVENT,
            &RpcRequest::new(NoBody {})
                .with_caller(me.clone())
                .with_param("id", "not-a-uuid"),
        )
        .await?;
    expect_problem(bad_id, ErrorCode::NotFound)?;
    expect_problem(app.get(&me, Uuid::now_v7()).await?, ErrorCode::NotFound)?;
    expect_problem(
        app.rsvp(&me, Uuid::now_v7(), RsvpStatus::Going).await?,
        ErrorCode::NotFound,
    )?;

    // Nothing above changed state.
    let ok = app.create_ok(&me, &base).await?;
    let msgs = wait_for_messages(&app.js, 1).await?;
    let metas = check_messages(&msgs)?;
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].1.aggregate_id, ok.id);
    app.stop().await
}

async fn edits_are_checked(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = user();
    let ev = app
        .create_ok(&organizer, &event_at(days(5), "America/New_York", 2))
        .await?;

    // Offsets are checked against the (possibly new) zone.
    expect_problem(
        app.update(
            &organizer,
            ev.id,
            UpdateEventRequest {
                time_zone: Some("Asia/Tokyo".into()),
                starts_at: Some(ev.starts_at.clone()),
                ..Default::default()
            },
        )
        .await?,
        ErrorCode::TimeZoneMismatch,
    )?;
    // A new start after the stored end.
    let p = expect_problem(
        app.update(
            &organizer,
            ev.id,
            UpdateEventRequest {
                starts_at: Some(calendar::domain::render_in_zone(
                    jiff::Timestamp::now() + days(6),
                    "America/New_York",
                )),
                ..Default::default()
            },
        )
        .await?,
        ErrorCode::ValidationFailed,
    )?;
    assert!(p.errors.iter().any(|e| e.field == "ends_at"));
    // A new zone alone keeps the instants and renders them in the new zone.
    let tokyo = expect_status(
        app.update(
            &organizer,
            ev.id,
            UpdateEventRequest {
                time_zone: Some("Asia/Tokyo".into()),
                ..Default::default()
            },
        )
        .await?,
        200,
    )?;
    assert!(tokyo.starts_at.ends_with("+09:00"), "{}", tokyo.starts_at);
    assert_eq!(
        tokyo.starts_at.parse::<jiff::Timestamp>()?,
        ev.starts_at.parse::<jiff::Timestamp>()?
    );

    // Capacity below the attendees going.
    for _ in 0..2 {
        expect_status(app.rsvp(&user(), ev.id, RsvpStatus::Going).await?, 200)?;
    }
    expect_problem(
        app.update(
            &organizer,
            ev.id,
            UpdateEventRequest {
                capacity: Some(1),
                ..Default::default()
            },
        )
        .await?,
        ErrorCode::CapacityBelowGoing,
    )?;
    let p = expect_problem(
        app.update(
            &organizer,
            ev.id,
            UpdateEventRequest {
                capacity: Some(0),
                ..Default::default()
            },
        )
        .await?,
        ErrorCode::ValidationFailed,
    )?;
    assert_eq!(p.errors[0].field, "capacity");
    let bigger = expect_status(
        app.update(
            &organizer,
            ev.id,
            UpdateEventRequest {
                capacity: Some(3),
                ..Default::default()
            },
        )
        .await?,
        200,
    )?;
    // created 1, zone 2, two RSVPs 3-4, capacity 5.
    assert_eq!(
        (bigger.capacity, bigger.version, bigger.counts.going),
        (3, 5, 2)
    );
    let msgs = wait_for_messages(&app.js, 5).await?;
    check_versions_increase(&check_messages(&msgs)?)?;
    app.stop().await
}

async fn lists_filter_and_page(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let alice = user();
    let bob = user();

    // Alice organizes 7 events on days 1..=7, Bob 3 on days 2, 4, 6 (each created
    // after Alice's of the same day, so it starts a moment later).
    let mut alices = Vec::new();
    for d in 1..=7 {
        alices.push(
            app.create_ok(&alice, &event_at(days(d), "Europe/Berlin", 5))
                .await?,
        );
    }
    let mut bobs = Vec::new();
    for d in [2, 4, 6] {
        bobs.push(app.create_ok(&bob, &event_at(days(d), "UTC", 5)).await?);
    }

    // Paging through everything: ordered by (starts_at, id), no repeats, no gaps.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = vec![("limit", "3")];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let page = expect_status(app.list(&bob, &q).await?, 200)?;
        pages += 1;
        assert!(page.items.len() <= 3);
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(all.len(), 10);
    assert_eq!(pages, 4);
    let key = |e: &Event| (e.starts_at.parse::<jiff::Timestamp>().unwrap(), e.id);
    assert!(
        all.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "not ordered"
    );

    // A time window bounds starts_at (from inclusive, to exclusive).
    let from = alices[2].starts_at.clone(); // day 3
    let to = alices[5].starts_at.clone(); // day 6
    let window = expect_status(app.list(&bob, &[("from", &from), ("to", &to)]).await?, 200)?;
    let mut expected: Vec<Uuid> = vec![alices[2].id, alices[3].id, alices[4].id, bobs[1].id];
    let mut got: Vec<Uuid> = window.items.iter().map(|e| e.id).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);

    // mine=organizing.
    let organizing = expect_status(app.list(&bob, &[("mine", "organizing")]).await?, 200)?;
    assert_eq!(
        organizing.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        bobs.iter().map(|e| e.id).collect::<Vec<_>>()
    );

    // mine=attending: going or maybe, not declined.
    expect_status(app.rsvp(&bob, alices[0].id, RsvpStatus::Going).await?, 200)?;
    expect_status(app.rsvp(&bob, alices[4].id, RsvpStatus::Maybe).await?, 200)?;
    expect_status(
        app.rsvp(&bob, alices[6].id, RsvpStatus::Declined).await?,
        200,
    )?;
    let attending = expect_status(app.list(&bob, &[("mine", "attending")]).await?, 200)?;
    assert_eq!(
        attending
            .items
            .iter()
            .map(|e| (e.id, e.my_rsvp))
            .collect::<Vec<_>>(),
        [
            (alices[0].id, Some(RsvpStatus::Going)),
            (alices[4].id, Some(RsvpStatus::Maybe))
        ]
    );
    assert_eq!(attending.items[0].counts.going, 1);
    // Alice sees the same events without an RSVP of her own.
    let alice_view = expect_status(
        app.list(&alice, &[("mine", "organizing"), ("limit", "1")])
            .await?,
        200,
    )?;
    assert_eq!(alice_view.items.len(), 1);
    assert_eq!(alice_view.items[0].my_rsvp, None);
    assert!(alice_view.next_cursor.is_some());

    // Bad query values.
    for q in [
        &[("limit", "0")][..],
        &[("limit", "500")],
        &[("mine", "all")],
        &[("from", "last week")],
        &[("cursor", "garbage!")],
    ] {
        expect_problem(app.list(&bob, q).await?, ErrorCode::BadRequest)?;
    }
    app.stop().await
}
