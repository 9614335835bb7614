//! The harness: a private nats-server, a real SMTP server (aiosmtpd), a fresh database,
//! the email service in-process, and builders for the contract events it consumes.
//!
//! Environment: `NATS_SERVER_BIN` / `MESH_TOOLS_DIR` (see the `integration` crate),
//! `TEST_DATABASE_URL`, `TEST_BACKENDS` (`sqlite`, `postgres` or both), `TEST_LOG=1`.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use contracts::api::{ChannelPreferences, Preferences};
use contracts::events::{
    DomainEvent, EventCancelledV1, EventCreatedV1, EventMeta, EventSnapshot, EventStatus,
    EventUpdatedV1, PasswordResetRequestedV1, PreferencesChangedV1, RsvpChangedV1, RsvpCounts,
    RsvpStatus, UserRegisteredV1,
};
use contracts::rpc::Role;
use contracts::subjects::{self, headers};
use email::config::{DEFAULT_FROM, MAX_ACK_PENDING};
use email::{Application, Config};
use integration::smtp::SmtpServer;
use integration::{Backend, NatsServer, TestDb};
use jiff::Timestamp;
use runtime::config::CommonConfig;
use runtime::consumer::RetryPolicy;
use runtime::db::Database;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use integration::poll_until_ok;

/// How long a test waits for an effect.
pub const WAIT: Duration = Duration::from_secs(30);

/// The base URL the service puts in links.
pub const BASE_URL: &str = "http://mesh.test";

/// Runs one scenario as two tests, `sqlite` and `postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                $crate::helpers::run(super::$name, integration::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                $crate::helpers::run(super::$name, integration::Backend::Postgres).await
            }
        }
    )*};
}

/// Runs a scenario unless `TEST_BACKENDS` leaves its backend out.
pub async fn run<F, Fut>(scenario: F, backend: Backend) -> Result<()>
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    if !integration::backends().contains(&backend) {
        eprintln!("skipped: TEST_BACKENDS leaves out {backend}");
        return Ok(());
    }
    init_logs();
    scenario(backend).await
}

fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        ONCE.call_once(|| std::mem::forget(runtime::telemetry::init("email-test")));
    }
}

/// One running email service (in-process).
pub struct Running {
    pub port: u16,
    pub db: Database,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), email::StartError>>,
}

impl Running {
    /// SIGTERM-equivalent: cancel and wait for the drain.
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .context("the email service did not stop")???;
        Ok(())
    }
}

/// NATS, SMTP, a database and the service.
pub struct TestEnv {
    pub nats: NatsServer,
    pub smtp: SmtpServer,
    pub js: jetstream::Context,
    pub db: TestDb,
    pub app: Option<Running>,
    pub dir: TempDir,
}

impl TestEnv {
    /// Starts everything with a short retry schedule.
    pub async fn start(backend: Backend) -> Result<Self> {
        let nats = NatsServer::start().await?;
        let smtp = SmtpServer::start().await?;
        let dir = tempfile::tempdir()?;
        let db = TestDb::create(backend, dir.path(), "email").await?;
        let js = nats.jetstream().await?;
        // Publishers own the streams; tests publish before the service may have
        // provisioned them.
        runtime::nats::provision_streams(&js, contracts::subjects::ALL_STREAMS).await?;
        let mut env = TestEnv {
            nats,
            smtp,
            js,
            db,
            app: None,
            dir,
        };
        env.app = Some(env.spawn_app().await?);
        Ok(env)
    }

    pub fn config(&self) -> Config {
        Config {
            common: CommonConfig {
                nats_url: self.nats.url(),
                nats_user: None,
                nats_password: None,
                http_addr: "127.0.0.1:0".into(),
                provision: true,
                shutdown_grace: Duration::from_secs(10),
            },
            database_url: self.db.url().to_owned(),
            smtp_url: Some(self.smtp.url()),
            smtp_timeout: Duration::from_secs(3),
            smtp_tls_ca: None,
            file_dir: self.dir.path().join("mail"),
            from: DEFAULT_FROM.into(),
            public_base_url: BASE_URL.into(),
            max_event_age: Duration::from_secs(86_400),
            concurrency: 4,
            retry: RetryPolicy {
                max_deliver: 40,
                backoff: vec![Duration::from_millis(500), Duration::from_millis(700)],
            },
            max_ack_pending: MAX_ACK_PENDING,
        }
    }

    /// Builds and starts one more replica with the default test config.
    pub async fn spawn_app(&self) -> Result<Running> {
        spawn(self.config()).await
    }

    pub fn app(&self) -> Result<&Running> {
        self.app.as_ref().context("the service is not running")
    }

    /// The service's database.
    pub fn database(&self) -> Result<&Database> {
        Ok(&self.app()?.db)
    }
}

