//! Wiring: the database, the NATS connection, the ward (the `DLQ` stream), the index
//! consumer, the admin endpoints, the job sweeper and the health listener, started
//! together and stopped by one token.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::subjects::{self, AUTH_STREAM, CALENDAR_STREAM};
use runtime::consumer::{self, ConsumerConfig, StartPosition};
use runtime::db::{Database, DbError, Migrations};
use runtime::nats::NatsError;
use runtime::rpc::{ServeError, ServiceSpec};
use runtime::telemetry::names;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::handlers;
use crate::index::Indexer;
use crate::service::Hospital;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The hospital's schema on both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE_MIGRATIONS,
    postgres: &POSTGRES_MIGRATIONS,
};

/// A running job saves its progress at least every 500 ms; one silent for this long
/// belongs to a process that is gone.
pub const STALE_JOB_AFTER: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// An edit-replay claimed this long ago and not finished belongs to a request that
/// stopped (a live one is done within its publish timeout).
pub const STALE_EDIT_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot recover interrupted jobs: {0}")]
    Recover(#[source] crate::store::StoreError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Bind(#[from] runtime::health::BindError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("HTTP listener failed: {0}")]
    Http(#[source] std::io::Error),
}

/// The index's durable on the `DLQ` stream: every parked message, from the beginning.
pub fn index_consumer_config(config: &Config) -> ConsumerConfig {
    ConsumerConfig {
        stream: subjects::DLQ_STREAM.name,
        durable: subjects::hospital::INDEX_DURABLE.to_owned(),
        filter_subjects: vec!["dlq.>".to_owned()],
        start: StartPosition::Beginning,
        retry: config.retry.clone(),
        concurrency: config.index_concurrency,
        max_ack_pending: 1000,
    }
}

/// The `DLQ` stream as the hospital provisions it: the configured size and age limits.
pub fn ward_config(config: &Config) -> jetstream::stream::Config {
    let mut ward = runtime::consumer::dlq_stream_config(config.dlq_max_bytes);
    ward.max_age = config.dlq_max_age;
    ward
}

/// A built, not yet running hospital.
pub struct Application {
    config: Config,
    listener: TcpListener,
    port: u16,
    db: Database,
    client: async_nats::Client,
}

impl Application {
    /// Connects the database (running migrations), marks jobs of dead processes failed,
    /// binds the HTTP listener and starts connecting to NATS (which may still be down).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let db = Database::connect(&config.database_url, &MIGRATIONS).await?;
        let recovered = crate::store::fail_stale_jobs(
            &db,
            jiff::Timestamp::now()
                - jiff::SignedDuration::try_from(STALE_JOB_AFTER).unwrap_or_default(),
        )
        .await
        .map_err(StartError::Recover)?;
        if recovered > 0 {
            tracing::warn!(jobs = recovered, "jobs of a stopped process marked failed");
        }
        let (listener, port) = runtime::health::bind(&config.common.http_addr).await?;
        let client = runtime::nats::connect(&config.common, subjects::hospital::SERVICE).await?;
        Ok(Application {
            config,
            listener,
            port,
            db,
            client,
        })
    }

    /// The port of the health listener (useful when `HTTP_ADDR` asked for port 0).
    pub fn http_port(&self) -> u16 {
        self.port
    }

    /// The hospital's database (tests inspect the index through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Serves until `cancel`, then stops taking requests, stops running jobs between
    /// messages (they end `failed`, to be run again), drains the index consumer and NATS.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), StartError> {
        let Application {
            config,
            listener,
            port,
            db,
            client,
        } = self;
        // Replays are published with a window of outstanding acks; say how large.
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(4096)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let jobs = TaskTracker::new();
        let hospital = Hospital::new(
            db.clone(),
            js.clone(),
            config.clone(),
            jobs.clone(),
            cancel.clone(),
        );
        let spec = ServiceSpec {
            name: subjects::hospital::SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            description: "The message hospital: dead letters, replays, consumer control",
            endpoints: handlers::endpoints(&hospital),
            max_in_flight: config.max_in_flight,
            drain_timeout: config.common.shutdown_grace,
        };
        let rpc = runtime::rpc::serve(client.clone(), spec, cancel.clone()).await?;
        let index = tokio::spawn(index(
            js.clone(),
            db.clone(),
            config.clone(),
            cancel.clone(),
        ));
        let sweeper = tokio::spawn(sweep(hospital.clone(), cancel.clone()));
        let advisories = tokio::spawn(crate::advisories::watch(
            client.clone(),
            js.clone(),
            db.clone(),
            cancel.clone(),
        ));

        let readiness = runtime::health::Readiness::new("hospital", env!("CARGO_PKG_VERSION"))
            .nats(client.clone())
            .database(db);
        let http = tokio::spawn(runtime::health::serve(
            listener,
            runtime::health::router(readiness),
            cancel.clone(),
        ));
        tracing::info!(port, "hospital started");

        cancel.cancelled().await;
        let _ = rpc.await;
        jobs.close();
        if tokio::time::timeout(config.common.shutdown_grace, jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!("jobs did not stop before the grace period");
        }
        let _ = index.await;
        let _ = sweeper.await;
        let _ = advisories.await;
        let http = http.await;
        if tokio::time::timeout(Duration::from_secs(2), client.drain())
            .await
            .is_err()
        {
            tracing::debug!("NATS drain timed out");
        }
        tracing::info!("hospital stopped");
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

/// Provisions the ward and the source streams (when asked), then runs the index
/// consumer until `cancel`, recreating it after failures.
async fn index(js: jetstream::Context, db: Database, config: Config, cancel: CancellationToken) {
    if config.common.provision {
        let mut attempt = 0u32;
        loop {
            match provision(&js, &config).await {
                Ok(()) => {
                    tracing::info!("DLQ, AUTH and CALENDAR provisioned");
                    break;
                }
                // Limits the server refuses (e.g. a size below what the ward holds)
                // must not stop the index: it reads the ward as it is.
                Err(e) if js.get_stream(subjects::DLQ_STREAM.name).await.is_ok() => {
                    tracing::error!(error = %e, "cannot provision with the configured limits; indexing the existing DLQ stream");
                    break;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let delay = backoff(attempt);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot provision yet");
                    if !pause(delay, &cancel).await {
                        return;
                    }
                }
            }
        }
    }
    let consumer_config = index_consumer_config(&config);
    let indexer = Arc::new(Indexer::new(db));
    let mut attempt = 0u32;
    while !cancel.is_cancelled() {
        match consumer::ensure(&js, &consumer_config).await {
            Ok(c) => {
                tracing::info!(durable = %consumer_config.durable, "indexing the DLQ stream");
                attempt = 0;
                match consumer::run(
                    &js,
                    c,
                    consumer_config.clone(),
                    indexer.clone(),
                    cancel.clone(),
                )
                .await
                {
                    Ok(()) if cancel.is_cancelled() => return,
                    Ok(()) => tracing::warn!("DLQ message stream ended; pulling again"),
                    Err(e) => tracing::warn!(error = %e, "cannot pull from the DLQ stream"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot create the index consumer yet"),
        }
        attempt = attempt.saturating_add(1);
        if !pause(backoff(attempt), &cancel).await {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ProvisionError {
    #[error("cannot provision the DLQ stream: {0}")]
    Ward(#[source] jetstream::context::CreateStreamError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("cannot provision the consumer_failures bucket: {0}")]
    Bucket(#[source] jetstream::context::CreateKeyValueError),
}

/// The ward with the hospital's limits, the source streams it replays into, and the
/// failures bucket (created if missing; its owner is the consumer runtime).
async fn provision(js: &jetstream::Context, config: &Config) -> Result<(), ProvisionError> {
    js.create_or_update_stream(ward_config(config))
        .await
        .map_err(ProvisionError::Ward)?;
    runtime::nats::provision_streams(js, &[AUTH_STREAM, CALENDAR_STREAM]).await?;
    if js
        .get_key_value(subjects::buckets::CONSUMER_FAILURES)
        .await
        .is_err()
    {
        let created = js
            .create_key_value(jetstream::kv::Config {
                bucket: subjects::buckets::CONSUMER_FAILURES.to_owned(),
                max_age: Duration::from_secs(7 * 24 * 3600),
                history: 1,
                num_replicas: runtime::nats::stream_replicas(),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await;
        // A subscriber may have created it in the meantime.
        if let Err(e) = created
            && js
                .get_key_value(subjects::buckets::CONSUMER_FAILURES)
                .await
                .is_err()
        {
            return Err(ProvisionError::Bucket(e));
        }
    }
    Ok(())
}

/// Marks jobs of dead processes failed (and frees their claims) and finishes
/// interrupted edit-replays every second, and refreshes the hospital's gauges.
async fn sweep(hospital: Hospital, cancel: CancellationToken) {
    let mut rounds = 0u64;
    while pause(SWEEP_EVERY, &cancel).await {
        match hospital.sweep_stale_jobs(STALE_JOB_AFTER).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "jobs of a stopped process marked failed"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep stale jobs"),
        }
        if let Err(e) = hospital.recover_stale_edits(STALE_EDIT_AFTER).await {
            tracing::warn!(error = %e, "cannot finish interrupted edit-replays yet");
        }
        if rounds.is_multiple_of(METRICS_EVERY_ROUNDS) {
            publish_gauges(&hospital).await;
        }
        rounds += 1;
    }
}

/// Sweep rounds between two refreshes of the gauges.
const METRICS_EVERY_ROUNDS: u64 = 5;

/// Dead-letter depth, lag, ack-pending and redeliveries per durable consumer, for
/// `/metrics` (the same figures `meshctl dlq stats` shows).
async fn publish_gauges(hospital: &Hospital) {
    let stats = match hospital.stats().await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read stats for metrics");
            return;
        }
    };
    for c in stats.consumers {
        let labels = [("durable", c.durable.clone()), ("stream", c.stream.clone())];
        metrics::gauge!(names::DLQ_DEPTH, &labels).set(c.parked as f64);
        metrics::gauge!(names::CONSUMER_PENDING, &labels).set(c.pending as f64);
        metrics::gauge!(names::CONSUMER_ACK_PENDING, &labels).set(c.ack_pending as f64);
        metrics::gauge!(names::CONSUMER_REDELIVERED, &labels).set(c.redelivered as f64);
        metrics::gauge!(names::CONSUMER_PAUSED, &labels).set(if c.paused { 1.0 } else { 0.0 });
    }
    metrics::gauge!(names::DLQ_STREAM_MESSAGES).set(stats.dlq_messages as f64);
    metrics::gauge!(names::DLQ_STREAM_BYTES).set(stats.dlq_bytes as f64);
}
