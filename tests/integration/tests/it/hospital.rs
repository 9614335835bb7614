//! The message hospital end to end: real SMTP refusing and vanishing, real parking by
//! the subscribers, the hospital's index, ops replay through the gateway's admin API and
//! `meshctl`, and the web console in headless Chromium.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use contracts::events::{
    EventMeta, EventSnapshot, EventStatus, RsvpChangedV1, RsvpCounts, RsvpStatus,
};
use contracts::hospital::{Diagnosis, ErrorKind, ParkedMessage};
use integration::smtp::SmtpServer;
use integration::{Api, Backend, Mesh, Method, StatusCode, Tokens, poll_until};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::on_each_backend;

const WAIT: Duration = Duration::from_secs(60);
const ADMIN_EMAIL: &str = "ops@example.com";
const ADMIN_PASSWORD: &str = "ops password 123";

/// auth + calendar + email + push + hospital + gateway, with an admin account and short
/// email retries (3 deliveries, then parked).
async fn hospital_mesh(backend: Backend, smtp: &SmtpServer) -> Result<Mesh> {
    Mesh::builder(backend)
        .with_service("email")
        .with_service("push")
        .with_service("hospital")
        .with_env("auth", "AUTH_ADMIN_EMAILS", ADMIN_EMAIL)
        .with_env("email", "SMTP_URL", &smtp.url())
        .with_env("email", "SMTP_TIMEOUT_MS", "2000")
        .with_env("email", "EMAIL_MAX_DELIVER", "3")
        .with_env("email", "EMAIL_BACKOFF_MS", "2000,2000")
        .with_env("push", "PUSH_BACKOFF_MS", "2000,2000")
        .with_env("push", "PUSH_MAX_DELIVER", "3")
        .with_env("hospital", "HOSPITAL_REPLAY_RATE_PER_SEC", "0")
        .start()
        .await
}

