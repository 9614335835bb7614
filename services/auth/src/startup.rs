//! Wiring: connect, migrate, provision, then run the relay, the endpoints and the
//! health server until told to stop.

use std::time::Duration;

use runtime::db::{Database, DbError, Migrations};
use runtime::health::{self, Readiness};
use runtime::nats::NatsError;
use runtime::outbox::{Relay, RelayConfig, RelayWaker};
use runtime::rpc::{ServeError, ServiceSpec};
use sqlx::migrate::Migrator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::handlers::{AuthState, endpoints};
use crate::keys::{KeyError, KeyRing};
use crate::password::{Hasher, PasswordError};
use crate::throttle::LoginThrottle;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The auth schema on both backends.
pub fn migrations() -> Migrations {
    Migrations {
        sqlite: &SQLITE_MIGRATIONS,
        postgres: &POSTGRES_MIGRATIONS,
    }
}

/// Requests this replica handles at once; password hashing has its own, lower limit.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot listen on HTTP_ADDR {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("a background task panicked: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running auth service. Everything is started by [`Application::build`];
/// [`Application::run_until_stopped`] waits for the shutdown signal and drains.
pub struct Application {
    http_port: u16,
    db: Database,
    client: async_nats::Client,
    shutdown_grace: Duration,
    // One token per part, so shutdown can stop them in order: first no new requests,
    // then the relay publishes what those requests committed, then health goes away.
    rpc_cancel: CancellationToken,
    relay_cancel: CancellationToken,
    http_cancel: CancellationToken,
    upkeep_cancel: CancellationToken,
    upkeep: JoinHandle<()>,
    rpc: JoinHandle<()>,
    relay: Option<JoinHandle<()>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        // Bind first: a taken port should fail before anything else is touched.
        let listener = tokio::net::TcpListener::bind(&config.common.http_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.common.http_addr.clone(),
                source,
            })?;
        let http_port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind {
                addr: config.common.http_addr.clone(),
                source,
            })?
            .port();

        let db = Database::connect(&config.database_url, &migrations()).await?;
        let client =
            runtime::nats::connect(&config.common, contracts::subjects::auth::SERVICE).await?;
        let js = async_nats::jetstream::new(client.clone());
        if config.common.provision {
            runtime::nats::provision_streams(&js, &[contracts::subjects::AUTH_STREAM]).await?;
        }
        let keys = KeyRing::start(
            db.clone(),
            config.signing_key_pem.as_deref(),
            config.signing_key_keep(),
        )
        .await?;
        let hasher = Hasher::new().await?;

        let waker = RelayWaker::default();
        let state = AuthState::new(db.clone(), hasher, keys.clone(), waker.clone(), &config);
        let rpc_cancel = CancellationToken::new();
        let spec = ServiceSpec {
            name: contracts::subjects::auth::SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            description: "Accounts, passwords, access tokens and notification preferences",
            endpoints: with_outbox_stats(endpoints(state), &db),
            max_in_flight: MAX_IN_FLIGHT,
            drain_timeout: config.common.shutdown_grace,
        };
        let rpc = runtime::rpc::serve(client.clone(), spec, rpc_cancel.clone()).await?;

        // Started after the last fallible step, so a failed build leaves no task behind.
        let upkeep_cancel = CancellationToken::new();
        let upkeep = tokio::spawn(upkeep(
            keys,
            LoginThrottle::new(db.clone(), config.login_throttle),
            config.signing_key_reload,
            upkeep_cancel.clone(),
        ));
        // Its first round publishes whatever earlier runs (or early requests) committed.
        let relay_cancel = CancellationToken::new();
        let relay = if config.outbox_relay {
            let relay = Relay::new(db.clone(), js, waker, RelayConfig::default());
            Some(tokio::spawn(relay.run(relay_cancel.clone())))
        } else {
            tracing::warn!("OUTBOX_RELAY is off: domain events stay in the outbox");
            None
        };

        let readiness = Readiness::new("auth", env!("CARGO_PKG_VERSION"))
            .nats(client.clone())
            .on_scrape(runtime::outbox::sample_gauges(db.clone()))
            .database(db.clone());
        let http_cancel = CancellationToken::new();
        let http = tokio::spawn(health::serve(
            listener,
            health::router(readiness),
            http_cancel.clone(),
        ));
        tracing::info!(http_port, backend = ?db.backend, "auth service started");

        Ok(Application {
            http_port,
            db,
            client,
            shutdown_grace: config.common.shutdown_grace,
            rpc_cancel,
            relay_cancel,
            http_cancel,
            upkeep_cancel,
            upkeep,
            rpc,
            relay,
            http,
        })
    }

    /// The port of the health listener (useful when `HTTP_ADDR` asked for port 0).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The service's database handle (tests inspect the outbox through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs until `cancel`, then stops taking requests, lets in-flight ones finish,
    /// lets the relay finish its round, and closes the health server and the pool.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), StartupError> {
        let Application {
            db,
            client,
            shutdown_grace,
            rpc_cancel,
            relay_cancel,
            http_cancel,
            upkeep_cancel,
            upkeep,
            rpc,
            relay,
            mut http,
            ..
        } = self;
        // The health server failing early is a reason to stop, not to hang.
        let http_early = tokio::select! {
            _ = cancel.cancelled() => None,
            r = &mut http => Some(r),
        };
        rpc_cancel.cancel();
        rpc.await?;
        upkeep_cancel.cancel();
        upkeep.await?;
        relay_cancel.cancel();
        if let Some(relay) = relay {
            // The relay may be stuck retrying an unreachable NATS; do not wait forever.
            if tokio::time::timeout(shutdown_grace, relay).await.is_err() {
                tracing::warn!("outbox relay did not stop within the shutdown grace");
            }
        }
        http_cancel.cancel();
        let http_result = match http_early {
            Some(r) => r?,
            None => http.await?,
        };
        if let Err(e) = client.flush().await {
            tracing::debug!(error = %e, "NATS flush on shutdown");
        }
        db.pool.close().await;
        tracing::info!("auth service stopped");
        http_result.map_err(StartupError::Http)
    }
}

/// How often idle login-throttle rows are deleted.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// Background upkeep until `cancel`: the signing keys every `reload` (see
/// [`KeyRing::maintain`]) and, about once a minute, the login counters nobody needs.
async fn upkeep(
    keys: KeyRing,
    throttle: LoginThrottle,
    reload: Duration,
    cancel: CancellationToken,
) {
    let mut forgot_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(reload) => {}
        }
        if let Err(e) = keys.maintain().await {
            tracing::warn!(error = %e, "signing key upkeep failed; retrying");
        }
        if forgot_at.elapsed() >= FORGET_IDLE_EVERY {
            forgot_at = tokio::time::Instant::now();
            match throttle.forget_idle().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "idle login counters forgotten"),
                Err(e) => tracing::warn!(error = %e, "cannot forget idle login counters"),
            }
        }
    }
}

/// The endpoints plus the outbox's backlog for ops (`GET /v1/admin/services`; not a
/// public route).
fn with_outbox_stats(
    mut endpoints: Vec<runtime::rpc::Endpoint>,
    db: &Database,
) -> Vec<runtime::rpc::Endpoint> {
    endpoints.push(runtime::outbox::stats_endpoint(
        contracts::subjects::auth::RPC_OUTBOX_STATS,
        db.clone(),
    ));
    endpoints
}
