//! Wiring: the database, the NATS connection, the request endpoints, the outbox relay
//! and the health listener, started together and stopped by one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::events::{
    EventCancelledV1, EventCreatedV1, EventUpdatedV1, RsvpChangedV1, RsvpChangedV2,
};
use contracts::subjects::{self, CALENDAR_STREAM};
use runtime::db::{Database, DbError, Migrations};
use runtime::nats::NatsError;
use runtime::outbox::{Relay, RelayConfig, RelayWaker};
use runtime::rpc::{Contracts, ServeError, ServiceSpec};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handlers;
use crate::service::Calendar;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The calendar's schema on both backends.
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

/// A built, not yet running calendar service.
pub struct Application {
    config: Config,
    listener: TcpListener,
    port: u16,
    db: Database,
    client: async_nats::Client,
    waker: RelayWaker,
}

impl Application {
    /// Connects the database (running migrations), binds the HTTP listener and starts
    /// connecting to NATS. NATS may be down: the client keeps retrying in the
    /// background, so the service starts and serves `/healthz` meanwhile.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let db = Database::connect(&config.database_url, &MIGRATIONS).await?;
        let (listener, port) = runtime::health::bind(&config.common.http_addr).await?;
        let client = runtime::nats::connect(&config.common, subjects::calendar::SERVICE).await?;
        Ok(Application {
            config,
            listener,
            port,
            db,
            client,
            waker: RelayWaker::default(),
        })
    }

    /// The port of the health listener (useful when `HTTP_ADDR` asked for port 0).
    pub fn http_port(&self) -> u16 {
        self.port
    }

    /// The service's database (tests inspect the outbox through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Serves until `cancel`, then stops taking requests, lets in-flight ones finish,
    /// lets the relay finish its round and drains the NATS connection.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), StartError> {
        let Application {
            config,
            listener,
            db,
            client,
            waker,
            ..
        } = self;
        let calendar = Arc::new(
            Calendar::new(db.clone(), waker.clone()).publish_rsvp_v2(config.publish_rsvp_v2),
        );
        let mut endpoints = handlers::endpoints(calendar);
        // The backlog for ops (`GET /v1/admin/services`); not a public route.
        endpoints.push(runtime::outbox::stats_endpoint(
            subjects::calendar::RPC_OUTBOX_STATS,
            db.clone(),
        ));
        let spec = ServiceSpec {
            name: subjects::calendar::SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            description: "Calendar events and RSVPs",
            endpoints,
            max_in_flight: config.max_in_flight,
            drain_timeout: config.common.shutdown_grace,
        };
        let rpc = runtime::rpc::serve_with(
            client.clone(),
            spec,
            &produced_contracts(config.publish_rsvp_v2),
            cancel.clone(),
        )
        .await?;

        let js = jetstream::new(client.clone());
        let publisher = tokio::spawn(publisher(
            js,
            db.clone(),
            waker,
            config.common.provision,
            config.outbox_relay,
            cancel.clone(),
        ));

        let readiness = runtime::health::Readiness::new("calendar", env!("CARGO_PKG_VERSION"))
            .nats(client.clone())
            .on_scrape(runtime::outbox::sample_gauges(db.clone()))
            .database(db);
        let http = tokio::spawn(runtime::health::serve(
            listener,
            runtime::health::router(readiness),
            cancel.clone(),
        ));
        tracing::info!(port = self.port, "calendar service started");

        cancel.cancelled().await;
        let _ = rpc.await;
        let _ = publisher.await;
        let http = http.await;
        // Flush replies and unsubscribe; bounded, since NATS may be unreachable.
        if tokio::time::timeout(Duration::from_secs(2), client.drain())
            .await
            .is_err()
        {
            tracing::debug!("NATS drain timed out");
        }
        tracing::info!("calendar service stopped");
        match http {
            Ok(Err(e)) => Err(StartError::Http(e)),
            _ => Ok(()),
        }
    }
}

/// The event contracts this build publishes (reported in discovery); v2 of
/// `calendar.rsvp_changed` only while `CALENDAR_PUBLISH_RSVP_V2` is on.
pub fn produced_contracts(rsvp_v2: bool) -> Contracts {
    let c = Contracts::new()
        .produces::<EventCreatedV1>()
        .produces::<EventUpdatedV1>()
        .produces::<EventCancelledV1>()
        .produces::<RsvpChangedV1>();
    if rsvp_v2 {
        c.produces::<RsvpChangedV2>()
    } else {
        c
    }
}

/// Provisions the CALENDAR stream (retrying while NATS is unreachable), then runs the
/// outbox relay. Publishing waits for the stream, so no round fails for lack of it.
async fn publisher(
    js: jetstream::Context,
    db: Database,
    waker: RelayWaker,
    provision: bool,
    relay: bool,
    cancel: CancellationToken,
) {
    if provision {
        let mut attempt = 0u32;
        loop {
            match runtime::nats::provision_streams(&js, &[CALENDAR_STREAM]).await {
                Ok(()) => {
                    tracing::info!(stream = CALENDAR_STREAM.name, "stream provisioned");
                    break;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot provision stream yet");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }
    if relay {
        Relay::new(db, js, waker, RelayConfig::default())
            .run(cancel)
            .await;
    } else {
        tracing::info!("outbox relay off (OUTBOX_RELAY=off)");
    }
}
