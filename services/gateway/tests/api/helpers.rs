//! Test harness: a real nats-server per test, stub responders standing in for the
//! services, a signing key of our own whose JWKS a stub `svc.auth.v1.jwks` serves, and
//! the gateway running in-process on a free port.
//!
//! The stub responders are plain subscriptions, invisible to discovery: [`spawn_app`]
//! puts the real services' route declarations in the gateway's route bucket first, as
//! if the gateway had discovered them before. [`spawn_discovering_app`] starts with an
//! empty bucket, for tests whose stub services ([`StubService`]) register as real NATS
//! micro services with route metadata.

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use async_nats::HeaderMap;
use base64::Engine;
use contracts::Role;
use contracts::api::{AccessClaims, Jwk, Jwks, Notification, TOKEN_AUDIENCE, TOKEN_ISSUER};
use contracts::rpc::{RpcReply, RpcRequest};
use contracts::subjects::{self, RPC_QUEUE_GROUP};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use futures::StreamExt;
use gateway::{Application, Config};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use runtime::config::CommonConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Installs tracing once: spans always reach an OpenTelemetry tracer (so trace context
/// is injected into NATS headers as in production); logs print only with `TEST_LOG=1`.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = provider.tracer("gateway-tests");
        let fmt = std::env::var("TEST_LOG").is_ok().then(|| {
            tracing_subscriber::fmt::layer()
                .compact()
                .with_test_writer()
        });
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info,async_nats=warn"))
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .with(fmt)
            .try_init();
    });
}

fn free_port() -> Result<u16> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn nats_server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("/tmp/natsbin/bin/nats-server")
}

/// A nats-server of our own, killed when dropped.
pub struct NatsServer {
    child: Child,
    pub url: String,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    fn spawn(port: u16, store: &std::path::Path) -> Result<Child> {
        Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (set NATS_SERVER_BIN)")
    }

    pub async fn start() -> Result<Self> {
        let store = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Self::spawn(port, store.path())?;
        let server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            _store: store,
        };
        server.wait_up().await?;
        Ok(server)
    }

    async fn wait_up(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = async_nats::connect(&self.url).await {
                // JetStream answers too, not just the socket.
                if async_nats::jetstream::new(c).query_account().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("nats-server did not come up on {}", self.url);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server and starts it again on the same port and store (every client
    /// sees a disconnect, then reconnects).
    pub async fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self._store.path())?;
        self.wait_up().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Ed25519 key signing access tokens, as auth would.
#[derive(Clone)]
pub struct Signer {
    encoding: EncodingKey,
    public: [u8; 32],
    pub kid: String,
}

impl Signer {
    /// A fresh key named `kid` (a forgery when another signer already uses that kid).
    pub fn new(kid: &str) -> Self {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key.to_pkcs8_der().expect("pkcs8");
        Signer {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            public: key.verifying_key().to_bytes(),
            kid: kid.to_owned(),
        }
    }

    /// The public key as auth's JWKS lists it.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.public),
            kid: self.kid.clone(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// A token for `user` valid `ttl_secs` from now (negative: already expired).
    pub fn token(&self, user: Uuid, role: Role, ttl_secs: i64) -> String {
        self.sign(&claims(user, role, ttl_secs))
    }
}

pub fn claims(user: Uuid, role: Role, ttl_secs: i64) -> AccessClaims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    AccessClaims {
        sub: user,
        role,
        iss: TOKEN_ISSUER.to_owned(),
        aud: TOKEN_AUDIENCE.to_owned(),
        iat: now,
        exp: now + ttl_secs,
        jti: Uuid::now_v7(),
    }
}

/// What a stub responder received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub headers: Option<HeaderMap>,
    pub request: RpcRequest<Value>,
}

/// A stand-in for one service endpoint.
#[derive(Clone)]
pub struct Stub {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    /// Waits until the stub has received `n` requests.
    pub async fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "stub saw {} of {n} requests",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Answers requests on `subject` (queue group of the services) with `handler`; `None`
/// from the handler means never answer.
pub async fn stub<F, Fut>(nats: &async_nats::Client, subject: &str, handler: F) -> Stub
where
    F: Fn(RpcRequest<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<RpcReply<Value>>> + Send + 'static,
{
    let mut sub = nats
        .queue_subscribe(subject.to_owned(), RPC_QUEUE_GROUP.to_owned())
        .await
        .expect("subscribe");
    round_trip(nats).await;
    let stub = Stub {
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let seen = stub.seen.clone();
    let nats = nats.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let request: RpcRequest<Value> =
                contracts::wire::decode(&msg.payload).expect("gateway sent a valid RpcRequest");
            seen.lock().expect("lock").push(Seen {
                headers: msg.headers.clone(),
                request: request.clone(),
            });
            let handler = handler.clone();
            let nats = nats.clone();
            tokio::spawn(async move {
                if let (Some(reply), Some(to)) = (handler(request).await, msg.reply) {
                    let bytes = contracts::wire::encode(&reply).expect("encode reply");
                    let _ = nats.publish(to, bytes.into()).await;
                }
            });
        }
    });
    stub
}

/// Returns once the server has processed everything this client sent before.
/// `Client::flush` only empties the socket buffer: a request from another connection
/// right after it can still find no subscriber. A message to ourselves comes back only
/// after the server handled the earlier `SUB`.
pub async fn round_trip(nats: &async_nats::Client) {
    let inbox = nats.new_inbox();
    let mut echo = nats.subscribe(inbox.clone()).await.expect("subscribe");
    nats.publish(inbox, bytes::Bytes::new())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(5), echo.next())
        .await
        .expect("echo within 5 s")
        .expect("echo");
}

