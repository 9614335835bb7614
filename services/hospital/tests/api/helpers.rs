//! The hospital's side of the harness: its `Config`, the hospital in-process, test
//! subscribers that park real messages through `runtime::consumer`, event fixtures, and
//! request helpers. NATS, databases, polling and reply checks come from the
//! `integration` crate.
//!
//! Environment: see the `integration` crate (`NATS_SERVER_BIN`, `TEST_DATABASE_URL`,
//! `TEST_BACKENDS`, `TEST_LOG=1` for the service's logs).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use contracts::DomainEvent;
use contracts::events::{EventCreatedV1, EventMeta, EventSnapshot, EventStatus, RsvpCounts};
use contracts::hospital::{
    BulkResult, DeadLetter, DeadLetterPage, GroupKey, Job, JobStatus, ReplayRequest, Selection,
};
use contracts::rpc::{Caller, NoBody, Role, RpcReply, RpcRequest};
use contracts::subjects::{self, headers as h, hospital as subj};
use futures::StreamExt;
use hospital::{Application, Config, StartError};
use jiff::{SignedDuration, Timestamp};
use runtime::config::CommonConfig;
use runtime::consumer::{
    ConsumerConfig, Delivery, Handler, HandlerError, RetryPolicy, StartPosition,
};
use runtime::db::Database;
use serde::{Serialize, de::DeserializeOwned};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use integration::{Backend, NatsServer, TestDb, expect_problem};

/// Runs one scenario as two tests, `sqlite` and `postgres` (unless `TEST_BACKENDS`
/// leaves one out).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        integration::backend_tests!(
            "hospital-test"; [sqlite => Sqlite, postgres => Postgres]; $($name),*
        );
    };
}

