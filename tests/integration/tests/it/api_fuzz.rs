//! The public API against its own description: `/openapi.json` of a running mesh
//! documents every route the services declare (with its error bodies, parameters and
//! schemas), and schemathesis, fuzzing every operation with a valid admin token, finds
//! no 5xx and no response that breaks the document.
//!
//! schemathesis comes from PyPI into `.tools/schemathesis` (`cargo xtask tools`, which
//! `cargo xtask test` runs); without it the fuzz run is skipped with a message, except
//! under `CI=true`, where it fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use integration::{Backend, Mesh, Method, backends, poll_until_ok, repo_root, tail_lines};
use runtime::routes::{AuthRule, Route};
use serde_json::{Value, json};

/// Started besides the default auth, calendar and gateway: every service is fuzzed.
const SERVICES: &[&str] = &["email", "push", "hospital"];

/// The admin the fuzz run acts as (so the admin API is fuzzed too).
const FUZZ_ADMIN: &str = "fuzz-admin@example.com";
const FUZZ_PASSWORD: &str = "correct horse battery staple";

/// The pinned schemathesis release, installed by xtask (keep both equal).
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Test cases per operation and phase: with ~40 operations the run takes one to three
/// minutes on two cores. Fewer miss real bugs: at 50 the run did not find the NUL
/// characters that PostgreSQL refuses, at 100 it did.
const MAX_EXAMPLES: &str = "100";

/// A fixed seed, so a failure reproduces.
const SEED: &str = "20261123";

/// The mesh the fuzz run talks to: every service, rate limits out of the way (a fuzzer
/// is one very busy client; 429 is documented, but would hide the routes behind it).
async fn start_mesh(backend: Backend) -> Result<Mesh> {
    let mut builder = Mesh::builder(backend)
        .with_env("auth", "AUTH_ADMIN_EMAILS", FUZZ_ADMIN)
        .with_env("gateway", "GATEWAY_RATE_LIMIT_USER_PER_SEC", "100000")
        .with_env("gateway", "GATEWAY_RATE_LIMIT_USER_BURST", "100000")
        .with_env("gateway", "GATEWAY_RATE_LIMIT_IP_PER_SEC", "100000")
        .with_env("gateway", "GATEWAY_RATE_LIMIT_IP_BURST", "100000")
        // Discovery finds the services that start after the gateway's first round soon.
        .with_env("gateway", "GATEWAY_DISCOVERY_INTERVAL_SECS", "1");
    for service in SERVICES {
        builder = builder.with_service(service);
    }
    builder.start().await
}

/// What a service declares in its discovery metadata: (method, path, declaration).
async fn declared_routes(mesh: &Mesh) -> Result<Vec<Route>> {
    let client = mesh.nats_client().await?;
    let mut routes = Vec::new();
    for service in ["auth", "calendar", "push", "hospital"] {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(format!("$SRV.INFO.{service}"), "".into()),
        )
        .await
        .with_context(|| format!("$SRV.INFO.{service}: no reply"))??;
        let info: Value = serde_json::from_slice(&reply.payload)?;
        let endpoints = info["endpoints"].as_array().cloned().unwrap_or_default();
        for ep in endpoints {
            let metadata: HashMap<String, String> =
                serde_json::from_value(ep["metadata"].clone()).unwrap_or_default();
            if let Some(route) = Route::from_metadata(&metadata)
                .with_context(|| format!("{service} endpoint {}", ep["name"]))?
            {
                routes.push(route);
            }
        }
    }
    ensure!(routes.len() > 30, "only {} routes declared", routes.len());
    Ok(routes)
}

