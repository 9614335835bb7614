//! The history endpoints: paging, unread counts, marking read, resuming a stream.

use anyhow::Result;
use contracts::ErrorCode;
use contracts::api::Notification;
use contracts::events::RsvpStatus;
use contracts::rpc::{NoBody, RpcRequest};
use contracts::subjects::push as subj;
use uuid::Uuid;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    marking_read_moves_the_unread_count,
    since_returns_exactly_the_newer_ones_in_order,
    the_list_pages_newest_first,
    every_endpoint_needs_a_caller,
);

/// An organizer with `n` notifications (one RSVP each from `n` attendees), newest first.
async fn organizer_with(app: &TestApp, n: usize) -> Result<(Uuid, Vec<Notification>)> {
    let organizer = id();
    let mut ev = EventFixture::new(organizer);
    app.publish(&ev.created()).await?;
    for _ in 0..n {
        app.publish(&ev.rsvp(id(), RsvpStatus::Going)).await?;
    }
    app.wait_history(organizer, n).await?;
    app.wait_calendar().await?;
    let items = app.history(organizer).await?.items;
    assert_eq!(items.len(), n);
    Ok((organizer, items))
}

async fn marking_read_moves_the_unread_count(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, items) = organizer_with(&app, 3).await?;
    let me = caller(organizer);
    assert_eq!(app.history(organizer).await?.unread, 3);

    let target = items[1].id.to_string();
    let read = expect_status(app.mark_read(&me, &target).await?, 200)?;
    assert_eq!(read.id, items[1].id);
    let read_at = read.read_at.expect("read_at set");
    assert_eq!(app.history(organizer).await?.unread, 2);

    // Idempotent: the first read time stays.
    let again = expect_status(app.mark_read(&me, &target).await?, 200)?;
    assert_eq!(again.read_at, Some(read_at));
    assert_eq!(app.history(organizer).await?.unread, 2);

    let unread = expect_status(app.list(&me, &[("unread", "true")]).await?, 200)?;
    assert_eq!(unread.items.len(), 2);
    assert!(unread.items.iter().all(|n| n.read_at.is_none()));
    assert_eq!(unread.unread, 2);
    let read_only = expect_status(app.list(&me, &[("unread", "false")]).await?, 200)?;
    assert_eq!(read_only.items, vec![again]);
    assert_eq!(read_only.unread, 2, "the count is over everything unread");

    // Someone else's notification, an unknown id, a malformed id: not found.
    expect_problem(app.mark_read(&user(), &target).await?, ErrorCode::NotFound)?;
    expect_problem(
        app.mark_read(&me, &Uuid::now_v7().to_string()).await?,
        ErrorCode::NotFound,
    )?;
    expect_problem(app.mark_read(&me, "nope").await?, ErrorCode::NotFound)?;
    assert_eq!(app.history(organizer).await?.unread, 2);
    app.stop().await
}

async fn since_returns_exactly_the_newer_ones_in_order(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, mut items) = organizer_with(&app, 5).await?;
    items.reverse(); // oldest first
    let ids: Vec<Uuid> = items.iter().map(|n| n.id).collect();
    let me = caller(organizer);

    let newer = expect_status(app.since(&me, ids[1], 10).await?, 200)?;
    assert_eq!(newer, items[2..].to_vec());
    let two = expect_status(app.since(&me, ids[1], 2).await?, 200)?;
    assert_eq!(two, items[2..4].to_vec());
    let none = expect_status(app.since(&me, ids[4], 10).await?, 200)?;
    assert!(none.is_empty());
    // A limit of 0 is clamped to 1; nil is before every UUIDv7.
    let first = expect_status(app.since(&me, Uuid::nil(), 0).await?, 200)?;
    assert_eq!(first, items[..1].to_vec());
    let all = expect_status(app.since(&me, Uuid::nil(), 10_000).await?, 200)?;
    assert_eq!(all, items);
    // Only the caller's own.
    let other = expect_status(app.since(&user(), Uuid::nil(), 500).await?, 200)?;
    assert!(other.is_empty());
    app.stop().await
}

async fn the_list_pages_newest_first(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, all) = organizer_with(&app, 5).await?;
    let me = caller(organizer);
    assert!(
        all.windows(2).all(|w| w[0].id > w[1].id),
        "newest first by id"
    );

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "2")];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let page = expect_status(app.list(&me, &query).await?, 200)?;
        assert_eq!(page.unread, 5);
        sizes.push(page.items.len());
        seen.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(seen, all);

    let default = expect_status(app.list(&me, &[]).await?, 200)?;
    assert_eq!(default.items, all, "default limit 50");
    for bad in [
        &[("limit", "0")][..],
        &[("limit", "201")],
        &[("cursor", "not-a-cursor")],
        &[("unread", "maybe")],
    ] {
        expect_problem(app.list(&me, bad).await?, ErrorCode::BadRequest)?;
    }
    app.stop().await
}

async fn every_endpoint_needs_a_caller(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let list = app
        .call::<_, contracts::api::NotificationPage>(
            subj::RPC_LIST_NOTIFICATIONS,
            &RpcRequest::new(NoBody {}),
        )
        .await?;
    expect_problem(list, ErrorCode::Unauthorized)?;
    let read = app
        .call::<_, Notification>(
            subj::RPC_MARK_READ,
            &RpcRequest::new(NoBody {}).with_param("id", Uuid::now_v7().to_string()),
        )
        .await?;
    expect_problem(read, ErrorCode::Unauthorized)?;
    let since = app
        .call::<_, Vec<Notification>>(
            subj::RPC_NOTIFICATIONS_SINCE,
            &RpcRequest::new(contracts::api::NotificationsSince::after_seq(0, 10)),
        )
        .await?;
    expect_problem(since, ErrorCode::Unauthorized)?;
    app.stop().await
}
