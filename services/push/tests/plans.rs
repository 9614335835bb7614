//! Every statement push runs while it projects accounts, RSVPs, a time change and a
//! cancellation, and while it serves history, `since` (by id, by sequence, newest) and
//! mark-read, is planned by SQLite with an index: no full table scan, no temporary
//! sort. The statements are the ones sqlx really ran, from its log (see
//! `integration::plans`). Its own binary: the statement log is the process's global
//! tracing subscriber.

#[allow(dead_code, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use anyhow::Result;
use contracts::api::{Notification, NotificationsSince};
use contracts::events::RsvpStatus;
use contracts::rpc::RpcRequest;
use contracts::subjects::push as subj;
use helpers::*;
use integration::plans::{StatementLog, require_indexed};
use jiff::SignedDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_and_query_statements_use_indexes() -> Result<()> {
    let log = StatementLog::install()?;
    let nats = NatsServer::start().await?;
    let db = TestDb::sqlite_temp()?;
    let app = TestApp::spawn(&nats, &db).await?;
    log.clear();

    let organizer = id();
    let guests: Vec<_> = (0..4).map(|_| id()).collect();
    app.publish(&registered(organizer, "Olga")).await?;
    for (i, g) in guests.iter().enumerate() {
        app.publish(&registered(*g, &format!("Guest {i}"))).await?;
    }
    app.wait_auth().await?;
    let mut event = EventFixture::new(organizer);
    app.publish(&event.created()).await?;
    for (g, status) in guests.iter().zip([
        RsvpStatus::Going,
        RsvpStatus::Maybe,
        RsvpStatus::Going,
        RsvpStatus::Declined,
    ]) {
        app.publish(&event.rsvp(*g, status)).await?;
    }
    app.publish(&event.moved(SignedDuration::from_hours(3)))
        .await?;
    app.publish(&event.cancelled()).await?;
    app.wait_calendar().await?;

    let me = caller(organizer);
    let history = app.wait_history(organizer, 3).await?;
    let page = expect_status(app.list(&me, &[("limit", "1")]).await?, 200)?;
    if let Some(cursor) = page.next_cursor {
        expect_status(
            app.list(&me, &[("limit", "1"), ("cursor", &cursor)])
                .await?,
            200,
        )?;
    }
    expect_status(app.list(&me, &[("unread", "true")]).await?, 200)?;
    expect_status(app.mark_read(&me, &history[0].id.to_string()).await?, 200)?;
    expect_status(app.since(&me, history[1].id, 10).await?, 200)?;
    for since in [
        NotificationsSince::after_seq(1, 10),
        NotificationsSince::newest(),
    ] {
        let req = RpcRequest::new(since).with_caller(me.clone());
        expect_status(
            app.call::<_, Vec<Notification>>(subj::RPC_NOTIFICATIONS_SINCE, &req)
                .await?,
            200,
        )?;
    }

    require_indexed(
        &app.db.pool,
        &log,
        &[
            "processed_messages",
            "INSERT INTO notifications",
            "FROM notifications",
        ],
        |_| false,
    )
    .await?;
    app.stop().await?;
    Ok(())
}