/// A stub answering every request with the same reply.
pub async fn stub_reply(nats: &async_nats::Client, subject: &str, reply: RpcReply<Value>) -> Stub {
    stub(nats, subject, move |_| {
        let reply = reply.clone();
        async move { Some(reply) }
    })
    .await
}

/// The gateway under test with its surroundings.
pub struct TestApp {
    pub base: String,
    /// The nats-server every replica of this test connects to.
    pub nats_url: String,
    pub http: reqwest::Client,
    pub nats: async_nats::Client,
    pub signer: Signer,
    /// The key set the JWKS stub serves; tests may rotate it.
    pub jwks: Arc<Mutex<Jwks>>,
    pub cancel: CancellationToken,
    pub server: Option<tokio::task::JoinHandle<()>>,
    _nats_server: NatsServer,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A valid user token for `user`.
    pub fn token(&self, user: Uuid) -> String {
        self.signer.token(user, Role::User, 300)
    }

    pub fn get(&self, path: &str, user: Uuid) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(self.token(user))
    }

    pub fn post(&self, path: &str, user: Uuid) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(self.token(user))
    }

    /// Restarts the nats-server under every client's feet.
    pub async fn restart_nats(&mut self) {
        self._nats_server
            .restart()
            .await
            .expect("nats-server restarts");
    }

    /// Stops the gateway; true when it finished draining within 10 s.
    pub async fn stop(&mut self) -> bool {
        self.cancel.cancel();
        match self.server.take() {
            Some(server) => tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .is_ok_and(|r| r.is_ok()),
            None => true,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A gateway with test-friendly settings, changed further by `adjust`, that knows the
/// real services' routes from its route bucket.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn(true, adjust).await
}

/// A gateway that knows no route until it discovers services.
pub async fn spawn_discovering_app(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn(false, adjust).await
}

/// Puts the real services' declarations in the route bucket.
async fn seed_routes(nats: &async_nats::Client) {
    let js = async_nats::jetstream::new(nats.clone());
    let store = runtime::nats::provision_bucket(&js, subjects::buckets::ROUTES, Duration::ZERO)
        .await
        .expect("route bucket");
    for service in crate::fixture::services() {
        let raw = serde_json::to_vec(&service).expect("json");
        store.put(&service.name, raw.into()).await.expect("put");
    }
}

async fn spawn(seed: bool, adjust: impl FnOnce(&mut Config)) -> TestApp {
    init_tracing();
    let nats_server = NatsServer::start().await.expect("nats-server");
    let nats = async_nats::connect(&nats_server.url)
        .await
        .expect("connect");
    if seed {
        seed_routes(&nats).await;
    }

    let signer = Signer::new(&format!("k-{}", Uuid::now_v7()));
    let jwks = Arc::new(Mutex::new(Jwks {
        keys: vec![signer.jwk()],
    }));
    let served = jwks.clone();
    stub(&nats, subjects::auth::RPC_JWKS, move |_| {
        let jwks = served.lock().expect("lock").clone();
        async move { Some(RpcReply::ok(serde_json::to_value(jwks).expect("jwks json"))) }
    })
    .await;

    let mut config = Config::new(CommonConfig {
        nats_url: nats_server.url.clone(),
        nats_user: None,
        nats_password: None,
        http_addr: "127.0.0.1:0".to_owned(),
        provision: true,
        shutdown_grace: Duration::from_secs(5),
    });
    config.request_timeout = Duration::from_secs(2);
    config.discovery_window = Duration::from_millis(100);
    adjust(&mut config);
    let (base, cancel, server) = start_gateway(config).await;
    let test_app = TestApp {
        base,
        nats_url: nats_server.url.clone(),
        http: reqwest::Client::new(),
        nats,
        signer,
        jwks,
        cancel,
        server: Some(server),
        _nats_server: nats_server,
    };
    wait_ready(&test_app).await;
    test_app
}

/// Builds and runs a gateway in-process: its base URL, its stop token and its task.
async fn start_gateway(config: Config) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let app = Application::build(config).await.expect("gateway builds");
    let base = format!("http://127.0.0.1:{}", app.http_port());
    let cancel = CancellationToken::new();
    let server = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            app.run_until_stopped(cancel).await.expect("gateway runs");
        }
    });
    (base, cancel, server)
}