/// Runs one scenario on SQLite only (what it checks does not touch SQL differences).
#[macro_export]
macro_rules! sqlite_only {
    ($($name:ident),* $(,)?) => {
        integration::backend_tests!("hospital-test"; [sqlite => Sqlite]; $($name),*);
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

// ---- the hospital ----

/// A fast retry schedule; replays unlimited unless a test asks for a rate.
pub fn config(nats: &NatsServer, db: &TestDb) -> Config {
    Config {
        common: CommonConfig {
            shutdown_grace: Duration::from_secs(10),
            ..integration::common_config(&nats.url())
        },
        database_url: db.url().to_owned(),
        dlq_max_bytes: subjects::DLQ_MAX_BYTES,
        dlq_max_age: Duration::from_secs(30 * 24 * 3600),
        replay_rate_per_sec: 0,
        where_scan_limit: 10_000,
        retry: RetryPolicy {
            max_deliver: 4,
            backoff: vec![Duration::from_millis(500), Duration::from_millis(1000)],
        },
        index_concurrency: 16,
        max_in_flight: 64,
    }
}

pub struct TestApp {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub db: Database,
    pub http_port: u16,
    cancel: CancellationToken,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestApp {
    pub async fn spawn(nats: &NatsServer, db: &TestDb) -> Result<Self> {
        Self::spawn_with(config(nats, db)).await
    }

    /// Starts the hospital and waits until it answers requests and indexes.
    pub async fn spawn_with(config: Config) -> Result<Self> {
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
        let app = TestApp {
            client,
            js,
            db,
            http_port,
            cancel,
            handle: Some(handle),
        };
        poll_until(
            "the hospital endpoints",
            Duration::from_secs(20),
            || async { app.list(&[]).await.ok().and_then(|r| r.into_result().ok()) },
        )
        .await?;
        poll_until("the index durable", Duration::from_secs(20), || async {
            let s = app.js.get_stream("DLQ").await.ok()?;
            s.consumer_info(subj::INDEX_DURABLE).await.ok()
        })
        .await?;
        Ok(app)
    }

    /// Stops the hospital and waits until it has drained.
    pub async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .context("hospital did not stop")???;
        }
        Ok(())
    }

    /// Sends one request as the gateway would and decodes the reply.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        subject: &str,
        req: &RpcRequest<B>,
    ) -> Result<RpcReply<T>> {
        integration::rpc(&self.client, subject, req, Duration::from_secs(20)).await
    }

    /// An admin request with query parameters.
    pub async fn get<T: DeserializeOwned>(
        &self,
        subject: &str,
        params: &[(&str, &str)],
        query: &[(&str, &str)],
    ) -> Result<RpcReply<T>> {
        let mut req = RpcRequest::new(NoBody {}).with_caller(admin());
        for (k, v) in params {
            req = req.with_param(k, *v);
        }
        for (k, v) in query {
            req = req.with_query(k, *v);
        }
        self.call(subject, &req).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        subject: &str,
        params: &[(&str, &str)],
        body: B,
    ) -> Result<RpcReply<T>> {
        let mut req = RpcRequest::new(body).with_caller(admin());
        for (k, v) in params {
            req = req.with_param(k, *v);
        }
        self.call(subject, &req).await
    }

    pub async fn list(&self, query: &[(&str, &str)]) -> Result<RpcReply<DeadLetterPage>> {
        self.get(subj::RPC_LIST, &[], query).await
    }

    /// The dead letters matching a query (one page of up to 500), failing on non-200.
    pub async fn dead_letters(&self, query: &[(&str, &str)]) -> Result<Vec<DeadLetter>> {
        let mut q = query.to_vec();
        q.push(("limit", "500"));
        Ok(expect_ok(self.list(&q).await?)?.items)
    }

    /// Waits until the index holds `n` dead letters matching the query.
    pub async fn wait_dead_letters(
        &self,
        query: &[(&str, &str)],
        n: usize,
    ) -> Result<Vec<DeadLetter>> {
        poll_until(
            &format!("{n} dead letters matching {query:?}"),
            Duration::from_secs(30),
            || async {
                let items = self.dead_letters(query).await.ok()?;
                (items.len() >= n).then_some(items)
            },
        )
        .await
    }

    pub async fn replay(&self, selection: Selection, rate: Option<u32>) -> Result<BulkResult> {
        expect_ok(
            self.post(
                subj::RPC_REPLAY,
                &[],
                ReplayRequest {
                    selection,
                    dry_run: false,
                    rate_per_sec: rate,
                    reason: "the bug is fixed".into(),
                },
            )
            .await?,
        )
    }

    pub async fn job(&self, id: Uuid) -> Result<Job> {
        expect_ok(
            self.get(subj::RPC_JOB, &[("id", &id.to_string())], &[])
                .await?,
        )
    }

    /// Waits until a job is no longer running.
    pub async fn wait_job(&self, id: Uuid, timeout: Duration) -> Result<Job> {
        poll_until(&format!("job {id} to end"), timeout, || async {
            let job = self.job(id).await.ok()?;
            (job.status != JobStatus::Running).then_some(job)
        })
        .await
    }

    /// Publishes a domain event as the outbox relay does (with a trace context).
    pub async fn publish<E: DomainEvent>(&self, event: &E, trace_id: &str) -> Result<u64> {
        let mut map = HeaderMap::new();
        for (k, v) in contracts::events::event_headers(event) {
            map.insert(k, v.as_str());
        }
        map.insert(
            h::TRACEPARENT,
            format!("00-{trace_id}-{}-01", &trace_id[..16]).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(E::SUBJECT, map, contracts::wire::encode(event)?.into())
            .await?
            .await?;
        anyhow::ensure!(!ack.duplicate, "dropped as a duplicate");
        Ok(ack.sequence)
    }

    /// The process's Prometheus text from the hospital's `/metrics` (the test
    /// subscribers run in this process, so their counters are there too).
    pub async fn metrics(&self) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("an HTTP response")?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        Ok(body.to_owned())
    }

    /// The value of one counter or gauge line, e.g.
    /// `mesh_dlq_park_refused_total{durable="x"}` (labels in the exporter's order).
    pub async fn metric(&self, name: &str, label: (&str, &str)) -> Result<Option<f64>> {
        let text = self.metrics().await?;
        let needle = format!("{}=\"{}\"", label.0, label.1);
        Ok(text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b))
    }

    /// GET /healthz or /readyz over plain HTTP/1.0; returns the status code.
    pub async fn http_status(&self, path: &str) -> Result<u16> {
        integration::http_status(self.http_port, path).await
    }

    pub async fn consumer_info(&self, stream: &str, durable: &str) -> Result<consumer::Info> {
        integration::consumer_info(&self.js, stream, durable).await
    }

    /// Waits until a durable has settled (acked or terminated) every message it has.
    pub async fn wait_drained(&self, stream: &str, durable: &str) -> Result<consumer::Info> {
        integration::wait_settled(&self.js, stream, durable, Duration::from_secs(30)).await
    }

    /// Messages on subjects matching `filter` in a stream, read through an ephemeral
    /// consumer: (stream sequence, headers).
    pub async fn messages_on(&self, stream: &str, filter: &str) -> Result<Vec<(u64, HeaderMap)>> {
        let s = self.js.get_stream(stream).await?;
        let c = s
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.to_owned(),
                ack_policy: consumer::AckPolicy::None,
                headers_only: true,
                ..Default::default()
            })
            .await?;
        let total = c.cached_info().num_pending;
        let mut out = Vec::new();
        if total == 0 {
            return Ok(out);
        }
        let mut messages = c.stream().max_messages_per_batch(1000).messages().await?;
        while (out.len() as u64) < total {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .context("reading messages")?
                .context("message stream ended")??;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            out.push((seq, m.headers.clone().unwrap_or_default()));
        }
        Ok(out)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---- test subscribers ----

