//! The mesh observed as one system: every service's `/metrics` after a real journey,
//! one trace across the bus (gateway → calendar → outbox relay → JetStream → email and
//! push) collected by a real OTLP/HTTP receiver, JSON log lines carrying the trace id,
//! and no password or token in any log of a full journey at debug level.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use integration::otlp::{OtlpReceiver, ReceivedSpan, one_tree};
use integration::prom::{Scrape, mesh_metric_names};
use integration::smtp::SmtpServer;
use integration::sse::SseStream;
use integration::{Api, Backend, Mesh, MeshBuilder, StatusCode, poll_until, repo_root};
use serde_json::{Value, json};

use crate::on_each_backend;

const WAIT: Duration = Duration::from_secs(45);

/// The RSVP route as the gateway labels it.
const RSVP_ROUTE: &str = "/v1/events/{id}/rsvp";

/// Registers as an admin (through `AUTH_ADMIN_EMAILS`, see [`full_mesh`]).
const ADMIN_EMAIL: &str = "observer@example.com";

/// Every service, with its subscribers' retries kept slow enough for a loaded machine.
fn full_mesh(backend: Backend, smtp: &SmtpServer) -> MeshBuilder {
    Mesh::builder(backend)
        .with_env("auth", "AUTH_ADMIN_EMAILS", ADMIN_EMAIL)
        .with_service("email")
        .with_service("push")
        .with_service("hospital")
        .with_env("email", "SMTP_URL", &smtp.url())
        .with_env("email", "SMTP_TIMEOUT_MS", "3000")
        .with_env("email", "EMAIL_BACKOFF_MS", "5000,5000")
        .with_env("email", "EMAIL_MAX_DELIVER", "100")
        .with_env("push", "PUSH_BACKOFF_MS", "5000,5000")
        .with_env("push", "PUSH_MAX_DELIVER", "50")
}

/// What the journey left behind.
struct Journey {
    event_id: String,
    /// The organizer's notification stream, held open (the gateway counts it).
    _stream: SseStream,
}

/// Organizer and attendee register; the organizer watches her stream and creates an
/// event; the attendee RSVPs; the attendee's confirmation mail and the organizer's live
/// notification arrive. Also one refused request (no token) and one refused RSVP
/// (invalid status), so the error series exist.
async fn rsvp_journey(api: &Api, smtp: &SmtpServer) -> Result<Journey> {
    let (_, organizer) = api.new_user("Olga Organizer").await?;
    let mut stream = SseStream::open(api, Some(&organizer.access), "").await?;
    let body = json!({
        "title": "Observability meetup",
        "starts_at": "2030-06-01T18:00:00+02:00",
        "ends_at": "2030-06-01T21:00:00+02:00",
        "time_zone": "Europe/Berlin",
        "location": "c-base",
        "capacity": 10,
    });
    let (status, _, event) = api
        .post("/v1/events", Some(&organizer.access), &body)
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "create event: {status} {event}"
    );
    let event_id = event["id"].as_str().context("event id")?.to_owned();

    let (attendee, attendee_tokens) = api.new_user("Alice Attendee").await?;
    let rsvp_path = format!("/v1/events/{event_id}/rsvp");
    let (status, _, body) = api
        .put(
            &rsvp_path,
            Some(&attendee_tokens.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "rsvp: {status} {body}");

    let attendee_email = attendee["email"].as_str().context("email")?.to_owned();
    smtp.wait_for(&attendee_email, WAIT, |m| {
        m.attachment("text/calendar").is_some()
    })
    .await?;
    let (_, live) = stream.next_notification(WAIT).await?;
    ensure!(live["kind"] == "rsvp_received", "live notification: {live}");

    let (status, _, _) = api.get("/v1/events", None).await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "no token: {status}");
    let (status, _, body) = api
        .put(
            &rsvp_path,
            Some(&attendee_tokens.access),
            &json!({"status": "perhaps"}),
        )
        .await?;
    ensure!(status.is_client_error(), "invalid RSVP: {status} {body}");
    Ok(Journey {
        event_id,
        _stream: stream,
    })
}

async fn scrape(http: &reqwest::Client, mesh: &Mesh, service: &str) -> Result<Scrape> {
    Scrape::fetch(http, &mesh.service(service).url("/metrics"))
        .await
        .with_context(|| format!("scraping {service}"))
}

