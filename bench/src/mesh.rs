//! The mesh under test, assembled from the integration harness's parts.
//!
//! [`integration::Mesh`] starts one replica of each service from the test profile; the
//! bench needs release binaries, a second replica of calendar and gateway, and the
//! settings of a load test (rate limits out of the way, quiet logs, the bench's token
//! signing key). So it wraps the same building blocks — [`NatsServer`], [`TestDb`],
//! [`ServiceProcess`] — which kill their processes and drop their databases on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use futures::TryStreamExt;
use integration::{Backend, NatsServer, ServiceProcess, TestDb};

/// How long services may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Services that keep a database.
const WITH_DATABASE: &[&str] = &["auth", "calendar", "email", "push", "hospital"];

/// Start order: the gateway last (it needs auth's key set to be ready).
const START_ORDER: &[&str] = &["auth", "calendar", "email", "push", "hospital", "gateway"];

/// Where the mesh binaries are: `--bin-dir`, else `<target>/release` (full runs) or
/// `<target>/debug` (`--quick`), `<target>` being `$CARGO_TARGET_DIR` or `<repo>/target`.
pub fn default_bin_dir(quick: bool) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => integration::repo_root().join(dir),
        None => integration::repo_root().join("target"),
    };
    target.join(if quick { "debug" } else { "release" })
}

/// `<bin_dir>/mesh-<service>`, if it exists.
pub fn binary(bin_dir: &Path, service: &str) -> Option<PathBuf> {
    let path = bin_dir.join(format!("mesh-{service}"));
    path.is_file().then_some(path)
}

/// What to start.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    pub services: Vec<&'static str>,
    pub backend: Backend,
    pub bin_dir: PathBuf,
    /// Extra settings per service (on top of [`base_env`]).
    pub env: HashMap<&'static str, Vec<(String, String)>>,
}

