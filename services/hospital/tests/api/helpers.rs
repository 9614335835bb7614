//! The harness: a private nats-server, a fresh database per test, the hospital
//! in-process, test subscribers that park real messages through `runtime::consumer`,
//! event fixtures, and request helpers.
//!
//! Environment: `NATS_SERVER_BIN` (else `<repo>/.tools/bin/nats-server`, else
//! `/tmp/natsbin/bin/nats-server`), `TEST_DATABASE_URL` (PostgreSQL admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `TEST_BACKENDS` (`sqlite`,
//! `postgres` or both, comma separated; default both), `TEST_LOG=1` (service logs).

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use contracts::DomainEvent;
use contracts::events::{EventCreatedV1, EventMeta, EventSnapshot, EventStatus, RsvpCounts};
use contracts::hospital::{
    BulkResult, DeadLetter, DeadLetterPage, GroupKey, Job, JobStatus, ReplayRequest, Selection,
};
use contracts::rpc::{Caller, NoBody, Role, RpcReply, RpcRequest};
use contracts::subjects::{self, headers as h, hospital as subj};
use contracts::{ErrorCode, Problem};
use futures::StreamExt;
use hospital::{Application, Config, StartError};
use jiff::{SignedDuration, Timestamp};
use runtime::config::CommonConfig;
use runtime::consumer::{
    ConsumerConfig, Delivery, Handler, HandlerError, RetryPolicy, StartPosition,
};
use runtime::db::Database;
use serde::{Serialize, de::DeserializeOwned};
use tempfile::TempDir;
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

