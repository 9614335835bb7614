//! Health, readiness, the OpenAPI document, CORS and graceful shutdown.

use std::time::Duration;

use contracts::rpc::RpcReply;
use contracts::subjects::auth;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, stub};

#[tokio::test]
async fn health_and_readiness_report() {
    let app = spawn_app().await;

    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), 200);
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    let checks: Vec<&str> = ready["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        checks.contains(&"nats") && checks.contains(&"jwks"),
        "{checks:?}"
    );
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn_app().await;

    let response = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("json");

    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for route in crate::fixture::routes() {
        let op = &doc["paths"][&*route.path][route.method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} not documented",
            route.method,
            route.path
        );
        let success = &op["responses"][route.success_status.to_string()];
        assert!(success.is_object(), "{} {}", route.method, route.path);
        let problem = &op["responses"]["500"]["content"]["application/problem+json"]["schema"];
        assert_eq!(problem["allOf"][0]["$ref"], "#/components/schemas/Problem");
        assert_eq!(
            problem["allOf"][1]["properties"]["code"]["enum"][0],
            "internal"
        );
    }
    // The routes the gateway answers itself are documented too.
    for route in gateway::routes::native_routes() {
        let op = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
        let success = &op["responses"][route.success_status.to_string()];
        let documented = match route.response {
            Some((content_type, _)) => success["content"][content_type].is_object(),
            None => success.is_object(),
        };
        assert!(documented, "{} {} not documented", route.method, route.path);
    }
    assert_eq!(
        doc["paths"]["/v1/notifications/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]
            ["schema"]["$ref"],
        "#/components/schemas/Notification"
    );
    assert_eq!(
        doc["paths"]["/v1/notifications/stream/ticket"]["post"]["responses"]["201"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/StreamTicket"
    );
    for schema in [
        "RegisterRequest",
        "TokenResponse",
        "User",
        "CreateEventRequest",
        "UpdateEventRequest",
        "Event",
        "EventPage",
        "RsvpRequest",
        "RsvpResult",
        "RsvpPage",
        "Problem",
        "ErrorCode",
        "FieldError",
        "RsvpCounts",
        "EventStatus",
        "RsvpStatus",
        "Role",
        "Health",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// A browser's preflight for a cross-origin `POST /v1/events` from `origin`.
async fn preflight(app: &crate::helpers::TestApp, origin: &str) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, app.url("/v1/events"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .expect("send")
}

fn cors_headers(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn cors_is_closed_unless_configured() {
    let closed = spawn_app().await;
    let response = closed
        .http
        .get(closed.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("send");
    assert!(cors_headers(&response).is_empty());
    // By default a preflight gets no CORS header at all, so the browser refuses.
    let refused = preflight(&closed, "https://app.example").await;
    assert_eq!(cors_headers(&refused), Vec::<String>::new());

    let open = spawn_app_with(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let allowed = preflight(&open, "https://app.example").await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let header = |name: &str| {
        allowed
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert_eq!(header("access-control-allow-origin"), "https://app.example");
    assert!(header("access-control-allow-methods").contains("post"));
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(
            header("access-control-allow-headers").contains(name),
            "{name} not allowed"
        );
    }
    // An origin that is not listed still gets no allowance.
    let other = preflight(&open, "https://evil.example").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let mut app = spawn_app().await;
    let me = stub(&app.nats, auth::RPC_ME, |_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(RpcReply::ok(json!({"slow": true})))
    })
    .await;
    let request = app.get("/v1/me", Uuid::now_v7()).send();
    let in_flight = tokio::spawn(request);
    me.wait_for(1).await;

    assert!(app.stop().await, "the gateway stopped");

    let response = in_flight.await.expect("task").expect("answered");
    assert_eq!(response.status(), 200);
    assert!(
        app.http.get(app.url("/healthz")).send().await.is_err(),
        "no longer accepting"
    );
}