pub const EMAIL: &str = subjects::durables::EMAIL_CALENDAR;
pub const PUSH: &str = subjects::durables::PUSH_CALENDAR;

/// One delivery a test subscriber saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub subject: String,
    pub message_id: Option<String>,
    pub replay_of: Option<String>,
    pub edited_from: Option<String>,
    pub nats_msg_id: Option<String>,
    pub title: String,
    pub ok: bool,
    /// The delivery attempt, from 1.
    pub delivered: i64,
    pub stream_sequence: u64,
    /// When the handler saw it.
    pub at: Instant,
}

/// How a test subscriber fails an event whose title contains "boom" (until
/// [`Subscriber::fix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boom {
    /// Handled like any other event.
    Handled,
    /// Fails permanently: parked at once.
    Permanent,
    /// Fails transiently: retried on the backoff schedule, parked after max deliveries.
    Transient,
}

/// A subscriber that records every delivery and fails "boom" events as told.
pub struct Recorder {
    boom: Boom,
    fixed: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

impl Handler for Recorder {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        let event: EventCreatedV1 = d.decode()?;
        let fail = self.boom != Boom::Handled
            && event.event.title.contains("boom")
            && !self.fixed.load(Ordering::SeqCst);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Seen {
                subject: d.subject.clone(),
                message_id: d.message_id.clone(),
                replay_of: d.replay_of.clone(),
                edited_from: d.header(h::EDITED_FROM).map(str::to_owned),
                nats_msg_id: d.header(h::NATS_MSG_ID).map(str::to_owned),
                title: event.event.title.clone(),
                ok: !fail,
                delivered: d.delivered,
                stream_sequence: d.stream_sequence,
                at: Instant::now(),
            });
        }
        if fail {
            let why = format!(
                "template render failed for event \"{}\" ({})",
                event.event.title, event.meta.message_id
            );
            return Err(match self.boom {
                Boom::Transient => HandlerError::transient(why),
                _ => HandlerError::permanent(why),
            });
        }
        Ok(())
    }
}

/// How a test subscriber runs.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    pub durable: String,
    pub boom: Boom,
    pub retry: RetryPolicy,
    /// Sets the durable's `max_deliver` on the server after `ensure` (which sets the
    /// policy's plus `PARK_RETRY_MARGIN`): a small margin that runs out in a test.
    pub server_max_deliver: Option<i64>,
}

