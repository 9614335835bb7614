//! The calendar's side of the harness: its `Config`, the service in-process, typed
//! request helpers and stream inspection. NATS, databases, polling and reply checks come
//! from the `integration` crate.
//!
//! Environment: see the `integration` crate (`NATS_SERVER_BIN`, `TEST_DATABASE_URL`,
//! `TEST_BACKENDS`, `TEST_LOG=1` for the service's logs).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, message::StreamMessage};
use calendar::{Application, Config, StartError};
use contracts::api::{CreateEventRequest, Event};
use contracts::events::EventMeta;
use contracts::rpc::{Caller, NoBody, Role, RpcReply, RpcRequest};
use contracts::subjects::calendar as subj;
use jiff::{SignedDuration, Timestamp};
use runtime::db::Database;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use integration::{Backend, TestDb, expect_problem, expect_status};

/// Runs one scenario as two tests, `sqlite` and `postgres` (unless `TEST_BACKENDS`
/// leaves one out).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        integration::backend_tests!(
            "calendar-test"; [sqlite => Sqlite, postgres => Postgres]; $($name),*
        );
    };
}

/// Waits for `check` to return `Some`, polling until the deadline.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    integration::poll_until(timeout, what, check).await
}

/// The harness's nats-server, where `stop` is an outage: the process is killed at once.
pub struct NatsServer(integration::NatsServer);

impl NatsServer {
    pub async fn start() -> Result<Self> {
        Ok(NatsServer(integration::NatsServer::start().await?))
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Starts again on the same port and store directory; waits until it serves.
    pub async fn start_again(&mut self) -> Result<()> {
        self.0.start_again().await
    }

    pub fn stop(&mut self) {
        let _ = self.0.kill();
    }
}

// ---- the service ----

pub struct TestApp {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub db: Database,
    pub http_port: u16,
    cancel: CancellationToken,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

pub fn config(nats: &NatsServer, db: &TestDb, relay: bool) -> Config {
    Config {
        common: integration::common_config(&nats.url()),
        database_url: db.url().to_owned(),
        outbox_relay: relay,
        max_in_flight: 64,
        publish_rsvp_v2: false,
    }
}

impl TestApp {
    /// Starts the service and waits until it answers requests.
    pub async fn spawn(nats: &NatsServer, db: &TestDb) -> Result<Self> {
        Self::spawn_with(nats, db, true).await
    }

    pub async fn spawn_with(nats: &NatsServer, db: &TestDb, relay: bool) -> Result<Self> {
        let app = Self::start(config(nats, db, relay)).await?;
        app.wait_until_serving().await?;
        Ok(app)
    }

    /// Starts the service without waiting for NATS (which may be down).
    pub async fn start(config: Config) -> Result<Self> {
        let nats_url = config.common.nats_url.clone();
        let app = Application::build(config).await?;
        let http_port = app.http_port();
        let db = app.database().clone();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(cancel.clone()));
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&nats_url)
            .await?;
        let js = jetstream::new(client.clone());
        Ok(TestApp {
            client,
            js,
            db,
            http_port,
            cancel,
            handle: Some(handle),
        })
    }

