//! The test harness: a real nats-server on a free port with its own store, a fresh
//! database per test (a SQLite file in a temp dir, or a new PostgreSQL database), and
//! the service started in-process with a `Config` built here.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use auth::{Application, Config};
use contracts::DomainEvent;
use contracts::api::{RegisterRequest, User};
use contracts::rpc::{RpcReply, RpcRequest};
use runtime::config::CommonConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_EMAIL: &str = "boss@example.com";
pub const PASSWORD: &str = "correct horse battery";

/// Logs only with `TEST_LOG=1`, so a failing test can be rerun with context.
fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            std::mem::forget(runtime::telemetry::init("auth-test"));
        }
    });
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- nats-server ----

pub struct NatsServer {
    child: Child,
    pub url: String,
    _store: tempfile::TempDir,
}

fn nats_server_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        return Ok(bin.into());
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for candidate in [
        workspace.join(".tools/bin/nats-server"),
        PathBuf::from("/tmp/natsbin/bin/nats-server"),
    ] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("no nats-server found: set NATS_SERVER_BIN (or run `cargo xtask test`)")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    pub async fn start() -> Result<NatsServer> {
        let bin = nats_server_bin()?;
        // A freed port can be taken again before the server binds it: retry a few times.
        let mut last_error = None;
        for _ in 0..5 {
            let store = tempfile::tempdir()?;
            let port = free_port()?;
            let mut child = Command::new(&bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("Failed to run {}", bin.display()))?;
            let start = Instant::now();
            loop {
                if let Some(status) = child.try_wait()? {
                    last_error = Some(anyhow::anyhow!("nats-server exited with {status}"));
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Ok(NatsServer {
                        child,
                        url: format!("nats://127.0.0.1:{port}"),
                        _store: store,
                    });
                }
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("nats-server did not listen on {port} within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- databases ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub enum TestDb {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The admin URL with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .context("TEST_DATABASE_URL has no scheme")?
        + 3;
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{host}/{name}?{q}"),
        None => format!("{host}/{name}"),
    })
}

impl TestDb {
    pub async fn create(backend: Backend) -> Result<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}/auth.db", dir.path().display());
                Ok(TestDb::Sqlite { url, _dir: dir })
            }
            Backend::Postgres => {
                let admin_url = admin_url();
                let name = format!("auth_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.with_context(
                    || {
                        format!(
                            "Failed to connect to PostgreSQL at {admin_url} (set TEST_DATABASE_URL)"
                        )
                    },
                )?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .context("Failed to create the test database")?;
                conn.close().await?;
                let url = with_database(&admin_url, &name)?;
                Ok(TestDb::Postgres {
                    url,
                    admin_url,
                    name,
                })
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres {
            admin_url, name, ..
        } = self
        else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop cannot await; a short-lived runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

// ---- the service ----

pub fn config(nats_url: &str, database_url: &str, relay: bool) -> Config {
    Config {
        common: CommonConfig {
            nats_url: nats_url.to_owned(),
            nats_user: None,
            nats_password: None,
            http_addr: "127.0.0.1:0".to_owned(),
            provision: true,
            shutdown_grace: Duration::from_secs(5),
        },
        database_url: database_url.to_owned(),
        outbox_relay: relay,
        access_token_ttl: Duration::from_secs(900),
        refresh_token_ttl: Duration::from_secs(3600),
        verification_ttl: Duration::from_secs(7 * 24 * 3600),
        reset_ttl: Duration::from_secs(1800),
        admin_emails: vec![ADMIN_EMAIL.to_owned()],
        signing_key_pem: None,
    }
}

/// One running service instance.
pub struct Running {
    pub http_port: u16,
    pub db: runtime::db::Database,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), auth::StartupError>>,
}

impl Running {
    pub async fn start(config: Config) -> Result<Running> {
        let app = Application::build(config)
            .await
            .context("Failed to build the app")?;
        let http_port = app.http_port();
        let db = app.database().clone();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
        Ok(Running {
            http_port,
            db,
            cancel,
            task,
        })
    }

    /// Signals shutdown and waits for the drain.
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the service did not stop within 30 s")???;
        Ok(())
    }
}

