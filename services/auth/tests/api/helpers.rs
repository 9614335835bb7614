//! The auth service's side of the harness: its `Config`, the service started
//! in-process, request helpers and stream reading. NATS (a real nats-server on a free
//! port with its own store) and the fresh database per test (a SQLite file in a temp dir,
//! or a new PostgreSQL database) come from the `integration` crate.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use auth::{Application, Config};
use contracts::DomainEvent;
use contracts::api::{RegisterRequest, User};
use contracts::rpc::{RpcReply, RpcRequest};
use integration::NatsServer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use integration::Backend;

pub const ADMIN_EMAIL: &str = "boss@example.com";
pub const PASSWORD: &str = "correct horse battery";

/// `TestDb::create(backend)`: a fresh database from the harness, dropped with the value.
pub struct TestDb;

impl TestDb {
    pub async fn create(backend: Backend) -> Result<integration::TestDb> {
        integration::TestDb::new(backend).await
    }
}

// ---- the service ----

pub fn config(nats_url: &str, database_url: &str, relay: bool) -> Config {
    Config {
        common: integration::common_config(nats_url),
        database_url: database_url.to_owned(),
        outbox_relay: relay,
        access_token_ttl: Duration::from_secs(900),
        refresh_token_ttl: Duration::from_secs(3600),
        verification_ttl: Duration::from_secs(7 * 24 * 3600),
        reset_ttl: Duration::from_secs(1800),
        admin_emails: vec![ADMIN_EMAIL.to_owned()],
        signing_key_pem: None,
        signing_key_reload: Duration::from_secs(10),
        signing_key_grace: Duration::from_secs(60),
        login_throttle: auth::throttle::ThrottlePolicy::default(),
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
    pub db: integration::TestDb,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub service: Option<Running>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Result<TestApp> {
        Self::spawn_with(backend, true).await
    }

    pub async fn spawn_with(backend: Backend, relay: bool) -> Result<TestApp> {
        Self::spawn_configured(backend, |c| c.outbox_relay = relay).await
    }

    /// The service with the test defaults changed by `adjust`.
    pub async fn spawn_configured(
        backend: Backend,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<TestApp> {
        integration::init_in_process_logs("auth-test");
        let nats = NatsServer::start().await?;
        let db = TestDb::create(backend).await?;
        let mut config = config(&nats.url(), db.url(), true);
        adjust(&mut config);
        let service = Running::start(config).await?;
        let client = nats.client().await?;
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
        self.service = Some(Running::start(config(&self.nats.url(), self.db.url(), relay)).await?);
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
        integration::rpc(&self.client, subject, request, Duration::from_secs(15)).await
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
        // A database error ends the wait at once; only a backlog is waited out.
        integration::poll_until(Duration::from_secs(15), "the outbox to drain", || {
            let db = db.clone();
            async move {
                match runtime::outbox::backlog(&db).await {
                    Ok(0) => Some(Ok(())),
                    Ok(_) => None,
                    Err(err) => Some(Err(err)),
                }
            }
        })
        .await??;
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
