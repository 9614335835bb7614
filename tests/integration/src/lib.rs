//! Test harness for the mesh: real processes over real sockets.
//!
//! The integration tests under `tests/` drive the mesh the way production does: a real
//! `nats-server` with JetStream on a free port and its own store, the service binaries
//! (`mesh-auth`, `mesh-calendar`, `mesh-gateway`, …) as child processes, a fresh database
//! per service per test (SQLite file or a new PostgreSQL database), and HTTP through the
//! gateway. Nothing is mocked, so nothing here may share state between tests.
//!
//! - [`NatsServer`]: a private nats-server; stop it and start it again on the same port
//!   and store to test outages.
//! - [`TestDb`], [`Backend`], [`backends`]: one fresh database; one test body over both backends.
//! - [`ServiceProcess`]: one service binary with its env, free `HTTP_ADDR` and a log file.
//! - [`Mesh`] / [`MeshBuilder`]: nats + auth + calendar + gateway, ready to serve.
//! - [`NatsCluster`]: a JetStream cluster on loopback ports (R3 streams); kill a node
//!   and start it again.
//! - [`Fleet`] / [`FleetBuilder`]: replicas of the services against an external NATS
//!   (a cluster's URL list), for rolling restarts.
//! - [`Api`]: HTTP helpers against the gateway (register, login, any request).
//! - [`poll_until`], [`poll_until_ok`]: wait for an effect with a deadline, never `sleep`.
//! - For a service started in-process by its own tests: [`backend_tests!`] and
//!   [`run_scenario`] (a scenario per backend), [`common_config`], [`rpc`] (a request as
//!   the gateway sends it), [`expect_status`], [`expect_problem`], [`http_status`],
//!   [`consumer_info`], [`wait_settled`].
//! - [`smtp::SmtpServer`]: a real SMTP server (aiosmtpd); [`ics`]: its mails' `.ics` read
//!   with an RFC 5545 parser.
//! - [`free_port`], [`unique_email`].
//! - [`otlp::OtlpReceiver`]: an OTLP/HTTP trace receiver the services can export to;
//!   [`prom::Scrape`]: a parsed `/metrics`; [`sse::SseStream`]: the notification stream;
//!   [`smtp`]: a real SMTP server (aiosmtpd).
//!
//! Environment:
//! - `NATS_SERVER_BIN`: the nats-server to run (else `<repo>/.tools/bin/nats-server`,
//!   installed by `cargo xtask tools` / `cargo xtask test`).
//! - `TEST_DATABASE_URL`: admin URL of the PostgreSQL that test databases are created on
//!   (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! - `TEST_BACKENDS`: `sqlite`, `postgres` or both (comma list) for [`backends`].
//! - `TEST_LOG`: service logs are printed when a process handle drops (the test runner
//!   shows them only for failing tests): the last lines by default, everything with
//!   `TEST_LOG=1`, nothing with `TEST_LOG=0`. A service running inside the test process
//!   logs to the test output only with `TEST_LOG=1` ([`init_in_process_logs`]).
//! - `TEST_KEEP_DB=1`: keep the PostgreSQL test databases instead of dropping them.
//! - `MESH_TEST_REPORT`: a file [`report`] appends its lines to (`cargo xtask test` sets
//!   it and prints the file after the run).
//! - `MESH_BIN_DIR`: where the service binaries are (default: the profile directory of
//!   the running test, e.g. `target/debug`). Missing binaries are built once per test
//!   process with `cargo build --bins -p auth -p calendar -p gateway -p email -p push`.
//!
//! Child processes get `PR_SET_PDEATHSIG`: the kernel kills them when the *thread* that
//! spawned them ends, so a test binary that dies leaves no servers behind. Spawn (and
//! restart) from the test's own task or a runtime worker, not from `spawn_blocking`,
//! whose threads end when idle.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use contracts::rpc::{RpcReply, RpcRequest};
use contracts::{ErrorCode, Problem};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tempfile::TempDir;

pub use async_nats;
pub use reqwest::header::HeaderMap;
pub use reqwest::{Method, StatusCode};
pub mod ics;
pub mod otlp;
pub mod plans;
pub mod prom;
pub mod smtp;
pub mod sse;

/// Default admin URL of the PostgreSQL that test databases are created on.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long [`Mesh::start`] and [`Mesh::restart`] wait for every `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`ServiceProcess::terminate`] and [`NatsServer::stop`] wait after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Interval between two attempts of [`poll_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// Paths and binaries
// ---------------------------------------------------------------------------------------

/// The repository root (this crate lives in `<root>/tests/integration`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The directory holding the service binaries: `$MESH_BIN_DIR`, else the profile
/// directory of the running test (`<target>/debug/deps/<test>` → `<target>/debug`),
/// else `$CARGO_TARGET_DIR/debug` or `<repo>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESH_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|n| n == "deps")
        && let Some(profile) = deps.parent()
    {
        return profile.to_path_buf();
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    };
    target.join("debug")
}

/// Packages whose binaries the harness builds when one is missing.
const SERVICE_PACKAGES: &[&str] = &[
    "auth",
    "calendar",
    "gateway",
    "email",
    "push",
    "hospital",
    "meshctl",
    "provision",
];

/// Build the service binaries once per test process (the first caller builds, the
/// others wait for it).
fn build_binaries_once(bin_dir: &Path) -> Result<()> {
    static BUILD: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILD
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(repo_root()).args(["build", "--bins"]);
            for package in SERVICE_PACKAGES {
                cmd.args(["-p", package]);
            }
            if bin_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            if let Some(target) = bin_dir.parent() {
                cmd.arg("--target-dir").arg(target);
            }
            eprintln!("integration: service binaries missing; running {cmd:?}");
            match cmd.status() {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("{cmd:?} failed: {status}")),
                Err(err) => Err(format!("Failed to run {cmd:?}: {err}")),
            }
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Path of a service binary (`"auth"` and `"mesh-auth"` both name `mesh-auth`), built
/// first if it is missing.
pub fn service_binary(name: &str) -> Result<PathBuf> {
    let binary = binary_name(name);
    let dir = bin_dir();
    let path = dir.join(&binary);
    if !path.is_file() {
        build_binaries_once(&dir)?;
    }
    if !path.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

fn binary_name(name: &str) -> String {
    if name.starts_with("mesh-") || name == "meshctl" {
        name.to_owned()
    } else {
        format!("mesh-{name}")
    }
}

/// The nats-server the tests run: `$NATS_SERVER_BIN`, else `<repo>/.tools/bin/nats-server`.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("NATS_SERVER_BIN={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    let bin = repo_root().join(".tools/bin/nats-server");
    if bin.is_file() {
        return Ok(bin);
    }
    bail!(
        "no nats-server found: {} is missing and NATS_SERVER_BIN is unset. \
         Run the tests with `cargo xtask test`, or install the tools once with `cargo xtask tools`. \
         (Debian's nats-server is too old, and the one on port 4222 is shared: tests never use it.)",
        bin.display()
    )
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago. Never hands out the same port
/// twice in one test process, so parallel tests do not collide with each other.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("cannot bind 127.0.0.1:0 to find a free port");
        let mut seen = handed_out.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(port) {
            return port;
        }
    }
}

