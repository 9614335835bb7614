//! Routes owned by their services: the gateway builds its table and its OpenAPI document
//! from what the services declare in their NATS discovery metadata, and keeps serving
//! (503, not 404) what it knows while no instance runs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use contracts::api::EventPage;
use runtime::routes::Route as Declared;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::fixture;
use crate::helpers::{StubService, TestApp, assert_problem, spawn_discovering_app};

const LIST: &str = "svc.calendar.v1.events.list";
const SUMMARY: &str = "svc.calendar.v1.events.summary";

/// What only the newer calendar answers.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct EventSummary {
    title: String,
    going: u32,
}

/// The calendar of today: one route is enough.
fn calendar_v1() -> Vec<(&'static str, Declared)> {
    vec![(
        LIST,
        Declared::get("/v1/events")
            .user()
            .response::<EventPage>(200)
            .query(&["limit"])
            .summary("List events"),
    )]
}

/// The next calendar: one endpoint more.
fn calendar_v2() -> Vec<(&'static str, Declared)> {
    let mut routes = calendar_v1();
    routes.push((
        SUMMARY,
        Declared::get("/v1/events/{id}/summary")
            .user()
            .response::<EventSummary>(200)
            .summary("An event in brief"),
    ));
    routes
}

/// Polls `GET base+path` (as a user) until it answers `status`; the last response.
async fn poll_status(app: &TestApp, base: &str, path: &str, status: u16) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    let token = app.token(Uuid::now_v7());
    loop {
        let response = app
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("send");
        if response.status() == status {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still answers {} instead of {status}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn openapi(app: &TestApp) -> Value {
    app.http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

/// Polls the OpenAPI document until `ready` holds for it.
async fn poll_openapi(app: &TestApp, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc = openapi(app).await;
        if ready(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "the document never got there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn routes_appear_with_discovery_and_a_newer_replica_adds_its_own() {
    // Only the periodic rounds find anything here.
    let app = spawn_discovering_app(|c| {
        c.discovery_interval = Duration::from_secs(1);
        c.discovery_on_miss = Duration::ZERO;
    })
    .await;
    let user = Uuid::now_v7();
    let response = app.get("/v1/events", user).send().await.expect("send");
    assert_problem(response, 404, "route_not_found").await;

    let _v1 = StubService::start(&app.nats_url, "calendar", "1.0.0", calendar_v1()).await;
    let body: Value = poll_status(&app, &app.base, "/v1/events", 200)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["subject"], LIST);

    // A newer replica with one endpoint more joins while the gateway runs.
    let id = Uuid::now_v7();
    let summary = format!("/v1/events/{id}/summary");
    let response = app.get(&summary, user).send().await.expect("send");
    assert_problem(response, 404, "route_not_found").await;
    let _v2 = StubService::start(&app.nats_url, "calendar", "1.1.0", calendar_v2()).await;
    let body: Value = poll_status(&app, &app.base, &summary, 200)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (&body["version"], &body["subject"]),
        (&json!("1.1.0"), &json!(SUMMARY))
    );
    assert_eq!(body["params"]["id"], id.to_string());
    // What both declare is still served.
    let response = app.get("/v1/events", user).send().await.expect("send");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_request_for_an_unknown_route_makes_the_gateway_look_at_once() {
    // No periodic round will come during the test.
    let app = spawn_discovering_app(|c| {
        c.discovery_interval = Duration::from_secs(3600);
        c.discovery_on_miss = Duration::from_millis(1);
    })
    .await;
    let _calendar = StubService::start(&app.nats_url, "calendar", "1.0.0", calendar_v1()).await;
    let response = app
        .get("/v1/events", Uuid::now_v7())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200, "served on the first request");
}

#[tokio::test]
async fn declarations_outside_the_service_prefixes_are_ignored() {
    let app = spawn_discovering_app(|c| c.discovery_interval = Duration::from_secs(1)).await;
    let mut routes = calendar_v1();
    routes.push((
        "svc.calendar.v1.steal",
        Declared::get("/v1/admin/calendar-secrets").public(),
    ));
    routes.push((
        "svc.calendar.v1.me",
        Declared::get("/v1/me/calendar").public(),
    ));
    routes.push((
        "svc.calendar.v1.stream",
        Declared::post("/v1/notifications/stream").public(),
    ));
    let _calendar = StubService::start(&app.nats_url, "calendar", "1.0.0", routes).await;
    poll_status(&app, &app.base, "/v1/events", 200).await;

    for path in ["/v1/admin/calendar-secrets", "/v1/me/calendar"] {
        let response = app.http.get(app.url(path)).send().await.expect("send");
        assert_problem(response, 404, "route_not_found").await;
    }
    let doc = openapi(&app).await;
    assert!(doc["paths"]["/v1/events"]["get"].is_object());
    assert!(doc["paths"]["/v1/admin/calendar-secrets"].is_null());
    assert!(doc["paths"]["/v1/me/calendar"].is_null());
    assert!(doc["paths"]["/v1/notifications/stream"]["post"].is_null());
}

#[tokio::test]
async fn routes_without_instances_answer_503_and_a_new_gateway_remembers_them() {
    let app = spawn_discovering_app(|c| c.discovery_interval = Duration::from_secs(1)).await;
    let calendar = StubService::start(&app.nats_url, "calendar", "1.0.0", calendar_v1()).await;
    poll_status(&app, &app.base, "/v1/events", 200).await;

    // Every instance gone: the route is known, nothing answers.
    calendar.stop().await;
    let response = poll_status(&app, &app.base, "/v1/events", 503).await;
    assert_eq!(response.headers()["retry-after"], "2");
    assert_problem(response, 503, "service_unavailable").await;
    // ... and stays so over discovery rounds without any calendar instance.
    let until = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < until {
        let response = app
            .get("/v1/events", Uuid::now_v7())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A gateway started now knows the route from the bucket, not from calendar...
    let replica = app.spawn_replica().await;
    let response = app
        .http
        .get(replica.url("/v1/events"))
        .bearer_auth(app.token(Uuid::now_v7()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["retry-after"], "2");
    assert_problem(response, 503, "service_unavailable").await;
    let doc: Value = app
        .http
        .get(replica.url("/openapi.json"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"]["/v1/events"]["get"].is_object());

    // ... and serves it once an instance is back.
    let _back = StubService::start(&app.nats_url, "calendar", "1.0.1", calendar_v1()).await;
    let body: Value = poll_status(&app, &replica.base, "/v1/events", 200)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["version"], "1.0.1");
}

#[tokio::test]
async fn the_openapi_document_lists_discovered_routes_with_their_schemas() {
    let app = spawn_discovering_app(|c| c.discovery_interval = Duration::from_secs(1)).await;
    let before = openapi(&app).await;
    assert!(before["paths"]["/v1/events"].is_null());
    assert!(before["paths"]["/v1/notifications/stream"]["get"].is_object());

    let _calendar = StubService::start(&app.nats_url, "calendar", "1.1.0", calendar_v2()).await;
    let doc = poll_openapi(&app, |d| {
        d["paths"]["/v1/events/{id}/summary"]["get"].is_object()
    })
    .await;
    let op = &doc["paths"]["/v1/events/{id}/summary"]["get"];
    assert_eq!(op["summary"], "An event in brief");
    assert_eq!(
        op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EventSummary"
    );
    assert_eq!(op["parameters"][0]["name"], "id");
    assert_eq!(op["parameters"][0]["schema"]["format"], "uuid");
    assert_eq!(op["security"][0]["bearer"], json!([]));
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["EventSummary"]["properties"]["going"]["type"],
        "integer"
    );
    // With the ones the list's page nests.
    for name in ["EventPage", "Event", "EventStatus", "RsvpCounts"] {
        assert!(schemas[name].is_object(), "{name}");
    }
    let list = &doc["paths"]["/v1/events"]["get"];
    assert!(
        list["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "limit" && p["in"] == "query"),
        "{list}"
    );
}

#[tokio::test]
async fn the_real_services_declarations_make_exactly_the_public_api() {
    let app = spawn_discovering_app(|c| c.discovery_interval = Duration::from_secs(1)).await;
    let mut services = Vec::new();
    for (name, routes) in fixture::declarations() {
        services.push(StubService::start(&app.nats_url, name, "0.1.0", routes).await);
    }
    // Schemas travel once per service: discovery replies stay small.
    for (name, _) in fixture::declarations() {
        let info = app
            .nats
            .request(format!("$SRV.INFO.{name}"), "".into())
            .await
            .expect("info");
        assert!(
            info.payload.len() < 48 * 1024,
            "$SRV.INFO of {name} is {} bytes",
            info.payload.len()
        );
    }

    let native: BTreeSet<&str> = gateway::routes::native_routes()
        .iter()
        .map(|r| r.path)
        .chain(gateway::routes::OWN_PATHS.iter().copied())
        .collect();
    let discovered = |doc: &Value| -> BTreeSet<(String, String, String)> {
        let mut found = BTreeSet::new();
        let Some(paths) = doc["paths"].as_object() else {
            return found;
        };
        for (path, item) in paths {
            if native.contains(path.as_str()) {
                continue;
            }
            for (method, op) in item.as_object().into_iter().flatten() {
                let security: Vec<&Value> =
                    op["security"].as_array().into_iter().flatten().collect();
                let auth = if security.is_empty() {
                    "public"
                } else if security.iter().any(|s| s.get("console_session").is_some()) {
                    "admin"
                } else {
                    "user"
                };
                found.insert((method.to_uppercase(), path.clone(), auth.to_owned()));
            }
        }
        found
    };
    let expected: BTreeSet<(String, String, String)> = fixture::EXPECTED
        .iter()
        .map(|(m, p, a)| ((*m).to_owned(), (*p).to_owned(), (*a).to_owned()))
        .collect();
    let doc = poll_openapi(&app, |d| discovered(d).len() >= expected.len()).await;
    assert_eq!(discovered(&doc), expected);
    // The table the fixture builds (and seeds the other tests with) is the same one.
    let seeded: BTreeSet<(String, String, String)> = fixture::routes()
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.clone(),
                r.auth.as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(seeded, expected);
    for s in services {
        s.stop().await;
    }
}