async fn admin(api: &Api) -> Result<Tokens> {
    api.register(ADMIN_EMAIL, ADMIN_PASSWORD, "Ops").await?;
    let tokens = api.login(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    ensure!(tokens.body["access_token"].is_string(), "admin login");
    Ok(tokens)
}

/// Dead letters matching `query` (a query string without `?`).
async fn dead_letters(api: &Api, admin: &Tokens, query: &str) -> Result<Vec<Value>> {
    let (status, _, page) = api
        .get(
            &format!("/v1/admin/dlq/messages?limit=500&{query}"),
            Some(&admin.access),
        )
        .await?;
    ensure!(
        status == StatusCode::OK,
        "list dead letters: {status} {page}"
    );
    Ok(page["items"].as_array().cloned().unwrap_or_default())
}

async fn wait_dead_letters(
    api: &Api,
    admin: &Tokens,
    query: &str,
    at_least: usize,
) -> Result<Vec<Value>> {
    poll_until(
        WAIT,
        &format!("{at_least} dead letter(s) for {query}"),
        || async {
            let items = dead_letters(api, admin, query).await.ok()?;
            (items.len() >= at_least).then_some(items)
        },
    )
    .await
}

async fn wait_job(api: &Api, admin: &Tokens, job: &Value) -> Result<Value> {
    let id = job["id"].as_str().context("job id")?.to_owned();
    poll_until(
        Duration::from_secs(120),
        &format!("job {id} to finish"),
        || async {
            let (_, _, job) = api
                .get(&format!("/v1/admin/dlq/jobs/{id}"), Some(&admin.access))
                .await
                .ok()?;
            (job["status"] != "running").then_some(job)
        },
    )
    .await
}

async fn create_event(api: &Api, tokens: &Tokens) -> Result<Value> {
    let body = json!({
        "title": "Hospital meetup",
        "starts_at": "2030-06-01T18:00:00+02:00",
        "ends_at": "2030-06-01T21:00:00+02:00",
        "time_zone": "Europe/Berlin",
        "capacity": 100,
    });
    let (status, _, event) = api.post("/v1/events", Some(&tokens.access), &body).await?;
    ensure!(
        status == StatusCode::CREATED,
        "create event: {status} {event}"
    );
    Ok(event)
}

/// Publishes raw bytes as a calendar event with the mesh's headers.
async fn publish_raw(
    mesh: &Mesh,
    subject: &str,
    message_type: &str,
    message_id: Uuid,
    payload: Vec<u8>,
) -> Result<()> {
    let js = mesh.nats().jetstream().await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", message_id.to_string().as_str());
    headers.insert("Mesh-Message-Id", message_id.to_string().as_str());
    headers.insert("Mesh-Message-Type", message_type);
    headers.insert("Mesh-Schema-Version", "1");
    headers.insert("Content-Type", "application/msgpack");
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await?
        .await?;
    Ok(())
}

/// Messages a consumer has been handed so far.
async fn delivered(mesh: &Mesh, stream: &str, durable: &str) -> Result<u64> {
    let js = mesh.nats().jetstream().await?;
    let stream = js.get_stream(stream).await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(consumer.info().await?.delivered.consumer_sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_parked_diagnosed_and_replayed_to_the_failing_consumer_only() -> Result<()> {
    on_each_backend(hospital_journey).await
}

async fn hospital_journey(backend: Backend) -> Result<()> {
    let mut smtp = SmtpServer::start().await?;
    let mesh = hospital_mesh(backend, &smtp).await?;
    let api = mesh.api();
    let ops = admin(&api).await?;
    let (organizer, org) = api.new_user("Olga Organizer").await?;
    let (attendee, att) = api.new_user("Alice Attendee").await?;
    let org_email = organizer["email"].as_str().context("email")?.to_owned();
    let att_email = attendee["email"].as_str().context("email")?.to_owned();

    // 1. SMTP refuses one address for good: parked at once, as permanent, while the
    //    other welcome mails flow.
    let rejected = format!("reject-{}", integration::unique_email("bob"));
    api.register(&rejected, "correct horse battery", "Bob Bounce")
        .await?;
    let parked =
        wait_dead_letters(&api, &ops, "durable=email-auth&error_kind=permanent", 1).await?;
    let d = &parked[0]["diagnosis"];
    ensure!(
        d["deliveries"] == 1,
        "permanent failure parked on the first delivery: {d}"
    );
    ensure!(
        d["error"].as_str().is_some_and(|e| e.contains("550")),
        "SMTP's reason kept: {d}"
    );
    ensure!(
        d["subject"] == "auth.v1.user.registered"
            && d["stream"] == "AUTH"
            && d["message_type"] == "auth.user_registered"
            && d["schema_version"] == 1
            && d["service"] == "email"
            && d["message_id"].is_string()
            && d["first_failure_at"].is_string(),
        "diagnosis: {d}"
    );
    // The registration's trace (gateway → auth → outbox → email) is kept with it.
    ensure!(
        d["trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())),
        "the diagnosis keeps the trace id: {d}"
    );
    smtp.wait_for(&att_email, WAIT, |m| {
        m.text
            .as_deref()
            .is_some_and(|t| t.contains("verify-email"))
    })
    .await?;
    smtp.wait_for(&org_email, WAIT, |m| {
        m.text
            .as_deref()
            .is_some_and(|t| t.contains("verify-email"))
    })
    .await?;

    // 2. Garbage on a calendar subject: parked at once by both subscribers, and they
    //    keep going.
    let garbage_id = Uuid::now_v7();
    publish_raw(
        &mesh,
        "calendar.v1.rsvp.changed",
        "calendar.rsvp_changed",
        garbage_id,
        b"\xc1 not msgpack".to_vec(),
    )
    .await?;
    let garbage = wait_dead_letters(
        &api,
        &ops,
        "message_type=calendar.rsvp_changed&error_kind=permanent",
        2,
    )
    .await?;
    let durables: HashSet<&str> = garbage
        .iter()
        .filter_map(|g| g["diagnosis"]["durable"].as_str())
        .collect();
    ensure!(
        durables.contains("email-calendar") && durables.contains("push-calendar"),
        "both parked it: {durables:?}"
    );
    let event = create_event(&api, &org).await?;
    let event_id = event["id"].as_str().context("event id")?.to_owned();
    let (status, _, _) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&att.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "rsvp");
    smtp.wait_for(&att_email, WAIT, |m| {
        m.attachment("text/calendar").is_some()
    })
    .await?;

    // the depth per consumer is a metric too, and the workers count what they parked
    let hospital_metrics = mesh.service("hospital").url("/metrics");
    poll_until(WAIT, "mesh_dlq_depth for email-calendar", || {
        let url = hospital_metrics.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| {
                    l.starts_with("mesh_dlq_depth{")
                        && l.contains("durable=\"email-calendar\"")
                        && !l.ends_with(" 0")
                })
                .then_some(())
        }
    })
    .await?;
    let email_metrics = reqwest::get(mesh.service("email").url("/metrics"))
        .await?
        .text()
        .await?;
    ensure!(
        email_metrics.contains("mesh_dlq_parked_total{")
            && email_metrics.contains("kind=\"permanent\""),
        "email counts its parks: {email_metrics}"
    );

    // where is the garbage? parked at both consumers
    let (status, _, whereabouts) = api
        .get(
            &format!("/v1/admin/dlq/where?message_id={garbage_id}"),
            Some(&ops.access),
        )
        .await?;
    ensure!(status == StatusCode::OK, "where: {status} {whereabouts}");
    let outcomes = &whereabouts["items"][0]["consumers"];
    ensure!(
        outcomes
            .as_array()
            .is_some_and(|o| o.iter().filter(|c| c["outcome"] == "parked").count() >= 2),
        "both consumers show it parked: {whereabouts}"
    );

    // 3. Edit and replay: a message missing a field is fixed by ops; exactly one mail.
    let snapshot = EventSnapshot {
        event_id: event_id.parse()?,
        organizer_id: organizer["id"].as_str().context("id")?.parse()?,
        title: "Hospital meetup".into(),
        description: String::new(),
        starts_at: "2030-06-01T16:00:00Z".parse()?,
        ends_at: "2030-06-01T19:00:00Z".parse()?,
        time_zone: "Europe/Berlin".into(),
        location: String::new(),
        capacity: 100,
        status: EventStatus::Scheduled,
        counts: RsvpCounts {
            going: 1,
            maybe: 1,
            declined: 0,
        },
    };
    let broken_id = Uuid::now_v7();
    let mut meta = EventMeta::new(snapshot.event_id, 50);
    meta.message_id = broken_id;
    let full = RsvpChangedV1 {
        meta,
        event: snapshot,
        attendee_id: attendee["id"].as_str().context("id")?.parse()?,
        previous_status: Some(RsvpStatus::Going),
        status: RsvpStatus::Maybe,
    };
    let mut broken = serde_json::to_value(&full)?;
    broken.as_object_mut().context("object")?.remove("status");
    publish_raw(
        &mesh,
        "calendar.v1.rsvp.changed",
        "calendar.rsvp_changed",
        broken_id,
        contracts::wire::encode(&broken)?,
    )
    .await?;
    let parked = wait_dead_letters(&api, &ops, "durable=email-calendar&error=status", 1).await?;
    let dead = parked
        .iter()
        .find(|p| p["diagnosis"]["message_id"] == broken_id.to_string())
        .context("the broken message is parked")?;
    let dead_id = dead["id"].as_str().context("id")?.to_owned();
    let (status, _, detail) = api
        .get(
            &format!("/v1/admin/dlq/messages/{dead_id}"),
            Some(&ops.access),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && detail["body"]["attendee_id"] == attendee["id"],
        "decoded body: {status} {detail}"
    );
    let mut body = detail["body"].clone();
    // An edit that still breaks the contract is refused.
    body["status"] = json!("perhaps");
    let (status, _, refused) = api
        .post(
            &format!("/v1/admin/dlq/messages/{dead_id}/edit-replay"),
            Some(&ops.access),
            &json!({"body": body, "reason": "fix status"}),
        )
        .await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY,
        "invalid edit refused: {status} {refused}"
    );
    body["status"] = json!("maybe");
    let mails_before = smtp.messages_to(&att_email)?.len();
    let (status, _, edited) = api
        .post(
            &format!("/v1/admin/dlq/messages/{dead_id}/edit-replay"),
            Some(&ops.access),
            &json!({"body": body, "reason": "add the missing status"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "edit-replay: {status} {edited}");
    ensure!(
        edited["message_id"] != broken_id.to_string()
            && edited["diff"].as_str().is_some_and(|d| d.contains("maybe")),
        "edited copy: {edited}"
    );
    poll_until(WAIT, "the mail of the edited message", || async {
        (smtp.messages_to(&att_email).ok()?.len() > mails_before).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = smtp.messages_to(&att_email)?.len();
    ensure!(
        after == mails_before + 1,
        "exactly one mail from the edit: {mails_before} → {after}"
    );
    let (status, _, again) = api
        .post(
            &format!("/v1/admin/dlq/messages/{dead_id}/edit-replay"),
            Some(&ops.access),
            &json!({"body": body, "reason": "twice"}),
        )
        .await?;
    ensure!(
        status.is_client_error(),
        "a replayed dead letter cannot be edited again: {status} {again}"
    );
    let (_, _, audit) = api
        .get("/v1/admin/audit?limit=50", Some(&ops.access))
        .await?;
    let entry = audit["items"]
        .as_array()
        .and_then(|items| items.iter().find(|e| e["action"] == "edit_replay"))
        .with_context(|| format!("audit has the edit: {audit}"))?;
    let detail_text = entry["detail"].to_string();
    ensure!(
        detail_text.contains("\"maybe\"")
            && entry["reason"] == "add the missing status"
            && entry["actor"].is_string(),
        "audit keeps both versions, the reason and the operator: {entry}"
    );

    // 4. SMTP down past max deliveries: parked as transient; back up, a group replay
    //    delivers every mail once and push sees nothing new.
    smtp.stop().await?;
    let (late, late_tokens) = api.new_user("Late Larry").await?;
    let late_email = late["email"].as_str().context("email")?.to_owned();
    let (status, _, _) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&late_tokens.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "late rsvp");
    let transient = wait_dead_letters(
        &api,
        &ops,
        "durable=email-calendar&error_kind=transient&status=parked",
        1,
    )
    .await?;
    ensure!(
        transient[0]["diagnosis"]["deliveries"] == 3,
        "parked after max deliveries: {}",
        transient[0]
    );
    // push handled that RSVP normally
    poll_until(WAIT, "push to catch up", || async {
        let js = mesh.nats().jetstream().await.ok()?;
        let stream = js.get_stream("CALENDAR").await.ok()?;
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("push-calendar").await.ok()?;
        let info = c.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    let push_before = delivered(&mesh, "CALENDAR", "push-calendar").await?;
    smtp.start_again().await?;
    let (_, _, groups) = api
        .get(
            "/v1/admin/dlq/groups?durable=email-calendar",
            Some(&ops.access),
        )
        .await?;
    let group = groups["items"]
        .as_array()
        .and_then(|g| {
            g.iter()
                .find(|g| g["error_kind"] == "transient" && g["parked"].as_u64() > Some(0))
        })
        .with_context(|| format!("a transient group: {groups}"))?;
    let selection =
        json!({"group": {"durable": group["durable"], "fingerprint": group["fingerprint"]}});
    let (status, _, dry) = api
        .post(
            "/v1/admin/dlq/replay",
            Some(&ops.access),
            &json!({"selection": selection, "dry_run": true, "reason": "check"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && dry["matched"].as_u64() >= Some(1) && dry["job"].is_null(),
        "dry run: {status} {dry}"
    );
    let (status, _, result) = api
        .post(
            "/v1/admin/dlq/replay",
            Some(&ops.access),
            &json!({"selection": selection, "reason": "SMTP is back"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "replay: {status} {result}");
    let job = wait_job(&api, &ops, &result["job"]).await?;
    ensure!(
        job["status"] == "completed" && job["failed"] == 0,
        "job: {job}"
    );
    smtp.wait_for(&late_email, WAIT, |m| {
        m.attachment("text/calendar").is_some()
    })
    .await?;
    smtp.wait_for(&org_email, WAIT, |m| {
        m.subject.as_deref().is_some_and(|s| s.contains("Larry"))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = smtp.messages()?;
    let ids: HashSet<_> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    ensure!(
        ids.len() == mails.len(),
        "no mail twice: {} mails, {} distinct",
        mails.len(),
        ids.len()
    );
    let push_after = delivered(&mesh, "CALENDAR", "push-calendar").await?;
    ensure!(
        push_after == push_before,
        "push saw nothing of the replay: {push_before} → {push_after}"
    );

    // 5. Only admins: a user gets 403, no token 401, on every face of the admin API.
    for (method, path) in [
        (Method::GET, "/v1/admin/dlq/messages".to_owned()),
        (Method::GET, format!("/v1/admin/dlq/messages/{dead_id}")),
        (Method::GET, "/v1/admin/dlq/groups".to_owned()),
        (Method::GET, "/v1/admin/dlq/stats".to_owned()),
        (Method::GET, "/v1/admin/audit".to_owned()),
        (Method::POST, "/v1/admin/dlq/replay".to_owned()),
        (
            Method::POST,
            "/v1/admin/consumers/email-calendar/pause".to_owned(),
        ),
    ] {
        let body = (method == Method::POST)
            .then(|| json!({"selection": {"ids": [dead_id]}, "reason": "x"}));
        let (status, _, problem) = api
            .request(method.clone(), &path, Some(&att.access), body.as_ref())
            .await?;
        ensure!(
            status == StatusCode::FORBIDDEN && problem["code"] == "forbidden",
            "{method} {path} as user: {status} {problem}"
        );
        let (status, _, _) = api
            .request(method.clone(), &path, None, body.as_ref())
            .await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED,
            "{method} {path} without token: {status}"
        );
    }
    let (status, _, stats) = api.get("/v1/admin/dlq/stats", Some(&ops.access)).await?;
    ensure!(
        status == StatusCode::OK && stats["consumers"].as_array().is_some_and(|c| c.len() >= 4),
        "stats: {stats}"
    );
    mesh.shutdown().await
}

/// Publishes `n` parked copies for `durable` straight onto the DLQ, the way workers do.
async fn park_many(mesh: &Mesh, durable: &str, n: usize) -> Result<()> {
    let js = mesh.nats().jetstream().await?;
    let mut acks = Vec::new();
    for i in 0..n {
        let sequence = 1_000_000 + i as u64;
        let park_id = ParkedMessage::park_id(durable, "CALENDAR", sequence);
        let message_id = Uuid::now_v7().to_string();
        let parked = ParkedMessage {
            park_id: park_id.clone(),
            diagnosis: Diagnosis {
                service: "audit".into(),
                durable: durable.into(),
                stream: "CALENDAR".into(),
                subject: "calendar.v1.rsvp.changed".into(),
                stream_sequence: sequence,
                message_id: Some(message_id.clone()),
                message_type: Some("calendar.rsvp_changed".into()),
                schema_version: Some(1),
                error_kind: ErrorKind::Transient,
                error: format!("upstream timeout after {i} ms"),
                deliveries: 3,
                first_failure_at: jiff::Timestamp::now(),
                last_failure_at: jiff::Timestamp::now(),
                trace_id: None,
                replay_of: None,
            },
            headers: vec![
                ("Mesh-Message-Id".into(), message_id),
                ("Mesh-Message-Type".into(), "calendar.rsvp_changed".into()),
                ("Mesh-Schema-Version".into(), "1".into()),
            ],
            payload: contracts::wire::encode(&json!({"n": i}))?,
            parked_at: jiff::Timestamp::now(),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", park_id.as_str());
        acks.push(
            js.publish_with_headers(
                contracts::subjects::dlq_subject(durable),
                headers,
                contracts::wire::encode(&parked)?.into(),
            )
            .await?,
        );
        if acks.len() >= 512 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Replays that reached `durable`'s replay subject in the CALENDAR stream.
async fn replays_in_stream(mesh: &Mesh, durable: &str) -> Result<u64> {
    let js = mesh.nats().jetstream().await?;
    let stream = js.get_stream("CALENDAR").await?;
    let filter = format!("calendar.replay.{durable}.>");
    let mut info = stream.info_with_subjects(filter).await?;
    let mut total = 0;
    while let Some(entry) = futures::TryStreamExt::try_next(&mut info).await? {
        total += entry.1 as u64;
    }
    Ok(total)
}

async fn the_group(api: &Api, admin: &Tokens, durable: &str, n: u64) -> Result<Value> {
    poll_until(
        Duration::from_secs(120),
        &format!("{n} indexed dead letters of {durable}"),
        || async {
            let (_, _, groups) = api
                .get(
                    &format!("/v1/admin/dlq/groups?durable={durable}&status=parked"),
                    Some(&admin.access),
                )
                .await
                .ok()?;
            let group = groups["items"].as_array()?.first()?.clone();
            (group["parked"].as_u64()? >= n).then_some(group)
        },
    )
    .await
}

fn meshctl(
    config: &std::path::Path,
    url: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(bool, String, String)> {
    use std::io::Write;
    let binary = integration::service_binary("meshctl")?;
    let mut child = Command::new(binary)
        .args(["--url", url])
        .args(args)
        .env("MESHCTL_CONFIG", config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_replayed_once_with_meshctl_and_rerun_sends_nothing() -> Result<()> {
    const N: usize = 10_000;
    // Paced so the job runs a few seconds and meshctl shows it moving (a progress line
    // a second); unpaced it may end before the second line.
    const RATE: &str = "2500";
    let mesh = Mesh::builder(Backend::Sqlite)
        .with_service("hospital")
        .with_env("auth", "AUTH_ADMIN_EMAILS", ADMIN_EMAIL)
        .start()
        .await?;
    let api = mesh.api();
    let ops = admin(&api).await?;
    park_many(&mesh, "audit-calendar", N).await?;
    let group = the_group(&api, &ops, "audit-calendar", N as u64).await?;
    let key = format!(
        "audit-calendar:{}",
        group["fingerprint"].as_str().context("fingerprint")?
    );

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("credentials.json");
    let url = mesh.gateway_url();
    let (ok, out, err) = meshctl(
        &config,
        &url,
        &["login", "--email", ADMIN_EMAIL, "--password-stdin"],
        Some(ADMIN_PASSWORD),
    )?;
    ensure!(ok, "meshctl login: {out} {err}");
    let (ok, out, err) = meshctl(
        &config,
        &url,
        &["dlq", "groups", "--durable", "audit-calendar"],
        None,
    )?;
    ensure!(
        ok && out.contains("audit-calendar"),
        "meshctl dlq groups: {out} {err}"
    );
    println!("$ meshctl dlq groups --durable audit-calendar\n{out}");

    let started = std::time::Instant::now();
    let (ok, out, err) = meshctl(
        &config,
        &url,
        &[
            "dlq",
            "replay",
            "--group",
            &key,
            "--rate",
            RATE,
            "--reason",
            "bulk replay test",
        ],
        None,
    )?;
    let took = started.elapsed();
    ensure!(ok, "meshctl dlq replay: {out} {err}");
    println!(
        "$ meshctl dlq replay --group {key} --rate {RATE} --reason ...\n{out}{err}(took {took:?})"
    );
    // Progress lines (`replay: <pos>/10000 (skipped …`): at least one part way.
    let positions: Vec<usize> = err
        .lines()
        .filter_map(|l| {
            l.split_once(&format!("/{N} (skipped"))?
                .0
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ensure!(
        positions.iter().any(|p| *p > 0 && *p < N),
        "progress was shown part way: {positions:?} in {err}"
    );
    ensure!(
        out.contains(&N.to_string()) || err.contains(&N.to_string()),
        "the summary names {N}: {out} {err}"
    );
    let replayed = poll_until(WAIT, "every replay in the stream", || async {
        let n = replays_in_stream(&mesh, "audit-calendar").await.ok()?;
        (n >= N as u64).then_some(n)
    })
    .await?;
    ensure!(replayed == N as u64, "each replayed once: {replayed}");

    // Running it again sends nothing more.
    let (ok, out, err) = meshctl(
        &config,
        &url,
        &[
            "dlq", "replay", "--group", &key, "--rate", "0", "--reason", "again",
        ],
        None,
    )?;
    ensure!(ok, "second replay: {out} {err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = replays_in_stream(&mesh, "audit-calendar").await?;
    ensure!(again == N as u64, "a rerun sends nothing: {again}");
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_half_way_and_rerun_sends_each_message_once() -> Result<()> {
    const N: usize = 2_000;
    let mut mesh = Mesh::builder(Backend::Sqlite)
        .with_service("hospital")
        .with_env("auth", "AUTH_ADMIN_EMAILS", ADMIN_EMAIL)
        .start()
        .await?;
    let api = mesh.api();
    let ops = admin(&api).await?;
    park_many(&mesh, "crash-calendar", N).await?;
    let group = the_group(&api, &ops, "crash-calendar", N as u64).await?;
    let selection =
        json!({"group": {"durable": "crash-calendar", "fingerprint": group["fingerprint"]}});
    let (status, _, result) = api
        .post(
            "/v1/admin/dlq/replay",
            Some(&ops.access),
            &json!({"selection": selection, "rate_per_sec": 400, "reason": "first try"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "replay: {status} {result}");
    poll_until(WAIT, "the replay to get half way", || async {
        let n = replays_in_stream(&mesh, "crash-calendar").await.ok()?;
        (n >= (N / 3) as u64).then_some(())
    })
    .await?;
    mesh.service_mut("hospital").kill()?;
    let sent_before_kill = replays_in_stream(&mesh, "crash-calendar").await?;
    ensure!(
        sent_before_kill < N as u64,
        "killed before the end: {sent_before_kill}"
    );
    mesh.start_service("hospital")?;
    mesh.wait_ready("hospital").await?;
    // Ops see the first job reported as interrupted, then run the action again.
    let first = wait_job(&api, &ops, &result["job"]).await?;
    ensure!(
        first["status"] == "failed",
        "the killed job is reported interrupted: {first}"
    );

    let (status, _, result) = api
        .post(
            "/v1/admin/dlq/replay",
            Some(&ops.access),
            &json!({"selection": selection, "rate_per_sec": 0, "reason": "rerun after crash"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "rerun: {status} {result}");
    let job = wait_job(&api, &ops, &result["job"]).await?;
    ensure!(job["status"] == "completed", "rerun job: {job}");
    let total = poll_until(WAIT, "every replay in the stream", || async {
        let n = replays_in_stream(&mesh, "crash-calendar").await.ok()?;
        (n >= N as u64).then_some(n)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total_later = replays_in_stream(&mesh, "crash-calendar").await?;
    println!("replayed before the kill: {sent_before_kill}; in all: {total_later}");
    ensure!(
        total == N as u64 && total_later == N as u64,
        "each message once: {total_later} of {N}"
    );
    mesh.shutdown().await
}

fn console_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../console")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_in_headless_chromium() -> Result<()> {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = std::path::Path::new(&chromium).exists()
        && console_dir().join("node_modules/playwright-core").exists();
    let required =
        std::env::var_os("CI").is_some() || std::env::var_os("MESH_BROWSER_TESTS").is_some();
    if !ready {
        if required {
            bail!(
                "the console test needs {chromium} and tests/console/node_modules (cargo xtask test installs both under CI=true)"
            );
        }
        eprintln!(
            "skipping the browser test: no {chromium} or tests/console/node_modules (set MESH_BROWSER_TESTS=1 to require it)"
        );
        return Ok(());
    }
    let smtp = SmtpServer::start().await?;
    let mesh = hospital_mesh(Backend::Sqlite, &smtp).await?;
    let api = mesh.api();
    let ops = admin(&api).await?;
    // Valid MessagePack that breaks the contract: parked, and shown as JSON.
    let broken_id = Uuid::now_v7();
    publish_raw(
        &mesh,
        "calendar.v1.rsvp.changed",
        "calendar.rsvp_changed",
        broken_id,
        contracts::wire::encode(&json!({"attendee": "nobody", "status": "unknown"}))?,
    )
    .await?;
    wait_dead_letters(&api, &ops, "durable=email-calendar", 1).await?;
    let shots = tempfile::tempdir()?;
    let out = Command::new("node")
        .arg(console_dir().join("console.spec.mjs"))
        .env("GATEWAY_URL", mesh.gateway_url())
        .env("ADMIN_EMAIL", ADMIN_EMAIL)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("CHROMIUM_PATH", &chromium)
        .env("EXPECT_GROUP_DURABLE", "email-calendar")
        .env("SCREENSHOT_DIR", shots.path())
        .output()
        .context("running node tests/console/console.spec.mjs")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    ensure!(
        out.status.success(),
        "console test failed: {stdout}{stderr}"
    );
    // The group replay from the browser left the dead letter replayed (the broken
    // message fails again on replay and is parked anew, with the first as its history).
    let replayed = dead_letters(&api, &ops, "durable=email-calendar&status=replayed").await?;
    ensure!(!replayed.is_empty(), "the browser replayed the group");
    mesh.shutdown().await
}