/// `<prefix>-<random>@example.com`: an email no other test registered.
pub fn unique_email(prefix: &str) -> String {
    format!(
        "{prefix}-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Poll `check` every [`POLL_INTERVAL`] until it returns `Some`, or fail after `timeout`
/// with an error naming `what` was waited for.
///
/// ```ignore
/// let event = poll_until(Duration::from_secs(5), "the RSVP event", || async {
///     fetch_event(&js).await
/// }).await?;
/// ```
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`poll_until`] for a check that fails with an error until the effect shows: the
/// last error is part of the timeout error.
pub async fn poll_until_ok<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// The whole file as text (lossy), or an empty string.
fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `lines` lines of `text`.
pub fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How much of a process log to print when its handle drops (see the crate docs).
enum LogDump {
    Nothing,
    Tail(usize),
    All,
}

fn log_dump_policy() -> LogDump {
    match std::env::var("TEST_LOG").as_deref() {
        Ok("0") | Ok("false") | Ok("off") => LogDump::Nothing,
        Ok("") | Err(_) => LogDump::Tail(80),
        Ok(_) => LogDump::All,
    }
}

fn dump_log(label: &str, path: &Path) {
    let text = read_lossy(path);
    let shown = match log_dump_policy() {
        LogDump::Nothing => return,
        LogDump::Tail(n) => tail_lines(&text, n),
        LogDump::All => text,
    };
    if shown.trim().is_empty() {
        return;
    }
    eprintln!(
        "----- {label} log ({}) -----\n{shown}\n----- end of {label} log -----",
        path.display()
    );
}

/// Open (append) a log file for a child's stdout and stderr.
fn log_stdio(path: &Path) -> Result<(Stdio, Stdio)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("Failed to open {}", path.display()))?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

/// A figure a test measured, for the run's summary (e.g. the mail counts of the kill -9
/// journey): printed to stderr (shown for a failing test, or with `--nocapture`) and
/// appended to the file named by `MESH_TEST_REPORT`, which `cargo xtask test` prints
/// after the run, so it shows in CI output whether the test passed or not.
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("MESH_TEST_REPORT").filter(|p| !p.is_empty()) {
        append_line(Path::new(&path), line);
    }
}

fn append_line(path: &Path, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// SIGTERM the child, wait up to `timeout` for it; SIGKILL and error if it hangs.
async fn terminate_child(child: &mut Child, timeout: Duration, label: &str) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    sys::signal(child.id(), libc::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{label} did not exit within {timeout:?} after SIGTERM; killed it");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The POSIX calls the harness needs; the only `unsafe` in this crate.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// Send `signal` to `pid`.
    pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        // SAFETY: kill(2) takes plain integers.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Have the kernel SIGKILL the child when the thread that spawned it dies, so a test
    /// binary killed by a timeout leaves no servers behind.
    pub fn die_with_parent(cmd: &mut Command) {
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// NatsServer
// ---------------------------------------------------------------------------------------

/// A private `nats-server -js` on a free port with its own store directory. Killed on drop.
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    // Last field: removed after the child is gone.
    _dir: TempDir,
}

impl NatsServer {
    /// Start a nats-server with JetStream on a free port; returns once a client can use
    /// JetStream.
    pub async fn start() -> Result<Self> {
        let bin = nats_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("mesh-nats-")
            .tempdir()
            .context("Failed to create a tempdir for nats-server")?;
        let mut server = NatsServer {
            bin,
            port: free_port(),
            store: dir.path().join("jetstream"),
            log: dir.path().join("nats-server.log"),
            child: None,
            _dir: dir,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Start the server again on the same port with the same store (after [`Self::stop`]
    /// or [`Self::kill`]): streams, consumers and KV buckets survive.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("nats-server on port {} is still running", self.port);
        }
        append_line(
            &self.log,
            &format!(
                "===== integration: starting nats-server on {} =====",
                self.port
            ),
        );
        let (stdout, stderr) = log_stdio(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(&self.store)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("Failed to start {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no attempt yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "nats-server exited during startup ({status}):\n{}",
                    tail_lines(&self.log_text(), 30)
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                match self.jetstream_usable().await {
                    Ok(()) => return Ok(()),
                    Err(err) => last_err = format!("{err:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server on port {} not usable within {timeout:?} ({last_err}):\n{}",
                    self.port,
                    tail_lines(&self.log_text(), 30)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn jetstream_usable(&self) -> Result<()> {
        let client = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(self.url()))
            .await
            .context("connect timed out")??;
        let js = async_nats::jetstream::new(client);
        tokio::time::timeout(Duration::from_secs(2), js.query_account())
            .await
            .context("JetStream account info timed out")??;
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM and wait for the server to exit (it flushes its store). Idempotent.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child, STOP_TIMEOUT, "nats-server").await?;
        }
        Ok(())
    }

    /// SIGKILL: a crash, no flushing.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// A new client connection.
    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("Failed to connect to {}", self.url()))
    }

    /// A JetStream context on a new client connection.
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            dump_log("nats-server", &self.log);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------

/// Which database the services run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backends a test body runs over: both, or those named in `TEST_BACKENDS`.
///
/// ```ignore
/// for backend in backends() {
///     let mesh = Mesh::start(backend).await?;
///     // …
/// }
/// ```
pub fn backends() -> Vec<Backend> {
    parse_backends(std::env::var("TEST_BACKENDS").ok().as_deref())
}

fn parse_backends(spec: Option<&str>) -> Vec<Backend> {
    let all = vec![Backend::Sqlite, Backend::Postgres];
    let Some(spec) = spec.filter(|s| !s.trim().is_empty()) else {
        return all;
    };
    let picked: Vec<Backend> = all
        .into_iter()
        .filter(|b| {
            spec.split(',')
                .any(|s| s.trim().eq_ignore_ascii_case(b.name()))
        })
        .collect();
    assert!(
        !picked.is_empty(),
        "TEST_BACKENDS={spec:?} names no backend (use sqlite, postgres or both)"
    );
    picked
}

/// The admin URL test databases are created through: `TEST_DATABASE_URL` or
/// [`DEFAULT_TEST_DATABASE_URL`].
pub fn test_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// `url` with its database name replaced by `database` (query string kept).
pub fn with_database(url: &str, database: &str) -> Result<String> {
    let scheme_end = url.find("://").context("database URL has no scheme")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{database}{query}", &base[..authority_end]))
}

/// One fresh database: a SQLite file, or a new PostgreSQL database dropped at the end.
pub struct TestDb {
    url: String,
    backend: Backend,
    /// For PostgreSQL: (admin URL, database name) to drop it.
    postgres: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A new SQLite file in `dir` (named `test-<random>.db`).
    pub fn sqlite(dir: impl AsRef<Path>) -> Result<Self> {
        let name = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self::sqlite_named(dir, &name)
    }

    /// The SQLite file `<dir>/<name>.db`, created empty if absent.
    pub fn sqlite_named(dir: impl AsRef<Path>, name: &str) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Failed to create {}", dir.display()))?;
        let path = dir.join(format!("{name}.db"));
        // An empty file is a valid empty database; creating it spares the service
        // from needing `create_if_missing`.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("Failed to create {}", path.display()))?;
        Ok(TestDb {
            url: format!("sqlite://{}", path.display()),
            backend: Backend::Sqlite,
            postgres: None,
            _dir: None,
        })
    }

    /// A new SQLite file in a tempdir owned by the returned value.
    pub fn sqlite_temp() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("mesh-db-").tempdir()?;
        let mut db = Self::sqlite(dir.path())?;
        db._dir = Some(dir);
        Ok(db)
    }

    /// A fresh database on `backend` that owns its storage: a SQLite file in its own
    /// tempdir ([`Self::sqlite_temp`]) or a new PostgreSQL database ([`Self::postgres`]).
    pub async fn new(backend: Backend) -> Result<Self> {
        match backend {
            Backend::Sqlite => Self::sqlite_temp(),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A new database `mesh_test_<uuid>` on the server of [`test_database_url`].
    pub async fn postgres() -> Result<Self> {
        use sqlx::Connection;

        let admin = test_database_url();
        let name = format!("mesh_test_{}", uuid::Uuid::new_v4().simple());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: Result<()> = async {
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .with_context(|| format!("Failed to connect to {admin} (TEST_DATABASE_URL)"))?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("Failed to create database {name}"))?;
                conn.close().await.ok();
                Ok(())
            }
            .await;
            match result {
                Ok(()) => break,
                // Concurrent CREATE DATABASE can trip over template1 being in use.
                Err(_) if attempt < 5 => {
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await
                }
                Err(err) => return Err(err),
            }
        }
        Ok(TestDb {
            url: with_database(&admin, &name)?,
            backend: Backend::Postgres,
            postgres: Some((admin, name)),
            _dir: None,
        })
    }

    /// A fresh database on `backend`; SQLite files go to `dir` as `<name>.db`.
    pub async fn create(backend: Backend, dir: &Path, name: &str) -> Result<Self> {
        match backend {
            Backend::Sqlite => Self::sqlite_named(dir, name),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// The `DATABASE_URL` for a service.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        if std::env::var("TEST_KEEP_DB").is_ok_and(|v| v == "1") {
            eprintln!("integration: keeping database {name}");
            return;
        }
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with
        // its own small runtime does the DROP, and we wait for it a bounded time.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        use sqlx::Connection;
                        let mut conn = sqlx::PgConnection::connect(&admin).await?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await?;
                        conn.close().await.ok();
                        Ok(())
                    })
                });
            if let Err(err) = result {
                eprintln!("integration: could not drop database {name}: {err:#}");
            }
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------------------
// Services in-process: scenarios, requests over NATS, replies, consumers
// ---------------------------------------------------------------------------------------

