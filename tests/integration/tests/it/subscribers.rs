//! The other half of an RSVP's path: email (real SMTP via aiosmtpd) and push (history
//! and the live SSE stream), each with its own durables, replicas sharing them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use integration::ics::Invitation;
use integration::smtp::{ReceivedMail, SmtpServer};
use integration::{Api, Backend, Mesh, ServiceProcess, StatusCode, Tokens, poll_until};
use serde_json::{Value, json};

use crate::on_each_backend;

const MAIL_WAIT: Duration = Duration::from_secs(45);

/// A mesh with both subscribers, mail going to `smtp`. The first backoff step is also
/// the ack wait: kept at seconds, so a loaded machine's late progress acks do not hand
/// a message to a second replica while the first still sends it.
async fn mesh_with_subscribers(backend: Backend, smtp: &SmtpServer) -> Result<Mesh> {
    Mesh::builder(backend)
        .with_service("email")
        .with_service("push")
        .with_env("email", "SMTP_URL", &smtp.url())
        .with_env("email", "SMTP_TIMEOUT_MS", "3000")
        .with_env("email", "EMAIL_BACKOFF_MS", "5000,5000")
        .with_env("email", "EMAIL_MAX_DELIVER", "100")
        .with_env("push", "PUSH_BACKOFF_MS", "5000,5000")
        .with_env("push", "PUSH_MAX_DELIVER", "50")
        .start()
        .await
}

/// A second replica of `service`: same database, same durables, its own HTTP port.
fn replica(mesh: &Mesh, service: &str) -> Result<ServiceProcess> {
    let mut env: HashMap<String, String> = mesh.service(service).env().clone();
    env.remove("HTTP_ADDR");
    ServiceProcess::spawn(service, env)
}

async fn create_event(api: &Api, tokens: &Tokens, title: &str, capacity: u32) -> Result<String> {
    let body = json!({
        "title": title,
        "description": "Talks, then pizza",
        "starts_at": "2030-06-01T18:00:00+02:00",
        "ends_at": "2030-06-01T21:00:00+02:00",
        "time_zone": "Europe/Berlin",
        "location": "c-base, Berlin",
        "capacity": capacity,
    });
    let (status, _, event) = api.post("/v1/events", Some(&tokens.access), &body).await?;
    ensure!(
        status == StatusCode::CREATED,
        "create event: {status} {event}"
    );
    event["id"].as_str().map(str::to_owned).context("event id")
}

async fn rsvp(api: &Api, tokens: &Tokens, event_id: &str, status: &str) -> Result<()> {
    let (code, _, body) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&tokens.access),
            &json!({"status": status}),
        )
        .await?;
    ensure!(code == StatusCode::OK, "rsvp {status}: {code} {body}");
    Ok(())
}

fn email_of(user: &Value) -> Result<String> {
    user["email"]
        .as_str()
        .map(str::to_owned)
        .context("user email")
}

/// The `.ics` of a mail, read with an RFC 5545 parser.
fn invitation_of(mail: &ReceivedMail) -> Result<Invitation> {
    mail.attachment("text/calendar")
        .with_context(|| format!("mail {:?} has no text/calendar part", mail.subject))?
        .invitation()
}

