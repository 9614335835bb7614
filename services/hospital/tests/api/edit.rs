//! Edit and replay: the body is checked against its contract, the edited copy reaches
//! the failing durable once with a new message id, and the audit keeps both bodies.

use anyhow::Result;
use contracts::ErrorCode;
use contracts::hospital::{
    AuditPage, DeadLetterDetail, DeadLetterStatus, EditReplayRequest, EditReplayResult,
};
use contracts::subjects::hospital as subj;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    edit_replay_sends_one_checked_copy,
    an_edit_interrupted_half_way_is_finished_once,
);

async fn edit(
    app: &TestApp,
    id: &str,
    body: serde_json::Value,
    reason: &str,
) -> Result<contracts::RpcReply<EditReplayResult>> {
    app.post(
        subj::RPC_EDIT_REPLAY,
        &[("id", id)],
        EditReplayRequest {
            body,
            reason: reason.into(),
        },
    )
    .await
}

async fn edit_replay_sends_one_checked_copy(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let email = Subscriber::start(&app.js, EMAIL, true).await?;
    let push = Subscriber::start(&app.js, PUSH, false).await?;
    let boom = event("boom party");
    app.publish(&boom, &trace_id()).await?;
    let d = app.wait_dead_letters(&[], 1).await?.remove(0);
    app.wait_drained("CALENDAR", PUSH).await?;
    let push_seen = push.seen().len();
    let id = d.id.to_string();
    let detail: DeadLetterDetail = expect_ok(app.get(subj::RPC_GET, &[("id", &id)], &[]).await?)?;
    let original = detail.body.clone();

    // Bodies that do not fit the contract, or requests without a reason, are refused.
    let mut wrong_type = original.clone();
    wrong_type["event"]["capacity"] = serde_json::json!("many");
    let p = expect_problem(
        edit(&app, &id, wrong_type, "fix").await?,
        ErrorCode::ValidationFailed,
    )?;
    assert!(
        p.detail
            .as_deref()
            .unwrap_or("")
            .contains("calendar.event_created"),
        "{p:?}"
    );
    let mut missing = original.clone();
    missing["event"]
        .as_object_mut()
        .expect("event object")
        .remove("title");
    expect_problem(
        edit(&app, &id, missing, "fix").await?,
        ErrorCode::ValidationFailed,
    )?;
    expect_problem(
        edit(&app, &id, serde_json::json!([1, 2]), "fix").await?,
        ErrorCode::ValidationFailed,
    )?;
    let mut good = original.clone();
    good["event"]["title"] = serde_json::json!("party (fixed)");
    expect_problem(
        edit(&app, &id, good.clone(), " ").await?,
        ErrorCode::ValidationFailed,
    )?;
    expect_problem(
        edit(&app, &uuid::Uuid::now_v7().to_string(), good.clone(), "fix").await?,
        ErrorCode::NotFound,
    )?;
    // Nothing was sent or changed by the refusals.
    app.wait_drained("CALENDAR", EMAIL).await?;
    assert_eq!(email.seen().len(), 1);
    assert_eq!(app.dead_letters(&[("status", "parked")]).await?.len(), 1);

    // A good body: one delivery to email, with a new message id.
    let result = expect_ok(edit(&app, &id, good.clone(), "title had a typo").await?)?;
    let original_id = boom.meta.message_id.to_string();
    assert_ne!(result.message_id, original_id);
    assert!(
        result.diff.contains("-    \"title\": \"boom party\""),
        "{}",
        result.diff
    );
    assert!(
        result.diff.contains("+    \"title\": \"party (fixed)\""),
        "{}",
        result.diff
    );
    poll_until(
        "the edited copy",
        std::time::Duration::from_secs(20),
        || async { (email.seen().len() >= 2).then_some(()) },
    )
    .await?;
    app.wait_drained("CALENDAR", EMAIL).await?;
    app.wait_drained("CALENDAR", PUSH).await?;
    let seen = email.seen();
    assert_eq!(seen.len(), 2);
    let copy = &seen[1];
    assert!(copy.ok);
    assert_eq!(copy.title, "party (fixed)");
    assert_eq!(copy.message_id.as_deref(), Some(result.message_id.as_str()));
    assert_eq!(copy.edited_from.as_deref(), Some(original_id.as_str()));
    assert_eq!(copy.replay_of.as_deref(), Some(d.park_id.as_str()));
    assert_eq!(
        copy.nats_msg_id.as_deref(),
        Some(format!("edit:{}:{}", d.park_id, result.message_id).as_str())
    );
    assert_eq!(push.seen().len(), push_seen, "push got the edited copy");

    // Replayed now: a second edit and a group replay send nothing more.
    let after: DeadLetterDetail = expect_ok(app.get(subj::RPC_GET, &[("id", &id)], &[]).await?)?;
    assert_eq!(after.dead_letter.status, DeadLetterStatus::Replayed);
    assert_eq!(after.dead_letter.replays, 1);
    let p = expect_problem(
        edit(&app, &id, good.clone(), "again").await?,
        ErrorCode::ValidationFailed,
    )?;
    assert_eq!(p.detail.as_deref(), Some("not parked"));
    let r = app.replay(group_of(&d), None).await?;
    let job = app
        .wait_job(r.job.expect("a job").id, std::time::Duration::from_secs(20))
        .await?;
    assert_eq!((job.done, job.skipped), (0, 1));
    app.wait_drained("CALENDAR", EMAIL).await?;
    assert_eq!(email.seen().len(), 2);

    // The audit keeps both bodies and the diff; the dead letter shows it.
    let audit: AuditPage = expect_ok(app.get(subj::RPC_AUDIT, &[], &[]).await?)?;
    let entry = audit
        .items
        .iter()
        .find(|a| a.action == "edit_replay")
        .expect("an edit_replay entry");
    assert_eq!(entry.target, id);
    assert_eq!(entry.count, 1);
    assert_eq!(entry.reason, "title had a typo");
    assert_eq!(entry.detail["original"]["event"]["title"], "boom party");
    assert_eq!(entry.detail["edited"]["event"]["title"], "party (fixed)");
    assert_eq!(
        entry.detail["edited"]["meta"]["message_id"],
        result.message_id
    );
    assert_eq!(entry.detail["diff"], result.diff);
    assert!(after.audit.iter().any(|a| a.id == entry.id));
    email.stop().await;
    push.stop().await;
    app.stop().await
}