/// Starts a service with `config` in this process.
pub async fn spawn(config: Config) -> Result<Running> {
    let app = Application::build(config).await?;
    let port = app.http_port();
    let db = app.database().clone();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
    poll_until_ok(WAIT, "/readyz", || async {
        let status = http_status(port, "/readyz").await?;
        anyhow::ensure!(status == 200, "/readyz answered {status}");
        Ok(())
    })
    .await?;
    Ok(Running {
        port,
        db,
        cancel,
        task,
    })
}

/// The status code of `GET path` on the service's health listener (HTTP/1.0 by hand,
/// to need no client).
pub async fn http_status(port: u16, path: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {text}"))
}

// ---- publishing ----

/// Publishes a contract event the way an outbox relay does; returns its stream sequence.
pub async fn publish<E: DomainEvent>(js: &jetstream::Context, event: &E) -> Result<u64> {
    publish_with(js, event, None, None).await
}

/// Like [`publish`], optionally with another `Nats-Msg-Id` (a republish the stream does
/// not drop) or another `Mesh-Schema-Version`.
pub async fn publish_with<E: DomainEvent>(
    js: &jetstream::Context,
    event: &E,
    nats_msg_id: Option<&str>,
    schema_version: Option<u32>,
) -> Result<u64> {
    let payload = contracts::wire::encode(event)?;
    publish_raw(
        js,
        E::SUBJECT,
        contracts::events::event_headers(event),
        payload,
        nats_msg_id,
        schema_version,
    )
    .await
}

/// Publishes `event` as the hospital replays a dead letter of `durable` (on `stream`):
/// on the durable's replay subject, with a new `Nats-Msg-Id` and `Mesh-Replay-Of`.
pub async fn publish_replay<E: DomainEvent>(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    event: &E,
    park_id: &str,
) -> Result<u64> {
    let mut event_headers = contracts::events::event_headers(event);
    event_headers.push((headers::REPLAY_OF, park_id.to_owned()));
    let subject = subjects::replay_subject(stream, durable, E::SUBJECT)
        .context("a stream with replay subjects")?;
    publish_raw(
        js,
        &subject,
        event_headers,
        contracts::wire::encode(event)?,
        Some(&format!("replay:{park_id}:1")),
        None,
    )
    .await
}

pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    event_headers: Vec<(&'static str, String)>,
    payload: Vec<u8>,
    nats_msg_id: Option<&str>,
    schema_version: Option<u32>,
) -> Result<u64> {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in event_headers {
        let value = match name {
            headers::NATS_MSG_ID => nats_msg_id.map(str::to_owned).unwrap_or(value),
            headers::SCHEMA_VERSION => schema_version.map(|v| v.to_string()).unwrap_or(value),
            _ => value,
        };
        map.insert(name, value.as_str());
    }
    let ack = js
        .publish_with_headers(subject.to_owned(), map, payload.into())
        .await?
        .await?;
    anyhow::ensure!(
        !ack.duplicate,
        "the stream dropped the message as a duplicate"
    );
    Ok(ack.sequence)
}

// ---- consumer state ----

pub async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<consumer::Info> {
    let stream = js.get_stream(stream).await?;
    let mut c: consumer::PullConsumer = stream
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!("no consumer {durable}: {e}"))?;
    Ok(c.info().await?.clone())
}

/// Waits until the durable has settled (acknowledged or terminated) every message up to
/// stream sequence `seq`.
pub async fn wait_settled(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    seq: u64,
) -> Result<consumer::Info> {
    poll_until_ok(WAIT, &format!("{durable} to settle seq {seq}"), || async {
        let info = consumer_info(js, stream, durable).await?;
        anyhow::ensure!(
            info.ack_floor.stream_sequence >= seq && info.num_ack_pending == 0,
            "ack floor {} pending {}",
            info.ack_floor.stream_sequence,
            info.num_ack_pending
        );
        Ok(info)
    })
    .await
}

pub async fn wait_auth(js: &jetstream::Context, seq: u64) -> Result<consumer::Info> {
    wait_settled(js, "AUTH", subjects::durables::EMAIL_AUTH, seq).await
}

pub async fn wait_calendar(js: &jetstream::Context, seq: u64) -> Result<consumer::Info> {
    wait_settled(js, "CALENDAR", subjects::durables::EMAIL_CALENDAR, seq).await
}

// ---- contract events ----

/// A registered user, with its tokens.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub verification_token: String,
    pub unsubscribe_token: String,
}

impl User {
    pub fn new(name: &str) -> Self {
        let id = Uuid::now_v7();
        let short = &id.simple().to_string()[20..];
        User {
            id,
            email: format!("{}-{short}@example.com", name.to_lowercase()),
            name: name.to_owned(),
            verification_token: format!("verify-{short}"),
            unsubscribe_token: format!("unsub-{short}"),
        }
    }

    pub fn registered(&self) -> UserRegisteredV1 {
        UserRegisteredV1 {
            meta: EventMeta::new(self.id, 1),
            user_id: self.id,
            email: self.email.clone(),
            display_name: self.name.clone(),
            role: Role::User,
            verification_token: Some(self.verification_token.clone()),
            unsubscribe_token: Some(self.unsubscribe_token.clone()),
        }
    }