/// With `TEST_LOG=1`, the logs of a service running inside the test process go to the
/// test's output under `service`'s name. Set up once per test binary (one service each).
pub fn init_in_process_logs(service: &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        ONCE.call_once(|| std::mem::forget(runtime::telemetry::init(service)));
    }
}

/// Runs one backend's copy of a scenario: skipped (and passing) when `TEST_BACKENDS`
/// leaves `backend` out, else with [`init_in_process_logs`] for `service`.
pub async fn run_scenario<F, Fut>(
    service: &'static str,
    backend: Backend,
    scenario: F,
) -> Result<()>
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    if !backends().contains(&backend) {
        eprintln!("skipped: TEST_BACKENDS leaves out {backend}");
        return Ok(());
    }
    init_in_process_logs(service);
    scenario(backend).await
}

/// One test module per scenario with one `#[tokio::test]` per backend, each running
/// the scenario through [`run_scenario`]. A service's test helpers wrap it in their own
/// `both_backends!`:
///
/// ```ignore
/// integration::backend_tests!("calendar-test"; [sqlite => Sqlite, postgres => Postgres];
///     creates_an_event, cancels_an_event);
/// // → mod creates_an_event { async fn sqlite() …; async fn postgres() … } …
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($service:expr; $backends:tt; $($name:ident),* $(,)?) => {$(
        $crate::backend_tests!(@scenario $service; $backends; $name);
    )*};
    (@scenario $service:expr; [$($test:ident => $backend:ident),+ $(,)?]; $name:ident) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    $crate::run_scenario($service, $crate::Backend::$backend, super::$name).await
                }
            )+
        }
    };
}

/// The settings every service shares, for one started inside a test: `nats_url`, HTTP
/// on a port the kernel picks (the service reports it), provisioning on, a 5 s grace.
pub fn common_config(nats_url: &str) -> runtime::config::CommonConfig {
    runtime::config::CommonConfig {
        nats_url: nats_url.to_owned(),
        nats_user: None,
        nats_password: None,
        http_addr: "127.0.0.1:0".to_owned(),
        provision: true,
        shutdown_grace: Duration::from_secs(5),
    }
}

/// Sends `request` to `subject` the way the gateway does (NATS request/reply, wire
/// encoding) and decodes the `RpcReply<T>`; fails when no reply comes within `timeout`.
pub async fn rpc<B: Serialize, T: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    request: &RpcRequest<B>,
    timeout: Duration,
) -> Result<RpcReply<T>> {
    let payload = contracts::wire::encode(request)?;
    let reply = tokio::time::timeout(timeout, client.request(subject.to_owned(), payload.into()))
        .await
        .with_context(|| format!("{subject}: no reply in time"))?
        .with_context(|| format!("{subject}: request failed"))?;
    contracts::wire::decode(&reply.payload).with_context(|| format!("{subject}: bad reply"))
}

/// The body of a success reply with exactly `status`; anything else is an error.
pub fn expect_status<T: fmt::Debug>(reply: RpcReply<T>, status: u16) -> Result<T> {
    match reply {
        RpcReply::Ok { status: s, body } if s == status => Ok(body),
        other => bail!("expected {status}, got {other:?}"),
    }
}

/// The problem of an error reply with `code` (and that code's status); anything else is
/// an error.
pub fn expect_problem<T: fmt::Debug>(reply: RpcReply<T>, code: ErrorCode) -> Result<Problem> {
    match reply {
        RpcReply::Err(p) if p.code == code => {
            anyhow::ensure!(p.status == code.status(), "{code} with status {}", p.status);
            Ok(p)
        }
        other => bail!("expected {code}, got {other:?}"),
    }
}

/// `GET path` over plain HTTP/1.0 on `127.0.0.1:port` (a service's `/healthz` or
/// `/readyz`); returns the status code.
pub async fn http_status(port: u16, path: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response: {text}"))
}

/// The state of durable `durable` on `stream`.
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<async_nats::jetstream::consumer::Info> {
    let s = js.get_stream(stream).await?;
    Ok(s.consumer_info(durable).await?)
}

