//! The push service's side of the harness: its `Config`, the service in-process, event
//! fixtures and publishers, request helpers and live subscriptions. NATS, databases,
//! polling and reply checks come from the `integration` crate.
//!
//! Environment: see the `integration` crate (`NATS_SERVER_BIN`, `TEST_DATABASE_URL`,
//! `TEST_BACKENDS`, `TEST_LOG=1` for the service's logs).

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use contracts::DomainEvent;
use contracts::api::{
    ChannelPreferences, Notification, NotificationKind, NotificationPage, NotificationsSince,
    Preferences,
};
use contracts::events::{
    EventCancelledV1, EventCreatedV1, EventMeta, EventSnapshot, EventStatus, EventUpdatedV1,
    PreferencesChangedV1, RsvpChangedV1, RsvpCounts, RsvpStatus, UserRegisteredV1,
};
use contracts::rpc::{Caller, NoBody, Role, RpcReply, RpcRequest};
use contracts::subjects::{headers as h, push as subj};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use push::{Application, Config, StartError, Stats};
use runtime::consumer::RetryPolicy;
use runtime::db::Database;
use serde::{Serialize, de::DeserializeOwned};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use integration::{Backend, NatsServer, TestDb, expect_problem, expect_status};

/// Runs one scenario as two tests, `sqlite` and `postgres` (unless `TEST_BACKENDS`
/// leaves one out).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        integration::backend_tests!(
            "push-test"; [sqlite => Sqlite, postgres => Postgres]; $($name),*
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

// ---- the service ----

/// A fast retry schedule, so a wrongly retried message would show within the test.
pub fn config(nats: &NatsServer, db: &TestDb) -> Config {
    Config {
        common: integration::common_config(&nats.url()),
        database_url: db.url().to_owned(),
        retry: RetryPolicy {
            max_deliver: 4,
            backoff: vec![Duration::from_millis(500), Duration::from_millis(1000)],
        },
        concurrency: 32,
        max_ack_pending: 1000,
        max_event_age: Duration::from_secs(86_400),
        max_in_flight: 64,
    }
}

pub const AUTH_DURABLE: &str = contracts::subjects::durables::PUSH_AUTH;
pub const CALENDAR_DURABLE: &str = contracts::subjects::durables::PUSH_CALENDAR;

