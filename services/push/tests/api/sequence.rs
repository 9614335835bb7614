//! The stream's resume point: each user's notifications are numbered in commit order,
//! so resuming after the last number received misses nothing, however the storing
//! transactions overlap.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use contracts::api::{Notification, NotificationKind, NotificationsSince};
use contracts::events::RsvpStatus;
use contracts::rpc::{Caller, RpcRequest};
use contracts::subjects::push as subj;
use jiff::Timestamp;
use push::domain::Draft;
use push::store;
use runtime::db::Database;
use uuid::Uuid;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    concurrent_stores_for_one_user_resume_without_a_miss,
    since_by_seq_and_newest_over_rpc,
);

fn draft(user_id: Uuid, title: &str) -> Draft {
    Draft {
        user_id,
        kind: NotificationKind::RsvpReceived,
        title: title.to_owned(),
        body: String::new(),
        event_id: None,
        source_message_id: Uuid::now_v7(),
    }
}

/// Writers store notifications for one user in overlapping transactions, the earliest
/// holding its transaction open the longest (without the per-user lock it would commit
/// last, its lower id becoming visible after higher ones). Meanwhile a reader resumes
/// again and again from the last number it got, as a reconnecting stream does. Every
/// read must be the next numbers without a hole, and in the end the reader has every
/// notification once.
async fn concurrent_stores_for_one_user_resume_without_a_miss(backend: Backend) -> Result<()> {
    let test_db = TestDb::new(backend).await?;
    let db = Database::connect(test_db.url(), &push::MIGRATIONS).await?;
    let user = Uuid::now_v7();
    // Each writer holds a connection: kept few, PostgreSQL's connections are shared by
    // every test running at once.
    const WRITERS: usize = 8;
    let committed = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let db = db.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            let mut tx = db.begin_write().await?;
            let stored = store::insert_notification(
                &mut tx,
                &draft(user, &format!("n{i}")),
                Timestamp::now(),
            )
            .await?
            .context("a new notification")?;
            // Another user's notification in the same transaction: its lock is taken in
            // user order and never blocks this user's readers.
            store::insert_notification(&mut tx, &draft(Uuid::now_v7(), "other"), Timestamp::now())
                .await?;
            tokio::time::sleep(Duration::from_millis(((WRITERS - i) * 20) as u64)).await;
            tx.commit().await?;
            committed.fetch_add(1, Ordering::SeqCst);
            anyhow::Ok(stored.id)
        }));
        // Each writer starts (and makes its id) before the next.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut last = 0u64;
    let mut received: Vec<Uuid> = Vec::new();
    let mut reads = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < WRITERS {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {WRITERS} read",
            received.len()
        );
        let done_before = committed.load(Ordering::SeqCst);
        let mut conn = db.pool.acquire().await?;
        let page = store::since_seq(&mut conn, user, last, 100).await?;
        drop(conn);
        reads += 1;
        for n in &page {
            ensure!(
                n.seq == last + 1,
                "resumed after {last} and got {}: a lower number committed later",
                n.seq
            );
            last = n.seq;
            received.push(n.id);
        }
        ensure!(
            received.len() >= done_before,
            "{done_before} committed before the read, only {} visible",
            received.len()
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut written = HashSet::new();
    for w in writers {
        written.insert(w.await??);
    }
    let unique: HashSet<Uuid> = received.iter().copied().collect();
    assert_eq!(unique.len(), WRITERS, "each once");
    assert_eq!(unique, written, "every notification was read");
    assert!(reads > 1, "the reader resumed in between");
    // Read back in one go, the numbers are 1..=WRITERS.
    let mut conn = db.pool.acquire().await?;
    let all = store::since_seq(&mut conn, user, 0, 100).await?;
    let seqs: Vec<u64> = all.iter().map(|n| n.seq).collect();
    assert_eq!(seqs, (1..=WRITERS as u64).collect::<Vec<_>>());

    // A notification already told takes no number: the next one is still gapless.
    let mut tx = db.begin_write().await?;
    let again = draft(user, "again");
    let first = store::insert_notification(&mut tx, &again, Timestamp::now()).await?;
    let repeat = store::insert_notification(&mut tx, &again, Timestamp::now()).await?;
    let next = store::insert_notification(&mut tx, &draft(user, "next"), Timestamp::now()).await?;
    tx.commit().await?;
    assert_eq!(first.map(|n| n.seq), Some(WRITERS as u64 + 1));
    assert_eq!(repeat, None);
    assert_eq!(next.map(|n| n.seq), Some(WRITERS as u64 + 2));
    drop(conn);
    db.pool.close().await;
    Ok(())
}

async fn ask(app: &TestApp, who: &Caller, q: NotificationsSince) -> Result<Vec<Notification>> {
    let reply = app
        .call(
            subj::RPC_NOTIFICATIONS_SINCE,
            &RpcRequest::new(q).with_caller(who.clone()),
        )
        .await?;
    expect_status(reply, 200)
}

/// The gateway's questions: the newest, after a number, after an id (older streams).
async fn since_by_seq_and_newest_over_rpc(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = id();
    let me = caller(organizer);
    assert!(
        ask(&app, &me, NotificationsSince::newest())
            .await?
            .is_empty()
    );

    let mut ev = EventFixture::new(organizer);
    app.publish(&ev.created()).await?;
    for _ in 0..4 {
        app.publish(&ev.rsvp(id(), RsvpStatus::Going)).await?;
    }
    let mut items = app.wait_history(organizer, 4).await?;
    items.reverse();
    let seqs: Vec<Option<u64>> = items.iter().map(|n| n.seq).collect();
    assert_eq!(seqs, vec![Some(1), Some(2), Some(3), Some(4)]);

    assert_eq!(
        ask(&app, &me, NotificationsSince::newest()).await?,
        items[3..].to_vec()
    );
    assert_eq!(
        ask(&app, &me, NotificationsSince::after_seq(1, 2)).await?,
        items[1..3].to_vec()
    );
    assert!(
        ask(&app, &me, NotificationsSince::after_seq(4, 10))
            .await?
            .is_empty()
    );
    assert_eq!(
        ask(&app, &me, NotificationsSince::after_id(items[1].id, 10)).await?,
        items[2..].to_vec()
    );
    // Another user's numbers are their own.
    assert!(
        ask(&app, &user(), NotificationsSince::after_seq(0, 10))
            .await?
            .is_empty()
    );
    app.stop().await
}
