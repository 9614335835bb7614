//! Discard and purge (dry runs change nothing), consumer statistics, pause and resume,
//! the audit trail, and the admin-only rule on every endpoint.

use std::time::Duration;

use anyhow::Result;
use contracts::ErrorCode;
use contracts::hospital::{
    AuditPage, BulkRequest, BulkResult, ConsumerState, DeadLetterDetail, DeadLetterFilter,
    DeadLetterStatus, EditReplayRequest, HospitalStats, JobList, PauseRequest, ReplayRequest,
    ResumeRequest, Selection,
};
use contracts::rpc::{Caller, NoBody, RpcReply, RpcRequest};
use contracts::subjects::{self, hospital as subj};

use crate::helpers::*;
use crate::{both_backends, sqlite_only};

both_backends!(discard_and_purge, pause_resume_and_stats);
sqlite_only!(every_endpoint_is_for_admins_only);

fn bulk(selection: Selection, dry_run: bool, reason: &str) -> BulkRequest {
    BulkRequest {
        selection,
        dry_run,
        reason: reason.into(),
    }
}

fn by_durable(durable: &str, status: Option<DeadLetterStatus>) -> Selection {
    Selection {
        filter: Some(DeadLetterFilter {
            durable: Some(durable.into()),
            status,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn dlq_messages(app: &TestApp) -> Result<u64> {
    Ok(app.js.get_stream("DLQ").await?.info().await?.state.messages)
}

async fn discard_and_purge(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let email = Subscriber::start(&app.js, EMAIL, true).await?;
    for title in ["boom 1", "boom 2", "boom 3"] {
        app.publish(&event(title), &trace_id()).await?;
    }
    let all = app.wait_dead_letters(&[], 3).await?;
    let a = all[0].id;
    let dlq_before = dlq_messages(&app).await?;
    assert_eq!(dlq_before, 3);

    // Refused selections and reasons.
    for (selection, reason) in [
        (Selection::default(), "x"),
        (
            Selection {
                ids: vec![a],
                filter: Some(DeadLetterFilter::default()),
                ..Default::default()
            },
            "x",
        ),
        (ids(&[a]), ""),
    ] {
        expect_problem(
            app.post::<_, BulkResult>(subj::RPC_DISCARD, &[], bulk(selection, false, reason))
                .await?,
            ErrorCode::ValidationFailed,
        )?;
    }

    // Dry runs count and change nothing.
    let dry: BulkResult = expect_ok(
        app.post(
            subj::RPC_DISCARD,
            &[],
            bulk(by_durable(EMAIL, None), true, "count"),
        )
        .await?,
    )?;
    assert_eq!(
        (dry.dry_run, dry.matched, dry.job.is_none()),
        (true, 3, true)
    );
    let dry: BulkResult = expect_ok(
        app.post(
            subj::RPC_PURGE,
            &[],
            bulk(by_durable(EMAIL, None), true, "count"),
        )
        .await?,
    )?;
    assert_eq!(dry.matched, 3);
    assert_eq!(app.dead_letters(&[("status", "parked")]).await?.len(), 3);
    assert_eq!(dlq_messages(&app).await?, 3);

    // Discard one: only its status changes.
    let r: BulkResult = expect_ok(
        app.post(subj::RPC_DISCARD, &[], bulk(ids(&[a]), false, "test data"))
            .await?,
    )?;
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(20))
        .await?;
    assert_eq!((job.total, job.done, job.skipped), (1, 1, 0));
    let detail: DeadLetterDetail = expect_ok(
        app.get(subj::RPC_GET, &[("id", &a.to_string())], &[])
            .await?,
    )?;
    assert_eq!(detail.dead_letter.status, DeadLetterStatus::Discarded);
    assert!(
        detail
            .audit
            .iter()
            .any(|e| e.action == "discard" && e.reason == "test data")
    );
    let r: BulkResult = expect_ok(
        app.post(subj::RPC_DISCARD, &[], bulk(ids(&[a]), false, "again"))
            .await?,
    )?;
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(20))
        .await?;
    assert_eq!((job.done, job.skipped), (0, 1));
    assert_eq!(dlq_messages(&app).await?, 3);

    // Purge the durable's dead letters: the parked ones go from the index and the
    // stream; the discarded one stays (not asked for by status).
    let r: BulkResult = expect_ok(
        app.post(
            subj::RPC_PURGE,
            &[],
            bulk(by_durable(EMAIL, None), false, "cleanup"),
        )
        .await?,
    )?;
    assert_eq!(r.matched, 3);
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(20))
        .await?;
    assert_eq!((job.total, job.done, job.skipped, job.failed), (3, 2, 1, 0));
    assert_eq!(dlq_messages(&app).await?, 1);
    let left = app.dead_letters(&[]).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, a);
    expect_problem(
        app.get::<DeadLetterDetail>(subj::RPC_GET, &[("id", &all[1].id.to_string())], &[])
            .await?,
        ErrorCode::NotFound,
    )?;
    // Asking for the status explicitly purges discarded ones too.
    let r: BulkResult = expect_ok(
        app.post(
            subj::RPC_PURGE,
            &[],
            bulk(
                by_durable(EMAIL, Some(DeadLetterStatus::Discarded)),
                false,
                "cleanup",
            ),
        )
        .await?,
    )?;
    let job = app
        .wait_job(r.job.expect("a job").id, Duration::from_secs(20))
        .await?;
    assert_eq!((job.done, job.skipped), (1, 0));
    assert!(app.dead_letters(&[]).await?.is_empty());
    assert_eq!(dlq_messages(&app).await?, 0);

    // Jobs, newest first; the audit, paged.
    let jobs: JobList = expect_ok(app.get(subj::RPC_JOBS, &[], &[]).await?)?;
    assert_eq!(jobs.items.len(), 4);
    assert_eq!(jobs.items[0].id, job.id);
    let p1: AuditPage = expect_ok(app.get(subj::RPC_AUDIT, &[], &[("limit", "4")]).await?)?;
    let cursor = p1.next_cursor.clone().expect("a second page");
    let p2: AuditPage = expect_ok(
        app.get(subj::RPC_AUDIT, &[], &[("limit", "4"), ("cursor", &cursor)])
            .await?,
    )?;
    let actions: Vec<&str> = p1
        .items
        .iter()
        .chain(p2.items.iter())
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "purge",
            "purge",
            "discard",
            "discard",
            "purge_dry_run",
            "discard_dry_run"
        ]
    );
    assert_eq!(p2.next_cursor, None);
    email.stop().await;
    app.stop().await
}