impl MeshSpec {
    pub fn new(services: &[&'static str], backend: Backend, bin_dir: &Path) -> Self {
        MeshSpec {
            services: services.to_vec(),
            backend,
            bin_dir: bin_dir.to_path_buf(),
            env: HashMap::new(),
        }
    }

    pub fn with_env(mut self, service: &'static str, key: &str, value: &str) -> Self {
        self.env
            .entry(service)
            .or_default()
            .push((key.to_owned(), value.to_owned()));
        self
    }
}

/// Settings every service of a bench mesh gets.
fn base_env(service: &str) -> Vec<(String, String)> {
    let mut env = vec![
        // Logging at info costs a few percent under load; warnings still show up.
        (
            "RUST_LOG".to_owned(),
            std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
        ("SHUTDOWN_GRACE_MS".to_owned(), "2000".to_owned()),
    ];
    if service == "gateway" {
        // The bench measures throughput, not the limiter's refusals: the limiter still
        // runs (its cost is in the figures), with limits no scenario reaches.
        for (key, value) in [
            ("GATEWAY_RATE_LIMIT_USER_PER_SEC", "1000000"),
            ("GATEWAY_RATE_LIMIT_USER_BURST", "1000000"),
            ("GATEWAY_RATE_LIMIT_IP_PER_SEC", "1000000"),
            ("GATEWAY_RATE_LIMIT_IP_BURST", "1000000"),
            ("GATEWAY_REQUEST_TIMEOUT_MS", "10000"),
            ("GATEWAY_HTTP_TIMEOUT_MS", "20000"),
        ] {
            env.push((key.to_owned(), value.to_owned()));
        }
    }
    env
}

/// A running mesh. Field order is drop order: services, databases, nats, files.
pub struct BenchMesh {
    services: Vec<(String, ServiceProcess)>,
    dbs: HashMap<String, TestDb>,
    nats: NatsServer,
    spec: MeshSpec,
    dir: tempfile::TempDir,
}

impl BenchMesh {
    /// Start nats-server, a fresh database per service that needs one, the services
    /// (gateway last), and wait until every one is ready.
    pub async fn start(spec: MeshSpec) -> Result<Self> {
        for service in &spec.services {
            if binary(&spec.bin_dir, service).is_none() {
                bail!(
                    "{} is missing: build the mesh first (`cargo build --release --workspace --bins`, \
                     or `cargo build --workspace --bins` for --quick)",
                    spec.bin_dir.join(format!("mesh-{service}")).display()
                );
            }
        }
        let dir = tempfile::Builder::new().prefix("mesh-bench-").tempdir()?;
        let nats = NatsServer::start().await?;
        let mut mesh = BenchMesh {
            services: Vec::new(),
            dbs: HashMap::new(),
            nats,
            spec,
            dir,
        };
        let order: Vec<&'static str> = START_ORDER
            .iter()
            .copied()
            .filter(|s| mesh.spec.services.contains(s))
            .collect();
        for service in order {
            if WITH_DATABASE.contains(&service) {
                let db = TestDb::create(mesh.spec.backend, mesh.dir.path(), service).await?;
                mesh.dbs.insert(service.to_owned(), db);
            }
            mesh.spawn(service)?;
            // Auth first and alone: it provisions the AUTH stream and creates the signing
            // key the others (the gateway's key set) rely on.
            if service == "auth" {
                mesh.wait_all_ready().await?;
            }
        }
        mesh.wait_all_ready().await?;
        Ok(mesh)
    }

    /// The env of `service`: the spec's settings plus NATS and its database.
    fn env_of(&self, service: &str) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = base_env(service).into_iter().collect();
        env.insert("NATS_URL".to_owned(), self.nats.url());
        if let Some(db) = self.dbs.get(service) {
            env.insert("DATABASE_URL".to_owned(), db.url().to_owned());
        }
        if let Some(extra) = self.spec.env.get(service) {
            env.extend(extra.iter().cloned());
        }
        env
    }

    fn spawn(&mut self, service: &str) -> Result<()> {
        let binary = binary(&self.spec.bin_dir, service)
            .with_context(|| format!("mesh-{service} is missing"))?;
        let env = self.env_of(service);
        let process = ServiceProcess::spawn_binary(binary, env)?;
        self.services.push((service.to_owned(), process));
        Ok(())
    }

    async fn wait_all_ready(&mut self) -> Result<()> {
        for (_, process) in &mut self.services {
            process.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Start one more replica of `service` (same database and settings, its own port)
    /// and wait until it is ready.
    pub async fn add_replica(&mut self, service: &str) -> Result<()> {
        self.spawn(service)?;
        self.wait_all_ready().await
    }

    /// Every replica of `service`, in start order.
    pub fn replicas(&self, service: &str) -> Vec<&ServiceProcess> {
        self.services
            .iter()
            .filter(|(n, _)| n == service)
            .map(|(_, p)| p)
            .collect()
    }

    /// The first replica of `service`.
    pub fn service(&self, service: &str) -> Result<&ServiceProcess> {
        self.replicas(service)
            .into_iter()
            .next()
            .with_context(|| format!("{service} is not part of this mesh"))
    }

    /// `http://host:port` of every gateway replica.
    pub fn gateway_urls(&self) -> Vec<String> {
        self.replicas("gateway")
            .into_iter()
            .map(|p| p.url(""))
            .collect()
    }

    pub fn nats(&self) -> &NatsServer {
        &self.nats
    }

    /// The last lines of every service's log (for an error report).
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (name, process) in &self.services {
            let tail = integration::tail_lines(&process.log_text(), lines);
            if !tail.trim().is_empty() {
                out.push_str(&format!("----- {name} -----\n{tail}\n"));
            }
        }
        out
    }

    /// Waits until every durable consumer of `streams` has nothing pending or unacked
    /// (the subscribers caught up), or fails after `timeout`.
    pub async fn wait_consumers_idle(&self, streams: &[&str], timeout: Duration) -> Result<()> {
        let js = self.nats.jetstream().await?;
        integration::poll_until_ok(timeout, "the subscribers to catch up", || async {
            for name in streams {
                let stream = js
                    .get_stream(*name)
                    .await
                    .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
                let mut consumers = stream.consumers();
                while let Some(info) = consumers
                    .try_next()
                    .await
                    .map_err(|e| anyhow::anyhow!("consumers of {name}: {e}"))?
                {
                    if info.num_pending > 0 || info.num_ack_pending > 0 {
                        bail!(
                            "{} on {name}: {} pending, {} unacked",
                            info.name,
                            info.num_pending,
                            info.num_ack_pending
                        );
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// A JetStream context on a new connection.
    pub async fn jetstream(&self) -> Result<jetstream::Context> {
        self.nats.jetstream().await
    }

    /// Stop everything: SIGTERM to each service (gateway first), then nats.
    pub async fn shutdown(mut self) {
        for (_, process) in self.services.iter_mut().rev() {
            if process.is_running() {
                let _ = process.terminate_within(Duration::from_secs(5)).await;
            }
        }
        let _ = self.nats.stop().await;
    }
}

/// VmRSS of a process in KiB, from `/proc/<pid>/status`.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("Failed to read /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_parses() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vm_rss("Name: x"), None);
        assert!(vm_rss_kib(std::process::id()).is_ok_and(|kib| kib > 0));
    }
}
