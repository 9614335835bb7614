//! The harness: a private nats-server, a fresh database per test, the calendar service
//! in-process, typed request helpers and stream inspection.
//!
//! Environment: `NATS_SERVER_BIN` (else `<repo>/.tools/bin/nats-server`, else
//! `/tmp/natsbin/bin/nats-server`), `TEST_DATABASE_URL` (PostgreSQL admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `TEST_BACKENDS` (`sqlite`,
//! `postgres` or both, comma separated; default both), `TEST_LOG=1` (service logs).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, message::StreamMessage};
use calendar::{Application, Config, StartError};
use contracts::api::{CreateEventRequest, Event};
use contracts::events::EventMeta;
use contracts::rpc::{Caller, NoBody, Role, RpcReply, RpcRequest};
use contracts::subjects::calendar as subj;
use contracts::{ErrorCode, Problem};
use jiff::{SignedDuration, Timestamp};
use runtime::config::CommonConfig;
use runtime::db::Database;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Runs one scenario as two tests, `sqlite` and `postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                $crate::helpers::run(super::$name, $crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                $crate::helpers::run(super::$name, $crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario unless `TEST_BACKENDS` leaves its backend out.
pub async fn run<F, Fut>(scenario: F, backend: Backend) -> Result<()>
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let wanted = std::env::var("TEST_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    if !wanted.split(',').any(|b| b.trim() == name) {
        eprintln!("skipped: TEST_BACKENDS={wanted}");
        return Ok(());
    }
    init_logs();
    scenario(backend).await
}

fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        ONCE.call_once(|| std::mem::forget(runtime::telemetry::init("calendar-test")));
    }
}

/// Waits for `check` to return `Some`, polling until the deadline.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---- nats-server ----

/// A private nats-server with JetStream; stop and start it again on the same port and
/// store to simulate an outage.
pub struct NatsServer {
    pub port: u16,
    store: TempDir,
    child: Option<Child>,
}

fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return p.into();
    }
    let repo_tool = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/nats-server");
    if repo_tool.exists() {
        return repo_tool;
    }
    "/tmp/natsbin/bin/nats-server".into()
}

impl NatsServer {
    pub async fn start() -> Result<Self> {
        let mut server = NatsServer {
            port: free_port()?,
            store: TempDir::new()?,
            child: None,
        };
        server.start_again().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts on the same port and store directory; waits until it accepts.
    pub async fn start_again(&mut self) -> Result<()> {
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (set NATS_SERVER_BIN)")?;
        self.child = Some(child);
        let port = self.port;
        poll_until(
            "nats-server to accept",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await?;
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- databases ----

/// A fresh database: a SQLite file in a temp dir, or a new PostgreSQL database that is
/// dropped afterwards.
pub struct TestDb {
    pub url: String,
    _dir: Option<TempDir>,
    pg: Option<(String, String)>, // (admin url, database name)
}

fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    pub async fn new(backend: Backend) -> Result<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new()?;
                let url = format!("sqlite://{}/calendar.db", dir.path().display());
                Ok(TestDb {
                    url,
                    _dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = pg_admin_url();
                let name = format!("calendar_test_{}", Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .with_context(|| format!("cannot connect to PostgreSQL at {admin}"))?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
                let base = &base[..base.rfind('/').context("admin URL without a path")?];
                let url = if query.is_empty() {
                    format!("{base}/{name}")
                } else {
                    format!("{base}/{name}?{query}")
                };
                Ok(TestDb {
                    url,
                    _dir: None,
                    pg: Some((admin, name)),
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop is synchronous; run the cleanup on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

// ---- the service ----

pub struct TestApp {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub db: Database,
    pub http_port: u16,
    cancel: CancellationToken,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

pub fn config(nats: &NatsServer, db: &TestDb, relay: bool) -> Config {
    Config {
        common: CommonConfig {
            nats_url: nats.url(),
            nats_user: None,
            nats_password: None,
            http_addr: "127.0.0.1:0".into(),
            provision: true,
            shutdown_grace: Duration::from_secs(5),
        },
        database_url: db.url.clone(),
        outbox_relay: relay,
        max_in_flight: 64,
    }
}

impl TestApp {
    /// Starts the service and waits until it answers requests.
    pub async fn spawn(nats: &NatsServer, db: &TestDb) -> Result<Self> {
        Self::spawn_with(nats, db, true).await
    }

    pub async fn spawn_with(nats: &NatsServer, db: &TestDb, relay: bool) -> Result<Self> {
        let app = Self::start(config(nats, db, relay)).await?;
        app.wait_until_serving().await?;
        Ok(app)
    }

    /// Starts the service without waiting for NATS (which may be down).
    pub async fn start(config: Config) -> Result<Self> {
        let nats_url = config.common.nats_url.clone();
        let app = Application::build(config).await?;
        let http_port = app.http_port();
        let db = app.database().clone();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(cancel.clone()));
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&nats_url)
            .await?;
        let js = jetstream::new(client.clone());
        Ok(TestApp {
            client,
            js,
            db,
            http_port,
            cancel,
            handle: Some(handle),
        })
    }

    pub async fn wait_until_serving(&self) -> Result<()> {
        poll_until(
            "the calendar endpoints",
            Duration::from_secs(20),
            || async {
                let req = RpcRequest::new(NoBody {})
                    .with_caller(user())
                    .with_param("id", Uuid::nil().to_string());
                let payload = contracts::wire::encode(&req).ok()?;
                let reply = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.client.request(subj::RPC_GET_EVENT, payload.into()),
                )
                .await
                .ok()?
                .ok()?;
                contracts::wire::decode::<RpcReply<Event>>(&reply.payload).ok()
            },
        )
        .await?;
        Ok(())
    }

    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .context("service did not stop")???;
        }
        Ok(())
    }

    /// Sends one request as the gateway would and decodes the reply.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        subject: &str,
        req: &RpcRequest<B>,
    ) -> Result<RpcReply<T>> {
        let payload = contracts::wire::encode(req)?;
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            self.client.request(subject.to_owned(), payload.into()),
        )
        .await
        .with_context(|| format!("{subject}: no reply in time"))?
        .with_context(|| format!("{subject}: request failed"))?;
        contracts::wire::decode(&reply.payload).with_context(|| format!("{subject}: bad reply"))
    }

    pub async fn create(&self, who: &Caller, req: &CreateEventRequest) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_CREATE_EVENT,
            &RpcRequest::new(req.clone()).with_caller(who.clone()),
        )
        .await
    }

    /// Creates an event and returns it, failing on anything but 201.
    pub async fn create_ok(&self, who: &Caller, req: &CreateEventRequest) -> Result<Event> {
        expect_status(self.create(who, req).await?, 201)
    }

    pub async fn get(&self, who: &Caller, id: Uuid) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_GET_EVENT,
            &RpcRequest::new(NoBody {})
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn rsvp(
        &self,
        who: &Caller,
        id: Uuid,
        status: contracts::events::RsvpStatus,
    ) -> Result<RpcReply<contracts::api::RsvpResult>> {
        self.call(
            subj::RPC_PUT_RSVP,
            &RpcRequest::new(contracts::api::RsvpRequest { status })
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn update(
        &self,
        who: &Caller,
        id: Uuid,
        req: contracts::api::UpdateEventRequest,
    ) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_UPDATE_EVENT,
            &RpcRequest::new(req)
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn cancel(&self, who: &Caller, id: Uuid) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_CANCEL_EVENT,
            &RpcRequest::new(NoBody {})
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn list(
        &self,
        who: &Caller,
        query: &[(&str, &str)],
    ) -> Result<RpcReply<contracts::api::EventPage>> {
        let mut req = RpcRequest::new(NoBody {}).with_caller(who.clone());
        for (k, v) in query {
            req = req.with_query(k, *v);
        }
        self.call(subj::RPC_LIST_EVENTS, &req).await
    }

    /// GET /healthz or /readyz over plain HTTP/1.0; returns the status code.
    pub async fn http_status(&self, path: &str) -> Result<u16> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad HTTP response: {text}"))?;
        Ok(code)
    }

    /// Outbox rows not yet published.
    pub async fn outbox_backlog(&self) -> Result<i64> {
        Ok(runtime::outbox::backlog(&self.db).await?)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---- requests and replies ----

pub fn user() -> Caller {
    Caller {
        user_id: Uuid::now_v7(),
        role: Role::User,
    }
}

/// An event starting `starts_in` from now, lasting two hours, in `zone`, written with
/// the zone's offset.
pub fn event_at(starts_in: SignedDuration, zone: &str, capacity: u32) -> CreateEventRequest {
    let start = Timestamp::now() + starts_in;
    let end = start + SignedDuration::from_hours(2);
    CreateEventRequest {
        title: "Rust meetup".into(),
        description: "Talks and pizza".into(),
        starts_at: calendar::domain::render_in_zone(start, zone),
        ends_at: calendar::domain::render_in_zone(end, zone),
        time_zone: zone.into(),
        location: "Berlin".into(),
        capacity,
    }
}

pub fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

pub fn expect_status<T: std::fmt::Debug>(reply: RpcReply<T>, status: u16) -> Result<T> {
    match reply {
        RpcReply::Ok { status: s, body } if s == status => Ok(body),
        other => bail!("expected {status}, got {other:?}"),
    }
}

pub fn expect_problem<T: std::fmt::Debug>(reply: RpcReply<T>, code: ErrorCode) -> Result<Problem> {
    match reply {
        RpcReply::Err(p) if p.code == code => {
            if p.status != code.status() {
                bail!("{code} with status {}", p.status);
            }
            Ok(p)
        }
        other => bail!("expected {code}, got {other:?}"),
    }
}

// ---- the stream ----

/// Enough of any domain event to check its metadata.
#[derive(Debug, Deserialize)]
pub struct AnyEvent {
    pub meta: EventMeta,
}

/// Every message in the CALENDAR stream, in stream order.
pub async fn stream_messages(js: &jetstream::Context) -> Result<Vec<StreamMessage>> {
    let mut stream = js
        .get_stream(contracts::subjects::CALENDAR_STREAM.name)
        .await?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        out.push(stream.get_raw_message(seq).await?);
    }
    Ok(out)
}

/// Waits until the stream holds `n` messages and returns them.
pub async fn wait_for_messages(js: &jetstream::Context, n: usize) -> Result<Vec<StreamMessage>> {
    let found = poll_until(
        &format!("{n} stream messages"),
        Duration::from_secs(30),
        || async {
            let msgs = stream_messages(js).await.ok()?;
            (msgs.len() >= n).then_some(msgs)
        },
    )
    .await;
    match found {
        Ok(msgs) => Ok(msgs),
        Err(e) => {
            let had = stream_messages(js).await.map(|m| m.len());
            Err(e.context(format!("the stream holds {had:?}")))
        }
    }
}

pub fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// Checks what every published event must carry and returns (subject, event meta)
/// per message: ids and headers agree, message ids are unique.
pub fn check_messages(msgs: &[StreamMessage]) -> Result<Vec<(String, EventMeta)>> {
    use contracts::subjects::headers as h;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for m in msgs {
        let ev: AnyEvent = contracts::wire::decode(&m.payload)?;
        let id = ev.meta.message_id.to_string();
        let subject = m.subject.to_string();
        anyhow::ensure!(
            header(m, h::NATS_MSG_ID) == Some(id.as_str()),
            "Nats-Msg-Id on {subject}"
        );
        anyhow::ensure!(
            header(m, h::MESSAGE_ID) == Some(id.as_str()),
            "Mesh-Message-Id on {subject}"
        );
        let expected_type = match subject.as_str() {
            subj::EVENT_CREATED_V1 => "calendar.event_created",
            subj::EVENT_UPDATED_V1 => "calendar.event_updated",
            subj::EVENT_CANCELLED_V1 => "calendar.event_cancelled",
            subj::RSVP_CHANGED_V1 => "calendar.rsvp_changed",
            other => bail!("unexpected subject {other}"),
        };
        anyhow::ensure!(
            header(m, h::MESSAGE_TYPE) == Some(expected_type),
            "Mesh-Message-Type on {subject}: {:?}",
            header(m, h::MESSAGE_TYPE)
        );
        anyhow::ensure!(
            header(m, h::SCHEMA_VERSION) == Some("1"),
            "Mesh-Schema-Version"
        );
        let version = ev.meta.aggregate_version.to_string();
        anyhow::ensure!(
            header(m, h::AGGREGATE_VERSION) == Some(version.as_str()),
            "Mesh-Aggregate-Version"
        );
        anyhow::ensure!(seen.insert(id.clone()), "duplicate message id {id}");
        out.push((subject, ev.meta));
    }
    Ok(out)
}

/// Per aggregate, versions must strictly increase in stream order.
pub fn check_versions_increase(metas: &[(String, EventMeta)]) -> Result<()> {
    let mut last: BTreeMap<Uuid, u64> = BTreeMap::new();
    for (subject, meta) in metas {
        let prev = last
            .insert(meta.aggregate_id, meta.aggregate_version)
            .unwrap_or(0);
        anyhow::ensure!(
            meta.aggregate_version > prev,
            "{subject}: version {} after {prev}",
            meta.aggregate_version
        );
    }
    Ok(())
}

pub fn count_subject(metas: &[(String, EventMeta)], subject: &str) -> usize {
    metas.iter().filter(|(s, _)| s == subject).count()
}