pub struct TestApp {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub db: Database,
    pub http_port: u16,
    pub stats: Stats,
    cancel: CancellationToken,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestApp {
    /// Starts the service and waits until it answers requests and both durables exist.
    pub async fn spawn(nats: &NatsServer, db: &TestDb) -> Result<Self> {
        Self::spawn_with(config(nats, db)).await
    }

    pub async fn spawn_with(config: Config) -> Result<Self> {
        let nats_url = config.common.nats_url.clone();
        let app = Application::build(config).await?;
        let http_port = app.http_port();
        let db = app.database().clone();
        let stats = app.stats();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(cancel.clone()));
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&nats_url)
            .await?;
        let js = jetstream::new(client.clone());
        let app = TestApp {
            client,
            js,
            db,
            http_port,
            stats,
            cancel,
            handle: Some(handle),
        };
        app.wait_until_serving().await?;
        Ok(app)
    }

    async fn wait_until_serving(&self) -> Result<()> {
        poll_until("the push endpoints", Duration::from_secs(20), || async {
            self.list(&user(), &[]).await.ok()
        })
        .await?;
        for (stream, durable) in [("AUTH", AUTH_DURABLE), ("CALENDAR", CALENDAR_DURABLE)] {
            poll_until(
                &format!("durable {durable}"),
                Duration::from_secs(20),
                || async {
                    let s = self.js.get_stream(stream).await.ok()?;
                    s.consumer_info(durable).await.ok()
                },
            )
            .await?;
        }
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
        integration::rpc(&self.client, subject, req, Duration::from_secs(10)).await
    }

    pub async fn list(
        &self,
        who: &Caller,
        query: &[(&str, &str)],
    ) -> Result<RpcReply<NotificationPage>> {
        let mut req = RpcRequest::new(NoBody {}).with_caller(who.clone());
        for (k, v) in query {
            req = req.with_query(k, *v);
        }
        self.call(subj::RPC_LIST_NOTIFICATIONS, &req).await
    }

    /// The first page of a user's history (up to 200), failing on anything but 200.
    pub async fn history(&self, who: Uuid) -> Result<NotificationPage> {
        expect_status(self.list(&caller(who), &[("limit", "200")]).await?, 200)
    }

    /// Waits until a user's history holds `n` notifications and returns them.
    pub async fn wait_history(&self, who: Uuid, n: usize) -> Result<Vec<Notification>> {
        poll_until(
            &format!("{n} notifications"),
            Duration::from_secs(30),
            || async {
                let page = self.history(who).await.ok()?;
                (page.items.len() >= n).then_some(page.items)
            },
        )
        .await
    }

    pub async fn mark_read(&self, who: &Caller, id: &str) -> Result<RpcReply<Notification>> {
        self.call(
            subj::RPC_MARK_READ,
            &RpcRequest::new(NoBody {})
                .with_caller(who.clone())
                .with_param("id", id),
        )
        .await
    }

    pub async fn since(
        &self,
        who: &Caller,
        after: Uuid,
        limit: u32,
    ) -> Result<RpcReply<Vec<Notification>>> {
        self.call(
            subj::RPC_NOTIFICATIONS_SINCE,
            &RpcRequest::new(NotificationsSince::after_id(after, limit)).with_caller(who.clone()),
        )
        .await
    }

    /// Publishes a domain event as the outbox relay does and awaits the stream's ack.
    pub async fn publish<E: DomainEvent>(&self, event: &E) -> Result<()> {
        let headers: Vec<(String, String)> = contracts::events::event_headers(event)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        self.publish_raw(E::SUBJECT, &headers, contracts::wire::encode(event)?)
            .await
    }

    /// Publishes the same event again under a new `Nats-Msg-Id` (a replay the stream's
    /// dedupe cannot catch); `Mesh-Message-Id` and the body stay the same.
    pub async fn republish<E: DomainEvent>(&self, event: &E) -> Result<()> {
        let headers: Vec<(String, String)> = contracts::events::event_headers(event)
            .into_iter()
            .map(|(k, v)| {
                if k == h::NATS_MSG_ID {
                    (k.to_owned(), Uuid::now_v7().to_string())
                } else {
                    (k.to_owned(), v)
                }
            })
            .collect();
        self.publish_raw(E::SUBJECT, &headers, contracts::wire::encode(event)?)
            .await
    }

    /// Publishes `event` as the hospital replays a dead letter of `durable` (on `stream`):
    /// on the durable's replay subject, with a new `Nats-Msg-Id` and `Mesh-Replay-Of`.
    pub async fn publish_replay<E: DomainEvent>(
        &self,
        stream: &str,
        durable: &str,
        event: &E,
        park_id: &str,
    ) -> Result<()> {
        let mut headers: Vec<(String, String)> = contracts::events::event_headers(event)
            .into_iter()
            .map(|(k, v)| {
                if k == h::NATS_MSG_ID {
                    (k.to_owned(), format!("replay:{park_id}:1"))
                } else {
                    (k.to_owned(), v)
                }
            })
            .collect();
        headers.push((h::REPLAY_OF.to_owned(), park_id.to_owned()));
        let subject = contracts::subjects::replay_subject(stream, durable, E::SUBJECT)
            .context("a stream with replay subjects")?;
        self.publish_raw(&subject, &headers, contracts::wire::encode(event)?)
            .await
    }

    pub async fn publish_raw(
        &self,
        subject: &str,
        headers: &[(String, String)],
        payload: Vec<u8>,
    ) -> Result<()> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(k.as_str(), v.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), map, payload.into())
            .await?
            .await?;
        anyhow::ensure!(
            !ack.duplicate,
            "the stream dropped {subject} as a duplicate"
        );
        Ok(())
    }

    pub async fn consumer_info(&self, stream: &str, durable: &str) -> Result<consumer::Info> {
        integration::consumer_info(&self.js, stream, durable).await
    }

    /// Waits until a durable has settled (acked or terminated) every message it has.
    pub async fn wait_drained(&self, stream: &str, durable: &str) -> Result<consumer::Info> {
        integration::wait_settled(&self.js, stream, durable, Duration::from_secs(30)).await
    }

    pub async fn wait_auth(&self) -> Result<consumer::Info> {
        self.wait_drained("AUTH", AUTH_DURABLE).await
    }

    pub async fn wait_calendar(&self) -> Result<consumer::Info> {
        self.wait_drained("CALENDAR", CALENDAR_DURABLE).await
    }

    /// Opens a live subscription for `user`, registered with the server before return.
    pub async fn live(&self, user: Uuid) -> Result<Live> {
        let sub = self
            .client
            .subscribe(subj::live_subject(&user))
            .await
            .map_err(|e| anyhow!("subscribe: {e}"))?;
        self.client.flush().await?;
        Ok(Live { sub })
    }

    /// GET /healthz or /readyz over plain HTTP/1.0; returns the status code.
    pub async fn http_status(&self, path: &str) -> Result<u16> {
        integration::http_status(self.http_port, path).await
    }

    /// Rows in a table of the service's database.
    pub async fn count(&self, table: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&self.db.pool)
                .await?,
        )
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A gateway's view of one user's live notifications.
pub struct Live {
    sub: async_nats::Subscriber,
}

/// One live message: the notification and the headers it came with.
pub struct LiveMessage {
    pub notification: Notification,
    pub headers: HeaderMap,
}

impl LiveMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

impl Live {
    pub async fn next(&mut self) -> Result<LiveMessage> {
        let msg = tokio::time::timeout(Duration::from_secs(30), self.sub.next())
            .await
            .context("no live notification in time")?
            .context("live subscription closed")?;
        Ok(LiveMessage {
            notification: contracts::wire::decode(&msg.payload)?,
            headers: msg.headers.unwrap_or_default(),
        })
    }