impl SubscriberOptions {
    /// 3 deliveries, 200 ms then 400 ms apart.
    pub fn new(durable: &str, boom: Boom) -> Self {
        SubscriberOptions {
            durable: durable.to_owned(),
            boom,
            retry: RetryPolicy {
                max_deliver: 3,
                backoff: vec![Duration::from_millis(200), Duration::from_millis(400)],
            },
            server_max_deliver: None,
        }
    }
}

/// A running test subscriber on the CALENDAR stream.
pub struct Subscriber {
    pub recorder: Arc<Recorder>,
    cancel: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Subscriber {
    pub async fn start(
        js: &jetstream::Context,
        durable: &str,
        fails_on_boom: bool,
    ) -> Result<Self> {
        let boom = if fails_on_boom {
            Boom::Permanent
        } else {
            Boom::Handled
        };
        Self::start_with(js, SubscriberOptions::new(durable, boom)).await
    }

    pub async fn start_with(js: &jetstream::Context, options: SubscriberOptions) -> Result<Self> {
        let config = ConsumerConfig {
            stream: "CALENDAR",
            durable: options.durable.clone(),
            filter_subjects: vec!["calendar.v1.>".to_owned()],
            start: StartPosition::Beginning,
            retry: options.retry.clone(),
            concurrency: 8,
            max_ack_pending: 1000,
        };
        let recorder = Arc::new(Recorder {
            boom: options.boom,
            fixed: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let mut consumer = runtime::consumer::ensure(js, &config).await?;
        if let Some(max) = options.server_max_deliver {
            let stream = js.get_stream("CALENDAR").await?;
            let mut changed = consumer.cached_info().config.clone();
            changed.max_deliver = max;
            stream.update_consumer(changed).await?;
            consumer = stream
                .get_consumer(&options.durable)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(consumer.cached_info().config.max_deliver == max);
        }
        let cancel = CancellationToken::new();
        let handle = tokio::spawn({
            let js = js.clone();
            let recorder = recorder.clone();
            let cancel = cancel.clone();
            async move {
                let _ = runtime::consumer::run(&js, consumer, config, recorder, cancel).await;
            }
        });
        Ok(Subscriber {
            recorder,
            cancel,
            handle: Some(handle),
        })
    }

    pub fn fix(&self) {
        self.recorder.fixed.store(true, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.recorder
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The deliveries of events with this title, in order.
    pub fn seen_titled(&self, title: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.title == title)
            .collect()
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---- fixtures ----

pub fn admin() -> Caller {
    Caller {
        user_id: Uuid::now_v7(),
        role: Role::Admin,
    }
}

pub fn user() -> Caller {
    Caller {
        user_id: Uuid::now_v7(),
        role: Role::User,
    }
}

pub fn trace_id() -> String {
    Uuid::new_v4().simple().to_string()
}

pub fn event(title: &str) -> EventCreatedV1 {
    let starts_at = Timestamp::now() + SignedDuration::from_hours(24 * 7);
    let event_id = Uuid::now_v7();
    EventCreatedV1 {
        meta: EventMeta::new(event_id, 1),
        event: EventSnapshot {
            event_id,
            organizer_id: Uuid::now_v7(),
            title: title.into(),
            description: "Talks and pizza".into(),
            starts_at,
            ends_at: starts_at + SignedDuration::from_hours(2),
            time_zone: "Europe/Berlin".into(),
            location: "Berlin".into(),
            capacity: 100,
            status: EventStatus::Scheduled,
            counts: RsvpCounts::default(),
        },
    }
}

pub fn group_of(d: &DeadLetter) -> Selection {
    Selection {
        group: Some(GroupKey {
            durable: d.diagnosis.durable.clone(),
            fingerprint: d.fingerprint.clone(),
        }),
        ..Default::default()
    }
}

pub fn ids(ids: &[Uuid]) -> Selection {
    Selection {
        ids: ids.to_vec(),
        ..Default::default()
    }
}

// ---- replies ----

pub fn expect_ok<T: std::fmt::Debug>(reply: RpcReply<T>) -> Result<T> {
    integration::expect_status(reply, 200)
}