    pub async fn wait_until_serving(&self) -> Result<()> {
        poll_until(
            "the calendar endpoints",
            Duration::from_secs(20),
            || async {
                let req = RpcRequest::new(NoBody {})
                    .with_caller(user())
                    .with_param("id", Uuid::nil().to_string());
                integration::rpc::<_, Event>(
                    &self.client,
                    subj::RPC_GET_EVENT,
                    &req,
                    Duration::from_secs(2),
                )
                .await
                .ok()
            },
        )
        .await?;
        Ok(())
    }

    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .context("service did not stop")???;
        }
        Ok(())
    }

    /// Sends one request as the gateway would and decodes the reply.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        subject: &str,
        req: &RpcRequest<B>,
    ) -> Result<RpcReply<T>> {
        integration::rpc(&self.client, subject, req, Duration::from_secs(30)).await
    }

    pub async fn create(&self, who: &Caller, req: &CreateEventRequest) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_CREATE_EVENT,
            &RpcRequest::new(req.clone()).with_caller(who.clone()),
        )
        .await
    }

    /// Creates an event and returns it, failing on anything but 201.
    pub async fn create_ok(&self, who: &Caller, req: &CreateEventRequest) -> Result<Event> {
        expect_status(self.create(who, req).await?, 201)
    }

    pub async fn get(&self, who: &Caller, id: Uuid) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_GET_EVENT,
            &RpcRequest::new(NoBody {})
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn rsvp(
        &self,
        who: &Caller,
        id: Uuid,
        status: contracts::events::RsvpStatus,
    ) -> Result<RpcReply<contracts::api::RsvpResult>> {
        self.call(
            subj::RPC_PUT_RSVP,
            &RpcRequest::new(contracts::api::RsvpRequest { status })
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn update(
        &self,
        who: &Caller,
        id: Uuid,
        req: contracts::api::UpdateEventRequest,
    ) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_UPDATE_EVENT,
            &RpcRequest::new(req)
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn cancel(&self, who: &Caller, id: Uuid) -> Result<RpcReply<Event>> {
        self.call(
            subj::RPC_CANCEL_EVENT,
            &RpcRequest::new(NoBody {})
                .with_caller(who.clone())
                .with_param("id", id.to_string()),
        )
        .await
    }

    pub async fn list(
        &self,
        who: &Caller,
        query: &[(&str, &str)],
    ) -> Result<RpcReply<contracts::api::EventPage>> {
        let mut req = RpcRequest::new(NoBody {}).with_caller(who.clone());
        for (k, v) in query {
            req = req.with_query(k, *v);
        }
        self.call(subj::RPC_LIST_EVENTS, &req).await
    }

    /// GET /healthz or /readyz over plain HTTP/1.0; returns the status code.
    pub async fn http_status(&self, path: &str) -> Result<u16> {
        integration::http_status(self.http_port, path).await
    }

    /// Outbox rows not yet published.
    pub async fn outbox_backlog(&self) -> Result<i64> {
        Ok(runtime::outbox::backlog(&self.db).await?)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---- requests and replies ----

pub fn user() -> Caller {
    Caller {
        user_id: Uuid::now_v7(),
        role: Role::User,
    }
}

/// An event starting `starts_in` from now, lasting two hours, in `zone`, written with
/// the zone's offset.
pub fn event_at(starts_in: SignedDuration, zone: &str, capacity: u32) -> CreateEventRequest {
    let start = Timestamp::now() + starts_in;
    let end = start + SignedDuration::from_hours(2);
    CreateEventRequest {
        title: "Rust meetup".into(),
        description: "Talks and pizza".into(),
        starts_at: calendar::domain::render_in_zone(start, zone),
        ends_at: calendar::domain::render_in_zone(end, zone),
        time_zone: zone.into(),
        location: "Berlin".into(),
        capacity,
    }
}

pub fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

// ---- the stream ----

/// Enough of any domain event to check its metadata.
#[derive(Debug, Deserialize)]
pub struct AnyEvent {
    pub meta: EventMeta,
}

/// Every message in the CALENDAR stream, in stream order.
pub async fn stream_messages(js: &jetstream::Context) -> Result<Vec<StreamMessage>> {
    let mut stream = js
        .get_stream(contracts::subjects::CALENDAR_STREAM.name)
        .await?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        out.push(stream.get_raw_message(seq).await?);
    }
    Ok(out)
}

/// Waits until the stream holds `n` messages and returns them.
pub async fn wait_for_messages(js: &jetstream::Context, n: usize) -> Result<Vec<StreamMessage>> {
    let found = poll_until(
        &format!("{n} stream messages"),
        Duration::from_secs(30),
        || async {
            let msgs = stream_messages(js).await.ok()?;
            (msgs.len() >= n).then_some(msgs)
        },
    )
    .await;
    match found {
        Ok(msgs) => Ok(msgs),
        Err(e) => {
            let had = stream_messages(js).await.map(|m| m.len());
            Err(e.context(format!("the stream holds {had:?}")))
        }
    }
}

pub fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// Checks what every published event must carry and returns (subject, event meta)
/// per message: ids and headers agree, message ids are unique.
pub fn check_messages(msgs: &[StreamMessage]) -> Result<Vec<(String, EventMeta)>> {
    use contracts::subjects::headers as h;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for m in msgs {
        let ev: AnyEvent = contracts::wire::decode(&m.payload)?;
        let id = ev.meta.message_id.to_string();
        let subject = m.subject.to_string();
        anyhow::ensure!(
            header(m, h::NATS_MSG_ID) == Some(id.as_str()),
            "Nats-Msg-Id on {subject}"
        );
        anyhow::ensure!(
            header(m, h::MESSAGE_ID) == Some(id.as_str()),
            "Mesh-Message-Id on {subject}"
        );
        let expected_type = match subject.as_str() {
            subj::EVENT_CREATED_V1 => "calendar.event_created",
            subj::EVENT_UPDATED_V1 => "calendar.event_updated",
            subj::EVENT_CANCELLED_V1 => "calendar.event_cancelled",
            subj::RSVP_CHANGED_V1 => "calendar.rsvp_changed",
            other => bail!("unexpected subject {other}"),
        };
        anyhow::ensure!(
            header(m, h::MESSAGE_TYPE) == Some(expected_type),
            "Mesh-Message-Type on {subject}: {:?}",
            header(m, h::MESSAGE_TYPE)
        );
        anyhow::ensure!(
            header(m, h::SCHEMA_VERSION) == Some("1"),
            "Mesh-Schema-Version"
        );
        let version = ev.meta.aggregate_version.to_string();
        anyhow::ensure!(
            header(m, h::AGGREGATE_VERSION) == Some(version.as_str()),
            "Mesh-Aggregate-Version"
        );
        anyhow::ensure!(seen.insert(id.clone()), "duplicate message id {id}");
        out.push((subject, ev.meta));
    }
    Ok(out)
}

/// Per aggregate, versions must strictly increase in stream order.
pub fn check_versions_increase(metas: &[(String, EventMeta)]) -> Result<()> {
    let mut last: BTreeMap<Uuid, u64> = BTreeMap::new();
    for (subject, meta) in metas {
        let prev = last
            .insert(meta.aggregate_id, meta.aggregate_version)
            .unwrap_or(0);
        anyhow::ensure!(
            meta.aggregate_version > prev,
            "{subject}: version {} after {prev}",
            meta.aggregate_version
        );
    }
    Ok(())
}

pub fn count_subject(metas: &[(String, EventMeta)], subject: &str) -> usize {
    metas.iter().filter(|(s, _)| s == subject).count()
}
