//! Routing, body checks and how service replies and failures become HTTP responses.

use std::time::{Duration, Instant};

use contracts::rpc::RpcReply;
use contracts::subjects::{auth, calendar};
use contracts::{ErrorCode, Problem};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, stub, stub_reply};

#[tokio::test]
async fn params_query_and_body_reach_the_service() {
    let app = spawn_app().await;
    let rsvp = stub_reply(
        &app.nats,
        calendar::RPC_PUT_RSVP,
        RpcReply::ok(json!({"changed": true})),
    )
    .await;
    let list = stub_reply(
        &app.nats,
        calendar::RPC_LIST_EVENTS,
        RpcReply::ok(json!({"items": []})),
    )
    .await;
    let user = Uuid::now_v7();
    let event = Uuid::now_v7();

    let response = app
        .http
        .put(app.url(&format!(
            "/v1/events/{}/rsvp",
            event.to_string().to_uppercase()
        )))
        .bearer_auth(app.token(user))
        .json(&json!({"status": "going"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.expect("json"),
        json!({"changed": true})
    );
    let seen = &rsvp.seen()[0].request;
    assert_eq!(seen.params.get("id"), Some(&event.to_string()));
    assert_eq!(seen.body, json!({"status": "going"}));

    let response = app
        .get("/v1/events?limit=5&mine=organizing&limit=10", user)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let seen = &list.seen()[0].request;
    assert_eq!(seen.query.get("limit").map(String::as_str), Some("10"));
    assert_eq!(
        seen.query.get("mine").map(String::as_str),
        Some("organizing")
    );
    assert_eq!(seen.body, json!({}), "routes without body send NoBody");
}

#[tokio::test]
async fn the_service_status_is_kept_and_204_has_no_body() {
    let app = spawn_app().await;
    stub_reply(
        &app.nats,
        calendar::RPC_CREATE_EVENT,
        RpcReply::created(json!({"id": "e1"})),
    )
    .await;
    stub_reply(
        &app.nats,
        auth::RPC_LOGOUT,
        RpcReply::Ok {
            status: 204,
            body: serde_json::Value::Null,
        },
    )
    .await;

    let created = app
        .post("/v1/events", Uuid::now_v7())
        .json(&json!({"title": "t"}))
        .send()
        .await
        .expect("send");
    assert_eq!(created.status(), 201);

    let logout = app
        .http
        .post(app.url("/v1/auth/logout"))
        .json(&json!({"refresh_token": "r"}))
        .send()
        .await
        .expect("send");
    assert_eq!(logout.status(), 204);
    assert!(logout.bytes().await.expect("body").is_empty());
}

#[tokio::test]
async fn a_service_problem_passes_through() {
    let app = spawn_app().await;
    stub_reply(
        &app.nats,
        calendar::RPC_PUT_RSVP,
        RpcReply::Err(
            Problem::new(ErrorCode::EventFull)
                .with_detail("no seat left")
                .with_field("status", "full"),
        ),
    )
    .await;

    let response = app
        .http
        .put(app.url(&format!("/v1/events/{}/rsvp", Uuid::now_v7())))
        .bearer_auth(app.token(Uuid::now_v7()))
        .json(&json!({"status": "going"}))
        .send()
        .await
        .expect("send");

    let body = assert_problem(response, 409, "event_full").await;
    assert_eq!(body["detail"], "no seat left");
    assert_eq!(body["errors"][0]["field"], "status");
    assert!(body["trace_id"].is_string(), "trace id filled in: {body}");
}

#[tokio::test]
async fn body_checks_answer_before_forwarding() {
    let app = spawn_app().await;
    let create = stub_reply(
        &app.nats,
        calendar::RPC_CREATE_EVENT,
        RpcReply::created(json!({})),
    )
    .await;
    let user = Uuid::now_v7();

    let malformed = app
        .post("/v1/events", user)
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .expect("send");
    let body = assert_problem(malformed, 400, "malformed_json").await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("EOF")),
        "{body}"
    );

    let wrong_type = app
        .post("/v1/events", user)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_problem(wrong_type, 415, "unsupported_media_type").await;

    let no_type = app
        .post("/v1/events", user)
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_problem(no_type, 415, "unsupported_media_type").await;

    let too_large = app
        .post("/v1/events", user)
        .json(&json!({"title": "x".repeat(70 * 1024)}))
        .send()
        .await
        .expect("send");
    assert_problem(too_large, 413, "payload_too_large").await;

    let chunked = app
        .post("/v1/events", user)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(
            (0..100).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])),
        )))
        .send()
        .await
        .expect("send");
    assert_problem(chunked, 413, "payload_too_large").await;

    assert_eq!(create.count(), 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;

    let missing = app
        .get("/v1/nothing-here", Uuid::now_v7())
        .send()
        .await
        .expect("send");
    assert_problem(missing, 404, "route_not_found").await;

    let wrong_method = app
        .http
        .delete(app.url("/v1/auth/login"))
        .send()
        .await
        .expect("send");
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_problem(wrong_method, 405, "method_not_allowed").await;

    let bad_id = app
        .get("/v1/events/12345", Uuid::now_v7())
        .send()
        .await
        .expect("send");
    assert_problem(bad_id, 400, "bad_request").await;

    // Routes axum serves itself are covered by the same body.
    let post_health = app
        .http
        .post(app.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_problem(post_health, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn no_responders_is_503_at_once() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_secs(30)).await;
    let started = Instant::now();

    let response = app
        .get("/v1/me", Uuid::now_v7())
        .send()
        .await
        .expect("send");

    assert_problem(response, 503, "service_unavailable").await;
    // With a 30 s deadline, anything but an immediate answer would hang the test.
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[tokio::test]
async fn a_silent_service_is_504() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_millis(300)).await;
    let silent = stub(&app.nats, auth::RPC_ME, |_| async { None }).await;

    let response = app
        .get("/v1/me", Uuid::now_v7())
        .send()
        .await
        .expect("send");

    assert_problem(response, 504, "timeout").await;
    assert_eq!(silent.count(), 1);
}

#[tokio::test]
async fn the_http_deadline_is_504_problem() {
    let app = spawn_app_with(|c| {
        c.request_timeout = Duration::from_secs(30);
        c.http_timeout = Duration::from_millis(300);
    })
    .await;
    stub(&app.nats, auth::RPC_ME, |_| async { None }).await;

    let response = app
        .get("/v1/me", Uuid::now_v7())
        .send()
        .await
        .expect("send");

    assert_problem(response, 504, "timeout").await;
}
