//! Every statement the calendar runs on its hot paths (RSVPs through the group-commit
//! writer, reads of one event and of every list variant, edits, the outbox relay) is
//! planned by SQLite with an index: no full table scan, no temporary sort. The
//! statements are the ones sqlx really ran, taken from its log (see
//! `integration::plans`), so a query added later is checked too. Its own binary: the
//! statement log is the process's global tracing subscriber.

#[allow(dead_code, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use std::time::Duration;

use anyhow::Result;
use contracts::api::RsvpPage;
use contracts::error::ErrorCode;
use contracts::events::RsvpStatus;
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::calendar as subj;
use helpers::{NatsServer, TestApp, days, event_at, expect_status, poll_until, user};
use integration::TestDb;
use integration::plans::{StatementLog, require_indexed, unindexed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_path_statements_use_indexes() -> Result<()> {
    let log = StatementLog::install()?;
    let nats = NatsServer::start().await?;
    let db = TestDb::sqlite_temp()?;
    let app = TestApp::spawn(&nats, &db).await?;
    log.clear();

    let (alice, bob) = (user(), user());
    let guests: Vec<_> = (0..12).map(|_| user()).collect();
    let mut events = Vec::new();
    for i in 0..6 {
        let organizer = if i % 2 == 0 { &alice } else { &bob };
        events.push(
            app.create_ok(organizer, &event_at(days(i + 1), "Europe/Berlin", 5))
                .await?,
        );
    }
    // Concurrent RSVPs, so the writer commits batches of several.
    let answers = guests.iter().enumerate().flat_map(|(g, guest)| {
        events.iter().enumerate().map(move |(e, ev)| {
            let status = match (g + e) % 3 {
                0 => RsvpStatus::Going,
                1 => RsvpStatus::Maybe,
                _ => RsvpStatus::Declined,
            };
            (guest, ev.id, status)
        })
    });
    let replies =
        futures::future::join_all(answers.map(|(guest, id, status)| app.rsvp(guest, id, status)))
            .await;
    for reply in replies {
        // A full event refuses some "going" answers; either way the statements ran.
        match reply? {
            RpcReply::Ok { status: 200, .. } => {}
            RpcReply::Err(p) if p.code == ErrorCode::EventFull => {}
            other => panic!("RSVP answered {other:?}"),
        }
    }
    expect_status(
        app.rsvp(&guests[0], events[0].id, RsvpStatus::Declined)
            .await?,
        200,
    )?;

    for ev in &events {
        expect_status(app.get(&bob, ev.id).await?, 200)?;
    }
    let (from, to) = (events[1].starts_at.clone(), events[4].starts_at.clone());
    let queries: [&[(&str, &str)]; 6] = [
        &[],
        &[("limit", "2")],
        &[("from", &from), ("to", &to)],
        &[("mine", "organizing")],
        &[("mine", "attending")],
        &[("mine", "attending"), ("from", &from)],
    ];
    for q in queries {
        let page = expect_status(app.list(&guests[1], q).await?, 200)?;
        if let Some(cursor) = page.next_cursor {
            let mut next = q.to_vec();
            next.push(("cursor", &cursor));
            expect_status(app.list(&guests[1], &next).await?, 200)?;
        }
    }
    for q in [&[][..], &[("status", "going"), ("limit", "2")][..]] {
        let mut req = RpcRequest::new(NoBody {})
            .with_caller(alice.clone())
            .with_param("id", events[0].id.to_string());
        for (k, v) in q {
            req = req.with_query(k, *v);
        }
        let page: RsvpPage = expect_status(app.call(subj::RPC_LIST_RSVPS, &req).await?, 200)?;
        if let Some(cursor) = page.next_cursor {
            let req = req.with_query("cursor", &cursor);
            expect_status(
                app.call::<_, RsvpPage>(subj::RPC_LIST_RSVPS, &req).await?,
                200,
            )?;
        }
    }
    let moved = contracts::api::UpdateEventRequest {
        starts_at: Some(event_at(days(9), "Europe/Berlin", 5).starts_at),
        ends_at: Some(event_at(days(9), "Europe/Berlin", 5).ends_at),
        ..Default::default()
    };
    expect_status(app.update(&alice, events[0].id, moved).await?, 200)?;
    expect_status(app.cancel(&alice, events[2].id).await?, 200)?;
    poll_until("the outbox to drain", Duration::from_secs(20), || async {
        (app.outbox_backlog().await.ok()? == 0).then_some(())
    })
    .await?;

    // The check itself can fail: a lookup by an unindexed column is caught.
    let by_title = ["SELECT id FROM events WHERE title = $1".to_owned()];
    assert_eq!(unindexed(&app.db.pool, &by_title).await?.len(), 1);
    // Accepted: `mine=attending` finds the caller's own answers through `rsvps_user`
    // and sorts them by start; the sort is bounded by how many events that one user
    // answered. Reading them in order would take `starts_at` copied into `rsvps`.
    let attending = |sql: &str| sql.contains("r.status IN ('going', 'maybe')");
    require_indexed(
        &app.db.pool,
        &log,
        &[
            "FROM events e",
            "UPDATE events",
            "INSERT INTO rsvps",
            "FROM outbox",
        ],
        attending,
    )
    .await?;
    app.stop().await?;
    Ok(())
}