/// A scrape of `service` once its durable `durable` counts `n` messages handled.
async fn scrape_when_handled(
    http: &reqwest::Client,
    mesh: &Mesh,
    service: &str,
    durable: &str,
    n: f64,
) -> Result<Scrape> {
    poll_until(
        WAIT,
        &format!("{service} to settle the journey's messages"),
        || async {
            let s = scrape(http, mesh, service).await.ok()?;
            let handled = s.sum(
                "mesh_consumer_messages_total",
                &[("durable", durable), ("outcome", "handled")],
            )?;
            (handled >= n).then_some(s)
        },
    )
    .await
}

fn at_least(
    scrape: &Scrape,
    what: &str,
    name: &str,
    labels: &[(&str, &str)],
    min: f64,
) -> Result<()> {
    let value = scrape
        .sum(name, labels)
        .with_context(|| format!("{what}: no {name} with {labels:?}"))?;
    ensure!(
        value >= min,
        "{what}: {name}{labels:?} = {value}, expected ≥ {min}"
    );
    Ok(())
}

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?)
}

// ---------------------------------------------------------------------------------------
// Metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reports_the_journey_in_its_metrics() -> Result<()> {
    on_each_backend(metrics_after_a_journey).await
}

async fn metrics_after_a_journey(backend: Backend) -> Result<()> {
    let smtp = SmtpServer::start().await?;
    let mesh = full_mesh(backend, &smtp).start().await?;
    let api = mesh.api();
    let journey = rsvp_journey(&api, &smtp).await?;
    let http = http_client()?;

    // Gateway: traffic by route template, latency, the open stream, the refusal.
    let gateway = scrape(&http, &mesh, "gateway").await?;
    let rsvp = [("route", RSVP_ROUTE), ("method", "PUT"), ("status", "200")];
    at_least(
        &gateway,
        "gateway",
        "mesh_gateway_requests_total",
        &rsvp,
        1.0,
    )?;
    at_least(
        &gateway,
        "gateway",
        "mesh_gateway_request_duration_seconds_count",
        &[("route", RSVP_ROUTE), ("method", "PUT")],
        2.0,
    )?;
    at_least(
        &gateway,
        "gateway",
        "mesh_gateway_requests_total",
        &[("route", RSVP_ROUTE), ("status", "422")],
        1.0,
    )?;
    at_least(
        &gateway,
        "gateway",
        "mesh_gateway_sse_streams_open",
        &[],
        1.0,
    )?;
    at_least(
        &gateway,
        "gateway",
        "mesh_gateway_rejections_total",
        &[("status", "401"), ("reason", "missing_bearer_token")],
        1.0,
    )?;
    ensure!(
        gateway
            .sum("mesh_gateway_requests_in_flight", &[])
            .is_some(),
        "no in-flight gauge"
    );
    // Labels carry templates, never a path with an id in it.
    for s in &gateway.samples {
        for (key, value) in &s.labels {
            ensure!(
                !value.contains(&journey.event_id),
                "{}{{{key}={value}}} carries an event id",
                s.name
            );
        }
    }

    // Calendar: its endpoints, statement latency per use case, the outbox, the pool.
    let calendar = scrape(&http, &mesh, "calendar").await?;
    let put = [("endpoint", "svc.calendar.v1.rsvp.put")];
    at_least(&calendar, "calendar", "mesh_rpc_requests_total", &put, 2.0)?;
    at_least(
        &calendar,
        "calendar",
        "mesh_rpc_request_duration_seconds_count",
        &put,
        2.0,
    )?;
    at_least(
        &calendar,
        "calendar",
        "mesh_rpc_errors_total",
        &[
            ("endpoint", "svc.calendar.v1.rsvp.put"),
            ("code", "validation_failed"),
        ],
        1.0,
    )?;
    at_least(
        &calendar,
        "calendar",
        "mesh_db_query_duration_seconds_count",
        &[
            ("operation", "svc.calendar.v1.rsvp.put"),
            ("statement", "insert"),
        ],
        1.0,
    )?;
    at_least(
        &calendar,
        "calendar",
        "mesh_db_query_duration_seconds_count",
        &[("operation", "outbox.relay"), ("statement", "select")],
        1.0,
    )?;
    at_least(&calendar, "calendar", "mesh_db_pool_connections", &[], 1.0)?;
    at_least(
        &calendar,
        "calendar",
        "mesh_db_pool_max_connections",
        &[],
        1.0,
    )?;
    // Event created + RSVP (the invalid one changed nothing).
    at_least(
        &calendar,
        "calendar",
        "mesh_outbox_published_total",
        &[],
        2.0,
    )?;
    for service in ["calendar", "auth"] {
        // Sampled at scrape time: the relay has caught up once the consumers saw it all.
        let settled = poll_until(WAIT, &format!("{service}'s outbox to drain"), || async {
            let s = scrape(&http, &mesh, service).await.ok()?;
            (s.sum("mesh_outbox_backlog", &[]) == Some(0.0)
                && s.sum("mesh_outbox_oldest_age_seconds", &[]) == Some(0.0))
            .then_some(s)
        })
        .await?;
        at_least(&settled, service, "mesh_outbox_published_total", &[], 1.0)?;
    }
    let auth = scrape(&http, &mesh, "auth").await?;
    at_least(
        &auth,
        "auth",
        "mesh_rpc_requests_total",
        &[("endpoint", "svc.auth.v1.login")],
        2.0,
    )?;

    // Email: the consumer and the SMTP hand-overs (the organizer's notice goes out
    // after the confirmation the journey waited for; the counters follow the acks).
    let email = scrape_when_handled(&http, &mesh, "email", "email-calendar", 2.0).await?;
    at_least(
        &email,
        "email",
        "mesh_consumer_messages_total",
        &[("durable", "email-calendar"), ("outcome", "handled")],
        2.0,
    )?;
    at_least(
        &email,
        "email",
        "mesh_consumer_handle_duration_seconds_count",
        &[("durable", "email-calendar")],
        2.0,
    )?;
    // Two welcome mails, the confirmation, the organizer's notice.
    at_least(
        &email,
        "email",
        "mesh_email_sent_total",
        &[("transport", "smtp")],
        4.0,
    )?;
    at_least(
        &email,
        "email",
        "mesh_email_send_duration_seconds_count",
        &[("transport", "smtp")],
        4.0,
    )?;
    ensure!(
        email.sum("mesh_email_send_failures_total", &[]) == Some(0.0),
        "SMTP failures: {:?}",
        email.sum("mesh_email_send_failures_total", &[])
    );
    ensure!(
        email.sum("mesh_dlq_parked_total", &[]) == Some(0.0),
        "nothing parked"
    );

    // Push: history and live.
    let push = scrape_when_handled(&http, &mesh, "push", "push-calendar", 2.0).await?;
    at_least(
        &push,
        "push",
        "mesh_consumer_messages_total",
        &[("durable", "push-calendar"), ("outcome", "handled")],
        2.0,
    )?;
    at_least(
        &push,
        "push",
        "mesh_push_deliveries_total",
        &[("channel", "history"), ("outcome", "ok")],
        1.0,
    )?;
    at_least(
        &push,
        "push",
        "mesh_push_deliveries_total",
        &[("channel", "live"), ("outcome", "ok")],
        1.0,
    )?;

    // Hospital: every durable's lag and dead letters (refreshed every few seconds).
    let hospital = poll_until(WAIT, "the hospital's consumer gauges", || async {
        let s = scrape(&http, &mesh, "hospital").await.ok()?;
        let depth = s.sum("mesh_dlq_depth", &[("durable", "email-calendar")])?;
        let lag = s.sum("mesh_consumer_pending", &[("durable", "push-calendar")])?;
        (depth == 0.0 && lag == 0.0).then_some(s)
    })
    .await?;
    at_least(&hospital, "hospital", "mesh_consumer_ack_pending", &[], 0.0)?;

    // Every service says what it is, and the union of the names is what dashboards and
    // alert rules may use.
    let mut names = BTreeSet::new();
    for service in ["gateway", "auth", "calendar", "email", "push", "hospital"] {
        let s = scrape(&http, &mesh, service).await?;
        let info = s
            .sum("mesh_build_info", &[("service", service)])
            .with_context(|| format!("{service}: no mesh_build_info"))?;
        ensure!(info == 1.0, "{service}: build info {info}");
        names.extend(s.names());
    }
    dashboards_and_rules_use_only(&names)?;

    // The same picture in a terminal: the real meshctl against the real admin API.
    api.register(ADMIN_EMAIL, "observer password", "Observer")
        .await?;
    let admin = api.login(ADMIN_EMAIL, "observer password").await?;
    let config = tempfile::tempdir()?;
    let status_json = meshctl(&mesh, config.path(), &admin.access, &["status", "--json"])?;
    let status: Value = serde_json::from_str(&status_json)
        .with_context(|| format!("meshctl status --json: {status_json}"))?;
    let outboxes = status["services"]["outboxes"]
        .as_array()
        .with_context(|| format!("no outboxes: {status}"))?;
    let outbox_services: Vec<&str> = outboxes
        .iter()
        .filter_map(|o| o["service"].as_str())
        .collect();
    ensure!(
        outbox_services == ["auth", "calendar"],
        "outboxes reported: {status}"
    );
    ensure!(
        outboxes
            .iter()
            .all(|o| o["backlog"] == 0 && o.get("error").is_none()),
        "outboxes drained: {status}"
    );
    let text = meshctl(&mesh, config.path(), &admin.access, &["status"])?;
    // (The gateway is the HTTP edge, not a NATS service: discovery does not list it.)
    for expected in [
        "calendar",
        "hospital",
        "email-calendar",
        "push-calendar",
        "OUTBOX",
        "DLQ stream: 0 messages",
        "status: ok",
    ] {
        ensure!(
            text.contains(expected),
            "meshctl status lacks {expected:?}:\n{text}"
        );
    }
    drop(journey);
    mesh.shutdown().await
}