async fn pause_resume_and_stats(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let email = Subscriber::start(&app.js, EMAIL, true).await?;
    let push = Subscriber::start(&app.js, PUSH, false).await?;
    app.publish(&event("boom"), &trace_id()).await?;
    app.wait_dead_letters(&[], 1).await?;
    app.wait_drained("CALENDAR", PUSH).await?;

    let stats: HospitalStats = expect_ok(app.get(subj::RPC_STATS, &[], &[]).await?)?;
    let of = |s: &HospitalStats, d: &str| s.consumers.iter().find(|c| c.durable == d).cloned();
    let e = of(&stats, EMAIL).expect("email-calendar listed");
    assert_eq!(
        (e.stream.as_str(), e.parked, e.paused),
        ("CALENDAR", 1, false)
    );
    let p = of(&stats, PUSH).expect("push-calendar listed");
    assert_eq!((p.parked, p.pending, p.ack_pending), (0, 0, 0));
    assert_eq!(stats.dlq_messages, 1);
    assert!(stats.dlq_bytes > 0);
    assert_eq!(stats.dlq_max_bytes, subjects::DLQ_MAX_BYTES);

    // Paused: push gets nothing until resumed.
    let paused: ConsumerState = expect_ok(
        app.post(
            subj::RPC_PAUSE,
            &[("durable", PUSH)],
            PauseRequest {
                seconds: Some(60),
                reason: "push provider outage".into(),
            },
        )
        .await?,
    )?;
    assert!(paused.paused);
    let until = paused.paused_until.expect("paused until");
    let from_now = until.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((50..=61).contains(&from_now), "{from_now}");
    let seen = push.seen().len();
    app.publish(&event("while paused"), &trace_id()).await?;
    app.wait_drained("CALENDAR", EMAIL).await?;
    poll_until("push to lag", Duration::from_secs(10), || async {
        let info = app.consumer_info("CALENDAR", PUSH).await.ok()?;
        (info.num_pending == 1).then_some(())
    })
    .await?;
    assert_eq!(push.seen().len(), seen);
    let stats: HospitalStats = expect_ok(app.get(subj::RPC_STATS, &[], &[]).await?)?;
    let p = of(&stats, PUSH).expect("push-calendar listed");
    assert!(p.paused);
    assert_eq!(p.pending, 1);

    let resumed: ConsumerState = expect_ok(
        app.post(
            subj::RPC_RESUME,
            &[("durable", PUSH)],
            ResumeRequest {
                reason: "provider back".into(),
            },
        )
        .await?,
    )?;
    assert!(!resumed.paused);
    poll_until("push to catch up", Duration::from_secs(20), || async {
        (push.seen().len() > seen).then_some(())
    })
    .await?;

    expect_problem(
        app.post::<_, ConsumerState>(
            subj::RPC_PAUSE,
            &[("durable", "nobody-calendar")],
            PauseRequest {
                seconds: None,
                reason: "x".into(),
            },
        )
        .await?,
        ErrorCode::NotFound,
    )?;
    expect_problem(
        app.post::<_, ConsumerState>(
            subj::RPC_PAUSE,
            &[("durable", PUSH)],
            PauseRequest {
                seconds: None,
                reason: "".into(),
            },
        )
        .await?,
        ErrorCode::ValidationFailed,
    )?;
    let audit: AuditPage = expect_ok(app.get(subj::RPC_AUDIT, &[], &[]).await?)?;
    let actions: Vec<(&str, &str)> = audit
        .items
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("resume", "consumer:push-calendar"),
            ("pause", "consumer:push-calendar")
        ]
    );
    assert_eq!(audit.items[1].detail["seconds"], 60);
    email.stop().await;
    push.stop().await;
    app.stop().await
}

