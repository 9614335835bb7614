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

both_backends!(edit_replay_sends_one_checked_copy);

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