/// Every `$ref` under `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => out.push(r.to_owned()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The codes an error response narrows its problem to, or why it does not.
fn problem_codes(response: &Value) -> Result<Vec<String>> {
    let schema = &response["content"]["application/problem+json"]["schema"];
    ensure!(
        schema["allOf"][0]["$ref"] == "#/components/schemas/Problem",
        "not a Problem: {response}"
    );
    let codes: Vec<String> = schema["allOf"][1]["properties"]["code"]["enum"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ensure!(!codes.is_empty(), "no codes: {response}");
    Ok(codes)
}

/// Everything wrong with how `doc` documents `route` (empty when complete).
fn route_problems(doc: &Value, route: &Route) -> Vec<String> {
    let what = format!("{} {}", route.method, route.path);
    let op = &doc["paths"][&route.path][route.method.as_str().to_lowercase()];
    if !op.is_object() {
        return vec![format!("{what}: not documented")];
    }
    let mut problems = Vec::new();
    let responses = &op["responses"];
    let success = &responses[route.status.to_string()];
    if !success.is_object() {
        problems.push(format!("{what}: no {} response", route.status));
    }
    if let Some(schema) = &route.response {
        let documented = &success["content"]["application/json"]["schema"]["$ref"];
        if *documented != format!("#/components/schemas/{schema}") {
            problems.push(format!("{what}: success body {documented}, not {schema}"));
        }
    }
    if let Some(schema) = &route.request {
        let documented = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        if *documented != format!("#/components/schemas/{schema}") {
            problems.push(format!("{what}: request body {documented}, not {schema}"));
        }
    }
    // The statuses every forwarded route can answer, and those its rules add.
    let mut statuses: Vec<u16> = vec![400, 429, 500, 503, 504];
    if route.auth != AuthRule::Public {
        statuses.push(401);
    }
    if route.auth == AuthRule::Admin {
        statuses.push(403);
    }
    if route.request.is_some() {
        statuses.extend([413, 415, 422]);
    }
    if route.method == Method::POST && route.idempotent {
        statuses.extend([409, 422]);
    }
    for code in route.errors.iter().flatten() {
        statuses.push(code.status());
    }
    for status in statuses {
        let response = &responses[status.to_string()];
        if !response.is_object() {
            problems.push(format!("{what}: no {status} response"));
            continue;
        }
        match problem_codes(response) {
            Ok(codes) => {
                let missing = route
                    .errors
                    .iter()
                    .flatten()
                    .filter(|c| c.status() == status && !codes.iter().any(|d| d == c.as_str()));
                for code in missing {
                    problems.push(format!("{what}: {status} does not list {code}"));
                }
            }
            Err(e) => problems.push(format!("{what}: {status}: {e:#}")),
        }
    }
    let has_security = op["security"].as_array().is_some_and(|s| !s.is_empty());
    if has_security != (route.auth != AuthRule::Public) {
        problems.push(format!("{what}: security {}", op["security"]));
    }
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    let names = route.path.split('/').filter_map(|s| {
        s.strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .map(|n| (n, "path"))
    });
    for (name, place) in names.chain(route.query.iter().map(|q| (q.as_str(), "query"))) {
        let documented = params
            .iter()
            .any(|p| p["name"] == name && p["in"] == place && p["schema"].is_object());
        if !documented {
            problems.push(format!("{what}: {place} parameter {name} undocumented"));
        }
    }
    problems
}

/// Everything wrong with `doc` for the `routes` the services declare.
fn document_problems(doc: &Value, routes: &[Route]) -> Vec<String> {
    let mut problems: Vec<String> = routes.iter().flat_map(|r| route_problems(doc, r)).collect();
    // The gateway's own routes.
    for (method, path) in [
        ("get", "/v1/notifications/stream"),
        ("post", "/v1/notifications/stream/ticket"),
        ("post", "/console/login"),
        ("post", "/console/logout"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ] {
        if !doc["paths"][path][method].is_object() {
            problems.push(format!("{method} {path}: not documented"));
        }
    }
    // Every error response of every operation is a problem with codes.
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for (path, item) in &paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                let is_health = path == "/readyz" && status == "503";
                if status.starts_with(['4', '5'])
                    && !is_health
                    && let Err(e) = problem_codes(response)
                {
                    problems.push(format!("{method} {path} {status}: {e:#}"));
                }
            }
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    for r in all {
        let resolves = r
            .strip_prefix("#/components/schemas/")
            .is_some_and(|name| doc["components"]["schemas"][name].is_object());
        if !resolves {
            problems.push(format!("{r} does not resolve"));
        }
    }
    if !doc["components"]["securitySchemes"]["bearer"].is_object() {
        problems.push("no bearer security scheme".to_owned());
    }
    problems.sort();
    problems.dedup();
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_live_route_and_survives_a_fuzz_run() -> Result<()> {
    let _turn = crate::MACHINE_TURN.lock().await;
    // One backend is enough for the description; the fuzz run goes to PostgreSQL when
    // it is on (it refuses more than SQLite: NUL bytes in text, integer ranges).
    let backend = if backends().contains(&Backend::Postgres) {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let mesh = start_mesh(backend).await?;
    let api = mesh.api();
    let routes = declared_routes(&mesh).await?;

    // Discovery is periodic: wait until the document has caught up with every service.
    let doc = poll_until_ok(
        Duration::from_secs(30),
        "a complete /openapi.json",
        || async {
            let (status, _, doc) = api.get("/openapi.json", None).await?;
            ensure!(status.is_success(), "/openapi.json: {status}");
            let problems = document_problems(&doc, &routes);
            ensure!(problems.is_empty(), "{}", problems.join("\n"));
            Ok(doc)
        },
    )
    .await?;
    let operations: usize = doc["paths"]
        .as_object()
        .map(|p| {
            p.values()
                .filter_map(Value::as_object)
                .map(|o| o.len())
                .sum()
        })
        .unwrap_or_default();
    ensure!(operations >= routes.len() + 8, "{operations} operations");

    let Some(schemathesis) = schemathesis()? else {
        return Ok(());
    };
    api.register(FUZZ_ADMIN, FUZZ_PASSWORD, "Fuzz").await?;
    let tokens = api.login(FUZZ_ADMIN, FUZZ_PASSWORD).await?;
    let (_, _, me) = api.get("/v1/me", Some(&tokens.access)).await?;
    ensure!(me["role"] == "admin", "the fuzz user is no admin: {me}");
    let known = known_ids(&mesh, &tokens.access).await?;
    let outcome = schemathesis
        .run(&mesh.gateway_url(), &tokens.access, &known, operations)
        .await?;
    // The mesh is still whole after the run.
    for service in mesh.service_names() {
        ensure!(
            mesh.service(service).is_ready().await,
            "{service} is not ready after the fuzz run:\n{}",
            tail_lines(&mesh.service(service).log_text(), 40)
        );
    }
    outcome?;
    mesh.shutdown().await
}

/// Ids of things that exist, so the fuzzer reaches past "404 not found": an event the
/// fuzz admin organizes and a notification of theirs (a guest's RSVP to it).
struct KnownIds {
    event: String,
    notification: String,
}

async fn known_ids(mesh: &Mesh, token: &str) -> Result<KnownIds> {
    let api = mesh.api();
    let event = json!({
        "title": "Fuzz meetup",
        "starts_at": "2030-06-01T18:00:00+02:00",
        "ends_at": "2030-06-01T21:00:00+02:00",
        "time_zone": "Europe/Berlin",
        "location": "c-base",
        "capacity": 5,
    });
    let (status, _, event) = api.post("/v1/events", Some(token), &event).await?;
    ensure!(status.is_success(), "create event: {status} {event}");
    let event = event["id"].as_str().context("event id")?.to_owned();
    let (_, guest) = api.new_user("Guest").await?;
    let path = format!("/v1/events/{event}/rsvp");
    let (status, _, body) = api
        .put(&path, Some(&guest.access), &json!({"status": "going"}))
        .await?;
    ensure!(status.is_success(), "RSVP: {status} {body}");
    let notification = poll_until_ok(Duration::from_secs(20), "the RSVP notification", || {
        let api = api.clone();
        async move {
            let (_, _, page) = api.get("/v1/notifications", Some(token)).await?;
            page["items"][0]["id"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no notification yet: {page}"))
        }
    })
    .await?;
    Ok(KnownIds {
        event,
        notification,
    })
}

/// An installed schemathesis.
struct Schemathesis {
    /// The `--target` directory pip installed it into (its `bin/st` and packages).
    dir: PathBuf,
}

/// schemathesis from `$MESH_TOOLS_DIR/schemathesis` (else `<repo>/.tools/schemathesis`),
/// or `None` (with a message) when it is missing outside CI.
fn schemathesis() -> Result<Option<Schemathesis>> {
    let tools = std::env::var_os("MESH_TOOLS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools"));
    let dir = tools.join("schemathesis");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !dir.join("bin/st").is_file() {
        if ci {
            bail!(
                "schemathesis is missing from {} under CI: `cargo xtask test` installs it \
                 (`cargo xtask tools`); the API fuzz run is required in CI",
                dir.display()
            );
        }
        eprintln!(
            "SKIPPED the API fuzz run: no schemathesis in {} (run `cargo xtask tools`, or \
             the tests through `cargo xtask test`)",
            dir.display()
        );
        return Ok(None);
    }
    Ok(Some(Schemathesis { dir }))
}

impl Schemathesis {
    fn command(&self) -> tokio::process::Command {
        let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(self.dir.join("bin/st"))
            .env("PYTHONPATH", &self.dir)
            // No telemetry, no colour codes in the captured output.
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the fuzz run against `base_url`, whose document has `operations`; the outer
    /// error is a failure to run it, the inner one what it found.
    async fn run(
        &self,
        base_url: &str,
        token: &str,
        known: &KnownIds,
        operations: usize,
    ) -> Result<Result<()>> {
        let version = self.command().arg("--version").output().await?;
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        ensure!(
            version.contains(SCHEMATHESIS_VERSION),
            "schemathesis {SCHEMATHESIS_VERSION} expected, found {version:?}"
        );
        let work = tempfile::tempdir()?;
        // Half of the ids the fuzzer puts in these paths are of things that exist.
        let config = format!(
            r#"[dictionaries.events]
values = ["{event}"]

[dictionaries.notifications]
values = ["{notification}"]

[[operations]]
include-path-regex = "^/v1/events/\\{{id\\}}"
parameters = {{ "path.id" = {{ dictionary = "events", probability = 0.5 }} }}

[[operations]]
include-path = "/v1/notifications/{{id}}/read"
parameters = {{ "path.id" = {{ dictionary = "notifications", probability = 0.5 }} }}
"#,
            event = known.event,
            notification = known.notification,
        );
        let config_file = work.path().join("schemathesis.toml");
        std::fs::write(&config_file, config)?;
        let mut cmd = self.command();
        cmd.current_dir(work.path())
            .arg("--config-file")
            .arg(&config_file)
            .arg("run")
            .arg(format!("{base_url}/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance",
            ])
            // The notification stream never ends by design: a fuzzer would only wait
            // for its own timeout. Its inputs (ticket, Last-Event-ID) are covered by the
            // gateway's stream tests.
            .args(["--exclude-path", "/v1/notifications/stream"])
            .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
            .args(["--generation-database", "none", "--no-color"])
            // One worker: with two, hypothesis parses lambda sources in two threads at
            // once, which CPython 3.11 sometimes fails ("AST constructor recursion depth
            // mismatch"), an error of the tool, not of the API.
            .args(["--workers", "1", "--request-timeout", "20"])
            .args(["--max-failures", "50"])
            // Hypothesis' health checks judge the test data generation (too slow, too
            // much filtered), not the API; on a loaded machine they would fail the run
            // for nothing the mesh did.
            .args(["--suppress-health-check", "all"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let output = tokio::time::timeout(Duration::from_secs(600), cmd.output())
            .await
            .context("schemathesis ran for more than 10 minutes")??;
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "schemathesis finished in {:.0?} ({})",
            started.elapsed(),
            output.status
        );
        eprintln!("{}", tail_lines(&text, 30));
        // Exit code 0: every check passed on every operation it tested.
        if !output.status.success() {
            return Ok(Err(anyhow::anyhow!(
                "schemathesis found problems ({}):\n{text}",
                output.status
            )));
        }
        // …and it tested every operation it selected, which is every one but the
        // excluded stream (schemathesis may leave out its own schema URL as well).
        let number = |prefix: &str| {
            text.lines().find_map(|l| {
                let rest = l.trim().strip_prefix(prefix)?;
                rest.trim().split('/').next()?.parse::<usize>().ok()
            })
        };
        let (selected, tested) = (number("Selected:"), number("Tested:"));
        let complete = tested.is_some_and(|t| t + 2 >= operations) && selected == tested;
        if !complete {
            return Ok(Err(anyhow::anyhow!(
                "schemathesis selected {selected:?} and tested {tested:?} of {operations} \
                 operations:\n{text}"
            )));
        }
        Ok(Ok(()))
    }
}
