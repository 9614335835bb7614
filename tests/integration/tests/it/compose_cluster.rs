//! The compose deployment's NATS, for real: three nats-servers started from the
//! committed `compose/nats/nats.conf` (its JetStream, cluster and lame-duck settings,
//! and `auth.conf`'s users and permissions), with only the loopback ports, store
//! directories, server names and routes given on the command line, as the file's
//! header describes. `mesh-provision` runs first as the `provision` user (R3 streams,
//! the ward's limits from the hospital's settings), then every service connects as its
//! own user with `PROVISION=off`, two calendar replicas among them, and an RSVP goes
//! through gateway → calendar → email (mail with the `.ics`) and push (the organizer's
//! notification), with no permission violation anywhere.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use contracts::permissions;
use contracts::subjects::{AUTH_STREAM, CALENDAR_STREAM, DLQ_STREAM};
use integration::smtp::SmtpServer;
use integration::{
    Api, Backend, Fleet, NatsCluster, StatusCode, compose_nats_password, poll_until, service_binary,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
/// The ward's limits given to `mesh-provision` (not the defaults, so they show).
const WARD_BYTES: i64 = 256 * 1024 * 1024;
const WARD_AGE_SECS: u64 = 7 * 24 * 3600;

fn provision(cluster: &NatsCluster) -> Result<()> {
    let out = Command::new(service_binary("mesh-provision")?)
        .env("NATS_URL", cluster.url_list())
        .env("NATS_USER", permissions::PROVISION)
        .env(
            "NATS_PASSWORD",
            compose_nats_password(permissions::PROVISION),
        )
        .env("NATS_STREAM_REPLICAS", "3")
        .env("PROVISION_TIMEOUT_SECS", "60")
        .env("HOSPITAL_DLQ_MAX_BYTES", WARD_BYTES.to_string())
        .env("HOSPITAL_DLQ_MAX_AGE_SECS", WARD_AGE_SECS.to_string())
        .output()
        .context("Failed to run mesh-provision")?;
    ensure!(
        out.status.success(),
        "mesh-provision: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_runs_on_the_compose_nats_cluster_with_its_own_credentials() -> Result<()> {
    let cluster = NatsCluster::start_from_compose(3, permissions::PROVISION).await?;
    provision(&cluster)?;
    let js = cluster.jetstream().await?;
    for stream in [AUTH_STREAM.name, CALENDAR_STREAM.name, DLQ_STREAM.name] {
        let info = cluster.wait_stream_current(stream, WAIT).await?;
        ensure!(
            info.config.num_replicas == 3,
            "{stream} has {} replicas",
            info.config.num_replicas
        );
    }
    let ward = js
        .get_stream(DLQ_STREAM.name)
        .await?
        .info()
        .await?
        .config
        .clone();
    ensure!(
        ward.max_bytes == WARD_BYTES && ward.max_age == Duration::from_secs(WARD_AGE_SECS),
        "the ward has the hospital's limits: {} bytes, {:?}",
        ward.max_bytes,
        ward.max_age
    );

    let smtp = SmtpServer::start().await?;
    let mut builder = Fleet::builder(Backend::Sqlite, cluster.url_list())
        .service("auth", 1)
        .service("calendar", 2)
        .service("email", 1)
        .service("push", 1)
        .service("hospital", 1)
        .service("gateway", 1)
        .with_env_all("PROVISION", "off")
        .with_env_all("NATS_STREAM_REPLICAS", "3")
        // A server's permission violation is logged at debug.
        .with_env_all("RUST_LOG", "info,runtime::nats=debug")
        .with_env("email", "SMTP_URL", &smtp.url());
    for user in [
        permissions::AUTH,
        permissions::CALENDAR,
        permissions::EMAIL,
        permissions::PUSH,
        permissions::HOSPITAL,
        permissions::GATEWAY,
    ] {
        builder = builder.with_env(user, "NATS_USER", user).with_env(
            user,
            "NATS_PASSWORD",
            &compose_nats_password(user),
        );
    }
    let fleet = builder.start().await?;
    let api = Api::new(fleet.gateway_urls()[0].clone());

    // The RSVP journey: register, create, RSVP; the guest's mail and the organizer's
    // notification arrive.
    let (organizer, org) = poll_until(WAIT, "registering through the gateway", || {
        let api = api.clone();
        async move { api.new_user("Olga Organizer").await.ok() }
    })
    .await?;
    let (guest, guest_tokens) = api.new_user("Gustav Guest").await?;
    let guest_email = guest["email"].as_str().context("email")?.to_lowercase();
    let body = json!({
        "title": "Compose meetup",
        "description": "Three nodes, one config",
        "starts_at": "2030-06-01T18:00:00+02:00",
        "ends_at": "2030-06-01T21:00:00+02:00",
        "time_zone": "Europe/Berlin",
        "location": "c-base",
        "capacity": 10,
    });
    let (status, _, event) = api.post("/v1/events", Some(&org.access), &body).await?;
    ensure!(
        status == StatusCode::CREATED,
        "create event: {status} {event}"
    );
    let event_id = event["id"].as_str().context("event id")?;
    let (status, _, rsvp) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&guest_tokens.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "rsvp: {status} {rsvp}");
    let mail = smtp
        .wait_for(&guest_email, WAIT, |m| {
            m.attachment("text/calendar").is_some()
        })
        .await?;
    println!(
        "email: RSVP confirmation to {guest_email}: {:?}",
        mail.subject
    );
    let page = poll_until(WAIT, "the organizer's RSVP notification", || {
        let api = api.clone();
        let token = org.access.clone();
        async move {
            let (status, _, page) = api.get("/v1/notifications", Some(&token)).await.ok()?;
            let items = page["items"].as_array()?;
            (status == StatusCode::OK && items.iter().any(|n| n["kind"] == "rsvp_received"))
                .then_some(page)
        }
    })
    .await?;
    println!(
        "push: {} notification(s) for organizer {}",
        page["items"].as_array().map(Vec::len).unwrap_or(0),
        organizer["id"]
    );

    // Nobody stepped outside their permissions; the servers saw no violation either.
    let mut violations: Vec<String> = Vec::new();
    for label in fleet.labels() {
        let log = fleet.process(&label)?.log_text();
        violations.extend(
            log.lines()
                .filter(|l| l.to_lowercase().contains("permissions violation"))
                .map(|l| format!("{label}: {l}")),
        );
    }
    for node in 0..cluster.size() {
        violations.extend(
            cluster
                .log_text(node)
                .lines()
                .filter(|l| l.to_lowercase().contains("permissions violation"))
                .map(|l| format!("{}: {l}", cluster.name(node).unwrap_or("?"))),
        );
    }
    ensure!(
        violations.is_empty(),
        "permission violations on the compose cluster:\n{}",
        violations.join("\n")
    );
    let users: HashMap<String, String> = fleet
        .labels()
        .into_iter()
        .filter_map(|l| {
            let user = fleet.process(&l).ok()?.env().get("NATS_USER")?.clone();
            Some((l, user))
        })
        .collect();
    println!("services and their NATS users: {users:?}");
    fleet.shutdown().await
}
