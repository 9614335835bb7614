//! Contract evolution end to end: a newer calendar that publishes v2 of
//! `calendar.rsvp_changed` beside v1 runs next to the old one (same database, one queue
//! group), and the consumers that read v1 keep working and act once per change.
//! Discovery (`GET /v1/admin/services`) shows both calendar instances with the contract
//! versions each produces.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use contracts::events::{DomainEvent, RsvpChangedV1, RsvpChangedV2, copy_msg_id};
use contracts::subjects::{self, CALENDAR_STREAM, durables, headers};
use integration::smtp::SmtpServer;
use integration::{Api, Backend, Mesh, ServiceProcess, StatusCode, Tokens, poll_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const ADMIN_EMAIL: &str = "ops@example.com";
const ADMIN_PASSWORD: &str = "ops password 123";
/// RSVPs at least, and at most, before both replicas must have handled some.
const MIN_RSVPS: usize = 6;
const MAX_RSVPS: usize = 40;

/// One message of the CALENDAR stream, as the test reads it back.
#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    nats_msg_id: String,
    message_id: String,
    version: String,
    payload: bytes::Bytes,
}

/// Every message in the CALENDAR stream.
async fn calendar_stream(js: &async_nats::jetstream::Context) -> Result<Vec<Stored>> {
    let mut stream = js.get_stream(CALENDAR_STREAM.name).await?;
    let info = stream.info().await?;
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let get = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push(Stored {
            subject: m.subject.to_string(),
            nats_msg_id: get(headers::NATS_MSG_ID),
            message_id: get(headers::MESSAGE_ID),
            version: get(headers::SCHEMA_VERSION),
            payload: m.payload.clone(),
        });
    }
    Ok(out)
}

/// RSVP messages by logical message id: (v1 copies, v2 copies).
fn rsvp_copies(stored: &[Stored]) -> HashMap<String, (Vec<Stored>, Vec<Stored>)> {
    let mut by_id: HashMap<String, (Vec<Stored>, Vec<Stored>)> = HashMap::new();
    for m in stored {
        if m.subject == RsvpChangedV1::SUBJECT {
            by_id
                .entry(m.message_id.clone())
                .or_default()
                .0
                .push(m.clone());
        } else if m.subject == RsvpChangedV2::SUBJECT {
            by_id
                .entry(m.message_id.clone())
                .or_default()
                .1
                .push(m.clone());
        }
    }
    by_id
}

/// Waits until the shared outbox is fully published and `n` RSVPs are in the stream;
/// returns their copies by logical message id.
async fn settled_rsvps(
    js: &async_nats::jetstream::Context,
    pool: &sqlx::AnyPool,
    n: usize,
) -> Result<HashMap<String, (Vec<Stored>, Vec<Stored>)>> {
    poll_until(WAIT, &format!("{n} RSVPs published"), || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await
                .ok()?;
        if pending > 0 {
            return None;
        }
        let copies = rsvp_copies(&calendar_stream(js).await.ok()?);
        (copies.len() >= n).then_some(copies)
    })
    .await
}

async fn create_event(api: &Api, tokens: &Tokens) -> Result<String> {
    let body = json!({
        "title": "Schema evolution meetup",
        "description": "v1 and v2, side by side",
        "starts_at": "2030-06-01T18:00:00+02:00",
        "ends_at": "2030-06-01T21:00:00+02:00",
        "time_zone": "Europe/Berlin",
        "location": "c-base, Berlin",
        "capacity": 500,
    });
    let (status, _, event) = api.post("/v1/events", Some(&tokens.access), &body).await?;
    ensure!(
        status == StatusCode::CREATED,
        "create event: {status} {event}"
    );
    event["id"].as_str().map(str::to_owned).context("event id")
}

