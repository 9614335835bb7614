//! Least privilege on the bus: a nats-server started from the generated users and
//! permissions (`mesh-provision nats-config`), streams and buckets created by the
//! provisioning identity alone, every real service connected with its own credentials
//! and `PROVISION=off`, and the whole RSVP path working through the gateway, with no
//! permission violation in the server's log. Then direct connections with each
//! identity's credentials show what the server refuses.
//!
//! How a refusal shows: the server drops the message and sends `-ERR 'Permissions
//! Violation for Publish to "<subject>"'`, which async-nats reports asynchronously as
//! `Event::ServerError`; the publisher's JetStream ack or request reply never comes.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream::{self, consumer};
use integration::{
    Api, READY_TIMEOUT, ServiceProcess, StatusCode, TestDb, free_port, nats_server_binary,
    poll_until, service_binary,
};
use serde_json::json;
use tempfile::TempDir;

use contracts::permissions;
use contracts::subjects::{self, CALENDAR_STREAM, auth, calendar, durables};

const ADMIN_EMAIL: &str = "ops@example.com";
const WAIT: Duration = Duration::from_secs(30);
/// How long a refused publish waits for the ack or reply that never comes.
const DENIED_WAIT: Duration = Duration::from_secs(2);

/// The development password the generator uses when `NATS_PASSWORD_<USER>` is unset.
fn password(user: &str) -> String {
    format!("{user}-nats-dev")
}

/// A nats-server run from a config file (users and permissions), killed on drop.
struct SecuredNats {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl SecuredNats {
    /// Generates the users with `mesh-provision nats-config`, includes them from a
    /// single-node JetStream config, starts the server and waits for its port.
    async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mesh-nats-auth-")
            .tempdir()?;
        let mut generate = Command::new(service_binary("mesh-provision")?);
        generate
            .args(["nats-config", "--out"])
            .arg(dir.path().join("auth.conf"));
        for user in permissions::USERS {
            generate.env_remove(format!("NATS_PASSWORD_{}", user.to_ascii_uppercase()));
        }
        let status = generate.status().context("Failed to run mesh-provision")?;
        ensure!(status.success(), "mesh-provision nats-config: {status}");
        let generated = std::fs::read_to_string(dir.path().join("auth.conf"))?;
        let committed =
            std::fs::read_to_string(integration::repo_root().join("compose/nats/auth.conf"))?;
        ensure!(
            generated == committed,
            "compose/nats/auth.conf differs from `mesh-provision nats-config`; regenerate it"
        );

        let port = free_port();
        let store = dir.path().join("jetstream");
        std::fs::write(
            dir.path().join("nats.conf"),
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n    store_dir: \"{}\"\n}}\ninclude ./auth.conf\n",
                store.display()
            ),
        )?;
        let log = dir.path().join("nats-server.log");
        let out = File::create(&log)?;
        let child = Command::new(nats_server_binary()?)
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("Failed to start nats-server")?;
        let mut server = SecuredNats {
            child,
            port,
            log,
            dir,
        };
        let url = server.url();
        let connected = poll_until(WAIT, "the secured nats-server", || {
            let url = url.clone();
            async move { connect(&url, permissions::PROVISION).await.ok() }
        })
        .await;
        if let Some(status) = server.child.try_wait()? {
            bail!("nats-server exited ({status}):\n{}", server.log_text());
        }
        connected?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client connected as `user`, its server errors collected.
struct Peer {
    client: async_nats::Client,
    js: jetstream::Context,
    errors: Arc<Mutex<Vec<String>>>,
}

async fn connect(url: &str, user: &str) -> Result<async_nats::Client> {
    Ok(
        async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await?,
    )
}

impl Peer {
    async fn connect(url: &str, user: &str) -> Result<Self> {
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        let client =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
                .request_timeout(Some(DENIED_WAIT))
                .event_callback(move |event| {
                    let sink = sink.clone();
                    async move {
                        if let async_nats::Event::ServerError(e) = event {
                            sink.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(e.to_string());
                        }
                    }
                })
                .connect(url)
                .await
                .with_context(|| format!("connect as {user}"))?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(DENIED_WAIT)
            .build(client.clone());
        Ok(Peer { client, js, errors })
    }

    /// Waits for the server's permission violation naming `subject`.
    async fn violation(&self, subject: &str) -> Result<String> {
        let needle = format!(
            "permissions violation for publish to \"{}\"",
            subject.to_lowercase()
        );
        let errors = self.errors.clone();
        poll_until(
            WAIT,
            &format!("a permissions violation for {subject}"),
            || {
                let errors = errors.clone();
                let needle = needle.clone();
                async move {
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .find(|e| e.to_lowercase().contains(&needle))
                        .cloned()
                }
            },
        )
        .await
    }

