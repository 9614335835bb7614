//! Contract evolution end to end, on a 3-node cluster with R3 streams: a newer calendar
//! that publishes v2 of `calendar.rsvp_changed` beside v1 runs next to the old one (same
//! database, one queue group), and the consumers that read v1 keep working and act once
//! per change.
//! Discovery (`GET /v1/admin/services`) shows both calendar instances with the contract
//! versions each produces. Then the old calendar is retired and a consumer moves from
//! v1 to v2: one durable's filter switches mid-stream, its new version runs beside it
//! on v2 from the start of the stream, and the one processed-message ledger keyed by
//! the logical `Mesh-Message-Id` keeps every RSVP to exactly one effect.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use contracts::events::{DomainEvent, RsvpChangedV1, RsvpChangedV2, copy_msg_id};
use contracts::subjects::{self, CALENDAR_STREAM, durables, headers};
use integration::smtp::SmtpServer;
use integration::{Api, Backend, Fleet, NatsCluster, StatusCode, Tokens, poll_until};
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
    // The topology does not depend on the database; SQLite keeps this test quick. The
    // bus is a 3-node cluster with replicated (R3) streams, as in a deployment.
    let cluster = NatsCluster::start(3).await?;
    let smtp = SmtpServer::start().await?;
    let mut fleet = Fleet::builder(Backend::Sqlite, cluster.url_list())
        .service("auth", 1)
        .service("calendar", 2)
        .service("email", 1)
        .service("push", 1)
        .service("hospital", 1)
        .service("gateway", 1)
        .with_env_all("NATS_STREAM_REPLICAS", "3")
        .with_env("auth", "AUTH_ADMIN_EMAILS", ADMIN_EMAIL)
        .with_env("email", "SMTP_URL", &smtp.url())
        .with_env("email", "SMTP_TIMEOUT_MS", "3000")
        .with_env("email", "EMAIL_BACKOFF_MS", "300,600,1200")
        .with_env("push", "PUSH_BACKOFF_MS", "300,600,1200")
        .start()
        .await?;
    let info = cluster
        .wait_stream_current(CALENDAR_STREAM.name, WAIT)
        .await?;
    ensure!(info.config.num_replicas == 3, "CALENDAR is R3");
    let api = Api::new(fleet.gateway_urls()[0].clone());

    // The newer calendar: the second replica comes back as a newer version (same
    // database, NATS and queue group), v2 on.
    fleet
        .process_mut(NEWER_CALENDAR)?
        .set_env("CALENDAR_PUBLISH_RSVP_V2", "on");
    fleet.restart(NEWER_CALENDAR).await?;
    let js = cluster.jetstream().await?;
    // Both calendars share this database: its outbox says when everything committed
    // (v1 and v2 rows, one transaction per RSVP) is in the stream.
    sqlx::any::install_default_drivers();
    let pool =
        sqlx::AnyPool::connect(fleet.database_url("calendar").context("calendar db")?).await?;

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

    // A consumer moves to v2 (every producer publishes it from now on: the old
    // calendar is retired), with one ledger for its effects.
    let status = fleet.process_mut(OLD_CALENDAR)?.terminate().await?;
    ensure!(status.success(), "old calendar exited with {status}");
    consumer_moves_to_v2(&api, &js, &pool, &event_id, rsvps).await?;

    pool.close().await;
    fleet.shutdown().await
}

/// The calendar replica that stays the old version, and the one that becomes newer.
const OLD_CALENDAR: &str = "calendar#1";
const NEWER_CALENDAR: &str = "calendar#2";

/// The logical consumer both of its durables record effects under.
const LEDGER_CONSUMER: &str = "ledger";
/// Its durable that starts on v1 and moves to v2 mid-stream.
const MOVING: &str = "ledger-calendar";
/// Its durable on v2 from the start (the new version deployed beside the old one).
const ON_V2: &str = "ledgerv2-calendar";

/// A subscriber acting once per logical RSVP, whichever version delivers it: it
/// dedupes on `Mesh-Message-Id` in the processed-message ledger every real consumer
/// keeps (`runtime::consumer::ledger`), in the transaction of its effect.
struct RsvpEffects {
    db: runtime::db::Database,
    deduped: std::sync::atomic::AtomicUsize,
}

