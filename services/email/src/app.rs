//! Wiring: the database, the mail transport, the NATS connection, the two durable
//! consumers and the health listener, started together and stopped by one token.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::subjects::{self, AUTH_STREAM, CALENDAR_STREAM, StreamSpec};
use lettre::message::Mailbox;
use runtime::consumer::{self, ConsumerConfig, StartPosition};
use runtime::db::{Database, DbError, Migrations};
use runtime::nats::NatsError;
use runtime::rpc::{ServeError, ServiceSpec};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::processor::{EmailHandler, MailSettings, Processor};
use crate::templates::{TemplateError, Templates};
use crate::transport::{Mailer, MailerError};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The email service's schema on both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE_MIGRATIONS,
    postgres: &POSTGRES_MIGRATIONS,
};

/// The service's name on the bus.
pub const SERVICE: &str = "email";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Mailer(#[from] MailerError),
    #[error(transparent)]
    Templates(#[from] TemplateError),
    #[error("EMAIL_FROM={value:?} is not a mailbox: {reason}")]
    From { value: String, reason: String },
    #[error(transparent)]
    Bind(#[from] runtime::health::BindError),
    #[error("HTTP listener failed: {0}")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// One durable consumer of this service: shared by every replica (each message is
/// handled by one of them), separate from every other service's.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub stream: StreamSpec,
    /// Also the processed-message ledger's consumer key.
    pub durable: &'static str,
    pub consumer: ConsumerConfig,
}

/// The two durables: `email-auth` on AUTH and `email-calendar` on CALENDAR.
pub fn subscriptions(config: &Config) -> [Subscription; 2] {
    let make = |stream: StreamSpec, durable: &'static str, filter: &str| Subscription {
        stream,
        durable,
        consumer: ConsumerConfig {
            stream: stream.name,
            durable: durable.to_owned(),
            filter_subjects: vec![filter.to_owned()],
            // Both streams are read from their start on a first run: AUTH rebuilds the
            // users, CALENDAR the events and attendees. Old events send no mail (see
            // `EMAIL_MAX_EVENT_AGE_SECS`).
            start: StartPosition::Beginning,
            retry: config.retry.clone(),
            concurrency: config.concurrency,
            max_ack_pending: config.max_ack_pending,
        },
    };
    [
        make(AUTH_STREAM, subjects::durables::EMAIL_AUTH, "auth.v1.>"),
        make(
            CALENDAR_STREAM,
            subjects::durables::EMAIL_CALENDAR,
            "calendar.v1.>",
        ),
    ]
}

/// A built, not yet running email service.
pub struct Application {
    config: Config,
    listener: TcpListener,
    port: u16,
    db: Database,
    client: async_nats::Client,
    processor: Arc<Processor>,
}

impl Application {
    /// Connects the database (running migrations), checks the mail settings, binds the
    /// health listener and starts connecting to NATS (which may still be down: the
    /// client retries in the background).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let db = Database::connect(&config.database_url, &MIGRATIONS).await?;
        let mailer = Mailer::new(
            config.smtp_url.as_deref(),
            config.smtp_timeout,
            &config.file_dir,
            config.smtp_tls_ca.as_deref(),
        )?;
        let templates = Templates::new()?;
        let from = Mailbox::from_str(&config.from).map_err(|e| StartError::From {
            value: config.from.clone(),
            reason: e.to_string(),
        })?;
        let settings = MailSettings {
            from,
            public_base_url: config.public_base_url.trim_end_matches('/').to_owned(),
            max_event_age: config.max_event_age,
            send_lease: crate::processor::SEND_LEASE,
        };
        tracing::info!(transport = %mailer.describe(), "mail transport ready");
        let processor = Arc::new(Processor::new(db.clone(), mailer, templates, settings));
        let (listener, port) = runtime::health::bind(&config.common.http_addr).await?;
        let client = runtime::nats::connect(&config.common, SERVICE).await?;
        Ok(Application {
            config,
            listener,
            port,
            db,
            client,
            processor,
        })
    }

    /// The port of the health listener (useful when `HTTP_ADDR` asked for port 0).
    pub fn http_port(&self) -> u16 {
        self.port
    }

    /// The service's database (tests inspect `sent_mails` through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Consumes until `cancel`, then stops pulling, lets in-flight mails finish and be
    /// acknowledged (bounded by `SHUTDOWN_GRACE_MS`), and drains the NATS connection.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), StartError> {
        let Application {
            config,
            listener,
            port,
            db,
            client,
            processor,
        } = self;
        // A NATS micro service without endpoints: email serves no requests, but it is
        // discoverable (`$SRV.INFO`) with its name, version and the contract versions
        // it consumes, like every other service.
        let spec = ServiceSpec {
            name: SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            description: "Mail for domain events (consumer only, no endpoints)",
            endpoints: Vec::new(),
            max_in_flight: 1,
            drain_timeout: config.common.shutdown_grace,
        };
        let discovery = runtime::rpc::serve_with(
            client.clone(),
            spec,
            &crate::incoming::consumed(),
            cancel.clone(),
        )
        .await?;
        let js = jetstream::new(client.clone());
        let mut consumers = Vec::new();
        for sub in subscriptions(&config) {
            let handler = Arc::new(EmailHandler::new(processor.clone(), sub.durable));
            consumers.push(tokio::spawn(consume(
                js.clone(),
                sub.stream,
                sub.consumer,
                handler,
                config.common.provision,
                cancel.clone(),
            )));
        }

        let readiness = runtime::health::Readiness::new(SERVICE, env!("CARGO_PKG_VERSION"))
            .nats(client.clone())
            .database(db);
        let http = tokio::spawn(runtime::health::serve(
            listener,
            runtime::health::router(readiness),
            cancel.clone(),
        ));
        tracing::info!(port, "email service started");

        cancel.cancelled().await;
        let drained = async {
            for task in consumers {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(config.common.shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!("in-flight mails did not finish within the shutdown grace");
        }
        let _ = discovery.await;
        let http = http.await;
        // Flush the acks; bounded, since NATS may be unreachable.
        if tokio::time::timeout(Duration::from_secs(2), client.drain())
            .await
            .is_err()
        {
            tracing::debug!("NATS drain timed out");
        }
        tracing::info!("email service stopped");
        match http {
            Ok(Err(e)) => Err(StartError::Http(e)),
            _ => Ok(()),
        }
    }
}

/// Runs one durable consumer until `cancel`: provisions its stream when asked (the
/// owner normally does; this lets email start first), creates or updates the durable,
/// and pulls. Any failure (NATS down, stream missing) is retried with a growing pause.
async fn consume(
    js: jetstream::Context,
    stream: StreamSpec,
    config: ConsumerConfig,
    handler: Arc<EmailHandler>,
    provision: bool,
    cancel: CancellationToken,
) {
    let mut attempt = 0u32;
    while !cancel.is_cancelled() {
        let result = async {
            if provision {
                runtime::nats::provision_streams(&js, &[stream])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let pull = consumer::ensure(&js, &config)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(durable = %config.durable, stream = stream.name, "consuming");
            consumer::run(&js, pull, config.clone(), handler.clone(), cancel.clone())
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if cancel.is_cancelled() {
            break;
        }
        let pause = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
        match result {
            // The message stream ended without a shutdown (e.g. the durable was
            // deleted): start over.
            Ok(()) => {
                attempt = 0;
                tracing::warn!(durable = %config.durable, "consumer stopped; restarting");
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                tracing::warn!(durable = %config.durable, error = %e, retry_in_ms = pause.as_millis() as u64, "consumer not running yet");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