fn email_of(user: &Value) -> Result<String> {
    user["email"]
        .as_str()
        .map(str::to_lowercase)
        .context("user email")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_v2_beside_v1_keeps_old_consumers_working() -> Result<()> {
    // The topology does not depend on the database; SQLite keeps this test quick.
    let smtp = SmtpServer::start().await?;
    let mesh = Mesh::builder(Backend::Sqlite)
        .with_service("email")
        .with_service("push")
        .with_service("hospital")
        .with_env("auth", "AUTH_ADMIN_EMAILS", ADMIN_EMAIL)
        .with_env("email", "SMTP_URL", &smtp.url())
        .with_env("email", "SMTP_TIMEOUT_MS", "3000")
        .with_env("email", "EMAIL_BACKOFF_MS", "300,600,1200")
        .with_env("push", "PUSH_BACKOFF_MS", "300,600,1200")
        .start()
        .await?;
    let api = mesh.api();

    // The newer calendar: same database and NATS, its own port, v2 on.
    let mut newer = {
        let mut env: HashMap<String, String> = mesh.calendar().env().clone();
        env.remove("HTTP_ADDR");
        env.insert("CALENDAR_PUBLISH_RSVP_V2".into(), "on".into());
        ServiceProcess::spawn("calendar", env)?
    };
    newer.wait_ready(WAIT).await?;
    let js = async_nats::jetstream::new(mesh.nats_client().await?);
    // Both calendars share this database: its outbox says when everything committed
    // (v1 and v2 rows, one transaction per RSVP) is in the stream.
    sqlx::any::install_default_drivers();
    let pool =
        sqlx::AnyPool::connect(mesh.database_url("calendar").context("calendar db")?).await?;

    api.register(ADMIN_EMAIL, ADMIN_PASSWORD, "Ops").await?;
    let admin = api.login(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let (organizer, org) = api.new_user("Olga Organizer").await?;
    let event_id = create_event(&api, &org).await?;

    // RSVP until both replicas have handled some (the queue group picks one per
    // request): the newer one's RSVPs have a v2 copy, the old one's do not.
    let mut guests: Vec<String> = Vec::new();
    loop {
        let (guest, tokens) = api.new_user(&format!("Guest {}", guests.len())).await?;
        let (code, _, body) = api
            .put(
                &format!("/v1/events/{event_id}/rsvp"),
                Some(&tokens.access),
                &json!({"status": "going"}),
            )
            .await?;
        ensure!(code == StatusCode::OK, "rsvp: {code} {body}");
        guests.push(email_of(&guest)?);
        let n = guests.len();
        let copies = settled_rsvps(&js, &pool, n).await?;
        let with_v2 = copies.values().filter(|(_, v2)| !v2.is_empty()).count();
        let v1_only = n - with_v2;
        if n >= MIN_RSVPS && with_v2 > 0 && v1_only > 0 {
            println!(
                "{n} RSVPs: {with_v2} by the newer calendar (v1 + v2), {v1_only} by the old one (v1)"
            );
            break;
        }
        ensure!(
            n < MAX_RSVPS,
            "after {n} RSVPs one calendar replica handled none: {with_v2} with v2"
        );
    }
    let rsvps = guests.len();

    let copies = settled_rsvps(&js, &pool, rsvps).await?;
    ensure!(
        copies.len() == rsvps,
        "{} logical RSVP events",
        copies.len()
    );
    let v2_rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE message_id LIKE '%:v2'")
            .fetch_one(&pool)
            .await?;
    let v2_copies = copies.values().filter(|(_, v2)| !v2.is_empty()).count();
    ensure!(
        v2_rows as usize == v2_copies,
        "{v2_rows} v2 outbox rows, {v2_copies} v2 copies in the stream"
    );
    for (id, (v1, v2)) in &copies {
        ensure!(v1.len() == 1, "{id}: {} v1 copies", v1.len());
        ensure!(v2.len() <= 1, "{id}: {} v2 copies", v2.len());
        let v1 = &v1[0];
        ensure!(
            v1.nats_msg_id == *id && v1.version == "1",
            "v1 copy of {id}: {v1:?}"
        );
        let decoded: RsvpChangedV1 = contracts::wire::decode(&v1.payload)?;
        ensure!(decoded.meta.message_id.to_string() == *id);
        if let Some(v2) = v2.first() {
            // One logical event: the same message id in meta and header, its own
            // Nats-Msg-Id (the stream dedupes per stream).
            let decoded2: RsvpChangedV2 = contracts::wire::decode(&v2.payload)?;
            ensure!(
                decoded2.meta == decoded.meta,
                "{id}: v2 meta {:?}",
                decoded2.meta
            );
            ensure!(decoded2.status.value == decoded.status);
            ensure!(
                v2.nats_msg_id == copy_msg_id(&decoded.meta.message_id, 2)
                    && v2.version == "2"
                    && v2.subject == subjects::calendar::RSVP_CHANGED_V2,
                "v2 copy of {id}: {v2:?}"
            );
        }
    }

    // Old consumers keep working, and nobody acts twice: email and push read v1 only.
    for durable in [durables::EMAIL_CALENDAR, durables::PUSH_CALENDAR] {
        let info = integration::wait_settled(&js, CALENDAR_STREAM.name, durable, WAIT).await?;
        ensure!(
            info.config
                .filter_subjects
                .iter()
                .any(|f| f == "calendar.v1.>")
                && !info
                    .config
                    .filter_subjects
                    .iter()
                    .any(|f| f.starts_with("calendar.v2")),
            "{durable} filters one version per type: {:?}",
            info.config.filter_subjects
        );
    }

    // Mail: a welcome per account (admin, organizer, guests), and per RSVP one
    // confirmation to the guest and one note to the organizer; no Message-ID twice.
    let expected = (2 + rsvps) + 2 * rsvps;
    let mails = smtp.wait_for_count(expected, WAIT).await?;
    let ids: Vec<String> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    ensure!(
        ids.len() == mails.len() && distinct.len() == ids.len(),
        "duplicate or missing Message-IDs: {} mails, {} ids, {} distinct",
        mails.len(),
        ids.len(),
        distinct.len()
    );
    ensure!(
        mails.len() == expected,
        "{} mails, expected {expected}",
        mails.len()
    );
    for guest in &guests {
        let confirmations = mails
            .iter()
            .filter(|m| m.is_to(guest) && m.attachment("text/calendar").is_some())
            .count();
        ensure!(confirmations == 1, "{guest}: {confirmations} confirmations");
    }
    let org_email = email_of(&organizer)?;
    let organizer_notes = mails
        .iter()
        .filter(|m| m.is_to(&org_email) && m.attachment("text/calendar").is_none())
        .count();
    ensure!(
        organizer_notes == 1 + rsvps,
        "organizer: {organizer_notes} mails (welcome + one per RSVP)"
    );
    println!(
        "email: {} mails, {} distinct Message-IDs, one per RSVP and recipient",
        mails.len(),
        distinct.len()
    );

    // Push: exactly one notification per RSVP for the organizer.
    let page = poll_until(WAIT, "the organizer's notifications", || {
        let api = api.clone();
        let token = org.access.clone();
        async move {
            let (_, _, page) = api
                .get("/v1/notifications?limit=200", Some(&token))
                .await
                .ok()?;
            (page["items"].as_array()?.len() >= rsvps).then_some(page)
        }
    })
    .await?;
    let items = page["items"].as_array().context("items")?;
    let received = items
        .iter()
        .filter(|n| n["kind"] == "rsvp_received")
        .count();
    ensure!(
        items.len() == rsvps && received == rsvps,
        "push: {} notifications ({received} rsvp_received) for {rsvps} RSVPs",
        items.len()
    );
    println!("push: {received} notifications for {rsvps} RSVPs");

    // Nothing was parked: no consumer saw a version it does not declare.
    let (status, _, parked) = api
        .get("/v1/admin/dlq/messages?limit=50", Some(&admin.access))
        .await?;
    ensure!(status == StatusCode::OK, "dead letters: {status} {parked}");
    ensure!(
        parked["items"].as_array().is_some_and(Vec::is_empty),
        "nothing parked: {parked}"
    );

    // Discovery: both calendar instances with the contract versions each produces;
    // email (no endpoints) and push with what they consume; consumer lag.
    let services = poll_until(
        WAIT,
        "both calendar instances in /v1/admin/services",
        || {
            let api = api.clone();
            let token = admin.access.clone();
            async move {
                let (status, _, body) = api.get("/v1/admin/services", Some(&token)).await.ok()?;
                let calendars = body["instances"]
                    .as_array()?
                    .iter()
                    .filter(|i| i["service"] == "calendar")
                    .count();
                (status == StatusCode::OK && calendars == 2).then_some(body)
            }
        },
    )
    .await?;
    let instances = services["instances"].as_array().context("instances")?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let calendars: Vec<&Value> = instances
        .iter()
        .filter(|i| i["service"] == "calendar")
        .collect();
    let v2_producers = calendars
        .iter()
        .filter(|c| strings(&c["produces"]).contains(&"calendar.rsvp_changed@2".to_owned()))
        .count();
    ensure!(
        v2_producers == 1,
        "exactly the newer calendar produces v2: {calendars:?}"
    );
    for c in &calendars {
        ensure!(
            strings(&c["produces"]).contains(&"calendar.rsvp_changed@1".to_owned())
                && c["version"].as_str().is_some_and(|v| !v.is_empty())
                && c["id"].as_str().is_some_and(|v| !v.is_empty()),
            "calendar instance: {c}"
        );
    }
    for consumer in ["email", "push"] {
        let instance = instances
            .iter()
            .find(|i| i["service"] == consumer)
            .with_context(|| format!("{consumer} in discovery: {services}"))?;
        let consumes = strings(&instance["consumes"]);
        ensure!(
            consumes.contains(&"calendar.rsvp_changed@1".to_owned())
                && !consumes.contains(&"calendar.rsvp_changed@2".to_owned()),
            "{consumer} consumes: {consumes:?}"
        );
    }
    let lags: Vec<&Value> = services["consumers"]
        .as_array()
        .context("consumers")?
        .iter()
        .filter(|c| {
            c["durable"] == durables::EMAIL_CALENDAR || c["durable"] == durables::PUSH_CALENDAR
        })
        .collect();
    ensure!(lags.len() == 2, "consumer lag reported: {services}");
    println!(
        "services: {}",
        instances
            .iter()
            .map(|i| format!(
                "{} {} produces {:?} consumes {:?}",
                i["service"],
                i["version"],
                strings(&i["produces"]),
                strings(&i["consumes"])
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );

    pool.close().await;
    let status = newer.terminate().await?;
    ensure!(status.success(), "newer calendar exited with {status}");
    mesh.shutdown().await
}
