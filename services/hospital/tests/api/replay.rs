//! Replays go only to the durable that failed; a replay that fails again is parked
//! again with its history; reruns send nothing; where-is follows a message.

use std::time::Duration;

use anyhow::Result;
use contracts::ErrorCode;
use contracts::hospital::{
    AuditPage, BulkResult, DeadLetterDetail, DeadLetterStatus, FailureGroupList, JobKind,
    JobStatus, Outcome, ReplayRequest, WhereaboutsList,
};
use contracts::subjects::{calendar as cal, hospital as subj};

use crate::both_backends;
use crate::helpers::*;

both_backends!(replay_goes_only_to_the_durable_that_failed);

async fn where_is(app: &TestApp, key: &str, value: &str) -> Result<WhereaboutsList> {
    expect_ok(app.get(subj::RPC_WHERE, &[], &[(key, value)]).await?)
}

fn outcome_of(w: &WhereaboutsList, durable: &str) -> Option<Outcome> {
    w.items
        .first()?
        .consumers
        .iter()
        .find(|c| c.durable == durable)
        .map(|c| c.outcome)
}

async fn replay_goes_only_to_the_durable_that_failed(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let email = Subscriber::start(&app.js, EMAIL, true).await?;
    let push = Subscriber::start(&app.js, PUSH, false).await?;

    let t1 = trace_id();
    let boom1 = event("boom party");
    let boom2 = event("boom again");
    let fine = event("rust meetup");
    let t_fine = trace_id();
    let s1 = app.publish(&boom1, &t1).await?;
    app.publish(&boom2, &trace_id()).await?;
    app.publish(&fine, &t_fine).await?;
    let first = app.wait_dead_letters(&[], 2).await?;
    app.wait_drained("CALENDAR", EMAIL).await?;
    app.wait_drained("CALENDAR", PUSH).await?;
    let push_seen = push.seen().len();
    assert_eq!(push_seen, 3);
    let m1 = boom1.meta.message_id.to_string();

    // Where is it? Parked for email, handled by push; the fine one handled by both,
    // found by a scan of the stream (it was never parked), by message id and trace id.
    let w = where_is(&app, "message_id", &m1).await?;
    assert_eq!(w.items.len(), 1);
    assert_eq!(w.items[0].stream, "CALENDAR");
    assert_eq!(w.items[0].stream_sequence, s1);
    assert_eq!(w.items[0].subject, cal::EVENT_CREATED_V1);
    assert_eq!(outcome_of(&w, EMAIL), Some(Outcome::Parked));
    assert_eq!(outcome_of(&w, PUSH), Some(Outcome::Handled));
    let w = where_is(&app, "trace_id", &t1).await?;
    assert_eq!(outcome_of(&w, EMAIL), Some(Outcome::Parked));
    let w = where_is(&app, "message_id", &fine.meta.message_id.to_string()).await?;
    assert_eq!(outcome_of(&w, EMAIL), Some(Outcome::Handled));
    assert_eq!(outcome_of(&w, PUSH), Some(Outcome::Handled));
    let w = where_is(&app, "trace_id", &t_fine).await?;
    assert_eq!(
        w.items[0].message_id,
        fine.meta.message_id.to_string(),
        "found by its traceparent"
    );
    expect_problem(
        app.get::<WhereaboutsList>(subj::RPC_WHERE, &[], &[("message_id", "no-such-message")])
            .await?,
        ErrorCode::NotFound,
    )?;
    expect_problem(
        app.get::<WhereaboutsList>(subj::RPC_WHERE, &[], &[])
            .await?,
        ErrorCode::BadRequest,
    )?;

    // A dry run counts and changes nothing.
    let dry: BulkResult = expect_ok(
        app.post(
            subj::RPC_REPLAY,
            &[],
            ReplayRequest {
                selection: group_of(&first[0]),
                dry_run: true,
                rate_per_sec: None,
                reason: "how many?".into(),
            },
        )
        .await?,
    )?;
    assert!(dry.dry_run);
    assert_eq!(dry.matched, 2);
    assert!(dry.job.is_none());
    assert_eq!(app.dead_letters(&[("status", "parked")]).await?.len(), 2);

    // Replayed before the fix: email fails again and parks again, with the old park
    // id as replay_of; push sees nothing.
    let r = app.replay(group_of(&first[0]), None).await?;
    let job = r.job.clone().expect("a job");
    assert_eq!(job.kind, JobKind::Replay);
    assert_eq!(job.status, JobStatus::Running);
    let job = app.wait_job(job.id, Duration::from_secs(30)).await?;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!((job.total, job.done, job.skipped, job.failed), (2, 2, 0, 0));
    let again = app.wait_dead_letters(&[("status", "parked")], 2).await?;
    assert_eq!(app.dead_letters(&[("status", "replayed")]).await?.len(), 2);
    let reparked = again
        .iter()
        .find(|d| d.diagnosis.message_id.as_deref() == Some(m1.as_str()))
        .expect("boom1 parked again");
    let old = first
        .iter()
        .find(|d| d.diagnosis.message_id.as_deref() == Some(m1.as_str()))
        .expect("boom1 parked first");
    assert_eq!(
        reparked.diagnosis.replay_of.as_deref(),
        Some(old.park_id.as_str())
    );
    assert_eq!(reparked.diagnosis.subject, cal::EVENT_CREATED_V1);
    assert_ne!(reparked.park_id, old.park_id);
    assert_eq!(reparked.fingerprint, old.fingerprint);
    let detail: DeadLetterDetail = expect_ok(
        app.get(subj::RPC_GET, &[("id", &reparked.id.to_string())], &[])
            .await?,
    )?;
    assert_eq!(detail.history.len(), 1);
    assert_eq!(detail.history[0].id, old.id);
    assert_eq!(detail.history[0].status, DeadLetterStatus::Replayed);
    assert_eq!(detail.history[0].replays, 1);
    let old_detail: DeadLetterDetail = expect_ok(
        app.get(subj::RPC_GET, &[("id", &old.id.to_string())], &[])
            .await?,
    )?;
    assert!(
        old_detail.audit.iter().any(|a| a.action == "replay"),
        "the replay that moved it is in its audit"
    );
    app.wait_drained("CALENDAR", EMAIL).await?;
    app.wait_drained("CALENDAR", PUSH).await?;
    assert_eq!(
        push.seen().len(),
        push_seen,
        "push got a replay meant for email"
    );

    // Fixed: the group (2 replayed, 2 parked) replays the 2 parked ones.
    email.fix();
    let r = app.replay(group_of(&first[0]), None).await?;
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(30))
        .await?;
    assert_eq!((job.total, job.done, job.skipped, job.failed), (4, 2, 2, 0));
    app.wait_drained("CALENDAR", EMAIL).await?;
    app.wait_drained("CALENDAR", PUSH).await?;
    let replays: Vec<Seen> = email
        .seen()
        .into_iter()
        .filter(|s| s.replay_of.is_some() && s.ok)
        .collect();
    assert_eq!(replays.len(), 2);
    for s in &replays {
        let parked = again
            .iter()
            .find(|d| d.diagnosis.message_id == s.message_id)
            .expect("a replay of a parked message");
        assert_eq!(s.replay_of.as_deref(), Some(parked.park_id.as_str()));
        assert_eq!(
            s.nats_msg_id.as_deref(),
            Some(format!("replay:{}:0", parked.park_id).as_str())
        );
        assert_eq!(
            s.subject,
            cal::EVENT_CREATED_V1,
            "handlers see the original subject"
        );
    }
    assert_eq!(
        push.seen().len(),
        push_seen,
        "push got a replay meant for email"
    );
    assert!(app.dead_letters(&[("status", "parked")]).await?.is_empty());

    // A rerun sends nothing.
    let before = app
        .js
        .get_stream("CALENDAR")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let r = app.replay(group_of(&first[0]), None).await?;
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(30))
        .await?;
    assert_eq!((job.total, job.done, job.skipped), (4, 0, 4));
    let after = app
        .js
        .get_stream("CALENDAR")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    assert_eq!(before, after, "a rerun published something");

    // Where is it now? Replayed for email.
    let w = where_is(&app, "message_id", &m1).await?;
    assert_eq!(outcome_of(&w, EMAIL), Some(Outcome::Replayed));
    assert_eq!(outcome_of(&w, PUSH), Some(Outcome::Handled));

    // The group is settled: not listed by default, listed with status=all.
    let groups: FailureGroupList = expect_ok(app.get(subj::RPC_GROUPS, &[], &[]).await?)?;
    assert!(groups.items.is_empty());
    let groups: FailureGroupList =
        expect_ok(app.get(subj::RPC_GROUPS, &[], &[("status", "all")]).await?)?;
    assert_eq!((groups.items[0].total, groups.items[0].parked), (4, 0));

    // The audit: the dry run and the three replays, newest first.
    let audit: AuditPage = expect_ok(app.get(subj::RPC_AUDIT, &[], &[]).await?)?;
    let actions: Vec<&str> = audit.items.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["replay", "replay", "replay", "replay_dry_run"]
    );
    assert_eq!(audit.items[0].count, 0);
    assert_eq!(audit.items[1].count, 2);
    assert_eq!(audit.items[0].reason, "the bug is fixed");
    assert!(audit.items[0].target.starts_with("group:email-calendar/"));
    assert_eq!(audit.items[3].detail["dry_run"], true);
    email.stop().await;
    push.stop().await;
    app.stop().await
}