    /// A JetStream publish that must get no ack, and the violation that says why.
    async fn publish_denied(&self, user: &str, subject: &str) -> Result<()> {
        let sent = self.js.publish(subject.to_owned(), "forged".into()).await;
        let acked = match sent {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        ensure!(
            !acked,
            "{user} published to {subject} and the stream acked it"
        );
        let why = self.violation(subject).await?;
        println!("denied: {user} publishes {subject}: {why}");
        Ok(())
    }
}

fn service_env(nats: &SecuredNats, user: &str) -> HashMap<String, String> {
    HashMap::from([
        ("NATS_URL".to_owned(), nats.url()),
        ("NATS_USER".to_owned(), user.to_owned()),
        ("NATS_PASSWORD".to_owned(), password(user)),
        ("PROVISION".to_owned(), "off".to_owned()),
    ])
}

fn run_provision(nats: &SecuredNats, command: &[&str]) -> Result<()> {
    let out = Command::new(service_binary("mesh-provision")?)
        .args(command)
        .env("NATS_URL", nats.url())
        .env("NATS_USER", permissions::PROVISION)
        .env("NATS_PASSWORD", password(permissions::PROVISION))
        .env("PROVISION_TIMEOUT_SECS", "30")
        .output()
        .context("Failed to run mesh-provision")?;
    ensure!(
        out.status.success(),
        "mesh-provision {command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn violations(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.to_lowercase().contains("permissions violation"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_runs_under_least_privilege_and_the_server_refuses_the_rest() -> Result<()> {
    let nats = SecuredNats::start().await?;

    // Only the provisioning identity creates streams and buckets; twice is the same.
    run_provision(&nats, &[])?;
    run_provision(&nats, &[])?;
    run_provision(&nats, &["check"])?;

    // Every service with its own credentials, provisioning off.
    let mail_dir = nats.dir().join("mail");
    let mut dbs = Vec::new();
    let mut services: Vec<ServiceProcess> = Vec::new();
    for name in ["auth", "calendar", "email", "push", "hospital", "gateway"] {
        let mut env = service_env(&nats, name);
        if name != "gateway" {
            let db = TestDb::sqlite(nats.dir().join("db"))?;
            env.insert("DATABASE_URL".into(), db.url().to_owned());
            dbs.push(db);
        }
        if name == "email" {
            env.insert("EMAIL_FILE_DIR".into(), mail_dir.display().to_string());
        }
        if name == "auth" {
            env.insert("AUTH_ADMIN_EMAILS".into(), ADMIN_EMAIL.into());
        }
        // NATS events (a server's permission violation among them) are logged at debug.
        env.insert("RUST_LOG".into(), "info,runtime::nats=debug".into());
        services.push(ServiceProcess::spawn(name, env)?);
    }
    for service in &mut services {
        service.wait_ready(READY_TIMEOUT * 2).await?;
    }
    let gateway = services
        .iter()
        .find(|s| s.name() == "mesh-gateway")
        .context("gateway")?;
    let api = Api::new(format!("http://{}", gateway.http_addr()));

    // The RSVP path end to end: register (auth → email, push), create, RSVP (calendar →
    // email, push), read the organizer's notifications back (gateway → push).
    let (_, org) = poll_until(WAIT, "registering through the gateway", || {
        let api = api.clone();
        async move { api.new_user("Organizer").await.ok() }
    })
    .await?;
    let (_, guest) = api.new_user("Guest").await?;
    let body = json!({
        "title": "Least privilege meetup",
        "description": "Permissions, then pizza",
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
            Some(&guest.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "rsvp: {status} {rsvp}");
    let page = poll_until(WAIT, "the organizer's RSVP notification", || {
        let api = api.clone();
        let token = org.access.clone();
        async move {
            let (status, _, page) = api.get("/v1/notifications", Some(&token)).await.ok()?;
            (status == StatusCode::OK && !page["items"].as_array()?.is_empty()).then_some(page)
        }
    })
    .await?;
    println!("organizer's notifications: {page}");
    // Two welcome mails, the guest's confirmation and the organizer's notice.
    let mails = poll_until(WAIT, "four mails", || {
        let dir = mail_dir.clone();
        async move {
            let n = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count();
            (n >= 4).then_some(n)
        }
    })
    .await?;
    println!("email wrote {mails} mails");
    // The ops plane (hospital) reads every durable's state, pauses and resumes one, and
    // scans the source streams for a message.
    api.register(ADMIN_EMAIL, "admin password 1", "Ops").await?;
    let admin = api.login(ADMIN_EMAIL, "admin password 1").await?;
    let (status, _, stats) = api.get("/v1/admin/dlq/stats", Some(&admin.access)).await?;
    ensure!(status == StatusCode::OK, "dlq stats: {status} {stats}");
    let durables_seen = stats["consumers"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(
        durables_seen >= 4,
        "the hospital sees {durables_seen} durables: {stats}"
    );
    let pause = format!("/v1/admin/consumers/{}/pause", durables::EMAIL_CALENDAR);
    let (status, _, paused) = api
        .post(
            &pause,
            Some(&admin.access),
            &json!({"seconds": 60, "reason": "permissions test"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && paused["paused"] == true,
        "pause: {status} {paused}"
    );
    let resume = format!("/v1/admin/consumers/{}/resume", durables::EMAIL_CALENDAR);
    let (status, _, resumed) = api
        .post(
            &resume,
            Some(&admin.access),
            &json!({"reason": "permissions test"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && resumed["paused"] == false,
        "resume: {status} {resumed}"
    );
    let (status, _, found) = api
        .get(
            &format!("/v1/admin/dlq/where?message_id={}", uuid::Uuid::now_v7()),
            Some(&admin.access),
        )
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "where (after a scan): {status} {found}"
    );
    println!(
        "hospital: {durables_seen} durables in stats; paused and resumed email-calendar; scanned for a message"
    );

    let seen: Vec<String> = services
        .iter()
        .flat_map(|s| {
            let name = s.name().to_owned();
            violations(&s.log_text())
                .into_iter()
                .map(move |l| format!("{name}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    ensure!(
        seen.is_empty(),
        "the mesh hit permission violations while working:\n{}",
        seen.join("\n")
    );
    let hospital = Peer::connect(&nats.url(), permissions::HOSPITAL).await?;

    // --- what the server refuses --------------------------------------------------
    let calendar = Peer::connect(&nats.url(), permissions::CALENDAR).await?;
    let email = Peer::connect(&nats.url(), permissions::EMAIL).await?;
    let provision = Peer::connect(&nats.url(), permissions::PROVISION).await?;
    let auth_messages = provision
        .js
        .get_stream(subjects::AUTH_STREAM.name)
        .await?
        .info()
        .await?
        .state
        .messages;

    // Producers publish only their own events; email publishes none.
    calendar
        .publish_denied("calendar", auth::USER_REGISTERED_V1)
        .await?;
    email
        .publish_denied("email", calendar::RSVP_CHANGED_V1)
        .await?;
    let after = provision
        .js
        .get_stream(subjects::AUTH_STREAM.name)
        .await?
        .info()
        .await?
        .state
        .messages;
    ensure!(after == auth_messages, "a forged event reached AUTH");

    // Email cannot delete (or create) a stream; CALENDAR is still there.
    let deleted = email.js.delete_stream(CALENDAR_STREAM.name).await;
    ensure!(deleted.is_err(), "email deleted CALENDAR");
    let why = email
        .violation(&format!("$JS.API.STREAM.DELETE.{}", CALENDAR_STREAM.name))
        .await?;
    println!("denied: email deletes CALENDAR: {why}");
    ensure!(
        provision.js.get_stream(CALENDAR_STREAM.name).await.is_ok(),
        "CALENDAR is gone"
    );
    let created = email
        .js
        .create_stream(jetstream::stream::Config {
            name: "EMAIL_OWN".into(),
            subjects: vec!["email.own.>".into()],
            ..Default::default()
        })
        .await;
    ensure!(created.is_err(), "email created a stream");
    email.violation("$JS.API.STREAM.CREATE.EMAIL_OWN").await?;

    // Email cannot take over push's durable.
    let stolen = email
        .js
        .create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some(durables::PUSH_CALENDAR.to_owned()),
                ..Default::default()
            },
            CALENDAR_STREAM.name,
        )
        .await;
    ensure!(stolen.is_err(), "email created push's durable");
    let why = email
        .violation(&format!(
            "$JS.API.CONSUMER.CREATE.{}.{}",
            CALENDAR_STREAM.name,
            durables::PUSH_CALENDAR
        ))
        .await?;
    println!("denied: email creates push-calendar: {why}");

    // Only the gateway calls services.
    let gateway_peer = Peer::connect(&nats.url(), permissions::GATEWAY).await?;
    let reply = gateway_peer
        .client
        .request(calendar::RPC_CREATE_EVENT, "not msgpack".into())
        .await;
    ensure!(
        reply.is_ok(),
        "the gateway's request got no reply: {reply:?}"
    );
    for (user, peer) in [
        ("calendar", &calendar),
        ("email", &email),
        ("hospital", &hospital),
    ] {
        let reply = peer
            .client
            .request(calendar::RPC_CREATE_EVENT, "not msgpack".into())
            .await;
        ensure!(reply.is_err(), "{user} called calendar");
        let why = peer.violation(calendar::RPC_CREATE_EVENT).await?;
        println!("denied: {user} calls {}: {why}", calendar::RPC_CREATE_EVENT);
    }

    // Only the hospital replays.
    let replay = subjects::replay_subject(CALENDAR_STREAM.name, durables::EMAIL_CALENDAR, "x")
        .context("calendar replays")?;
    email.publish_denied("email", &replay).await?;
    calendar.publish_denied("calendar", &replay).await?;
    // (The hospital may: to a durable nobody runs, so no consumer sees it.)
    let harmless = subjects::replay_subject(CALENDAR_STREAM.name, "nobody", "x")
        .context("calendar replays")?;
    hospital
        .js
        .publish(harmless, "replayed".into())
        .await?
        .await
        .context("the hospital's replay was not acked")?;

    for service in &mut services {
        service.terminate().await?;
    }
    drop(dbs);
    Ok(())
}
