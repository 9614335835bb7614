//! The other half of an RSVP's path: email (real SMTP via aiosmtpd) and push (history
//! and the live SSE stream), each with its own durables, replicas sharing them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use integration::ics::Invitation;
use integration::smtp::{ReceivedMail, SmtpServer};
use integration::sse::SseStream;
use integration::{Api, Backend, Mesh, ServiceProcess, StatusCode, Tokens, poll_until};
use serde_json::{Value, json};

use crate::on_each_backend;

const MAIL_WAIT: Duration = Duration::from_secs(45);

/// A mesh with both subscribers, mail going to `smtp`. The first backoff step is also
/// the ack wait: kept at seconds, so a loaded machine's late progress acks do not hand
/// a message to a second replica while the first still sends it.
async fn mesh_with_subscribers(backend: Backend, smtp: &SmtpServer) -> Result<Mesh> {
    subscribers(backend, smtp).start().await
}

/// [`mesh_with_subscribers`], not started yet (for more settings).
fn subscribers(backend: Backend, smtp: &SmtpServer) -> integration::MeshBuilder {
    Mesh::builder(backend)
        .with_service("email")
        .with_service("push")
        .with_env("email", "SMTP_URL", &smtp.url())
        .with_env("email", "SMTP_TIMEOUT_MS", "3000")
        .with_env("email", "EMAIL_BACKOFF_MS", "5000,5000")
        .with_env("email", "EMAIL_MAX_DELIVER", "100")
        .with_env("push", "PUSH_BACKOFF_MS", "5000,5000")
        .with_env("push", "PUSH_MAX_DELIVER", "50")
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
    let mut stream = SseStream::resume(&api, Some(&org.access), "", None).await?;

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
        SseStream::resume(&api, None, &format!("?ticket={ticket}"), Some(&first_id)).await?;
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
        SseStream::resume(&api, None, &format!("?ticket={ticket}"), None)
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

/// Waits until both email durables have settled every message (acked or parked).
async fn email_settled(mesh: &Mesh) -> Result<()> {
    let js = mesh.nats().jetstream().await?;
    for (stream, durable) in [
        ("AUTH", contracts::subjects::durables::EMAIL_AUTH),
        ("CALENDAR", contracts::subjects::durables::EMAIL_CALENDAR),
    ] {
        integration::wait_settled(&js, stream, durable, Duration::from_secs(90)).await?;
    }
    Ok(())
}

/// Message-IDs of the mails received, and how many mails that is.
fn counts(smtp: &SmtpServer) -> Result<(HashSet<String>, usize)> {
    let mails = smtp.messages()?;
    let distinct = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    Ok((distinct, mails.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_work_and_a_killed_replica_loses_no_mail() -> Result<()> {
    on_each_backend(replicas_share_and_a_kill_loses_nothing).await
}

/// Two replicas of each subscriber; one email replica is killed (SIGKILL) while it has
/// mails in flight: the SMTP server holds every mail at DATA, so the mails the killed
/// replica was sending are never accepted (logged LOST by the server, the proof that it
/// had work in flight), and its messages come back to the other replica after the ack
/// wait.
async fn replicas_share_and_a_kill_loses_nothing(backend: Backend) -> Result<()> {
    // Each email replica handles at most CONCURRENCY messages at once (one mail at a
    // time each), so more held mails than that means both replicas hold some. Held mails
    // wait for the release, not for a client timeout.
    const CONCURRENCY: usize = 4;
    let smtp = SmtpServer::start().await?;
    let mesh = subscribers(backend, &smtp)
        .with_env("email", "EMAIL_CONCURRENCY", &CONCURRENCY.to_string())
        .with_env("email", "SMTP_TIMEOUT_MS", "60000")
        .start()
        .await?;
    let api = mesh.api();
    let mut email_b = replica(&mesh, "email")?;
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
    email_settled(&mesh).await?;
    // Sharing: every mail exactly once, work on both replicas.
    let (distinct, raw) = counts(&smtp)?;
    ensure!(
        distinct.len() == first_half && raw == first_half,
        "two replicas sharing: {raw} mails, {} distinct, {first_half} expected",
        distinct.len()
    );
    let a = log_count(mesh.service("email"), "mail sent");
    let b = log_count(&email_b, "mail sent");
    ensure!(
        a > 0 && b > 0 && a + b == first_half,
        "work spread over both email replicas, each mail once: {a} + {b}"
    );

    // The second half while the SMTP server holds every mail: both replicas fill up.
    smtp.hold()?;
    let mut rsvps = Vec::new();
    for (_, tokens) in &guests[GUESTS / 2..] {
        let api = api.clone();
        let tokens = tokens.clone();
        let event_id = event_id.clone();
        rsvps.push(tokio::spawn(async move {
            rsvp(&api, &tokens, &event_id, "going").await
        }));
    }
    for r in rsvps {
        r.await??;
    }
    let held = poll_until(
        MAIL_WAIT,
        "both replicas to have mails in flight",
        || async {
            let held = smtp.held();
            (held.len() > CONCURRENCY).then_some(held.len())
        },
    )
    .await?;
    email_b.kill()?;
    poll_until(
        MAIL_WAIT,
        "the killed replica's held mails to be dropped",
        || async { (!smtp.lost().is_empty()).then_some(()) },
    )
    .await?;
    smtp.release()?;

    let expected = 1 + GUESTS + 2 * GUESTS;
    let distinct = poll_until(
        Duration::from_secs(90),
        &format!("{expected} distinct mails"),
        || async {
            let (distinct, _) = counts(&smtp).ok()?;
            (distinct.len() >= expected).then_some(distinct)
        },
    )
    .await?;
    email_settled(&mesh).await?;
    let (_, raw) = counts(&smtp)?;
    // Every mail the kill dropped (polled above until the first one showed).
    let lost = smtp.lost();
    integration::report(&format!(
        "kill -9 of an email replica ({backend}): {expected} mails due, {} distinct, {raw} raw, \
         {} duplicates; the killed replica had {} mails in flight ({held} held in all)",
        distinct.len(),
        raw - distinct.len(),
        lost.len(),
        backend = backend.name(),
    ));
    ensure!(
        distinct.len() == expected,
        "distinct {} != expected {expected}",
        distinct.len()
    );
    // A duplicate needs a kill between the server's 250 and the sent-mail record; the
    // killed replica's mails were all unanswered (held), so there is none.
    ensure!(
        raw == distinct.len(),
        "{raw} mails for {} distinct",
        distinct.len()
    );
    for id in &lost {
        ensure!(distinct.contains(id), "lost mail {id} was sent again");
    }

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
    // Both backends at once: the outage is a fixed 20 s of waiting, no need to wait it
    // twice in a row.
    let runs = integration::backends()
        .into_iter()
        .map(|backend| async move {
            smtp_outage(backend)
                .await
                .with_context(|| format!("on {}", backend.name()))
        });
    futures::future::try_join_all(runs).await.map(|_| ())
}

async fn smtp_outage(backend: Backend) -> Result<()> {
    let mut smtp = SmtpServer::start().await?;
    let mesh = mesh_with_subscribers(backend, &smtp).await?;
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
    // The outage itself is the point (20 s, longer than the first retry steps), so this
    // wait is not polling for an effect.
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

/// Waits until `stream` holds at least `messages` messages (the outbox relay publishes
/// after the request's answer), then until the named durables have settled them.
async fn settled(mesh: &Mesh, messages: u64, durables: &[(&str, &str)]) -> Result<()> {
    let js = mesh.nats().jetstream().await?;
    if let Some((stream, _)) = durables.first() {
        poll_until(
            MAIL_WAIT,
            &format!("{messages} messages in {stream}"),
            || {
                let js = js.clone();
                async move {
                    let mut s = js.get_stream(*stream).await.ok()?;
                    (s.info().await.ok()?.state.messages >= messages).then_some(())
                }
            },
        )
        .await?;
    }
    for (stream, durable) in durables {
        integration::wait_settled(&js, stream, durable, Duration::from_secs(60)).await?;
    }
    Ok(())
}

async fn put_preferences(api: &Api, tokens: &Tokens, preferences: &Value) -> Result<()> {
    let (status, _, body) = api
        .put("/v1/me/preferences", Some(&tokens.access), preferences)
        .await?;
    ensure!(status == StatusCode::OK, "preferences: {status} {body}");
    Ok(())
}

/// The notifications in a user's history.
async fn history(api: &Api, tokens: &Tokens) -> Result<Vec<Value>> {
    let (status, _, page) = api
        .get("/v1/notifications?limit=200", Some(&tokens.access))
        .await?;
    ensure!(status == StatusCode::OK, "history: {status} {page}");
    Ok(page["items"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_turn_mails_and_notifications_off_end_to_end() -> Result<()> {
    on_each_backend(preferences_end_to_end).await
}

/// `PUT /v1/me/preferences` → auth publishes PreferencesChanged → email and push each
/// honour their channel for the next RSVP.
async fn preferences_end_to_end(backend: Backend) -> Result<()> {
    let smtp = SmtpServer::start().await?;
    let mesh = mesh_with_subscribers(backend, &smtp).await?;
    let api = mesh.api();
    let auth_durables = [
        ("AUTH", contracts::subjects::durables::EMAIL_AUTH),
        ("AUTH", contracts::subjects::durables::PUSH_AUTH),
    ];
    let calendar_durables = [
        ("CALENDAR", contracts::subjects::durables::EMAIL_CALENDAR),
        ("CALENDAR", contracts::subjects::durables::PUSH_CALENDAR),
    ];
    let (organizer, org) = api.new_user("Olga Organizer").await?;
    let (alice, alice_tokens) = api.new_user("Alice Attendee").await?;
    let (bob, bob_tokens) = api.new_user("Bob Attendee").await?;
    let (org_email, alice_email, bob_email) =
        (email_of(&organizer)?, email_of(&alice)?, email_of(&bob)?);
    // The organizer wants no RSVP news by mail but does on push; Alice wants no
    // confirmation on push but does by mail; Bob keeps the defaults (all on).
    put_preferences(
        &api,
        &org,
        &json!({"email": {"rsvp_received": false}, "push": {}}),
    )
    .await?;
    put_preferences(
        &api,
        &alice_tokens,
        &json!({"email": {}, "push": {"rsvp_confirmation": false}}),
    )
    .await?;
    let (status, _, stored) = api.get("/v1/me/preferences", Some(&org.access)).await?;
    ensure!(
        status == StatusCode::OK && stored["email"]["rsvp_received"] == false,
        "stored preferences: {status} {stored}"
    );
    // Both subscribers have the new preferences before the RSVPs are handled (the two
    // streams are not ordered with each other).
    // Three registrations and two preference changes.
    settled(&mesh, 5, &auth_durables).await?;

    let event_id = create_event(&api, &org, "Preferences meetup", 10).await?;
    rsvp(&api, &alice_tokens, &event_id, "going").await?;
    rsvp(&api, &bob_tokens, &event_id, "going").await?;
    for address in [&alice_email, &bob_email] {
        smtp.wait_for(address, MAIL_WAIT, |m| {
            m.attachment("text/calendar").is_some()
        })
        .await?;
    }
    // The event and two RSVPs.
    settled(&mesh, 3, &calendar_durables).await?;

    // Email: no RSVP news to the organizer; confirmations to both attendees.
    let to_org: Vec<_> = smtp
        .messages_to(&org_email)?
        .into_iter()
        .filter_map(|m| m.subject)
        .collect();
    ensure!(
        to_org.len() == 1 && to_org[0].starts_with("Welcome"),
        "the organizer turned RSVP mails off: {to_org:?}"
    );
    // Push: the organizer hears of both; Alice gets no confirmation, Bob does.
    let kinds = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .filter_map(|n| n["kind"].as_str().map(str::to_owned))
            .collect()
    };
    let org_items = history(&api, &org).await?;
    ensure!(
        kinds(&org_items) == ["rsvp_received", "rsvp_received"],
        "organizer's notifications: {org_items:?}"
    );
    ensure!(
        history(&api, &alice_tokens).await?.is_empty(),
        "Alice turned push confirmations off"
    );
    ensure!(
        kinds(&history(&api, &bob_tokens).await?) == ["rsvp_confirmation"],
        "Bob keeps the defaults"
    );

    // Turned back on, the organizer is mailed about the next answer.
    put_preferences(&api, &org, &json!({})).await?;
    settled(&mesh, 6, &auth_durables).await?;
    rsvp(&api, &bob_tokens, &event_id, "maybe").await?;
    smtp.wait_for(&org_email, MAIL_WAIT, |m| {
        m.subject.as_deref().is_some_and(|s| s.contains("Bob"))
    })
    .await?;
    mesh.shutdown().await
}