/// Runs the meshctl binary against the mesh's gateway with `token`; its stdout.
fn meshctl(mesh: &Mesh, config: &Path, token: &str, args: &[&str]) -> Result<String> {
    let binary = integration::service_binary("meshctl")?;
    let out = std::process::Command::new(binary)
        .args(["--url", &mesh.gateway_url()])
        .args(args)
        .env("MESHCTL_CONFIG", config.join("credentials.json"))
        .env("MESHCTL_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "meshctl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Every `mesh_…` name in the alert rules and the Grafana dashboards is a series the
/// running mesh exports (a renamed metric would otherwise leave an empty panel or an
/// alert that can never fire).
fn dashboards_and_rules_use_only(scraped: &BTreeSet<String>) -> Result<()> {
    let root = repo_root();
    let mut files = vec![
        root.join("compose/prometheus/rules.yml"),
        root.join("compose/prometheus/prometheus.yml"),
    ];
    let dashboards = root.join("compose/grafana/dashboards");
    for entry in std::fs::read_dir(&dashboards)
        .with_context(|| format!("reading {}", dashboards.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    let mut used = 0;
    let mut missing = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for name in mesh_metric_names(&text) {
            used += 1;
            if !scraped.contains(&name) {
                missing.push(format!("{name} ({})", relative(file)));
            }
        }
    }
    ensure!(
        used >= 10,
        "the dashboards and rules name only {used} metrics"
    );
    ensure!(
        missing.is_empty(),
        "named in compose/ but not exported by the mesh: {missing:?}\nexported: {scraped:?}"
    );
    Ok(())
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// One trace across the bus, and the trace id in the logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rsvp_is_one_trace_across_every_service() -> Result<()> {
    on_each_backend(one_trace).await
}

async fn one_trace(backend: Backend) -> Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let smtp = SmtpServer::start().await?;
    let mesh = full_mesh(backend, &smtp)
        .with_env_all("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        // Export within a fraction of a second instead of every 5 s.
        .with_env_all("OTEL_BSP_SCHEDULE_DELAY", "200")
        .with_env_all("LOG_FORMAT", "json")
        // Each service logs every request it handles (runtime's debug lines).
        .with_env_all("RUST_LOG", "info,runtime=debug")
        .start()
        .await?;
    let api = mesh.api();
    let journey = rsvp_journey(&api, &smtp).await?;

    // The gateway's server span of the RSVP names the trace.
    let gateway_span = poll_until(WAIT, "the gateway's span of the RSVP", || async {
        receiver.spans().into_iter().find(|s| {
            s.service == "gateway"
                && s.kind == 2
                && s.attribute("http.route") == Some(RSVP_ROUTE)
                && s.attribute("http.response.status_code") == Some("200")
        })
    })
    .await
    .with_context(|| {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for s in receiver.spans() {
            *seen
                .entry(format!(
                    "{}/{} kind {} route {:?}",
                    s.service,
                    s.name,
                    s.kind,
                    s.attribute("http.route")
                ))
                .or_default() += 1;
        }
        format!("spans received: {seen:#?}")
    })?;
    let trace_id = gateway_span.trace_id.clone();

    // Wait for every hop, then for the tree to be whole (spans arrive as they end).
    let spans = poll_until(WAIT, "the RSVP's spans from all four services", || async {
        let spans = receiver.trace(&trace_id);
        let hops = Hops::find(&spans)?;
        let _ = hops;
        one_tree(&spans).ok()?;
        Some(spans)
    })
    .await
    .with_context(|| {
        let spans = receiver.trace(&trace_id);
        format!(
            "trace {trace_id}: {}\n{:#?}",
            one_tree(&spans).err().unwrap_or_default(),
            spans
                .iter()
                .map(|s| format!(
                    "{}/{} kind {} {}←{}",
                    s.service, s.name, s.kind, s.span_id, s.parent_span_id
                ))
                .collect::<Vec<_>>()
        )
    })?;
    let root = one_tree(&spans).map_err(anyhow::Error::msg)?;
    ensure!(
        root.span_id == gateway_span.span_id,
        "the root is the gateway's HTTP span"
    );
    ensure!(
        root.name == format!("PUT {RSVP_ROUTE}"),
        "the HTTP span is named after its route: {}",
        root.name
    );
    let hops = Hops::find(&spans).context("hops")?;
    // Each hop is the child of the one before it, across processes.
    ensure!(hops.gateway_client.parent_span_id == hops.gateway_server.span_id);
    ensure!(hops.calendar_server.parent_span_id == hops.gateway_client.span_id);
    ensure!(
        is_descendant(&spans, hops.calendar_publish, &hops.calendar_server.span_id),
        "the relay's publish continues the request's trace"
    );
    for consumer in [hops.email_consume, hops.push_consume] {
        ensure!(
            consumer.parent_span_id == hops.calendar_publish.span_id,
            "{}'s consumer span hangs below the publish",
            consumer.service
        );
    }
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    ensure!(
        ["calendar", "email", "gateway", "push"]
            .iter()
            .all(|s| services.contains(s)),
        "services in the trace: {services:?}"
    );

    // JSON logs: every line inside a span carries its trace and span ids, and the
    // RSVP's trace id is in the logs of the services it went through.
    for service in ["gateway", "auth", "calendar", "email", "push", "hospital"] {
        let log = mesh.service(service).log_text();
        let mut in_spans = 0;
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let entry: Value = serde_json::from_str(line)
                .with_context(|| format!("{service}: not a JSON line: {line}"))?;
            if entry.get("span").is_none() {
                continue;
            }
            in_spans += 1;
            let hex_of = |key: &str, len: usize| {
                entry[key]
                    .as_str()
                    .is_some_and(|v| v.len() == len && v.chars().all(|c| c.is_ascii_hexdigit()))
            };
            ensure!(
                hex_of("trace_id", 32) && hex_of("span_id", 16),
                "{service}: a line inside a span without trace and span ids: {line}"
            );
        }
        if ["gateway", "calendar", "email", "push"].contains(&service) {
            ensure!(in_spans > 0, "{service} logged nothing inside a span");
            ensure!(
                log.contains(&format!("\"trace_id\":\"{trace_id}\"")),
                "{service}'s log has no line of trace {trace_id}"
            );
        }
    }
    drop(journey);
    mesh.shutdown().await
}

/// The spans every RSVP must have, one per hop.
struct Hops<'a> {
    gateway_server: &'a ReceivedSpan,
    gateway_client: &'a ReceivedSpan,
    calendar_server: &'a ReceivedSpan,
    calendar_publish: &'a ReceivedSpan,
    email_consume: &'a ReceivedSpan,
    push_consume: &'a ReceivedSpan,
}

impl<'a> Hops<'a> {
    fn find(spans: &'a [ReceivedSpan]) -> Option<Self> {
        let one = |service: &str, kind: i32, name: &str| {
            spans
                .iter()
                .find(|s| s.service == service && s.kind == kind && s.name.contains(name))
        };
        Some(Hops {
            gateway_server: spans.iter().find(|s| {
                s.service == "gateway"
                    && s.kind == 2
                    && s.attribute("http.route") == Some(RSVP_ROUTE)
            })?,
            gateway_client: one("gateway", 3, "svc.calendar.v1.rsvp.put")?,
            calendar_server: one("calendar", 2, "svc.calendar.v1.rsvp.put")?,
            calendar_publish: one("calendar", 4, "calendar.v1.rsvp.changed")?,
            email_consume: one("email", 5, "calendar.v1.rsvp.changed")?,
            push_consume: one("push", 5, "calendar.v1.rsvp.changed")?,
        })
    }
}

fn is_descendant(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &str) -> bool {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut current = span;
    for _ in 0..spans.len() {
        if current.parent_span_id == ancestor {
            return true;
        }
        match by_id.get(current.parent_span_id.as_str()) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// Secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_token_reaches_any_log() -> Result<()> {
    on_each_backend(secrets_stay_out_of_logs).await
}

async fn secrets_stay_out_of_logs(backend: Backend) -> Result<()> {
    let smtp = SmtpServer::start().await?;
    let mesh = full_mesh(backend, &smtp)
        // Everything every crate logs, the chattiest setting there is.
        .with_env_all("RUST_LOG", "debug")
        .start()
        .await?;
    let api = mesh.api();
    let mut secrets: Vec<(&str, String)> = Vec::new();

    let email = integration::unique_email("secret-keeper");
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    secrets.push(("password", password.clone()));
    api.register(&email, &password, "Secret Keeper").await?;
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    secrets.push(("wrong password", wrong.clone()));
    let (status, _, _) = api
        .post(
            integration::LOGIN_PATH,
            None,
            &json!({"email": email, "password": wrong}),
        )
        .await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "wrong password: {status}"
    );
    let tokens = api.login(&email, &password).await?;
    secrets.push(("access token", tokens.access.clone()));
    secrets.push(("refresh token", tokens.refresh.clone()));

    let (status, _, refreshed) = api
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": tokens.refresh}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "refresh: {status} {refreshed}");
    let access = refreshed["access_token"]
        .as_str()
        .context("access")?
        .to_owned();
    let refresh = refreshed["refresh_token"]
        .as_str()
        .context("refresh")?
        .to_owned();
    secrets.push(("refreshed access token", access.clone()));
    secrets.push(("refreshed refresh token", refresh.clone()));

    let (status, _, me) = api.get("/v1/me", Some(&access)).await?;
    ensure!(status == StatusCode::OK, "me: {status} {me}");
    let (status, _, event) = api
        .post(
            "/v1/events",
            Some(&access),
            &json!({
                "title": "Secrets",
                "starts_at": "2030-06-01T18:00:00+02:00",
                "ends_at": "2030-06-01T21:00:00+02:00",
                "time_zone": "Europe/Berlin",
                "capacity": 3,
            }),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "create: {status} {event}");

    let (status, _, ticket) = api
        .request(
            integration::Method::POST,
            "/v1/notifications/stream/ticket",
            Some(&access),
            None,
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "ticket: {status} {ticket}");
    let ticket = ticket["ticket"].as_str().context("ticket")?.to_owned();
    secrets.push(("stream ticket", ticket.clone()));
    let mut stream = SseStream::open(&api, None, &format!("?ticket={ticket}")).await?;
    // A used ticket is refused (and that refusal is logged too).
    let reused = SseStream::open(&api, None, &format!("?ticket={ticket}")).await;
    ensure!(reused.is_err(), "a ticket opens one stream only");

    // Someone RSVPs: the organizer's stream gets it, mails go out.
    let (_, guest) = api.new_user("Guest").await?;
    let event_id = event["id"].as_str().context("event id")?;
    let (status, _, body) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&guest.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "rsvp: {status} {body}");
    stream.next_notification(WAIT).await?;
    smtp.wait_for(&email, WAIT, |m| {
        m.subject.as_deref().is_some_and(|s| s.contains("Guest"))
    })
    .await?;

    let (status, _, _) = api
        .post("/v1/auth/logout", None, &json!({"refresh_token": refresh}))
        .await?;
    ensure!(status.is_success(), "logout: {status}");
    drop(stream);
    // Everything is flushed to the files once the processes have exited.
    let logs: Vec<(String, String)> = {
        let names: Vec<String> = mesh
            .service_names()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut mesh = mesh;
        for name in names.iter().rev() {
            mesh.stop_service(name).await?;
        }
        names
            .iter()
            .map(|n| (n.clone(), mesh.service(n).log_text()))
            .collect()
    };

    let mut debug_lines = 0;
    for (service, log) in &logs {
        debug_lines += log.lines().filter(|l| l.contains("DEBUG")).count();
        for (what, secret) in &secrets {
            let mut needles = vec![secret.as_str()];
            // A JWT's signature alone would be as bad as the token.
            if let Some((_, signature)) = secret.rsplit_once('.') {
                needles.push(signature);
            }
            for needle in needles {
                if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                    bail!("the {what} is in {service}'s log: {line}");
                }
            }
        }
    }
    // The logs really were at debug level (else this test would prove nothing).
    ensure!(
        debug_lines > 100,
        "only {debug_lines} debug lines were logged"
    );
    Ok(())
}
