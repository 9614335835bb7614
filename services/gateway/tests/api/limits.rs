//! Rate limits per user and per client address, how the client address is found
//! (`X-Forwarded-For` only from trusted proxies) and passed to services, and a service's
//! `Retry-After` (auth's login throttling) reaching the client.

use std::net::IpAddr;
use std::num::NonZeroU32;

use contracts::rpc::RpcReply;
use contracts::subjects::auth;
use contracts::{ErrorCode, Problem};
use gateway::client_addr::TrustedProxies;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, stub_reply};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

#[tokio::test]
async fn public_routes_are_limited_per_address() {
    let app = spawn_app_with(|c| {
        c.rate_limit_ip_per_sec = nz(1);
        c.rate_limit_ip_burst = nz(2);
    })
    .await;
    stub_reply(&app.nats, auth::RPC_LOGIN, RpcReply::ok(json!({}))).await;
    let login = || {
        app.http
            .post(app.url("/v1/auth/login"))
            .json(&json!({"email": "a@example.com", "password": "pw"}))
            .send()
    };

    assert_eq!(login().await.expect("send").status(), 200);
    assert_eq!(login().await.expect("send").status(), 200);
    let limited = login().await.expect("send");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    assert_problem(limited, 429, "rate_limited").await;
}

#[tokio::test]
async fn users_are_limited_each_on_their_own() {
    let app = spawn_app_with(|c| {
        c.rate_limit_user_per_sec = nz(1);
        c.rate_limit_user_burst = nz(1);
    })
    .await;
    stub_reply(&app.nats, auth::RPC_ME, RpcReply::ok(json!({}))).await;
    let alice = Uuid::now_v7();

    assert_eq!(
        app.get("/v1/me", alice)
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let limited = app.get("/v1/me", alice).send().await.expect("send");
    assert!(limited.headers().contains_key("retry-after"));
    assert_problem(limited, 429, "rate_limited").await;
    let bob = app
        .get("/v1/me", Uuid::now_v7())
        .send()
        .await
        .expect("send");
    assert_eq!(bob.status(), 200);
}

#[tokio::test]
async fn services_get_the_client_address_and_forwarded_for_is_ignored_by_default() {
    let app = spawn_app().await;
    let login = stub_reply(&app.nats, auth::RPC_LOGIN, RpcReply::ok(json!({}))).await;
    let me = stub_reply(&app.nats, auth::RPC_ME, RpcReply::ok(json!({}))).await;

    let response = app
        .http
        .post(app.url("/v1/auth/login"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({"email": "a@example.com", "password": "pw"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let response = app
        .get("/v1/me", Uuid::now_v7())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);

    // No trusted proxy is configured: the header is the client's own claim.
    assert_eq!(login.seen()[0].request.client_ip, Some(ip("127.0.0.1")));
    assert_eq!(me.seen()[0].request.client_ip, Some(ip("127.0.0.1")));
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_limits_count_per_client() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies = TrustedProxies::parse("127.0.0.0/8").expect("list");
        c.rate_limit_ip_per_sec = nz(1);
        c.rate_limit_ip_burst = nz(1);
    })
    .await;
    let login = stub_reply(&app.nats, auth::RPC_LOGIN, RpcReply::ok(json!({}))).await;
    let send = |forwarded: &'static str| {
        app.http
            .post(app.url("/v1/auth/login"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"email": "a@example.com", "password": "pw"}))
            .send()
    };

    // The client made up the left entry; the proxy (trusted) appended what it saw.
    assert_eq!(
        send("1.1.1.1, 203.0.113.9").await.expect("send").status(),
        200
    );
    // Each client has its own bucket (burst 1): the same client is limited at once,
    // whatever it claims further left, while another client passes.
    let limited = send("9.9.9.9, 203.0.113.9").await.expect("send");
    assert_problem(limited, 429, "rate_limited").await;
    assert_eq!(send("198.51.100.4").await.expect("send").status(), 200);
    let seen: Vec<_> = login.seen().iter().map(|s| s.request.client_ip).collect();
    assert_eq!(seen, [Some(ip("203.0.113.9")), Some(ip("198.51.100.4"))]);
}

#[tokio::test]
async fn a_services_retry_after_reaches_the_client() {
    let app = spawn_app().await;
    stub_reply(
        &app.nats,
        auth::RPC_LOGIN,
        RpcReply::Err(
            Problem::new(ErrorCode::LoginThrottled)
                .with_detail("too many failed logins; try again in 42 s")
                .with_retry_after(42),
        ),
    )
    .await;
    for path in ["/v1/auth/login", "/console/login"] {
        let response = app
            .http
            .post(app.url(path))
            .json(&json!({"email": "a@example.com", "password": "pw"}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.headers()["retry-after"], "42", "{path}");
        let body = assert_problem(response, 429, "login_throttled").await;
        assert_eq!(body["retry_after"], 42, "{path}");
    }
}