/// Another gateway process on the same nats-server (a second replica).
pub struct Replica {
    pub base: String,
    cancel: CancellationToken,
    _server: tokio::task::JoinHandle<()>,
}

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TestApp {
    /// Starts a second gateway next to this one, sharing its nats-server (and so its
    /// buckets and the JWKS stub), and waits until it is ready.
    pub async fn spawn_replica(&self) -> Replica {
        let mut config = Config::new(CommonConfig {
            nats_url: self.nats_url.clone(),
            nats_user: None,
            nats_password: None,
            http_addr: "127.0.0.1:0".to_owned(),
            provision: true,
            shutdown_grace: Duration::from_secs(5),
        });
        config.discovery_window = Duration::from_millis(100);
        let (base, cancel, server) = start_gateway(config).await;
        let replica = Replica {
            base,
            cancel,
            _server: server,
        };
        wait_ready_at(&self.http, &replica.base).await;
        replica
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A stand-in service registered as a real NATS micro service (`runtime::rpc::serve`,
/// its own connection, like a process of its own), whose endpoints declare routes.
/// Every endpoint answers 200 with `{service, version, subject, params}`.
pub struct StubService {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    nats: async_nats::Client,
}

impl StubService {
    pub async fn start(
        nats_url: &str,
        name: &'static str,
        version: &'static str,
        routes: Vec<(&'static str, runtime::routes::Route)>,
    ) -> StubService {
        let nats = async_nats::connect(nats_url).await.expect("connect");
        let endpoints = routes
            .into_iter()
            .map(|(subject, route)| {
                // Endpoint names may not contain dots; a test may leak a few bytes.
                let endpoint: &'static str = Box::leak(subject.replace('.', "_").into_boxed_str());
                runtime::rpc::endpoint(
                    endpoint,
                    subject,
                    move |req: RpcRequest<Value>| async move {
                        RpcReply::ok(serde_json::json!({
                            "service": name,
                            "version": version,
                            "subject": subject,
                            "params": req.params,
                        }))
                    },
                )
                .with_route(route)
            })
            .collect();
        let cancel = CancellationToken::new();
        let task = runtime::rpc::serve(
            nats.clone(),
            runtime::rpc::ServiceSpec {
                name,
                version,
                description: "test stub",
                endpoints,
                max_in_flight: 16,
                drain_timeout: Duration::from_secs(2),
            },
            cancel.clone(),
        )
        .await
        .expect("stub service starts");
        round_trip(&nats).await;
        StubService { cancel, task, nats }
    }

    /// Stops the service: its endpoints are gone once this returns.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        let _ = self.nats.drain().await;
    }
}

/// Polls `/readyz` until the gateway has its key set and buckets.
async fn wait_ready(app: &TestApp) {
    wait_ready_at(&app.http, &app.base).await;
}

async fn wait_ready_at(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a problem+json response with `status` and `code`; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    let status_seen = response.status().as_u16();
    if status_seen != status {
        let text = response.text().await.unwrap_or_default();
        panic!("expected {status}, got {status_seen}: {text}");
    }
    let ct = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], format!("/problems/{code}"));
    body
}

/// One Server-Sent Event as the client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The data of a `notification` event.
    pub fn notification(&self) -> Notification {
        assert_eq!(self.event.as_deref(), Some("notification"), "{self:?}");
        serde_json::from_str(&self.data).expect("notification JSON")
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Reads an SSE response event by event (a small parser of the `text/event-stream`
/// format: fields per line, events separated by a blank line, `:` comments).
pub struct SseReader {
    body: ByteStream,
    buffer: Vec<u8>,
    /// Comment lines (keep-alives) seen so far.
    pub comments: usize,
    ended: bool,
}

impl SseReader {
    /// Wraps a response after checking it is a 200 event stream.
    pub async fn new(response: reqwest::Response) -> Self {
        let status = response.status();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            panic!("expected a stream, got {status}: {text}");
        }
        let ct = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        SseReader {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            comments: 0,
            ended: false,
        }
    }

    /// Parses one complete block out of the buffer, if there is one. Blocks of comments
    /// only (keep-alives) yield `Some(None)`.
    fn parse_block(&mut self) -> Option<Option<SseEvent>> {
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
        let text = String::from_utf8(block).expect("UTF-8 stream");
        let mut event = SseEvent::default();
        let mut data: Vec<&str> = Vec::new();
        let mut is_event = false;
        for line in text.lines().filter(|l| !l.is_empty()) {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            is_event = true;
            match field {
                "id" => event.id = Some(value.to_owned()),
                "event" => event.event = Some(value.to_owned()),
                "data" => data.push(value),
                _ => {}
            }
        }
        event.data = data.join("\n");
        Some(is_event.then_some(event))
    }

    /// The next event (comments skipped) within `within`; `None` when the stream ended.
    pub async fn next_event_within(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(block) = self.parse_block() {
                if let Some(event) = block {
                    return Some(event);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => panic!("no event within {within:?}"),
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => panic!("stream failed: {e}"),
                Ok(None) => self.ended = true,
            }
        }
    }

    /// The next event within 5 s; panics when the stream ended.
    pub async fn next_event(&mut self) -> SseEvent {
        self.next_event_within(Duration::from_secs(5))
            .await
            .expect("stream ended early")
    }

    /// Asserts that no event arrives for `quiet` (comments are fine).
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            while let Some(block) = self.parse_block() {
                if let Some(event) = block {
                    panic!("unexpected event {event:?}");
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return,
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => panic!("stream failed: {e}"),
                Ok(None) => panic!("stream ended"),
            }
        }
    }

    /// Waits (at most `within`) until the server ends the stream, skipping what is left.
    pub async fn wait_end(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return true,
            }
        }
    }
}

/// A notification for tests (ids made now, so later ones compare greater).
pub fn notification(title: &str) -> Notification {
    serde_json::from_value(serde_json::json!({
        "id": Uuid::now_v7(),
        "kind": "rsvp_received",
        "title": title,
        "body": format!("body of {title}"),
        "created_at": "2030-01-01T10:00:00Z",
    }))
    .expect("notification")
}

/// A notification numbered `seq`, as push stores it.
pub fn notification_seq(title: &str, seq: u64) -> Notification {
    Notification {
        seq: Some(seq),
        ..notification(title)
    }
}

/// Publishes `n` as push does, on `user`'s live subject, and waits until the server has
/// handled it (so a later message from this client cannot overtake it).
pub async fn publish_live(nats: &async_nats::Client, user: Uuid, n: &Notification) {
    let payload = contracts::wire::encode(n).expect("encode");
    nats.publish(subjects::push::live_subject(&user), payload.into())
        .await
        .expect("publish");
    round_trip(nats).await;
}