    /// Asserts that nothing more arrives within a short window (checking an absence
    /// needs some wait; the effects it guards were settled before).
    pub async fn expect_silence(&mut self) -> Result<()> {
        match tokio::time::timeout(Duration::from_millis(500), self.sub.next()).await {
            Err(_) => Ok(()),
            Ok(None) => Ok(()),
            Ok(Some(m)) => {
                let n: Notification = contracts::wire::decode(&m.payload)?;
                bail!("unexpected live notification: {n:?}")
            }
        }
    }
}

// ---- fixtures ----

pub fn caller(user_id: Uuid) -> Caller {
    Caller {
        user_id,
        role: Role::User,
    }
}

pub fn user() -> Caller {
    caller(Uuid::now_v7())
}

pub fn id() -> Uuid {
    Uuid::now_v7()
}

pub fn meta_at(aggregate: Uuid, version: u64, occurred_at: Timestamp) -> EventMeta {
    let mut meta = EventMeta::new(aggregate, version);
    meta.occurred_at = occurred_at;
    meta
}

pub fn registered(user_id: Uuid, name: &str) -> UserRegisteredV1 {
    UserRegisteredV1 {
        meta: EventMeta::new(user_id, 1),
        user_id,
        email: format!("{}@example.com", user_id.simple()),
        display_name: name.into(),
        role: Role::User,
        verification_token: None,
        unsubscribe_token: None,
    }
}

pub fn preferences(user_id: Uuid, version: u64, push: ChannelPreferences) -> PreferencesChangedV1 {
    PreferencesChangedV1 {
        meta: EventMeta::new(user_id, version),
        user_id,
        preferences: Preferences {
            email: ChannelPreferences::default(),
            push,
        },
    }
}

/// A calendar event's history, built the way calendar builds it: every change bumps
/// the version, every RSVP moves the counts.
pub struct EventFixture {
    pub snapshot: EventSnapshot,
    pub version: u64,
    answers: std::collections::HashMap<Uuid, RsvpStatus>,
}

impl EventFixture {
    pub fn new(organizer: Uuid) -> Self {
        let starts_at = Timestamp::now() + SignedDuration::from_hours(24 * 7);
        EventFixture {
            snapshot: EventSnapshot {
                event_id: Uuid::now_v7(),
                organizer_id: organizer,
                title: "Rust meetup".into(),
                description: "Talks and pizza".into(),
                starts_at,
                ends_at: starts_at + SignedDuration::from_hours(2),
                time_zone: "Europe/Berlin".into(),
                location: "Berlin".into(),
                capacity: 100,
                status: EventStatus::Scheduled,
                counts: RsvpCounts::default(),
            },
            version: 0,
            answers: Default::default(),
        }
    }

    pub fn id(&self) -> Uuid {
        self.snapshot.event_id
    }

    fn next_meta(&mut self) -> EventMeta {
        self.version += 1;
        EventMeta::new(self.snapshot.event_id, self.version)
    }

    pub fn created(&mut self) -> EventCreatedV1 {
        EventCreatedV1 {
            meta: self.next_meta(),
            event: self.snapshot.clone(),
        }
    }

    pub fn rsvp(&mut self, attendee: Uuid, status: RsvpStatus) -> RsvpChangedV1 {
        let previous = self.answers.insert(attendee, status);
        let counts = &mut self.snapshot.counts;
        for (s, delta) in [(previous, -1i64), (Some(status), 1)] {
            let slot = match s {
                Some(RsvpStatus::Going) => &mut counts.going,
                Some(RsvpStatus::Maybe) => &mut counts.maybe,
                Some(RsvpStatus::Declined) => &mut counts.declined,
                None => continue,
            };
            *slot = (i64::from(*slot) + delta) as u32;
        }
        RsvpChangedV1 {
            meta: self.next_meta(),
            event: self.snapshot.clone(),
            attendee_id: attendee,
            previous_status: previous,
            status,
        }
    }

    pub fn retitled(&mut self, title: &str) -> EventUpdatedV1 {
        self.snapshot.title = title.into();
        EventUpdatedV1 {
            meta: self.next_meta(),
            event: self.snapshot.clone(),
            time_changed: false,
            changed_fields: vec!["title".into()],
        }
    }

    pub fn moved(&mut self, by: SignedDuration) -> EventUpdatedV1 {
        self.snapshot.starts_at += by;
        self.snapshot.ends_at += by;
        EventUpdatedV1 {
            meta: self.next_meta(),
            event: self.snapshot.clone(),
            time_changed: true,
            changed_fields: vec!["starts_at".into(), "ends_at".into()],
        }
    }

    pub fn cancelled(&mut self) -> EventCancelledV1 {
        self.snapshot.status = EventStatus::Cancelled;
        EventCancelledV1 {
            meta: self.next_meta(),
            event: self.snapshot.clone(),
        }
    }
}

// ---- replies ----

pub fn kinds(items: &[Notification]) -> Vec<NotificationKind> {
    items.iter().map(|n| n.kind).collect()
}

pub fn of_kind(items: &[Notification], kind: NotificationKind) -> Vec<&Notification> {
    items.iter().filter(|n| n.kind == kind).collect()
}