impl runtime::consumer::Handler for RsvpEffects {
    async fn handle(
        &self,
        d: &runtime::consumer::Delivery,
    ) -> Result<(), runtime::consumer::HandlerError> {
        use runtime::consumer::HandlerError;
        let (id, version) = match d.schema_version {
            Some(1) => (d.decode::<RsvpChangedV1>()?.meta.message_id, 1),
            Some(2) => (d.decode::<RsvpChangedV2>()?.meta.message_id, 2),
            other => {
                return Err(HandlerError::permanent(format!(
                    "unknown schema version {other:?}"
                )));
            }
        };
        let id = id.to_string();
        if d.message_id.as_deref() != Some(id.as_str()) {
            return Err(HandlerError::permanent(
                "Mesh-Message-Id is not the event's id",
            ));
        }
        let mut tx = self
            .db
            .begin_write()
            .await
            .map_err(HandlerError::transient)?;
        let first = runtime::consumer::ledger::mark_processed(&mut *tx, LEDGER_CONSUMER, &id)
            .await
            .map_err(HandlerError::transient)?;
        if !first {
            self.deduped
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Ok(());
        }
        sqlx::query("INSERT INTO effects (message_id, version, subject) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(version as i64)
            .bind(d.subject.clone())
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::transient)?;
        tx.commit().await.map_err(HandlerError::transient)?;
        Ok(())
    }
}

