//! Token verification and the caller passed to services.

use contracts::Role;
use contracts::api::Jwks;
use contracts::rpc::RpcReply;
use contracts::subjects::auth;
use gateway::auth::KeyStore;
use gateway::{ApiError, AuthRule};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

use crate::helpers::{Signer, assert_problem, claims, spawn_app, spawn_app_with, stub_reply};

#[tokio::test]
async fn a_valid_token_forwards_the_caller() {
    let app = spawn_app().await;
    let me = stub_reply(
        &app.nats,
        auth::RPC_ME,
        RpcReply::ok(json!({"display_name": "Ada"})),
    )
    .await;
    let user = Uuid::now_v7();

    let response = app
        .get("/v1/me", user)
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("send");

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body, json!({"display_name": "Ada"}));
    let seen = me.seen();
    assert_eq!(seen.len(), 1);
    let caller = seen[0].request.caller.clone().expect("caller set");
    assert_eq!(caller.user_id, user);
    assert_eq!(caller.role, Role::User);
    assert_eq!(seen[0].request.body, json!({}));
    let headers = seen[0].headers.clone().expect("headers");
    assert_eq!(
        headers.get("Mesh-Request-Id").map(|v| v.as_str()),
        Some("req-42")
    );
    let traceparent = headers.get("traceparent").expect("trace context injected");
    assert!(traceparent.as_str().starts_with("00-"), "{traceparent}");
}

#[tokio::test]
async fn public_routes_carry_no_caller() {
    let app = spawn_app().await;
    let login = stub_reply(
        &app.nats,
        auth::RPC_LOGIN,
        RpcReply::ok(json!({"ok": true})),
    )
    .await;

    let response = app
        .http
        .post(app.url("/v1/auth/login"))
        .json(&json!({"email": "a@example.com", "password": "secret-password"}))
        .send()
        .await
        .expect("send");

    assert_eq!(response.status(), 200);
    let seen = login.seen();
    assert_eq!(seen[0].request.caller, None);
    assert_eq!(seen[0].request.body["email"], "a@example.com");
}

#[tokio::test]
async fn bad_tokens_are_unauthorized() {
    let app = spawn_app().await;
    let me = stub_reply(&app.nats, auth::RPC_ME, RpcReply::ok(json!({}))).await;
    let user = Uuid::now_v7();
    let expired = app.signer.token(user, Role::User, -60);
    let forged = Signer::new(&app.signer.kid).token(user, Role::User, 300);
    let mut wrong_audience = claims(user, Role::User, 300);
    wrong_audience.aud = "someone-else".into();
    let wrong_audience = app.signer.sign(&wrong_audience);
    let unknown_key = Signer::new("never-published").token(user, Role::User, 300);

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("expired", Some(format!("Bearer {expired}"))),
        ("forged", Some(format!("Bearer {forged}"))),
        ("wrong audience", Some(format!("Bearer {wrong_audience}"))),
        ("unknown key", Some(format!("Bearer {unknown_key}"))),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        ("empty", Some("Bearer ".to_owned())),
        ("basic", Some("Basic dXNlcjpwYXNz".to_owned())),
    ];
    for (name, authorization) in cases {
        let mut request = app.http.get(app.url("/v1/me"));
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        let response = request.send().await.expect("send");
        let www = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert_eq!(www.as_deref(), Some("Bearer"), "{name}");
        assert_problem(response, 401, "unauthorized").await;
    }
    assert_eq!(me.count(), 0, "no bad token reached the service");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let app = spawn_app().await;
    stub_reply(&app.nats, auth::RPC_ME, RpcReply::ok(json!({}))).await;
    let next = Signer::new("rotated-key");
    app.jwks.lock().expect("lock").keys.push(next.jwk());

    let response = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth(next.token(Uuid::now_v7(), Role::User, 300))
        .send()
        .await
        .expect("send");

    assert_eq!(response.status(), 200);
}

/// Verified tokens are remembered (a signature check per request is the costliest step
/// of a cheap request), but not past their key: once the key leaves the key set, the
/// remembered token is refused like any other token of that key.
#[tokio::test]
async fn a_remembered_token_dies_with_its_key() {
    let app = spawn_app_with(|c| c.jwks_refresh = Duration::from_millis(200)).await;
    stub_reply(&app.nats, auth::RPC_ME, RpcReply::ok(json!({}))).await;
    let temporary = Signer::new("short-lived-key");
    app.jwks.lock().expect("lock").keys.push(temporary.jwk());
    let token = temporary.token(Uuid::now_v7(), Role::User, 300);
    let me = |token: String| {
        let request = app.http.get(app.url("/v1/me")).bearer_auth(token);
        async move { request.send().await.expect("send").status().as_u16() }
    };
    // Twice: the second answer comes from the remembered verification.
    assert_eq!(me(token.clone()).await, 200);
    assert_eq!(me(token.clone()).await, 200);

    app.jwks
        .lock()
        .expect("lock")
        .keys
        .retain(|k| k.kid != "short-lived-key");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if me(token.clone()).await == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a token of a retired key still passes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Tokens of the keys still published keep working.
    assert_eq!(me(app.token(Uuid::now_v7())).await, 200);
}

#[tokio::test]
async fn admin_routes_refuse_plain_users() {
    let app = spawn_app().await;
    let keys = KeyStore::new(app.nats.clone(), Duration::from_secs(1), 5);
    keys.install(&Jwks {
        keys: vec![app.signer.jwk()],
    })
    .expect("usable key");
    let headers_for = |role| {
        let mut h = axum::http::HeaderMap::new();
        let token = app.signer.token(Uuid::now_v7(), role, 300);
        h.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        h
    };

    let user = keys
        .authorize(AuthRule::Admin, &headers_for(Role::User))
        .await;
    assert!(matches!(user, Err(ApiError::Forbidden)), "{user:?}");
    let admin = keys
        .authorize(AuthRule::Admin, &headers_for(Role::Admin))
        .await;
    assert_eq!(
        admin.expect("admin passes").map(|c| c.role),
        Some(Role::Admin)
    );
    let public = keys
        .authorize(AuthRule::Public, &axum::http::HeaderMap::new())
        .await;
    assert_eq!(public.expect("public passes"), None);
}
