//! `cargo xtask run`: the whole mesh on this machine, one nats-server and the services,
//! with state under `<repo>/.mesh` (JetStream store, SQLite files, logs).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{sys, tools};

/// One service the runner knows how to start.
pub struct ServiceSpec {
    pub name: &'static str,
    pub binary: &'static str,
    pub http_addr: &'static str,
    /// Gets `DATABASE_URL=sqlite://.mesh/data/<name>.db`.
    pub database: bool,
}

/// Every service of the mesh, in start order (the gateway last, so it stops first).
pub const KNOWN_SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "auth",
        binary: "mesh-auth",
        http_addr: "127.0.0.1:8081",
        database: true,
    },
    ServiceSpec {
        name: "calendar",
        binary: "mesh-calendar",
        http_addr: "127.0.0.1:8082",
        database: true,
    },
    ServiceSpec {
        name: "email",
        binary: "mesh-email",
        http_addr: "127.0.0.1:8083",
        database: true,
    },
    ServiceSpec {
        name: "push",
        binary: "mesh-push",
        http_addr: "127.0.0.1:8084",
        database: true,
    },
    ServiceSpec {
        name: "hospital",
        binary: "mesh-hospital",
        http_addr: "127.0.0.1:8085",
        database: true,
    },
    ServiceSpec {
        name: "gateway",
        binary: "mesh-gateway",
        http_addr: "127.0.0.1:8080",
        database: false,
    },
];

/// The services `run` starts unless `--services` says otherwise.
pub const DEFAULT_SERVICES: &[&str] = &["auth", "calendar", "email", "push", "hospital", "gateway"];

const DEFAULT_NATS_PORT: u16 = 14222;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RunOptions {
    pub release: bool,
    pub build: bool,
    pub services: Vec<String>,
}

impl RunOptions {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut opts = RunOptions {
            release: false,
            build: true,
            services: DEFAULT_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--release" => opts.release = true,
                "--no-build" => opts.build = false,
                "--services" => {
                    let list = it
                        .next()
                        .context("--services needs a comma-separated list")?;
                    opts.services = parse_service_list(list)?;
                }
                other => match other.strip_prefix("--services=") {
                    Some(list) => opts.services = parse_service_list(list)?,
                    None => bail!("unknown option for `run`: {other}"),
                },
            }
        }
        Ok(opts)
    }
}

fn parse_service_list(list: &str) -> Result<Vec<String>> {
    let names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for name in &names {
        if !KNOWN_SERVICES.iter().any(|s| s.name == name) {
            let known: Vec<&str> = KNOWN_SERVICES.iter().map(|s| s.name).collect();
            bail!("unknown service {name:?}; known: {}", known.join(", "));
        }
    }
    if names.is_empty() {
        bail!("--services is empty");
    }
    Ok(names)
}