/// One running durable of the ledger subscriber.
struct LedgerDurable {
    cancel: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LedgerDurable {
    async fn start(
        js: &async_nats::jetstream::Context,
        effects: &std::sync::Arc<RsvpEffects>,
        durable: &str,
        subject: &str,
    ) -> Result<Self> {
        let config = runtime::consumer::ConsumerConfig {
            stream: CALENDAR_STREAM.name,
            durable: durable.to_owned(),
            filter_subjects: vec![subject.to_owned()],
            start: runtime::consumer::StartPosition::Beginning,
            retry: runtime::consumer::RetryPolicy {
                max_deliver: 20,
                backoff: vec![Duration::from_millis(200), Duration::from_millis(500)],
            },
            concurrency: 4,
            max_ack_pending: 100,
        };
        let consumer = runtime::consumer::ensure(js, &config).await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let js = js.clone();
            let effects = effects.clone();
            let cancel = cancel.clone();
            async move {
                let _ = runtime::consumer::run(&js, consumer, config, effects, cancel).await;
            }
        });
        Ok(LedgerDurable { cancel, task })
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn rsvp_as_new_guest(api: &Api, event_id: &str, n: usize) -> Result<()> {
    let (_, tokens) = api.new_user(&format!("Late guest {n}")).await?;
    let (code, _, body) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&tokens.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(code == StatusCode::OK, "rsvp: {code} {body}");
    Ok(())
}

/// The effects recorded so far: (rows, distinct message ids, rows from v2 copies).
async fn effects_of(db: &runtime::db::Database) -> Result<(i64, i64, i64)> {
    let row: (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT message_id), \
         COALESCE(SUM(CASE WHEN version = 2 THEN 1 ELSE 0 END), 0) FROM effects",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(row)
}

/// A subscriber reads v1 of `calendar.rsvp_changed` on durable [`MOVING`]; RSVPs
/// arrive as v1 + v2 (one logical id); its filter moves to v2 mid-stream; then its new
/// version runs beside it on [`ON_V2`] (v2 from the start of the stream), and more RSVPs
/// arrive. Whatever each durable is handed, every RSVP has exactly one effect.
async fn consumer_moves_to_v2(
    api: &Api,
    js: &async_nats::jetstream::Context,
    calendar_db: &sqlx::AnyPool,
    event_id: &str,
    earlier: usize,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let migrations_dir = dir.path().join("migrations");
    std::fs::create_dir_all(&migrations_dir)?;
    std::fs::write(
        migrations_dir.join("0001_ledger.sql"),
        "CREATE TABLE processed_messages (consumer TEXT NOT NULL, message_id TEXT NOT NULL, \
         processed_at BIGINT NOT NULL, PRIMARY KEY (consumer, message_id));\n\
         CREATE TABLE effects (message_id TEXT NOT NULL, version BIGINT NOT NULL, \
         subject TEXT NOT NULL);\n",
    )?;
    let migrator: &'static sqlx::migrate::Migrator = Box::leak(Box::new(
        sqlx::migrate::Migrator::new(migrations_dir.as_path()).await?,
    ));
    let db = runtime::db::Database::connect(
        &format!("sqlite://{}", dir.path().join("ledger.db").display()),
        &runtime::db::Migrations {
            sqlite: migrator,
            postgres: migrator,
        },
    )
    .await?;
    let effects = std::sync::Arc::new(RsvpEffects {
        db: db.clone(),
        deduped: Default::default(),
    });

    // v1, from the beginning: every RSVP so far.
    let moving = LedgerDurable::start(js, &effects, MOVING, RsvpChangedV1::SUBJECT).await?;
    let mut total = earlier;
    for n in 0..3 {
        rsvp_as_new_guest(api, event_id, n).await?;
        total += 1;
    }
    settled_rsvps(js, calendar_db, total).await?;
    integration::wait_settled(js, CALENDAR_STREAM.name, MOVING, WAIT).await?;
    let before_switch = effects_of(&db).await?;
    ensure!(
        before_switch == (total as i64, total as i64, 0),
        "one v1 effect per RSVP before the switch: {before_switch:?}"
    );

    // Mid-stream: the same durable now filters v2 (its position is kept).
    moving.stop().await;
    let moving = LedgerDurable::start(js, &effects, MOVING, RsvpChangedV2::SUBJECT).await?;
    let info = integration::consumer_info(js, CALENDAR_STREAM.name, MOVING).await?;
    ensure!(
        info.config
            .filter_subjects
            .iter()
            .any(|f| f == RsvpChangedV2::SUBJECT)
            && !info
                .config
                .filter_subjects
                .iter()
                .any(|f| f == RsvpChangedV1::SUBJECT),
        "{MOVING} moved to v2: {:?}",
        info.config.filter_subjects
    );
    for n in 3..6 {
        rsvp_as_new_guest(api, event_id, n).await?;
        total += 1;
    }
    // Its new version beside it, on v2 from the start: every v2 copy again.
    let on_v2 = LedgerDurable::start(js, &effects, ON_V2, RsvpChangedV2::SUBJECT).await?;
    for n in 6..9 {
        rsvp_as_new_guest(api, event_id, n).await?;
        total += 1;
    }
    let copies = settled_rsvps(js, calendar_db, total).await?;
    let v2_copies = copies.values().filter(|(_, v2)| !v2.is_empty()).count();
    for durable in [MOVING, ON_V2] {
        integration::wait_settled(js, CALENDAR_STREAM.name, durable, WAIT).await?;
    }
    let (rows, distinct, from_v2) = effects_of(&db).await?;
    let deduped = effects.deduped.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "a consumer moving to v2: {total} RSVPs ({v2_copies} with a v2 copy), {rows} effects \
         ({from_v2} from v2 copies), {deduped} deliveries deduped by the ledger"
    );
    ensure!(
        rows == total as i64 && distinct == rows,
        "exactly one effect per RSVP: {rows} effects, {distinct} distinct, {total} RSVPs"
    );
    let ids: HashSet<String> = sqlx::query_scalar("SELECT message_id FROM effects")
        .fetch_all(&db.pool)
        .await?
        .into_iter()
        .collect();
    let logical: HashSet<String> = copies.keys().cloned().collect();
    ensure!(ids == logical, "the effects are the stream's RSVPs");
    // Both durables were handed every v2 copy after the switch: one of each pair
    // acted, the other deduped; ON_V2 also re-read every earlier v2 copy.
    ensure!(
        deduped >= v2_copies,
        "{deduped} deduped deliveries for {v2_copies} v2 copies"
    );
    ensure!(from_v2 > 0, "RSVPs after the switch were acted on from v2");
    moving.stop().await;
    on_v2.stop().await;
    db.pool.close().await;
    Ok(())
}