/// A minimal Server-Sent Events reader over a streaming HTTP body.
struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseReader {
    async fn open(
        api: &Api,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self> {
        let mut request = api
            .http()
            .get(api.url(&format!("/v1/notifications/stream{query}")))
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(3600));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            bail!("stream answered {status}: {body}");
        }
        Ok(SseReader {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        })
    }

    /// The next event that carries data (comments and keep-alives are skipped).
    async fn next(&mut self, timeout: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if !event.data.is_empty() {
                    return Ok(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .context("no SSE event before the deadline")?
                .context("the stream ended")??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }

    /// The next `notification` event, as JSON.
    async fn next_notification(&mut self, timeout: Duration) -> Result<(String, Value)> {
        loop {
            let event = self.next(timeout).await?;
            if event.event.as_deref() == Some("notification") {
                let id = event.id.context("notification without id")?;
                return Ok((id, serde_json::from_str(&event.data)?));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsvp_reaches_attendee_mail_and_organizer_stream() -> Result<()> {
    on_each_backend(rsvp_reaches_subscribers).await
}

async fn rsvp_reaches_subscribers(backend: Backend) -> Result<()> {
    let smtp = SmtpServer::start().await?;
    let mesh = mesh_with_subscribers(backend, &smtp).await?;
    let api = mesh.api();

    // register → welcome mail with a working verification link
    let (organizer, org) = api.new_user("Olga Organizer").await?;
    let org_email = email_of(&organizer)?;
    let welcome = smtp
        .wait_for(&org_email, MAIL_WAIT, |m| {
            m.text
                .as_deref()
                .is_some_and(|t| t.contains("verify-email?token="))
        })
        .await?;
    let text = welcome.text.clone().unwrap_or_default();
    let link_start = text
        .find("/v1/auth/verify-email?token=")
        .context("verification link")?;
    let link: String = text[link_start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '>' && *c != '"')
        .collect();
    let (status, _, body) = api.get(&link, None).await?;
    ensure!(
        status == StatusCode::OK && body["status"] == "verified",
        "verify link {link}: {status} {body}"
    );

    // the organizer watches their live stream
    let mut stream = SseReader::open(&api, Some(&org.access), "", None).await?;

    let event_id = create_event(&api, &org, "Rust meetup", 50).await?;
    let (alice, alice_tokens) = api.new_user("Alice Attendee").await?;
    let alice_email = email_of(&alice)?;
    rsvp(&api, &alice_tokens, &event_id, "going").await?;

    // the attendee's confirmation with an .ics whose times match the event
    let confirmation = smtp
        .wait_for(&alice_email, MAIL_WAIT, |m| {
            m.attachment("text/calendar").is_some()
        })
        .await?;
    let invite = invitation_of(&confirmation)?;
    ensure!(
        invite.method.as_deref() == Some("REQUEST"),
        "METHOD: {invite:?}"
    );
    let uid = invite.uid.clone();
    ensure!(uid.contains(&event_id), "UID names the event: {uid}");
    // DTSTART/DTEND, written in the event's zone, name the instants calendar stored.
    let (status, _, event) = api
        .get(&format!("/v1/events/{event_id}"), Some(&org.access))
        .await?;
    ensure!(status == StatusCode::OK, "get event: {status} {event}");
    let instant = |field: &str| -> Result<jiff::Timestamp> {
        event[field]
            .as_str()
            .with_context(|| format!("{field} in {event}"))?
            .parse()
            .with_context(|| format!("{field} in {event}"))
    };
    ensure!(
        invite.start_tzid.as_deref() == Some("Europe/Berlin")
            && invite.end_tzid.as_deref() == Some("Europe/Berlin"),
        "times in the event's zone: {invite:?}"
    );
    ensure!(
        invite.starts_at == instant("starts_at")? && invite.ends_at == instant("ends_at")?,
        "invitation {} - {} vs event {event}",
        invite.starts_at,
        invite.ends_at
    );
    ensure!(
        invite.starts_at == "2030-06-01T16:00:00Z".parse::<jiff::Timestamp>()?,
        "18:00 in Berlin in June is 16:00 UTC: {}",
        invite.starts_at
    );
    ensure!(
        confirmation
            .list_unsubscribe
            .as_deref()
            .is_some_and(|l| l.contains("/v1/unsubscribe?")),
        "List-Unsubscribe: {:?}",
        confirmation.list_unsubscribe
    );
    ensure!(confirmation.message_id.is_some(), "Message-ID set");

    // the organizer is told by mail and on the open stream
    smtp.wait_for(&org_email, MAIL_WAIT, |m| {
        m.subject.as_deref().is_some_and(|s| s.contains("Alice"))
            && m.attachment("text/calendar").is_none()
    })
    .await?;
    let (first_id, live) = stream.next_notification(MAIL_WAIT).await?;
    ensure!(
        live["kind"] == "rsvp_received" && live["event_id"] == event_id.as_str(),
        "live notification: {live}"
    );

    // The organizer goes offline; what happens meanwhile is in history and replayed on
    // reconnect with Last-Event-ID.
    drop(stream);
    let (bob, bob_tokens) = api.new_user("Bob Maybe").await?;
    rsvp(&api, &bob_tokens, &event_id, "maybe").await?;
    let bob_email = email_of(&bob)?;
    smtp.wait_for(&bob_email, MAIL_WAIT, |m| {
        m.attachment("text/calendar").is_some()
    })
    .await?;
    let history = poll_until(
        MAIL_WAIT,
        "the organizer's second notification in history",
        || {
            let api = api.clone();
            let token = org.access.clone();
            async move {
                let (status, _, page) = api.get("/v1/notifications", Some(&token)).await.ok()?;
                let items = page["items"].as_array()?.clone();
                (status == StatusCode::OK && items.len() >= 2).then_some(page)
            }
        },
    )
    .await?;
    ensure!(
        history["unread"].as_u64() >= Some(2),
        "unread count: {history}"
    );
    let (status, _, ticket) = api
        .request(
            integration::Method::POST,
            "/v1/notifications/stream/ticket",
            Some(&org.access),
            None,
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "ticket: {status} {ticket}");
    let ticket = ticket["ticket"].as_str().context("ticket")?;
    let mut resumed =
        SseReader::open(&api, None, &format!("?ticket={ticket}"), Some(&first_id)).await?;
    let (missed_id, missed) = resumed.next_notification(MAIL_WAIT).await?;
    ensure!(
        missed_id != first_id,
        "the already-seen notification is not sent again"
    );
    ensure!(
        missed["kind"] == "rsvp_received"
            && missed["title"].as_str().is_some_and(|b| b.contains("Bob")),
        "missed notification: {missed}"
    );
    ensure!(
        SseReader::open(&api, None, &format!("?ticket={ticket}"), None)
            .await
            .is_err(),
        "a ticket opens one stream only"
    );

    // cancel → every attendee gets METHOD:CANCEL with the same UID
    let (status, _, _) = api
        .delete(&format!("/v1/events/{event_id}"), Some(&org.access))
        .await?;
    ensure!(status == StatusCode::OK, "cancel: {status}");
    for address in [&alice_email, &bob_email] {
        let cancel = smtp
            .wait_for(address, MAIL_WAIT, |m| {
                invitation_of(m).is_ok_and(|i| i.method.as_deref() == Some("CANCEL"))
            })
            .await?;
        let cancelled = invitation_of(&cancel)?;
        ensure!(cancelled.uid == uid, "same UID on cancel: {cancelled:?}");
        ensure!(
            cancelled.starts_at == invite.starts_at,
            "the cancelled occurrence: {cancelled:?}"
        );
    }
    // and the attendee's live history has it too
    poll_until(MAIL_WAIT, "alice's cancellation notification", || {
        let api = api.clone();
        let token = alice_tokens.access.clone();
        async move {
            let (_, _, page) = api.get("/v1/notifications", Some(&token)).await.ok()?;
            page["items"]
                .as_array()?
                .iter()
                .any(|n| n["kind"] == "event_changed")
                .then_some(())
        }
    })
    .await?;

    // no mail was sent twice
    let mails = smtp.messages()?;
    let distinct: HashSet<_> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    ensure!(
        distinct.len() == mails.len(),
        "{} mails, {} distinct",
        mails.len(),
        distinct.len()
    );
    mesh.shutdown().await
}

/// Lines of a service's log that mention `needle`.
fn log_count(process: &ServiceProcess, needle: &str) -> usize {
    process
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_work_and_a_killed_replica_loses_no_mail() -> Result<()> {
    // The topology does not depend on the database; SQLite keeps this test quick.
    let smtp = SmtpServer::start().await?;
    let mesh = mesh_with_subscribers(Backend::Sqlite, &smtp).await?;
    let api = mesh.api();
    const KILLED_CONCURRENCY: usize = 4;
    let mut email_b = {
        let mut env: HashMap<String, String> = mesh.service("email").env().clone();
        env.remove("HTTP_ADDR");
        env.insert("EMAIL_CONCURRENCY".into(), KILLED_CONCURRENCY.to_string());
        ServiceProcess::spawn("email", env)?
    };
    let mut push_b = replica(&mesh, "push")?;
    email_b.wait_ready(Duration::from_secs(30)).await?;
    push_b.wait_ready(Duration::from_secs(30)).await?;

    let (organizer, org) = api.new_user("Olga Organizer").await?;
    let event_id = create_event(&api, &org, "Big meetup", 1000).await?;
    const GUESTS: usize = 40;
    let mut guests = Vec::new();
    for i in 0..GUESTS {
        guests.push(api.new_user(&format!("Guest {i}")).await?);
    }
    // every guest: a welcome mail and a confirmation; the organizer: a welcome mail and
    // one mail per guest
    for (_, tokens) in &guests[..GUESTS / 2] {
        rsvp(&api, tokens, &event_id, "going").await?;
    }
    let first_half = 1 + GUESTS + 2 * (GUESTS / 2);
    smtp.wait_for_count(first_half, MAIL_WAIT).await?;

    // Kill one email replica with SIGKILL while the second half is in flight.
    let mut rsvps = Vec::new();
    for (_, tokens) in &guests[GUESTS / 2..] {
        let api = api.clone();
        let tokens = tokens.clone();
        let event_id = event_id.clone();
        rsvps.push(tokio::spawn(async move {
            rsvp(&api, &tokens, &event_id, "going").await
        }));
    }
    poll_until(MAIL_WAIT, "the second half to start arriving", || async {
        smtp.messages()
            .ok()
            .filter(|m| m.len() > first_half)
            .map(|_| ())
    })
    .await?;
    email_b.kill()?;
    for r in rsvps {
        r.await??;
    }
    let expected = 1 + GUESTS + 2 * GUESTS;
    let distinct_ids = poll_until(
        Duration::from_secs(90),
        &format!("{expected} distinct mails"),
        || async {
            let mails = smtp.messages().ok()?;
            let ids: HashSet<String> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
            (ids.len() >= expected).then_some(ids)
        },
    )
    .await?;
    let raw = smtp.messages()?.len();
    println!(
        "mails: {} distinct, {raw} raw (duplicates only from a kill between SMTP 250 and the sent-mail record)",
        distinct_ids.len()
    );
    ensure!(
        distinct_ids.len() == expected,
        "distinct {} != expected {expected}",
        distinct_ids.len()
    );
    // Only mails in flight on the killed replica can repeat: at most its concurrency
    // (EMAIL_CONCURRENCY) events, two mails each.
    ensure!(
        raw - distinct_ids.len() <= 2 * KILLED_CONCURRENCY,
        "only mails in flight at the kill may repeat: {raw} raw"
    );

    // Both replicas did some of the work before the kill.
    let a = log_count(mesh.service("email"), "mail sent");
    let b = log_count(&email_b, "mail sent");
    println!("email replicas sent {a} and {b} mails");
    ensure!(
        a > 0 && b > 0,
        "work spread over both email replicas: {a} / {b}"
    );

    // Push: one notification per RSVP for the organizer, spread over both replicas.
    let org_email = email_of(&organizer)?;
    let page = poll_until(MAIL_WAIT, "the organizer's notifications", || {
        let api = api.clone();
        let token = org.access.clone();
        async move {
            let (_, _, page) = api
                .get("/v1/notifications?limit=200", Some(&token))
                .await
                .ok()?;
            (page["items"].as_array()?.len() >= GUESTS).then_some(page)
        }
    })
    .await?;
    let items = page["items"].as_array().context("items")?;
    ensure!(
        items.len() == GUESTS,
        "one notification per RSVP for {org_email}: {}",
        items.len()
    );
    let pa = log_count(mesh.service("push"), "notification sent live");
    let pb = log_count(&push_b, "notification sent live");
    println!("push replicas sent {pa} and {pb} live notifications");
    ensure!(
        pa > 0 && pb > 0,
        "work spread over both push replicas: {pa} / {pb}"
    );
    ensure!(
        pa + pb == 2 * GUESTS,
        "each notification sent once: {pa} + {pb}"
    );
    push_b.terminate().await?;
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_out_an_smtp_outage() -> Result<()> {
    let mut smtp = SmtpServer::start().await?;
    let mesh = mesh_with_subscribers(Backend::Sqlite, &smtp).await?;
    let api = mesh.api();
    let (_, org) = api.new_user("Olga Organizer").await?;
    let event_id = create_event(&api, &org, "Outage meetup", 100).await?;
    let mut guests = Vec::new();
    for i in 0..5 {
        guests.push(api.new_user(&format!("Guest {i}")).await?);
    }
    let before = smtp.wait_for_count(6, MAIL_WAIT).await?.len();

    smtp.stop().await?;
    for (_, tokens) in &guests {
        rsvp(&api, tokens, &event_id, "going").await?;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    ensure!(
        smtp.messages()?.len() == before,
        "nothing delivered while the server was down"
    );
    smtp.start_again().await?;

    let expected = before + 2 * guests.len();
    let mails = smtp
        .wait_for_count(expected, Duration::from_secs(60))
        .await?;
    let distinct: HashSet<_> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    ensure!(
        distinct.len() == expected,
        "every mail once after the outage: {} distinct of {}",
        distinct.len(),
        mails.len()
    );
    mesh.shutdown().await
}