/// Runs one scenario on SQLite only (what it checks does not touch SQL differences).
#[macro_export]
macro_rules! sqlite_only {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                $crate::helpers::run(super::$name, $crate::helpers::Backend::Sqlite).await
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
        ONCE.call_once(|| std::mem::forget(runtime::telemetry::init("hospital-test")));
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

/// A private nats-server with JetStream on a free port and its own store.
pub struct NatsServer {
    pub port: u16,
    _store: TempDir,
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
        let port = free_port()?;
        let store = TempDir::new()?;
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (set NATS_SERVER_BIN)")?;
        let server = NatsServer {
            port,
            _store: store,
            child: Some(child),
        };
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
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
                let url = format!("sqlite://{}/hospital.db", dir.path().display());
                Ok(TestDb {
                    url,
                    _dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = pg_admin_url();
                let name = format!("hospital_test_{}", Uuid::new_v4().simple());
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

// ---- the hospital ----

/// A fast retry schedule; replays unlimited unless a test asks for a rate.
pub fn config(nats: &NatsServer, db: &TestDb) -> Config {
    Config {
        common: CommonConfig {
            nats_url: nats.url(),
            nats_user: None,
            nats_password: None,
            http_addr: "127.0.0.1:0".into(),
            provision: true,
            shutdown_grace: Duration::from_secs(10),
        },
        database_url: db.url.clone(),
        dlq_max_bytes: subjects::DLQ_MAX_BYTES,
        dlq_max_age: Duration::from_secs(30 * 24 * 3600),
        replay_rate_per_sec: 0,
        where_scan_limit: 10_000,
        retry: RetryPolicy {
            max_deliver: 4,
            backoff: vec![Duration::from_millis(500), Duration::from_millis(1000)],
        },
        index_concurrency: 16,
        max_in_flight: 64,
    }
}

pub struct TestApp {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub db: Database,
    pub http_port: u16,
    cancel: CancellationToken,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestApp {
    pub async fn spawn(nats: &NatsServer, db: &TestDb) -> Result<Self> {
        Self::spawn_with(config(nats, db)).await
    }

    /// Starts the hospital and waits until it answers requests and indexes.
    pub async fn spawn_with(config: Config) -> Result<Self> {
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
        let app = TestApp {
            client,
            js,
            db,
            http_port,
            cancel,
            handle: Some(handle),
        };
        poll_until(
            "the hospital endpoints",
            Duration::from_secs(20),
            || async { app.list(&[]).await.ok().and_then(|r| r.into_result().ok()) },
        )
        .await?;
        poll_until("the index durable", Duration::from_secs(20), || async {
            let s = app.js.get_stream("DLQ").await.ok()?;
            s.consumer_info(subj::INDEX_DURABLE).await.ok()
        })
        .await?;
        Ok(app)
    }

    /// Stops the hospital and waits until it has drained.
    pub async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .context("hospital did not stop")???;
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
            Duration::from_secs(20),
            self.client.request(subject.to_owned(), payload.into()),
        )
        .await
        .with_context(|| format!("{subject}: no reply in time"))?
        .with_context(|| format!("{subject}: request failed"))?;
        contracts::wire::decode(&reply.payload).with_context(|| format!("{subject}: bad reply"))
    }

    /// An admin request with query parameters.
    pub async fn get<T: DeserializeOwned>(
        &self,
        subject: &str,
        params: &[(&str, &str)],
        query: &[(&str, &str)],
    ) -> Result<RpcReply<T>> {
        let mut req = RpcRequest::new(NoBody {}).with_caller(admin());
        for (k, v) in params {
            req = req.with_param(k, *v);
        }
        for (k, v) in query {
            req = req.with_query(k, *v);
        }
        self.call(subject, &req).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        subject: &str,
        params: &[(&str, &str)],
        body: B,
    ) -> Result<RpcReply<T>> {
        let mut req = RpcRequest::new(body).with_caller(admin());
        for (k, v) in params {
            req = req.with_param(k, *v);
        }
        self.call(subject, &req).await
    }

    pub async fn list(&self, query: &[(&str, &str)]) -> Result<RpcReply<DeadLetterPage>> {
        self.get(subj::RPC_LIST, &[], query).await
    }

    /// The dead letters matching a query (one page of up to 500), failing on non-200.
    pub async fn dead_letters(&self, query: &[(&str, &str)]) -> Result<Vec<DeadLetter>> {
        let mut q = query.to_vec();
        q.push(("limit", "500"));
        Ok(expect_ok(self.list(&q).await?)?.items)
    }

    /// Waits until the index holds `n` dead letters matching the query.
    pub async fn wait_dead_letters(
        &self,
        query: &[(&str, &str)],
        n: usize,
    ) -> Result<Vec<DeadLetter>> {
        poll_until(
            &format!("{n} dead letters matching {query:?}"),
            Duration::from_secs(30),
            || async {
                let items = self.dead_letters(query).await.ok()?;
                (items.len() >= n).then_some(items)
            },
        )
        .await
    }

    pub async fn replay(&self, selection: Selection, rate: Option<u32>) -> Result<BulkResult> {
        expect_ok(
            self.post(
                subj::RPC_REPLAY,
                &[],
                ReplayRequest {
                    selection,
                    dry_run: false,
                    rate_per_sec: rate,
                    reason: "the bug is fixed".into(),
                },
            )
            .await?,
        )
    }

    pub async fn job(&self, id: Uuid) -> Result<Job> {
        expect_ok(
            self.get(subj::RPC_JOB, &[("id", &id.to_string())], &[])
                .await?,
        )
    }

    /// Waits until a job is no longer running.
    pub async fn wait_job(&self, id: Uuid, timeout: Duration) -> Result<Job> {
        poll_until(&format!("job {id} to end"), timeout, || async {
            let job = self.job(id).await.ok()?;
            (job.status != JobStatus::Running).then_some(job)
        })
        .await
    }

    /// Publishes a domain event as the outbox relay does (with a trace context).
    pub async fn publish<E: DomainEvent>(&self, event: &E, trace_id: &str) -> Result<u64> {
        let mut map = HeaderMap::new();
        for (k, v) in contracts::events::event_headers(event) {
            map.insert(k, v.as_str());
        }
        map.insert(
            h::TRACEPARENT,
            format!("00-{trace_id}-{}-01", &trace_id[..16]).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(E::SUBJECT, map, contracts::wire::encode(event)?.into())
            .await?
            .await?;
        anyhow::ensure!(!ack.duplicate, "dropped as a duplicate");
        Ok(ack.sequence)
    }

    /// GET /healthz or /readyz over plain HTTP/1.0; returns the status code.
    pub async fn http_status(&self, path: &str) -> Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad HTTP response: {text}"))
    }

    pub async fn consumer_info(&self, stream: &str, durable: &str) -> Result<consumer::Info> {
        let s = self.js.get_stream(stream).await?;
        Ok(s.consumer_info(durable).await?)
    }

    /// Waits until a durable has settled (acked or terminated) every message it has.
    pub async fn wait_drained(&self, stream: &str, durable: &str) -> Result<consumer::Info> {
        poll_until(
            &format!("{durable} to settle every message"),
            Duration::from_secs(30),
            || async {
                let info = self.consumer_info(stream, durable).await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
            },
        )
        .await
    }

    /// Messages on subjects matching `filter` in a stream, read through an ephemeral
    /// consumer: (stream sequence, headers).
    pub async fn messages_on(&self, stream: &str, filter: &str) -> Result<Vec<(u64, HeaderMap)>> {
        let s = self.js.get_stream(stream).await?;
        let c = s
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.to_owned(),
                ack_policy: consumer::AckPolicy::None,
                headers_only: true,
                ..Default::default()
            })
            .await?;
        let total = c.cached_info().num_pending;
        let mut out = Vec::new();
        if total == 0 {
            return Ok(out);
        }
        let mut messages = c.stream().max_messages_per_batch(1000).messages().await?;
        while (out.len() as u64) < total {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .context("reading messages")?
                .context("message stream ended")??;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            out.push((seq, m.headers.clone().unwrap_or_default()));
        }
        Ok(out)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---- test subscribers ----

pub const EMAIL: &str = subjects::durables::EMAIL_CALENDAR;
pub const PUSH: &str = subjects::durables::PUSH_CALENDAR;

/// One delivery a test subscriber saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub subject: String,
    pub message_id: Option<String>,
    pub replay_of: Option<String>,
    pub edited_from: Option<String>,
    pub nats_msg_id: Option<String>,
    pub title: String,
    pub ok: bool,
}

/// A subscriber that records every delivery. With `fails_on_boom`, an event whose
/// title contains "boom" fails permanently until [`Subscriber::fix`] is called.
pub struct Recorder {
    fails_on_boom: bool,
    fixed: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

impl Handler for Recorder {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        let event: EventCreatedV1 = d.decode()?;
        let fail = self.fails_on_boom
            && event.event.title.contains("boom")
            && !self.fixed.load(Ordering::SeqCst);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Seen {
                subject: d.subject.clone(),
                message_id: d.message_id.clone(),
                replay_of: d.replay_of.clone(),
                edited_from: d.header(h::EDITED_FROM).map(str::to_owned),
                nats_msg_id: d.header(h::NATS_MSG_ID).map(str::to_owned),
                title: event.event.title.clone(),
                ok: !fail,
            });
        }
        if fail {
            return Err(HandlerError::permanent(format!(
                "template render failed for event \"{}\" ({})",
                event.event.title, event.meta.message_id
            )));
        }
        Ok(())
    }
}