/// A child process with its log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, wait until `deadline`, then SIGKILL.
    fn stop(&mut self, deadline: Instant) {
        if self.exited().is_some() {
            return;
        }
        let _ = sys::kill(self.child.id(), sys::SIGTERM);
        loop {
            if let Some(status) = self.exited() {
                println!("xtask: {} stopped ({status})", self.name);
                return;
            }
            if Instant::now() >= deadline || sys::stop_requests() > 1 {
                println!("xtask: {} did not stop in time; killing it", self.name);
                let _ = sys::kill(self.child.id(), sys::SIGKILL);
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a file, for reporting a crash.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET path` over a fresh HTTP/1.1 connection; the status code, if any answer came.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let sock: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).ok()?;
    // "HTTP/1.1 200 OK"
    status_line.split_whitespace().nth(1)?.parse().ok()
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Copy a child's output line by line into its log file and, prefixed, to our stdout.
fn tee(name: &str, source: impl Read + Send + 'static, log: Arc<Mutex<File>>) {
    let prefix = format!("[{name:>8}] ");
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{line}");
            }
            println!("{prefix}{line}");
        }
    });
}

fn shutdown(services: &mut [Proc], nats: &mut Proc) {
    println!("xtask: stopping the mesh");
    let deadline = Instant::now() + STOP_TIMEOUT;
    // Reverse start order: the gateway first, so no new requests reach the others.
    for proc in services.iter_mut().rev() {
        proc.stop(deadline);
    }
    nats.stop(Instant::now() + STOP_TIMEOUT);
}

pub fn run(root: &Path, opts: RunOptions) -> Result<()> {
    let nats_bin = tools::ensure_nats_server(root)?;
    println!(
        "xtask: {} ({})",
        tools::nats_server_version(&nats_bin)?,
        nats_bin.display()
    );

    let profile = if opts.release { "release" } else { "debug" };
    if opts.build {
        let mut build = crate::cargo();
        build
            .current_dir(root)
            .args(["build", "--workspace", "--bins"]);
        if opts.release {
            build.arg("--release");
        }
        crate::run_checked(&mut build)?;
    }
    let bin_dir = crate::target_dir(root).join(profile);

    let mesh = root.join(".mesh");
    let (nats_dir, data_dir, log_dir) = (mesh.join("nats"), mesh.join("data"), mesh.join("logs"));
    for dir in [&nats_dir, &data_dir, &log_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Failed to create {}", dir.display()))?;
    }

    let port: u16 = match std::env::var("MESH_NATS_PORT") {
        Ok(p) => p
            .parse()
            .with_context(|| format!("MESH_NATS_PORT={p} is not a port"))?,
        Err(_) => DEFAULT_NATS_PORT,
    };
    if !port_free(port) {
        bail!("port {port} is taken; set MESH_NATS_PORT to a free port");
    }
    let selected: Vec<&ServiceSpec> = KNOWN_SERVICES
        .iter()
        .filter(|s| opts.services.iter().any(|n| n == s.name))
        .collect();
    for spec in &selected {
        if !port_free(
            spec.http_addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        ) {
            bail!(
                "{} is taken; {} cannot listen there",
                spec.http_addr,
                spec.name
            );
        }
        let bin = bin_dir.join(spec.binary);
        if !bin.is_file() {
            bail!(
                "{} is missing; build it with `cargo build --workspace --bins`",
                bin.display()
            );
        }
    }

    sys::install_stop_handler();

    let nats_log = log_dir.join("nats.log");
    let nats_log_file = File::create(&nats_log)?;
    let nats_child = Command::new(&nats_bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&nats_dir)
        .stdin(Stdio::null())
        .stdout(nats_log_file.try_clone()?)
        .stderr(nats_log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("Failed to start {}", nats_bin.display()))?;
    let mut nats = Proc {
        name: "nats".into(),
        child: nats_child,
        log: nats_log,
    };
    let nats_url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = nats.exited() {
            bail!(
                "nats-server exited early ({status}):\n{}",
                tail(&nats.log, 40)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "nats-server did not listen on {port} within 15 s:\n{}",
                tail(&nats.log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "xtask: nats-server at {nats_url} (store {})",
        nats_dir.display()
    );

    let mut services: Vec<Proc> = Vec::new();
    let outcome = start_services(
        &selected,
        &bin_dir,
        &data_dir,
        &log_dir,
        &nats_url,
        &mut services,
    )
    .and_then(|()| wait_ready(&selected, &mut services, &mut nats))
    .and_then(|stopped| {
        if stopped {
            return Ok(());
        }
        match selected.iter().find(|s| s.name == "gateway") {
            Some(gw) => println!("Mesh is up: gateway at http://{}", gw.http_addr),
            None => println!("Mesh is up (no gateway started)"),
        }
        println!("xtask: Ctrl-C stops it; logs in {}", log_dir.display());
        supervise(&mut services, &mut nats)
    });
    shutdown(&mut services, &mut nats);
    outcome
}

fn start_services(
    selected: &[&ServiceSpec],
    bin_dir: &Path,
    data_dir: &Path,
    log_dir: &Path,
    nats_url: &str,
    services: &mut Vec<Proc>,
) -> Result<()> {
    for spec in selected {
        let log_path = log_dir.join(format!("{}.log", spec.name));
        let log = Arc::new(Mutex::new(File::create(&log_path)?));
        let mut cmd = Command::new(bin_dir.join(spec.binary));
        cmd.env("NATS_URL", nats_url)
            .env("HTTP_ADDR", spec.http_addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: Ctrl-C reaches only xtask, which stops the children in order.
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if std::env::var_os("LOG_FORMAT").is_none() {
            cmd.env("LOG_FORMAT", "pretty");
        }
        if spec.database {
            cmd.env(
                "DATABASE_URL",
                format!(
                    "sqlite://{}",
                    data_dir.join(format!("{}.db", spec.name)).display()
                ),
            );
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("Failed to start {}", spec.binary))?;
        if let Some(out) = child.stdout.take() {
            tee(spec.name, out, log.clone());
        }
        if let Some(err) = child.stderr.take() {
            tee(spec.name, err, log);
        }
        println!(
            "xtask: started {} (pid {}) on {}",
            spec.name,
            child.id(),
            spec.http_addr
        );
        services.push(Proc {
            name: spec.name.to_owned(),
            child,
            log: log_path,
        });
    }
    Ok(())
}

fn check_alive(services: &mut [Proc], nats: &mut Proc) -> Result<()> {
    for proc in services.iter_mut().chain(std::iter::once(nats)) {
        if let Some(status) = proc.exited() {
            // Let the tee threads write the last lines before reading the log.
            std::thread::sleep(Duration::from_millis(200));
            bail!(
                "{} exited unexpectedly ({status}); last lines of {}:\n{}",
                proc.name,
                proc.log.display(),
                tail(&proc.log, 40)
            );
        }
    }
    Ok(())
}

/// Poll every `/readyz` until 200. Ok(true) when a stop signal came first.
fn wait_ready(selected: &[&ServiceSpec], services: &mut [Proc], nats: &mut Proc) -> Result<bool> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pending: Vec<&ServiceSpec> = selected.to_vec();
    while !pending.is_empty() {
        if sys::stop_requests() > 0 {
            return Ok(true);
        }
        check_alive(services, nats)?;
        pending.retain(|spec| {
            let ready = http_status(spec.http_addr, "/readyz") == Some(200);
            if ready {
                println!("xtask: {} is ready", spec.name);
            }
            !ready
        });
        if Instant::now() >= deadline {
            let names: Vec<&str> = pending.iter().map(|s| s.name).collect();
            bail!(
                "not ready after {} s: {}",
                READY_TIMEOUT.as_secs(),
                names.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(false)
}

fn supervise(services: &mut [Proc], nats: &mut Proc) -> Result<()> {
    while sys::stop_requests() == 0 {
        check_alive(services, nats)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