/// The hospital stops in the middle of two edit-replays: one after writing its audit
/// entry and publishing the edited copy, one right after claiming its dead letter. The
/// next start finishes the first (re-sending the same copy, which the stream drops as a
/// duplicate) and gives the second back, which nothing was sent for.
async fn an_edit_interrupted_half_way_is_finished_once(backend: Backend) -> Result<()> {
    use hospital::{bus, store};

    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let email = Subscriber::start(&app.js, EMAIL, true).await?;
    let sent = event("boom sent before the crash");
    let claimed = event("boom claimed before the crash");
    app.publish(&sent, &trace_id()).await?;
    app.publish(&claimed, &trace_id()).await?;
    let items = app.wait_dead_letters(&[], 2).await?;
    let find = |e: &contracts::events::EventCreatedV1| {
        items
            .iter()
            .find(|d| d.diagnosis.message_id == Some(e.meta.message_id.to_string()))
            .cloned()
            .expect("parked")
    };
    let (a, b) = (find(&sent), find(&claimed));
    app.wait_drained("CALENDAR", EMAIL).await?;

    // A: claimed, audited and published; the process stops before marking it replayed.
    let full = store::get(&app.db, a.id).await?.expect("indexed");
    let detail: DeadLetterDetail = expect_ok(
        app.get(subj::RPC_GET, &[("id", &a.id.to_string())], &[])
            .await?,
    )?;
    let new_id = uuid::Uuid::now_v7().to_string();
    let mut edited = detail.body.clone();
    edited["event"]["title"] = serde_json::json!("party (fixed)");
    edited["meta"]["message_id"] = serde_json::json!(new_id);
    let audit_a = uuid::Uuid::now_v7();
    assert!(store::claim_for_edit(&app.db, a.id, audit_a).await?);
    store::insert_audit(
        &app.db,
        &store::NewAudit {
            id: audit_a,
            actor: admin().user_id,
            action: "edit_replay".into(),
            target: a.id.to_string(),
            target_id: Some(a.id),
            count: 1,
            reason: "title had a typo".into(),
            detail: serde_json::json!({
                "park_id": a.park_id,
                "message_id": new_id,
                "original": detail.body,
                "edited": edited,
                "diff": "",
            }),
        },
    )
    .await?;
    let (bytes, _) = contracts::events::encode_json("calendar.event_created", 1, edited.clone())?;
    bus::publish(&app.js, bus::edited_replay_of(&full, &new_id, bytes)?).await?;
    // B: claimed only.
    assert!(store::claim_for_edit(&app.db, b.id, uuid::Uuid::now_v7()).await?);
    // Both still show as parked while under way.
    assert_eq!(app.dead_letters(&[("status", "parked")]).await?.len(), 2);
    let index = app.db.clone();
    app.stop().await?;
    let long_ago = runtime::db::to_micros(jiff::Timestamp::now()) - 3_600_000_000;
    sqlx::query("UPDATE dead_letters SET updated_at = $1 WHERE status = 'editing'")
        .bind(long_ago)
        .execute(&index.pool)
        .await?;

    let app = TestApp::spawn(&nats, &db).await?;
    let status_of = |id: uuid::Uuid| {
        let app = &app;
        async move {
            let d: DeadLetterDetail = expect_ok(
                app.get(subj::RPC_GET, &[("id", &id.to_string())], &[])
                    .await
                    .ok()?,
            )
            .ok()?;
            Some((d.dead_letter.status, d.dead_letter.replays))
        }
    };
    poll_until(
        "the interrupted edits to be settled",
        std::time::Duration::from_secs(30),
        || async {
            let a = status_of(a.id).await?;
            let b = status_of(b.id).await?;
            (a == (DeadLetterStatus::Replayed, 1) && b == (DeadLetterStatus::Parked, 0))
                .then_some(())
        },
    )
    .await?;
    // One edited copy in the stream, and the subscriber handled it once.
    let copies = app
        .messages_on("CALENDAR", &format!("calendar.replay.{EMAIL}.>"))
        .await?;
    assert_eq!(copies.len(), 1, "one edited copy: {copies:?}");
    app.wait_drained("CALENDAR", EMAIL).await?;
    let got: Vec<_> = email
        .seen()
        .into_iter()
        .filter(|s| s.edited_from == Some(sent.meta.message_id.to_string()))
        .collect();
    assert_eq!(got.len(), 1);
    assert!(got[0].ok && got[0].title == "party (fixed)");
    assert_eq!(got[0].message_id.as_deref(), Some(new_id.as_str()));

    // B was never sent; edited now, it goes out once.
    let b_detail: DeadLetterDetail = expect_ok(
        app.get(subj::RPC_GET, &[("id", &b.id.to_string())], &[])
            .await?,
    )?;
    let mut fixed = b_detail.body.clone();
    fixed["event"]["title"] = serde_json::json!("claimed, then fixed");
    let result = expect_ok(edit(&app, &b.id.to_string(), fixed, "after the crash").await?)?;
    poll_until(
        "the second edited copy",
        std::time::Duration::from_secs(20),
        || async {
            email
                .seen()
                .iter()
                .any(|s| s.message_id.as_deref() == Some(result.message_id.as_str()))
                .then_some(())
        },
    )
    .await?;
    let audit: AuditPage = expect_ok(app.get(subj::RPC_AUDIT, &[], &[]).await?)?;
    let edits: Vec<_> = audit
        .items
        .iter()
        .filter(|e| e.action == "edit_replay")
        .map(|e| e.target.clone())
        .collect();
    assert_eq!(edits.len(), 2, "{edits:?}");
    assert!(edits.contains(&a.id.to_string()) && edits.contains(&b.id.to_string()));
    email.stop().await;
    app.stop().await
}