/// A test's world: NATS, a database, the service and a client.
pub struct TestApp {
    pub nats: NatsServer,
    pub db: TestDb,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub service: Option<Running>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Result<TestApp> {
        Self::spawn_with(backend, true).await
    }

    pub async fn spawn_with(backend: Backend, relay: bool) -> Result<TestApp> {
        init_logs();
        let nats = NatsServer::start().await?;
        let db = TestDb::create(backend).await?;
        let service = Running::start(config(&nats.url, db.url(), relay)).await?;
        let client = async_nats::connect(&nats.url).await?;
        let js = jetstream::new(client.clone());
        Ok(TestApp {
            nats,
            db,
            client,
            js,
            service: Some(service),
        })
    }

    pub fn service(&self) -> Result<&Running> {
        self.service.as_ref().context("the service is stopped")
    }

    /// Stops the running instance (if any) and starts a new one on the same NATS and
    /// database.
    pub async fn restart(&mut self, relay: bool) -> Result<()> {
        if let Some(running) = self.service.take() {
            running.stop().await?;
        }
        self.service = Some(Running::start(config(&self.nats.url, self.db.url(), relay)).await?);
        Ok(())
    }

    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(running) = self.service.take() {
            running.stop().await?;
        }
        Ok(())
    }

    /// Sends one request/reply message and decodes the reply.
    pub async fn rpc<B: Serialize, T: DeserializeOwned>(
        &self,
        subject: &'static str,
        request: &RpcRequest<B>,
    ) -> Result<RpcReply<T>> {
        let payload = contracts::wire::encode(request)?;
        let reply = tokio::time::timeout(
            Duration::from_secs(15),
            self.client.request(subject, payload.into()),
        )
        .await
        .with_context(|| format!("{subject} did not answer"))??;
        Ok(contracts::wire::decode(&reply.payload)?)
    }

    pub async fn register(&self, email: &str, display_name: &str) -> Result<RpcReply<User>> {
        self.rpc(
            contracts::subjects::auth::RPC_REGISTER,
            &RpcRequest::new(RegisterRequest {
                email: email.to_owned(),
                password: PASSWORD.to_owned(),
                display_name: display_name.to_owned(),
            }),
        )
        .await
    }

    /// Every `UserRegisteredV1` in the AUTH stream, with its `Nats-Msg-Id`, once the
    /// outbox is drained (so the count is final).
    pub async fn registered_events(
        &self,
    ) -> Result<Vec<(contracts::events::UserRegisteredV1, String)>> {
        self.events().await
    }

    /// Every event of type `E` in the AUTH stream, with its `Nats-Msg-Id`, once the
    /// outbox is drained (so the count is final).
    pub async fn events<E: DomainEvent>(&self) -> Result<Vec<(E, String)>> {
        let db = self.service()?.db.clone();
        eventually("the outbox to drain", Duration::from_secs(15), || {
            let db = db.clone();
            async move { Ok((runtime::outbox::backlog(&db).await? == 0).then_some(())) }
        })
        .await?;
        read_events(&self.js).await
    }
}

/// Reads the `UserRegisteredV1` events of the stream from the start.
pub async fn read_registered(
    js: &jetstream::Context,
) -> Result<Vec<(contracts::events::UserRegisteredV1, String)>> {
    read_events(js).await
}

/// Reads the events of type `E` from the start of the stream with a pull consumer.
pub async fn read_events<E: DomainEvent>(js: &jetstream::Context) -> Result<Vec<(E, String)>> {
    use futures::StreamExt;
    let stream = js.get_stream(contracts::subjects::AUTH_STREAM.name).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: E::SUBJECT.to_owned(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.fetch().max_messages(1000).messages().await?;
    let mut events = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(contracts::subjects::headers::NATS_MSG_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        events.push((contracts::wire::decode(&message.payload)?, msg_id));
    }
    Ok(events)
}

#[test]
fn database_urls_are_rewritten() -> Result<()> {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x")?,
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "y")?,
        "postgres://u:p@h/y?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "z")?,
        "postgres://h:5432/z"
    );
    Ok(())
}
