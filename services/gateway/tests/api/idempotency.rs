//! `Idempotency-Key` on POST, against the real KV bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use contracts::rpc::RpcReply;
use contracts::subjects::{auth, calendar};
use contracts::{ErrorCode, Problem};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, stub};

/// A create stub answering 201 with a fresh id each time, so replays are recognizable.
async fn create_stub(app: &crate::helpers::TestApp, delay: Duration) -> crate::helpers::Stub {
    stub(
        &app.nats,
        calendar::RPC_CREATE_EVENT,
        move |req| async move {
            tokio::time::sleep(delay).await;
            Some(RpcReply::created(
                json!({"id": Uuid::now_v7(), "title": req.body["title"]}),
            ))
        },
    )
    .await
}

#[tokio::test]
async fn a_retried_post_is_forwarded_once_and_replayed() {
    let app = spawn_app().await;
    let create = create_stub(&app, Duration::ZERO).await;
    let user = Uuid::now_v7();
    let send = || {
        app.post("/v1/events", user)
            .header("idempotency-key", "create-1")
            .json(&json!({"title": "Launch"}))
            .send()
    };

    let first = send().await.expect("send");
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.expect("body");

    let second = send().await.expect("send");
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["content-type"], "application/json");
    assert_eq!(second.text().await.expect("body"), first_body);
    assert_eq!(create.count(), 1, "the service saw one request");

    // The key is the caller's own: another user with the same key is a new request.
    let other = app
        .post("/v1/events", Uuid::now_v7())
        .header("idempotency-key", "create-1")
        .json(&json!({"title": "Launch"}))
        .send()
        .await
        .expect("send");
    assert_eq!(other.status(), 201);
    assert!(other.headers().get("idempotent-replayed").is_none());
    assert_eq!(create.count(), 2);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let app = spawn_app().await;
    let create = create_stub(&app, Duration::ZERO).await;
    let user = Uuid::now_v7();
    let send = |title: &'static str| {
        app.post("/v1/events", user)
            .header("idempotency-key", "k")
            .json(&json!({ "title": title }))
            .send()
    };

    assert_eq!(send("one").await.expect("send").status(), 201);
    assert_problem(
        send("two").await.expect("send"),
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(create.count(), 1);
}

#[tokio::test]
async fn the_same_key_while_in_flight_is_409() {
    let app = spawn_app().await;
    let create = create_stub(&app, Duration::from_millis(1500)).await;
    let user = Uuid::now_v7();
    let request = app
        .post("/v1/events", user)
        .header("idempotency-key", "slow")
        .json(&json!({"title": "Slow"}));
    let retry = request.try_clone().expect("clonable");

    let first = tokio::spawn(request.send());
    create.wait_for(1).await;
    let second = retry.send().await.expect("send");

    assert_problem(second, 409, "idempotency_key_in_flight").await;
    let first = first.await.expect("task").expect("send");
    assert_eq!(first.status(), 201);
    assert_eq!(create.count(), 1);
}

#[tokio::test]
async fn a_server_error_releases_the_key() {
    let app = spawn_app().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let register = stub(&app.nats, auth::RPC_REGISTER, move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            Some(if n == 0 {
                RpcReply::Err(Problem::new(ErrorCode::Internal))
            } else {
                RpcReply::created(json!({"email": "a@example.com"}))
            })
        }
    })
    .await;
    let send = || {
        app.http
            .post(app.url("/v1/auth/register"))
            .header("idempotency-key", "register-1")
            .json(&json!({"email": "a@example.com", "password": "longenough", "display_name": "A"}))
            .send()
    };

    assert_problem(send().await.expect("send"), 500, "internal").await;
    let retried = send().await.expect("send");
    assert_eq!(retried.status(), 201);
    assert!(retried.headers().get("idempotent-replayed").is_none());
    // A 4xx/2xx outcome is kept: a third try replays.
    let replayed = send().await.expect("send");
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(register.count(), 2);
}

#[tokio::test]
async fn an_abandoned_key_is_taken_over() {
    let app = spawn_app_with(|c| {
        c.request_timeout = Duration::from_millis(300);
        c.idempotency_abandon_after = Duration::from_millis(500);
    })
    .await;
    let create = stub(&app.nats, calendar::RPC_CREATE_EVENT, |_| async {
        Some(RpcReply::created(json!({"ok": true})))
    })
    .await;
    // A gateway that died mid-request leaves an in-flight record behind: seed one
    // started long ago, as it would be found in the bucket.
    let user = Uuid::now_v7();
    let key = gateway::idempotency::storage_key(
        gateway::ratelimit::RateKey::User(user),
        &axum::http::Method::POST,
        "/v1/events",
        "/v1/events",
        &gateway::idempotency::IdempotencyKey::parse(&"stale".parse().expect("header"))
            .expect("valid key"),
    );
    let body = json!({"title": "t"});
    let hash = gateway::idempotency::request_hash(
        &axum::http::Method::POST,
        "/v1/events",
        "",
        &serde_json::to_vec(&body).expect("json"),
    );
    let js = async_nats::jetstream::new(app.nats.clone());
    let kv = js
        .get_key_value(contracts::subjects::buckets::IDEMPOTENCY)
        .await
        .expect("bucket provisioned by the gateway");
    let record = json!({"state": "in_flight", "request_hash": hash, "started_at_ms": 0});
    kv.create(&key, serde_json::to_vec(&record).expect("json").into())
        .await
        .expect("seeded");

    let response = app
        .post("/v1/events", user)
        .header("idempotency-key", "stale")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .send()
        .await
        .expect("send");

    assert_eq!(response.status(), 201);
    assert_eq!(create.count(), 1);
}

#[tokio::test]
async fn a_timeout_releases_the_key() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_millis(300)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let create = stub(&app.nats, calendar::RPC_CREATE_EVENT, move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move { (n > 0).then(|| RpcReply::created(json!({"ok": true}))) }
    })
    .await;
    let user = Uuid::now_v7();
    let send = || {
        app.post("/v1/events", user)
            .header("idempotency-key", "t1")
            .json(&json!({"title": "t"}))
            .send()
    };

    assert_problem(send().await.expect("send"), 504, "timeout").await;
    assert_eq!(send().await.expect("send").status(), 201);
    assert_eq!(create.count(), 2);
}

#[tokio::test]
async fn malformed_keys_are_rejected() {
    let app = spawn_app().await;
    let create = stub(&app.nats, calendar::RPC_CREATE_EVENT, |_| async {
        Some(RpcReply::created(json!({})))
    })
    .await;
    for key in ["has space".to_owned(), "x".repeat(256)] {
        let response = app
            .post("/v1/events", Uuid::now_v7())
            .header("idempotency-key", key)
            .json(&json!({"title": "t"}))
            .send()
            .await
            .expect("send");
        assert_problem(response, 400, "bad_request").await;
    }
    assert_eq!(create.count(), 0);
}
