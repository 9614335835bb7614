//! Wiring: the database, the NATS connection, the request endpoints, the two durable
//! consumers and the health listener, started together and stopped by one token.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::subjects::{self, AUTH_STREAM, CALENDAR_STREAM, durables};
use runtime::consumer::{self, ConsumerConfig, StartPosition};
use runtime::db::{Database, DbError, Migrations};
use runtime::nats::NatsError;
use runtime::rpc::{ServeError, ServiceSpec};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handlers;
use crate::projector::{Projector, Stats};
use crate::service::Notifications;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Push's schema on both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE_MIGRATIONS,
    postgres: &POSTGRES_MIGRATIONS,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Bind(#[from] runtime::health::BindError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("HTTP listener failed: {0}")]
    Http(#[source] std::io::Error),
}

/// The durable consumers push runs, from its configuration. Both start at the
/// beginning of their stream so a first start rebuilds the read models; notifications
/// are limited to recent events instead (see the crate docs).
pub fn consumer_configs(config: &Config) -> [ConsumerConfig; 2] {
    let consumer = |stream: &'static str, durable: &str, filter: &str| ConsumerConfig {
        stream,
        durable: durable.to_owned(),
        filter_subjects: vec![filter.to_owned()],
        start: StartPosition::Beginning,
        retry: config.retry.clone(),
        concurrency: config.concurrency,
        max_ack_pending: config.max_ack_pending,
    };
    [
        consumer(AUTH_STREAM.name, durables::PUSH_AUTH, "auth.v1.>"),
        consumer(
            CALENDAR_STREAM.name,
            durables::PUSH_CALENDAR,
            "calendar.v1.>",
        ),
    ]
}

/// A built, not yet running push service.
pub struct Application {
    config: Config,
    listener: TcpListener,
    port: u16,
    db: Database,
    client: async_nats::Client,
    stats: Stats,
}

impl Application {
    /// Connects the database (running migrations), binds the HTTP listener and starts
    /// connecting to NATS. NATS may be down: the client keeps retrying in the
    /// background, so the service starts and serves `/healthz` meanwhile.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let db = Database::connect(&config.database_url, &MIGRATIONS).await?;
        let (listener, port) = runtime::health::bind(&config.common.http_addr).await?;
        let client = runtime::nats::connect(&config.common, subjects::push::SERVICE).await?;
        Ok(Application {
            config,
            listener,
            port,
            db,
            client,
            stats: Stats::default(),
        })
    }

    /// The port of the health listener (useful when `HTTP_ADDR` asked for port 0).
    pub fn http_port(&self) -> u16 {
        self.port
    }

    /// The service's database (tests inspect the read models through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// What this process has done so far; keeps counting while it runs.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Serves until `cancel`, then stops taking requests and pulling messages, lets
    /// in-flight ones finish (acknowledging what they completed) and drains NATS.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), StartError> {
        let Application {
            config,
            listener,
            port,
            db,
            client,
            stats,
        } = self;
        let spec = ServiceSpec {
            name: subjects::push::SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            description: "Notification history and live push",
            endpoints: handlers::endpoints(Arc::new(Notifications::new(db.clone()))),
            max_in_flight: config.max_in_flight,
            drain_timeout: config.common.shutdown_grace,
        };
        let rpc = runtime::rpc::serve_with(
            client.clone(),
            spec,
            &crate::projector::consumed(),
            cancel.clone(),
        )
        .await?;

        let js = jetstream::new(client.clone());
        let consumers = tokio::spawn(subscribe(
            js,
            db.clone(),
            client.clone(),
            config.clone(),
            stats,
            cancel.clone(),
        ));

        let readiness = runtime::health::Readiness::new("push", env!("CARGO_PKG_VERSION"))
            .nats(client.clone())
            .database(db);
        let http = tokio::spawn(runtime::health::serve(
            listener,
            runtime::health::router(readiness),
            cancel.clone(),
        ));
        tracing::info!(port, "push service started");

        cancel.cancelled().await;
        let _ = rpc.await;
        let _ = consumers.await;
        let http = http.await;
        // Flush live messages and replies; bounded, since NATS may be unreachable.
        if tokio::time::timeout(Duration::from_secs(2), client.drain())
            .await
            .is_err()
        {
            tracing::debug!("NATS drain timed out");
        }
        tracing::info!("push service stopped");
        match http {
            Ok(Err(e)) => Err(StartError::Http(e)),
            _ => Ok(()),
        }
    }
}

/// Waits out `delay` unless cancelled first; false when cancelled.
async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(attempt.min(6)))
}

/// Provisions AUTH and CALENDAR when asked (so the durables can be created even if
/// push starts before their owners), then runs both consumers until `cancel`.
async fn subscribe(
    js: jetstream::Context,
    db: Database,
    client: async_nats::Client,
    config: Config,
    stats: Stats,
    cancel: CancellationToken,
) {
    if config.common.provision {
        let mut attempt = 0u32;
        loop {
            match runtime::nats::provision_streams(&js, &[AUTH_STREAM, CALENDAR_STREAM]).await {
                Ok(()) => {
                    tracing::info!("streams AUTH and CALENDAR provisioned");
                    break;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let delay = backoff(attempt);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot provision streams yet");
                    if !pause(delay, &cancel).await {
                        return;
                    }
                }
            }
        }
    }
    let mut tasks = Vec::new();
    for consumer_config in consumer_configs(&config) {
        let projector = Arc::new(Projector::new(
            db.clone(),
            client.clone(),
            consumer_config.durable.clone(),
            config.max_event_age,
            stats.clone(),
        ));
        tasks.push(tokio::spawn(keep_consuming(
            js.clone(),
            consumer_config,
            projector,
            cancel.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Runs one durable consumer, creating it first; recreates the pull after a failure
/// (stream missing while PROVISION is off, NATS unreachable) until `cancel`.
async fn keep_consuming(
    js: jetstream::Context,
    config: ConsumerConfig,
    projector: Arc<Projector>,
    cancel: CancellationToken,
) {
    let mut attempt = 0u32;
    while !cancel.is_cancelled() {
        match consumer::ensure(&js, &config).await {
            Ok(c) => {
                tracing::info!(durable = %config.durable, "consuming");
                attempt = 0;
                match consumer::run(&js, c, config.clone(), projector.clone(), cancel.clone()).await
                {
                    Ok(()) if cancel.is_cancelled() => return,
                    Ok(()) => {
                        tracing::warn!(durable = %config.durable, "message stream ended; pulling again")
                    }
                    Err(e) => tracing::warn!(durable = %config.durable, error = %e, "cannot pull"),
                }
            }
            Err(e) => {
                tracing::warn!(durable = %config.durable, error = %e, "cannot create the consumer yet")
            }
        }
        attempt = attempt.saturating_add(1);
        if !pause(backoff(attempt), &cancel).await {
            return;
        }
    }
}