    pub fn password_reset(&self, token: &str) -> PasswordResetRequestedV1 {
        PasswordResetRequestedV1 {
            meta: EventMeta::new(self.id, 2),
            user_id: self.id,
            email: self.email.clone(),
            display_name: self.name.clone(),
            token: token.to_owned(),
            expires_at: Timestamp::now() + jiff::SignedDuration::from_mins(30),
        }
    }

    pub fn preferences(&self, version: u64, email: ChannelPreferences) -> PreferencesChangedV1 {
        PreferencesChangedV1 {
            meta: EventMeta::new(self.id, version),
            user_id: self.id,
            preferences: Preferences {
                email,
                push: ChannelPreferences::default(),
            },
        }
    }
}

/// A calendar event and its running version.
#[derive(Debug, Clone)]
pub struct Event {
    pub snapshot: EventSnapshot,
    pub version: u64,
}

impl Event {
    /// 2030-06-01 16:00-18:00 UTC, i.e. 18:00-20:00 in Berlin (CEST).
    pub fn new(organizer: &User) -> Self {
        Event {
            snapshot: EventSnapshot {
                event_id: Uuid::now_v7(),
                organizer_id: organizer.id,
                title: "Rust & NATS meetup".into(),
                description: "Talks, pizza; questions, answers.".into(),
                starts_at: "2030-06-01T16:00:00Z"
                    .parse()
                    .unwrap_or(Timestamp::UNIX_EPOCH),
                ends_at: "2030-06-01T18:00:00Z"
                    .parse()
                    .unwrap_or(Timestamp::UNIX_EPOCH),
                time_zone: "Europe/Berlin".into(),
                location: "c-base, Berlin".into(),
                capacity: 20,
                status: EventStatus::Scheduled,
                counts: RsvpCounts::default(),
            },
            version: 0,
        }
    }

    fn meta(&mut self) -> EventMeta {
        self.version += 1;
        EventMeta::new(self.snapshot.event_id, self.version)
    }

    pub fn created(&mut self) -> EventCreatedV1 {
        EventCreatedV1 {
            meta: self.meta(),
            event: self.snapshot.clone(),
        }
    }

    pub fn rsvp(
        &mut self,
        attendee: &User,
        previous: Option<RsvpStatus>,
        status: RsvpStatus,
    ) -> RsvpChangedV1 {
        let counts = &mut self.snapshot.counts;
        match previous {
            Some(RsvpStatus::Going) => counts.going -= 1,
            Some(RsvpStatus::Maybe) => counts.maybe -= 1,
            Some(RsvpStatus::Declined) => counts.declined -= 1,
            None => {}
        }
        match status {
            RsvpStatus::Going => counts.going += 1,
            RsvpStatus::Maybe => counts.maybe += 1,
            RsvpStatus::Declined => counts.declined += 1,
        }
        RsvpChangedV1 {
            meta: self.meta(),
            event: self.snapshot.clone(),
            attendee_id: attendee.id,
            previous_status: previous,
            status,
        }
    }

    /// Moves the event by `hours` (a time change) or only retitles it.
    pub fn updated(&mut self, move_by_hours: i64) -> EventUpdatedV1 {
        let shift = jiff::SignedDuration::from_hours(move_by_hours);
        let time_changed = move_by_hours != 0;
        let changed_fields = if time_changed {
            self.snapshot.starts_at += shift;
            self.snapshot.ends_at += shift;
            vec!["starts_at".to_owned(), "ends_at".to_owned()]
        } else {
            self.snapshot.title.push_str(" (updated)");
            vec!["title".to_owned()]
        };
        EventUpdatedV1 {
            meta: self.meta(),
            event: self.snapshot.clone(),
            time_changed,
            changed_fields,
        }
    }

    pub fn cancelled(&mut self) -> EventCancelledV1 {
        self.snapshot.status = EventStatus::Cancelled;
        EventCancelledV1 {
            meta: self.meta(),
            event: self.snapshot.clone(),
        }
    }
}

// ---- mails ----

/// Unfolded content lines of an iCalendar text as (name with parameters, value).
pub fn ics_lines(ics: &str) -> Vec<(String, String)> {
    ics.replace("\r\n ", "")
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.to_owned(), v.to_owned())))
        .collect()
}

/// The value of the first line whose name (with parameters) starts with `prefix`.
pub fn ics_value<'a>(lines: &'a [(String, String)], prefix: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|(n, _)| n == prefix || n.starts_with(&format!("{prefix};")))
        .map(|(_, v)| v.as_str())
}

/// The line (name with parameters) of the first line named `name`.
pub fn ics_name<'a>(lines: &'a [(String, String)], name: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|(n, _)| n == name || n.starts_with(&format!("{name};")))
        .map(|(n, _)| n.as_str())
}

/// Recorded mails in the service's database.
pub async fn sent_count(db: &Database) -> Result<usize> {
    Ok(email::store::sent_mails(db).await?.len())
}