/// Sends `body` to `subject` as `caller` and returns the problem code, if any.
async fn code_as<B: serde::Serialize>(
    app: &TestApp,
    subject: &str,
    caller: Option<Caller>,
    body: B,
) -> Result<Option<ErrorCode>> {
    let mut req = RpcRequest::new(body)
        .with_param("id", uuid::Uuid::now_v7().to_string())
        .with_param("durable", PUSH);
    req.caller = caller;
    let reply: RpcReply<serde_json::Value> = app.call(subject, &req).await?;
    Ok(match reply {
        RpcReply::Err(p) => Some(p.code),
        RpcReply::Ok { .. } => None,
    })
}

async fn every_endpoint_is_for_admins_only(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    assert_eq!(app.http_status("/healthz").await?, 200);
    assert_eq!(app.http_status("/readyz").await?, 200);
    let replay = ReplayRequest {
        selection: ids(&[uuid::Uuid::now_v7()]),
        dry_run: true,
        rate_per_sec: None,
        reason: "x".into(),
    };
    let bulk_body = bulk(ids(&[uuid::Uuid::now_v7()]), true, "x");
    let edit = EditReplayRequest {
        body: serde_json::json!({}),
        reason: "x".into(),
    };
    let pause = PauseRequest {
        seconds: None,
        reason: "x".into(),
    };
    let resume = ResumeRequest { reason: "x".into() };
    let gets = [
        subj::RPC_LIST,
        subj::RPC_GET,
        subj::RPC_GROUPS,
        subj::RPC_JOBS,
        subj::RPC_JOB,
        subj::RPC_STATS,
        subj::RPC_WHERE,
        subj::RPC_AUDIT,
        subj::RPC_SERVICES,
    ];
    for (caller, code) in [
        (None, ErrorCode::Unauthorized),
        (Some(user()), ErrorCode::Forbidden),
    ] {
        for s in gets {
            assert_eq!(
                code_as(&app, s, caller.clone(), NoBody {}).await?,
                Some(code),
                "{s}"
            );
        }
        let c = caller.clone();
        assert_eq!(
            code_as(&app, subj::RPC_REPLAY, c.clone(), &replay).await?,
            Some(code)
        );
        assert_eq!(
            code_as(&app, subj::RPC_DISCARD, c.clone(), &bulk_body).await?,
            Some(code)
        );
        assert_eq!(
            code_as(&app, subj::RPC_PURGE, c.clone(), &bulk_body).await?,
            Some(code)
        );
        assert_eq!(
            code_as(&app, subj::RPC_EDIT_REPLAY, c.clone(), &edit).await?,
            Some(code)
        );
        assert_eq!(
            code_as(&app, subj::RPC_PAUSE, c.clone(), &pause).await?,
            Some(code)
        );
        assert_eq!(
            code_as(&app, subj::RPC_RESUME, c.clone(), &resume).await?,
            Some(code)
        );
    }
    // Nothing was done on their behalf.
    let audit: AuditPage = expect_ok(app.get(subj::RPC_AUDIT, &[], &[]).await?)?;
    assert!(audit.items.is_empty());
    let stats: HospitalStats = expect_ok(app.get(subj::RPC_STATS, &[], &[]).await?)?;
    assert!(stats.consumers.is_empty());
    // `GET /v1/admin/services` finds the hospital itself through discovery.
    let services: contracts::hospital::ServiceList =
        expect_ok(app.get(subj::RPC_SERVICES, &[], &[]).await?)?;
    assert!(
        services
            .instances
            .iter()
            .any(|i| i.service == subj::SERVICE && i.endpoints == 15),
        "{services:?}"
    );

    // Discovery: every endpoint names the public route it backs.
    let info = app
        .client
        .request(format!("$SRV.INFO.{}", subj::SERVICE), "".into())
        .await?;
    let info: serde_json::Value = serde_json::from_slice(&info.payload)?;
    let endpoints = info["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 15);
    for e in endpoints {
        let http = e["metadata"]["http"].as_str().unwrap_or_default();
        assert!(
            http.starts_with("GET /v1/admin/") || http.starts_with("POST /v1/admin/"),
            "{e}"
        );
    }
    app.stop().await
}