/// Waits until a durable has settled (acked or terminated) every message it has.
pub async fn wait_settled(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
    timeout: Duration,
) -> Result<async_nats::jetstream::consumer::Info> {
    poll_until(
        timeout,
        &format!("{durable} to settle every message"),
        || async {
            let info = consumer_info(js, stream, durable).await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// ServiceProcess
// ---------------------------------------------------------------------------------------

/// Configuration variables of the mesh services: never inherited from the shell running
/// the tests, only taken from the env a test passes.
const MESH_ENV_VARS: &[&str] = &[
    "NATS_URL",
    "HTTP_ADDR",
    "DATABASE_URL",
    "OUTBOX_RELAY",
    "LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "AUTH_ACCESS_TOKEN_TTL_SECS",
    "AUTH_ADMIN_EMAILS",
    "GATEWAY_REQUEST_TIMEOUT_MS",
];

/// One service binary running as a child process, with its output in a log file.
/// Killed on drop (and its log printed, see the crate docs).
pub struct ServiceProcess {
    name: String,
    binary: PathBuf,
    env: HashMap<String, String>,
    http_addr: String,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    // Last field: removed after the child is gone.
    _dir: TempDir,
}

impl ServiceProcess {
    /// Spawn `name` (`"auth"` or `"mesh-auth"`) with `env` on top of the test's own
    /// environment. `HTTP_ADDR` gets a free port unless `env` sets it; `RUST_LOG`
    /// defaults to `info`. Does not wait: see [`Self::wait_ready`].
    pub fn spawn(name: &str, env: HashMap<String, String>) -> Result<Self> {
        Self::spawn_binary(service_binary(name)?, env)
    }

    /// [`Self::spawn`] for any executable that follows the service conventions
    /// (`HTTP_ADDR`, `/readyz`, clean exit on SIGTERM).
    pub fn spawn_binary(binary: PathBuf, env: HashMap<String, String>) -> Result<Self> {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "service".to_owned());
        let mut env = env;
        let http_addr = env
            .entry("HTTP_ADDR".to_owned())
            .or_insert_with(|| format!("127.0.0.1:{}", free_port()))
            .clone();
        if std::env::var_os("RUST_LOG").is_none() {
            env.entry("RUST_LOG".to_owned())
                .or_insert_with(|| "info".to_owned());
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .context("Failed to create a tempdir for the service log")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut process = ServiceProcess {
            name,
            binary,
            env,
            http_addr,
            log: dir.path().join("service.log"),
            child: None,
            http,
            _dir: dir,
        };
        process.respawn()?;
        Ok(process)
    }

    /// Start the binary again with the same env, port and log file (after
    /// [`Self::terminate`] or [`Self::kill`]). Does not wait for readiness.
    pub fn respawn(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is still running", self.name);
        }
        append_line(
            &self.log,
            &format!(
                "===== integration: starting {} on {} =====",
                self.name, self.http_addr
            ),
        );
        let (stdout, stderr) = log_stdio(&self.log)?;
        let mut cmd = Command::new(&self.binary);
        for var in MESH_ENV_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(&self.env)
            .current_dir(self._dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("Failed to start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Poll `GET /readyz` until it answers 200. Fails early, with the log tail, if the
    /// process exits; after `timeout` with the last answer and the log tail.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.as_mut() {
                None => bail!("{} is not running", self.name),
                Some(child) => {
                    if let Some(status) = child.try_wait()? {
                        self.child = None;
                        bail!(
                            "{} exited before it was ready ({status}); last lines of its log:\n{}",
                            self.name,
                            tail_lines(&self.log_text(), 40)
                        );
                    }
                }
            }
            let last = match self.http.get(self.url("/readyz")).send().await {
                Ok(resp) if resp.status() == StatusCode::OK => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    format!("{status}: {}", resp.text().await.unwrap_or_default())
                }
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {timeout:?} (last /readyz: {last}); last lines of its log:\n{}",
                    self.name,
                    tail_lines(&self.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One `GET /readyz`: true on 200.
    pub async fn is_ready(&self) -> bool {
        matches!(self.http.get(self.url("/readyz")).send().await, Ok(r) if r.status() == StatusCode::OK)
    }

    /// SIGTERM, then wait up to [`STOP_TIMEOUT`] for a clean exit; returns the exit
    /// status. A process that hangs is killed and reported as an error.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        self.terminate_within(STOP_TIMEOUT).await
    }

    pub async fn terminate_within(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        terminate_child(&mut child, timeout, &self.name).await
    }

    /// SIGKILL (a crash: nothing drained) and reap.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Binary name, e.g. `mesh-auth`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `host:port` of its HTTP listener.
    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    /// `http://<HTTP_ADDR><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// The env it was started with (on top of the test's own).
    pub fn env(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// Change one variable for the next [`Self::respawn`].
    pub fn set_env(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.env.insert(key.into(), value.into());
    }

    /// Everything it wrote to stdout and stderr so far, across restarts.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.kill();
        dump_log(&self.name, &self.log);
    }
}

// ---------------------------------------------------------------------------------------
// Mesh
// ---------------------------------------------------------------------------------------

/// A service the mesh can start: (name, needs a database).
const MESH_SERVICES: &[(&str, bool)] = &[
    ("auth", true),
    ("calendar", true),
    ("email", true),
    ("push", true),
    ("hospital", true),
    ("gateway", false),
];

/// Started by [`Mesh::start`] unless the builder adds or removes some.
const DEFAULT_MESH_SERVICES: &[&str] = &["auth", "calendar", "gateway"];

/// Configures a [`Mesh`] before it starts.
pub struct MeshBuilder {
    backend: Backend,
    services: Vec<String>,
    env: HashMap<String, HashMap<String, String>>,
    common_env: HashMap<String, String>,
    ready_timeout: Duration,
}

impl MeshBuilder {
    /// Set `key=value` for one service (overrides the harness defaults, `DATABASE_URL` too).
    pub fn with_env(mut self, service: &str, key: &str, value: &str) -> Self {
        self.env
            .entry(service.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Set `key=value` for every service.
    pub fn with_env_all(mut self, key: &str, value: &str) -> Self {
        self.common_env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Also start `service` (e.g. `"email"`).
    pub fn with_service(mut self, service: &str) -> Self {
        if !self.services.iter().any(|s| s == service) {
            self.services.push(service.to_owned());
        }
        self
    }

    /// Do not start `service`.
    pub fn without_service(mut self, service: &str) -> Self {
        self.services.retain(|s| s != service);
        self
    }

    /// How long to wait for every `/readyz` (default [`READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Start nats-server, a database per service that needs one, then the services
    /// (gateway last), and wait until every one is ready.
    pub async fn start(self) -> Result<Mesh> {
        for name in self.services.iter().chain(self.env.keys()) {
            if !MESH_SERVICES.iter().any(|(s, _)| s == name) {
                bail!("unknown service {name:?}");
            }
        }
        let dir = tempfile::Builder::new().prefix("mesh-test-").tempdir()?;
        let nats = NatsServer::start().await?;
        let mut mesh = Mesh {
            services: Vec::new(),
            dbs: HashMap::new(),
            nats,
            backend: self.backend,
            ready_timeout: self.ready_timeout,
            _dir: dir,
        };
        // In MESH_SERVICES order, so the gateway starts last and stops first.
        for (name, needs_db) in MESH_SERVICES {
            if !self.services.iter().any(|s| s == name) {
                continue;
            }
            let mut env = self.common_env.clone();
            env.insert("NATS_URL".into(), mesh.nats.url());
            if *needs_db {
                let db = TestDb::create(self.backend, mesh._dir.path(), name).await?;
                env.insert("DATABASE_URL".into(), db.url().to_owned());
                mesh.dbs.insert((*name).to_owned(), db);
            }
            if let Some(overrides) = self.env.get(*name) {
                env.extend(overrides.clone());
            }
            let process = ServiceProcess::spawn(name, env)?;
            mesh.services.push(((*name).to_owned(), process));
        }
        let deadline = Instant::now() + self.ready_timeout;
        for (_, process) in &mut mesh.services {
            let left = deadline.saturating_duration_since(Instant::now());
            process
                .wait_ready(left.max(Duration::from_millis(100)))
                .await?;
        }
        Ok(mesh)
    }
}

/// nats-server + services on fresh databases, all ready. Everything is killed on drop
/// (services first); use [`Mesh::shutdown`] to stop gracefully and check exit codes.
pub struct Mesh {
    // Field order is drop order: services, then databases, then nats, then files.
    services: Vec<(String, ServiceProcess)>,
    dbs: HashMap<String, TestDb>,
    nats: NatsServer,
    backend: Backend,
    ready_timeout: Duration,
    _dir: TempDir,
}

impl Mesh {
    /// A builder for auth + calendar + gateway on `backend`.
    pub fn builder(backend: Backend) -> MeshBuilder {
        MeshBuilder {
            backend,
            services: DEFAULT_MESH_SERVICES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            env: HashMap::new(),
            common_env: HashMap::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Start auth + calendar + gateway on `backend` with default settings.
    pub async fn start(backend: Backend) -> Result<Mesh> {
        Self::builder(backend).start().await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn nats(&self) -> &NatsServer {
        &self.nats
    }

    pub fn nats_mut(&mut self) -> &mut NatsServer {
        &mut self.nats
    }

    /// Names of the services started, in start order.
    pub fn service_names(&self) -> Vec<&str> {
        self.services.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The process of `service` (`"auth"`, …). Panics if it was not started.
    pub fn service(&self, service: &str) -> &ServiceProcess {
        self.services
            .iter()
            .find(|(n, _)| n == service)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("service {service:?} is not part of this mesh"))
    }

    /// The process of `service`, mutably. Panics if it was not started.
    pub fn service_mut(&mut self, service: &str) -> &mut ServiceProcess {
        self.services
            .iter_mut()
            .find(|(n, _)| n == service)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("service {service:?} is not part of this mesh"))
    }

    pub fn auth(&self) -> &ServiceProcess {
        self.service("auth")
    }

    pub fn calendar(&self) -> &ServiceProcess {
        self.service("calendar")
    }

    pub fn gateway(&self) -> &ServiceProcess {
        self.service("gateway")
    }

    /// `http://<gateway HTTP_ADDR>`.
    pub fn gateway_url(&self) -> String {
        self.gateway().url("")
    }

    /// An [`Api`] client for the gateway.
    pub fn api(&self) -> Api {
        Api::new(self.gateway_url())
    }

    /// The `DATABASE_URL` of `service`, if it has a database.
    pub fn database_url(&self, service: &str) -> Option<&str> {
        self.dbs.get(service).map(TestDb::url)
    }

    /// A NATS client connected to the mesh's server.
    pub async fn nats_client(&self) -> Result<async_nats::Client> {
        self.nats.client().await
    }

    /// SIGTERM `service` and wait for it to exit; returns its exit status.
    pub async fn stop_service(&mut self, service: &str) -> Result<ExitStatus> {
        self.service_mut(service).terminate().await
    }

    /// Spawn `service` again with the same env, port and database; does not wait for
    /// readiness (it may not become ready while NATS is down).
    pub fn start_service(&mut self, service: &str) -> Result<()> {
        self.service_mut(service).respawn()
    }

    /// Wait until `service` answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, service: &str) -> Result<()> {
        let timeout = self.ready_timeout;
        self.service_mut(service).wait_ready(timeout).await
    }

    /// Terminate `service` (it must exit cleanly), spawn it again with the same env and
    /// database, and wait until it is ready.
    pub async fn restart(&mut self, service: &str) -> Result<()> {
        let status = self.stop_service(service).await?;
        if !status.success() {
            bail!("{service} exited with {status} on SIGTERM");
        }
        self.start_service(service)?;
        self.wait_ready(service).await
    }

    /// Stop everything gracefully: services in reverse start order (gateway first), then
    /// nats. Errors if a service does not exit cleanly on SIGTERM.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut failures = Vec::new();
        for (name, process) in self.services.iter_mut().rev() {
            if !process.is_running() {
                continue;
            }
            match process.terminate().await {
                Ok(status) if status.success() => {}
                Ok(status) => failures.push(format!("{name} exited with {status}")),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        self.nats.stop().await?;
        if !failures.is_empty() {
            bail!("unclean shutdown: {}", failures.join("; "));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// NatsCluster
// ---------------------------------------------------------------------------------------

/// One node of a [`NatsCluster`].
struct ClusterNode {
    name: String,
    port: u16,
    /// The nats-server command line (a config file and its overrides).
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// The committed server configuration of the compose deployment: one node's settings
/// (JetStream, the cluster, lame duck mode) and every service's user and permissions
/// (`auth.conf`, included from it).
pub fn compose_nats_config() -> PathBuf {
    repo_root().join("compose/nats/nats.conf")
}

/// The development password of a mesh NATS user in `compose/nats/auth.conf`.
pub fn compose_nats_password(user: &str) -> String {
    format!("{user}-nats-dev")
}

/// A JetStream cluster of nats-servers on loopback ports (client and route port free,
/// a store directory per node, every node routing to all), for replicated (R3)
/// streams: each node from a config file of its own ([`Self::start`]), or from the
/// committed compose config with command-line overrides ([`Self::start_from_compose`]). Nodes can be killed and started again on the same ports and
/// stores to test node loss. Everything is killed on drop.
pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<ClusterNode>,
    /// User and password of the harness's own connections, when the servers require
    /// them.
    credentials: Option<(String, String)>,
    // Last field: removed after the children are gone.
    _dir: TempDir,
}

impl NatsCluster {
    /// Start `size` nodes (named `n1`, `n2`, …) from a config file of their own (no
    /// authentication) and wait until JetStream answers through every one of them (a
    /// meta leader is elected).
    pub async fn start(size: usize) -> Result<Self> {
        if size == 0 {
            bail!("a cluster needs at least one node");
        }
        let dir = tempfile::Builder::new()
            .prefix("mesh-nats-cluster-")
            .tempdir()
            .context("Failed to create a tempdir for the cluster")?;
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("    nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut nodes = Vec::with_capacity(size);
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let port = free_port();
            let store = dir.path().join(&name).join("jetstream");
            std::fs::create_dir_all(&store)?;
            let config = dir.path().join(&name).join("nats.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{\n    store_dir: \"{}\"\n}}\n\
                     cluster {{\n    name: mesh\n    listen: 127.0.0.1:{route_port}\n    routes: [\n{routes}\n    ]\n}}\n",
                    store.display()
                ),
            )?;
            nodes.push(ClusterNode {
                log: dir.path().join(&name).join("nats-server.log"),
                name,
                port,
                args: vec!["-c".into(), config.display().to_string()],
                child: None,
            });
        }
        Self::run(nodes, None, dir).await
    }

    /// Start `size` nodes from the committed compose configuration
    /// ([`compose_nats_config`]: its JetStream, cluster and lame-duck settings and its
    /// users and permissions), overriding on the command line only what differs on
    /// loopback, exactly as the file's header describes: the server name, the client,
    /// monitoring and route ports, the store directory and the routes. The harness
    /// connects as `user` (its development password); services need their own
    /// `NATS_USER` / `NATS_PASSWORD`, and streams come from `mesh-provision`.
    pub async fn start_from_compose(size: usize, user: &str) -> Result<Self> {
        if size == 0 {
            bail!("a cluster needs at least one node");
        }
        let config = compose_nats_config();
        anyhow::ensure!(config.exists(), "{} is missing", config.display());
        let dir = tempfile::Builder::new()
            .prefix("mesh-nats-compose-")
            .tempdir()
            .context("Failed to create a tempdir for the cluster")?;
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(size);
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let port = free_port();
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store)?;
            let args = vec![
                "-c".to_owned(),
                config.display().to_string(),
                "--server_name".to_owned(),
                name.clone(),
                "-sd".to_owned(),
                store.display().to_string(),
                "-a".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                port.to_string(),
                "-m".to_owned(),
                free_port().to_string(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route_port}"),
                "--routes".to_owned(),
                routes.clone(),
            ];
            nodes.push(ClusterNode {
                log: dir.path().join(&name).join("nats-server.log"),
                name,
                port,
                args,
                child: None,
            });
        }
        let credentials = Some((user.to_owned(), compose_nats_password(user)));
        Self::run(nodes, credentials, dir).await
    }

    async fn run(
        nodes: Vec<ClusterNode>,
        credentials: Option<(String, String)>,
        dir: TempDir,
    ) -> Result<Self> {
        let size = nodes.len();
        let mut cluster = NatsCluster {
            bin: nats_server_binary()?,
            nodes,
            credentials,
            _dir: dir,
        };
        for node in 0..size {
            cluster.spawn(node)?;
        }
        for node in 0..size {
            cluster.wait_usable(node, Duration::from_secs(60)).await?;
        }
        cluster.wait_replicated(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Waits until a stream with one replica per node can be created (every node has
    /// joined the JetStream meta group), then deletes that probe stream.
    async fn wait_replicated(&self, timeout: Duration) -> Result<()> {
        let js = self.jetstream().await?;
        let replicas = self.nodes.len();
        poll_until_ok(timeout, "a replicated probe stream", || {
            let js = js.clone();
            async move {
                js.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "HARNESS_PROBE".into(),
                    subjects: vec!["harness.probe".into()],
                    num_replicas: replicas,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await?;
                js.delete_stream("HARNESS_PROBE").await?;
                Ok(())
            }
        })
        .await
    }

    fn node(&self, node: usize) -> Result<&ClusterNode> {
        self.nodes
            .get(node)
            .with_context(|| format!("the cluster has no node {node}"))
    }

    fn node_mut(&mut self, node: usize) -> Result<&mut ClusterNode> {
        self.nodes
            .get_mut(node)
            .with_context(|| format!("the cluster has no node {node}"))
    }

    fn spawn(&mut self, node: usize) -> Result<()> {
        let bin = self.bin.clone();
        let n = self.node_mut(node)?;
        append_line(
            &n.log,
            &format!(
                "===== integration: starting nats-server {} on {} =====",
                n.name, n.port
            ),
        );
        let (stdout, stderr) = log_stdio(&n.log)?;
        let mut cmd = Command::new(&bin);
        cmd.args(&n.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        sys::die_with_parent(&mut cmd);
        n.child = Some(
            cmd.spawn()
                .with_context(|| format!("Failed to start {}", bin.display()))?,
        );
        Ok(())
    }

    /// Waits until `$JS.API.INFO` answers through `node`.
    async fn wait_usable(&mut self, node: usize, timeout: Duration) -> Result<()> {
        let url = self.url(node)?;
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.node_mut(node)?;
            if let Some(child) = n.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                n.child = None;
                bail!(
                    "nats-server {} exited during startup ({status}):\n{}",
                    n.name,
                    tail_lines(&read_lossy(&n.log), 30)
                );
            }
            let last_err = match jetstream_info(&url, self.credentials.as_ref()).await {
                Ok(()) => return Ok(()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                let n = self.node(node)?;
                bail!(
                    "nats-server {} not usable within {timeout:?} ({last_err}):\n{}",
                    n.name,
                    tail_lines(&read_lossy(&n.log), 30)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// `nats://127.0.0.1:<port>` of one node (0-based).
    pub fn url(&self, node: usize) -> Result<String> {
        Ok(format!("nats://127.0.0.1:{}", self.node(node)?.port))
    }

    /// Every node's URL, comma-separated: a service's `NATS_URL`.
    pub fn url_list(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server name of `node` (`n1`, …), as stream cluster info reports it.
    pub fn name(&self, node: usize) -> Result<&str> {
        Ok(&self.node(node)?.name)
    }

    pub fn is_running(&mut self, node: usize) -> bool {
        match self.nodes.get_mut(node).and_then(|n| n.child.as_mut()) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL one node: a crash, nothing flushed, no lame duck mode.
    pub fn kill(&mut self, node: usize) -> Result<()> {
        let n = self.node_mut(node)?;
        if let Some(mut child) = n.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM one node and wait for it to exit.
    pub async fn stop(&mut self, node: usize) -> Result<()> {
        let n = self.node_mut(node)?;
        let label = format!("nats-server {}", n.name);
        if let Some(mut child) = n.child.take() {
            terminate_child(&mut child, STOP_TIMEOUT, &label).await?;
        }
        Ok(())
    }

    /// Start a stopped or killed node again on its ports and store; returns once
    /// JetStream answers through it. Whether its stream replicas caught up is
    /// [`Self::wait_stream_current`].
    pub async fn start_again(&mut self, node: usize) -> Result<()> {
        if self.is_running(node) {
            bail!("nats-server {} is still running", self.node(node)?.name);
        }
        self.spawn(node)?;
        self.wait_usable(node, Duration::from_secs(60)).await
    }

    /// Waits until `stream` has a leader and every other node is a current replica
    /// (none offline, none lagging); returns the stream info.
    pub async fn wait_stream_current(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<async_nats::jetstream::stream::Info> {
        let js = self.jetstream().await?;
        let expected = self.nodes.len().saturating_sub(1);
        poll_until_ok(
            timeout,
            &format!("every replica of {stream} to be current"),
            || {
                let js = js.clone();
                async move {
                    let mut s = js.get_stream(stream).await?;
                    let info = s.info().await?.clone();
                    let cluster = info.cluster.clone().context("no cluster info")?;
                    let current = cluster
                        .replicas
                        .iter()
                        .filter(|r| r.current && !r.offline && r.lag.unwrap_or(0) == 0)
                        .count();
                    if cluster.leader.is_none() || current < expected {
                        bail!(
                            "{stream}: leader {:?}, replicas {:?}",
                            cluster.leader,
                            cluster.replicas
                        );
                    }
                    Ok(info)
                }
            },
        )
        .await
    }

    /// A client that may use every node (and fails over between them).
    pub async fn client(&self) -> Result<async_nats::Client> {
        let urls: Vec<String> = (0..self.nodes.len())
            .map(|n| self.url(n))
            .collect::<Result<_>>()?;
        connect_options(self.credentials.as_ref())
            .connection_timeout(Duration::from_secs(5))
            .connect(urls)
            .await
            .with_context(|| format!("Failed to connect to {}", self.url_list()))
    }

    /// A client of every node connected as `user` with its development password (for a
    /// cluster started from the compose config).
    pub async fn client_as(&self, user: &str) -> Result<async_nats::Client> {
        let urls: Vec<String> = (0..self.nodes.len())
            .map(|n| self.url(n))
            .collect::<Result<_>>()?;
        connect_options(Some(&(user.to_owned(), compose_nats_password(user))))
            .connection_timeout(Duration::from_secs(5))
            .connect(urls)
            .await
            .with_context(|| format!("Failed to connect to {} as {user}", self.url_list()))
    }

    /// A JetStream context on a new [`Self::client`].
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }

    /// Everything `node` logged so far.
    pub fn log_text(&self, node: usize) -> String {
        self.nodes
            .get(node)
            .map(|n| read_lossy(&n.log))
            .unwrap_or_default()
    }
}

fn connect_options(credentials: Option<&(String, String)>) -> async_nats::ConnectOptions {
    match credentials {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        None => async_nats::ConnectOptions::new(),
    }
}

/// One `$JS.API.INFO` through the server at `url` (no fail-over).
async fn jetstream_info(url: &str, credentials: Option<&(String, String)>) -> Result<()> {
    let client = tokio::time::timeout(
        Duration::from_secs(2),
        connect_options(credentials).connect(url),
    )
    .await
    .context("connect timed out")??;
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(2), js.query_account())
        .await
        .context("JetStream account info timed out")??;
    Ok(())
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Like a service's log: the test runner shows it only for a failing test.
        for n in &self.nodes {
            dump_log(&format!("nats-server {}", n.name), &n.log);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fleet
// ---------------------------------------------------------------------------------------

/// Configures a [`Fleet`] before it starts.
pub struct FleetBuilder {
    backend: Backend,
    nats_url: String,
    replicas: Vec<(String, usize)>,
    env: HashMap<String, HashMap<String, String>>,
    common_env: HashMap<String, String>,
    ready_timeout: Duration,
}

impl FleetBuilder {
    /// Run `replicas` processes of `service` (`"auth"`, …, `"gateway"`).
    pub fn service(mut self, service: &str, replicas: usize) -> Self {
        self.replicas.retain(|(s, _)| s != service);
        self.replicas.push((service.to_owned(), replicas));
        self
    }

    /// Set `key=value` for every replica of one service.
    pub fn with_env(mut self, service: &str, key: &str, value: &str) -> Self {
        self.env
            .entry(service.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Set `key=value` for every process.
    pub fn with_env_all(mut self, key: &str, value: &str) -> Self {
        self.common_env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// How long to wait for each `/readyz` (default [`READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// A database per service that needs one (shared by its replicas), then the
    /// processes one at a time, each ready before the next starts: first replicas in
    /// dependency order (gateways last), then the second replicas, and so on.
    pub async fn start(self) -> Result<Fleet> {
        for (name, _) in &self.replicas {
            if !MESH_SERVICES.iter().any(|(s, _)| s == name) {
                bail!("unknown service {name:?}");
            }
        }
        let dir = tempfile::Builder::new().prefix("mesh-fleet-").tempdir()?;
        let mut fleet = Fleet {
            processes: Vec::new(),
            dbs: HashMap::new(),
            ready_timeout: self.ready_timeout,
            _dir: dir,
        };
        let mut envs = Vec::new();
        for (name, needs_db) in MESH_SERVICES {
            let Some((_, replicas)) = self.replicas.iter().find(|(s, _)| s == name) else {
                continue;
            };
            let mut env = self.common_env.clone();
            env.insert("NATS_URL".into(), self.nats_url.clone());
            if *needs_db {
                let db = TestDb::create(self.backend, fleet._dir.path(), name).await?;
                env.insert("DATABASE_URL".into(), db.url().to_owned());
                fleet.dbs.insert((*name).to_owned(), db);
            }
            if let Some(overrides) = self.env.get(*name) {
                env.extend(overrides.clone());
            }
            envs.push(((*name).to_owned(), *replicas, env));
        }
        // One process at a time: on a cluster, services creating the same replicated
        // stream at once make the losers' requests time out (nats-server answers only
        // one of concurrent identical creates), and a service may treat that as fatal.
        let max_replicas = envs.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
        for round in 0..max_replicas {
            for (name, replicas, env) in &envs {
                if round < *replicas {
                    let mut process = ServiceProcess::spawn(name, env.clone())?;
                    process.wait_ready(self.ready_timeout).await?;
                    fleet
                        .processes
                        .push((format!("{name}#{}", round + 1), process));
                }
            }
        }
        // Dependency order (gateways last), replicas of one service side by side.
        fleet.processes.sort_by_key(|(label, _)| {
            let service = label.split('#').next().unwrap_or_default();
            (
                MESH_SERVICES
                    .iter()
                    .position(|(s, _)| *s == service)
                    .unwrap_or(usize::MAX),
                label.clone(),
            )
        });
        Ok(fleet)
    }
}

/// Replicas of the mesh services against an external NATS (e.g. a [`NatsCluster`]),
/// each service on one fresh database shared by its replicas. Processes are labelled
/// `<service>#<n>` (`calendar#2`). Everything is killed on drop; [`Fleet::shutdown`]
/// stops gracefully and checks exit codes.
pub struct Fleet {
    // Field order is drop order: processes, then databases, then files.
    processes: Vec<(String, ServiceProcess)>,
    dbs: HashMap<String, TestDb>,
    ready_timeout: Duration,
    _dir: TempDir,
}

impl Fleet {
    /// A builder for services connecting to `nats_url` (one URL, or a comma list of a
    /// cluster's nodes) on `backend`; add services with [`FleetBuilder::service`].
    pub fn builder(backend: Backend, nats_url: impl Into<String>) -> FleetBuilder {
        FleetBuilder {
            backend,
            nats_url: nats_url.into(),
            replicas: Vec::new(),
            env: HashMap::new(),
            common_env: HashMap::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Every process label in dependency order (`auth#1`, `auth#2`, …, `gateway#2`).
    pub fn labels(&self) -> Vec<String> {
        self.processes.iter().map(|(l, _)| l.clone()).collect()
    }

    /// The process labelled `label`.
    pub fn process(&self, label: &str) -> Result<&ServiceProcess> {
        self.processes
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, p)| p)
            .with_context(|| format!("no process {label:?} in this fleet"))
    }

    /// The process labelled `label`, mutably.
    pub fn process_mut(&mut self, label: &str) -> Result<&mut ServiceProcess> {
        self.processes
            .iter_mut()
            .find(|(l, _)| l == label)
            .map(|(_, p)| p)
            .with_context(|| format!("no process {label:?} in this fleet"))
    }

    /// Every replica of `service`.
    pub fn replicas(&self, service: &str) -> Vec<&ServiceProcess> {
        self.processes
            .iter()
            .filter(|(l, _)| l.split('#').next() == Some(service))
            .map(|(_, p)| p)
            .collect()
    }

    /// `http://<HTTP_ADDR>` of every gateway replica.
    pub fn gateway_urls(&self) -> Vec<String> {
        self.replicas("gateway")
            .into_iter()
            .map(|p| p.url(""))
            .collect()
    }

    /// The `DATABASE_URL` of `service`, if it has a database.
    pub fn database_url(&self, service: &str) -> Option<&str> {
        self.dbs.get(service).map(TestDb::url)
    }

    /// A rolling-restart step: SIGTERM the process labelled `label` (it must exit
    /// cleanly within [`STOP_TIMEOUT`]), start a new process of the same binary with the
    /// same env, port and database, and wait until it is ready.
    pub async fn restart(&mut self, label: &str) -> Result<()> {
        let timeout = self.ready_timeout;
        let process = self.process_mut(label)?;
        let status = process.terminate().await?;
        if !status.success() {
            bail!("{label} exited with {status} on SIGTERM");
        }
        process.respawn()?;
        process.wait_ready(timeout).await
    }

    /// Stop everything gracefully in reverse dependency order (gateways first). Errors
    /// if a process does not exit cleanly on SIGTERM.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut failures = Vec::new();
        for (label, process) in self.processes.iter_mut().rev() {
            if !process.is_running() {
                continue;
            }
            match process.terminate().await {
                Ok(status) if status.success() => {}
                Ok(status) => failures.push(format!("{label} exited with {status}")),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        if !failures.is_empty() {
            bail!("unclean shutdown: {}", failures.join("; "));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Api
// ---------------------------------------------------------------------------------------

/// Route of `POST` register on the gateway.
pub const REGISTER_PATH: &str = "/v1/auth/register";
/// Route of `POST` login on the gateway.
pub const LOGIN_PATH: &str = "/v1/auth/login";

/// Tokens from a login.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    /// The whole response body.
    pub body: Value,
}

/// A JSON-over-HTTP client for the gateway's public API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for `base_url` (e.g. `http://127.0.0.1:34567`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client with default TLS settings");
        Api {
            base: base_url.into().trim_end_matches('/').to_owned(),
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The underlying client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base_url + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send `method path` with an optional bearer token and JSON body; returns status,
    /// headers and the body as JSON (`Null` when empty, a JSON string when not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        json: Option<&Value>,
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        self.request_with_headers(method, path, token, json, &[])
            .await
    }

    /// [`Self::request`] with extra headers (e.g. `Idempotency-Key`).
    pub async fn request_with_headers(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        json: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(json) = json {
            req = req.json(json);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path} failed"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {path}: reading the body failed"))?;
        Ok((status, headers, parse_body(&text)))
    }

    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        json: &Value,
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        self.request(Method::POST, path, token, Some(json)).await
    }

    pub async fn put(
        &self,
        path: &str,
        token: Option<&str>,
        json: &Value,
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        self.request(Method::PUT, path, token, Some(json)).await
    }

    pub async fn patch(
        &self,
        path: &str,
        token: Option<&str>,
        json: &Value,
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        self.request(Method::PATCH, path, token, Some(json)).await
    }

    pub async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        self.request(Method::DELETE, path, token, None).await
    }

    /// Register a user; errors unless the gateway answers 2xx. Returns the body (the user).
    pub async fn register(&self, email: &str, password: &str, display_name: &str) -> Result<Value> {
        let body = serde_json::json!({
            "email": email,
            "password": password,
            "display_name": display_name,
        });
        let (status, _, body) = self.post(REGISTER_PATH, None, &body).await?;
        if !status.is_success() {
            bail!("register {email} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Log in; errors unless the gateway answers 2xx with both tokens.
    pub async fn login(&self, email: &str, password: &str) -> Result<Tokens> {
        let body = serde_json::json!({ "email": email, "password": password });
        let (status, _, body) = self.post(LOGIN_PATH, None, &body).await?;
        if !status.is_success() {
            bail!("login {email} answered {status}: {body}");
        }
        let field = |name: &str| -> Result<String> {
            body.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("login response has no {name}: {body}"))
        };
        Ok(Tokens {
            access: field("access_token")?,
            refresh: field("refresh_token")?,
            body: body.clone(),
        })
    }

    /// Register a new user with a unique email and log in; returns (user, tokens).
    pub async fn new_user(&self, display_name: &str) -> Result<(Value, Tokens)> {
        let email = unique_email(&display_name.to_lowercase().replace(' ', "-"));
        let password = "correct horse battery staple";
        let user = self.register(&email, password, display_name).await?;
        let tokens = self.login(&email, password).await?;
        Ok((user, tokens))
    }
}

fn parse_body(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

// ---------------------------------------------------------------------------------------
// Tests of the pure helpers
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path() -> Result<()> {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x")?,
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "x")?,
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x")?, "postgres://h/x");
        assert_eq!(
            with_database("postgres://h:5432", "z")?,
            "postgres://h:5432/z"
        );
        assert_eq!(
            with_database("postgres://h?a=b", "x")?,
            "postgres://h/x?a=b"
        );
        assert!(with_database("nonsense", "x").is_err());
        Ok(())
    }

    #[test]
    fn backends_parse() {
        assert_eq!(
            parse_backends(None),
            vec![Backend::Sqlite, Backend::Postgres]
        );
        assert_eq!(
            parse_backends(Some("")),
            vec![Backend::Sqlite, Backend::Postgres]
        );
        assert_eq!(parse_backends(Some("sqlite")), vec![Backend::Sqlite]);
        assert_eq!(parse_backends(Some(" Postgres ")), vec![Backend::Postgres]);
        assert_eq!(
            parse_backends(Some("postgres,sqlite")),
            vec![Backend::Sqlite, Backend::Postgres]
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn binary_names() {
        assert_eq!(binary_name("auth"), "mesh-auth");
        assert_eq!(binary_name("mesh-gateway"), "mesh-gateway");
    }

    #[test]
    fn bodies_parse() {
        assert_eq!(parse_body(""), Value::Null);
        assert_eq!(parse_body("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(parse_body("oops"), Value::String("oops".into()));
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }

    #[tokio::test]
    async fn poll_until_returns_and_times_out() -> Result<()> {
        let mut n = 0;
        let got = poll_until(Duration::from_secs(2), "n to reach 3", || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await?;
        assert_eq!(got, 3);

        let err = poll_until(Duration::from_millis(120), "never", || async { None::<()> })
            .await
            .expect_err("must time out");
        assert!(err.to_string().contains("never"), "{err}");

        let err = poll_until_ok(Duration::from_millis(120), "ok", || async {
            Err::<(), _>(anyhow!("still broken"))
        })
        .await
        .expect_err("must time out");
        assert!(format!("{err:#}").contains("still broken"), "{err:#}");
        Ok(())
    }

    #[test]
    fn sqlite_db_is_created() -> Result<()> {
        let db = TestDb::sqlite_temp()?;
        let path = db.url().strip_prefix("sqlite://").context("sqlite url")?;
        assert!(Path::new(path).is_file());
        assert_eq!(db.backend(), Backend::Sqlite);
        Ok(())
    }

    // The tests below run real processes: they need the tools `cargo xtask test` installs
    // (nats-server) and the PostgreSQL of TEST_DATABASE_URL.

    #[tokio::test]
    async fn nats_server_survives_a_restart_with_its_store() -> Result<()> {
        let mut nats = NatsServer::start().await?;
        let js = nats.jetstream().await?;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "HARNESS".into(),
            subjects: vec!["harness.>".into()],
            ..Default::default()
        })
        .await?;
        js.publish("harness.one", "1".into()).await?.await?;

        nats.stop().await?;
        assert!(!nats.is_running());
        assert!(TcpStream::connect(("127.0.0.1", nats.port())).is_err());
        nats.start_again().await?;

        let js = nats.jetstream().await?;
        let mut stream = js.get_stream("HARNESS").await?;
        assert_eq!(stream.info().await?.state.messages, 1);
        assert!(nats.log_text().contains("starting nats-server"));
        Ok(())
    }

    #[tokio::test]
    async fn postgres_test_db_is_fresh_and_dropped() -> Result<()> {
        use sqlx::Connection;
        let db = TestDb::postgres().await?;
        let name = db.url().rsplit('/').next().context("db name")?.to_owned();
        assert!(name.starts_with("mesh_test_"), "{name}");
        let mut conn = sqlx::PgConnection::connect(db.url()).await?;
        let (tables,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&mut conn)
        .await?;
        assert_eq!(tables, 0);
        conn.close().await?;
        drop(db);

        let mut admin = sqlx::PgConnection::connect(&test_database_url()).await?;
        let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
        assert_eq!(left, 0, "database {name} was not dropped");
        Ok(())
    }

    /// A stand-in service: answers /readyz, exits 0 on SIGTERM.
    const FAKE_SERVICE: &str = r#"#!/usr/bin/env python3
import http.server, os, signal, sys
host, port = os.environ["HTTP_ADDR"].rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/healthz", "/readyz") else 404)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((host, int(port)), H)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("fake up with FAKE_SETTING=" + os.environ.get("FAKE_SETTING", ""), flush=True)
server.serve_forever()
"#;

    #[tokio::test]
    async fn service_process_lifecycle() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let bin = dir.path().join("mesh-fake");
        std::fs::write(&bin, FAKE_SERVICE)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;

        let env = HashMap::from([("FAKE_SETTING".to_owned(), "one".to_owned())]);
        let mut svc = ServiceProcess::spawn_binary(bin, env)?;
        svc.wait_ready(Duration::from_secs(20)).await?;
        assert!(svc.is_ready().await);
        assert_eq!(svc.name(), "mesh-fake");
        let status = svc.terminate().await?;
        assert!(status.success(), "{status}");
        assert!(!svc.is_running());

        svc.set_env("FAKE_SETTING", "two");
        svc.respawn()?;
        svc.wait_ready(Duration::from_secs(20)).await?;
        svc.kill()?;
        assert!(!svc.is_ready().await);
        let log = svc.log_text();
        assert!(
            log.contains("FAKE_SETTING=one") && log.contains("FAKE_SETTING=two"),
            "{log}"
        );

        // A process that dies before it is ready is reported with its log.
        let dir2 = tempfile::tempdir()?;
        let crasher = dir2.path().join("mesh-crash");
        std::fs::write(&crasher, "#!/bin/sh\necho boom: bad config\nexit 3\n")?;
        std::fs::set_permissions(&crasher, std::fs::Permissions::from_mode(0o755))?;
        let mut bad = ServiceProcess::spawn_binary(crasher, HashMap::new())?;
        let err = bad
            .wait_ready(Duration::from_secs(20))
            .await
            .expect_err("must fail");
        assert!(format!("{err:#}").contains("boom: bad config"), "{err:#}");
        Ok(())
    }
}