/// A running test subscriber on the CALENDAR stream.
pub struct Subscriber {
    pub recorder: Arc<Recorder>,
    cancel: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Subscriber {
    pub async fn start(
        js: &jetstream::Context,
        durable: &str,
        fails_on_boom: bool,
    ) -> Result<Self> {
        let config = ConsumerConfig {
            stream: "CALENDAR",
            durable: durable.to_owned(),
            filter_subjects: vec!["calendar.v1.>".to_owned()],
            start: StartPosition::Beginning,
            retry: RetryPolicy {
                max_deliver: 3,
                backoff: vec![Duration::from_millis(200), Duration::from_millis(400)],
            },
            concurrency: 8,
            max_ack_pending: 1000,
        };
        let recorder = Arc::new(Recorder {
            fails_on_boom,
            fixed: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let consumer = runtime::consumer::ensure(js, &config).await?;
        let cancel = CancellationToken::new();
        let handle = tokio::spawn({
            let js = js.clone();
            let recorder = recorder.clone();
            let cancel = cancel.clone();
            async move {
                let _ = runtime::consumer::run(&js, consumer, config, recorder, cancel).await;
            }
        });
        Ok(Subscriber {
            recorder,
            cancel,
            handle: Some(handle),
        })
    }

    pub fn fix(&self) {
        self.recorder.fixed.store(true, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.recorder
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---- fixtures ----

pub fn admin() -> Caller {
    Caller {
        user_id: Uuid::now_v7(),
        role: Role::Admin,
    }
}

pub fn user() -> Caller {
    Caller {
        user_id: Uuid::now_v7(),
        role: Role::User,
    }
}

pub fn trace_id() -> String {
    Uuid::new_v4().simple().to_string()
}

pub fn event(title: &str) -> EventCreatedV1 {
    let starts_at = Timestamp::now() + SignedDuration::from_hours(24 * 7);
    let event_id = Uuid::now_v7();
    EventCreatedV1 {
        meta: EventMeta::new(event_id, 1),
        event: EventSnapshot {
            event_id,
            organizer_id: Uuid::now_v7(),
            title: title.into(),
            description: "Talks and pizza".into(),
            starts_at,
            ends_at: starts_at + SignedDuration::from_hours(2),
            time_zone: "Europe/Berlin".into(),
            location: "Berlin".into(),
            capacity: 100,
            status: EventStatus::Scheduled,
            counts: RsvpCounts::default(),
        },
    }
}

pub fn group_of(d: &DeadLetter) -> Selection {
    Selection {
        group: Some(GroupKey {
            durable: d.diagnosis.durable.clone(),
            fingerprint: d.fingerprint.clone(),
        }),
        ..Default::default()
    }
}

pub fn ids(ids: &[Uuid]) -> Selection {
    Selection {
        ids: ids.to_vec(),
        ..Default::default()
    }
}

// ---- replies ----

pub fn expect_ok<T: std::fmt::Debug>(reply: RpcReply<T>) -> Result<T> {
    match reply {
        RpcReply::Ok { status: 200, body } => Ok(body),
        other => bail!("expected 200, got {other:?}"),
    }
}

pub fn expect_problem<T: std::fmt::Debug>(reply: RpcReply<T>, code: ErrorCode) -> Result<Problem> {
    match reply {
        RpcReply::Err(p) if p.code == code => {
            anyhow::ensure!(p.status == code.status(), "{code} with status {}", p.status);
            Ok(p)
        }
        other => bail!("expected {code}, got {other:?}"),
    }
}
