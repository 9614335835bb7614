//! Rate limits per user and per client address.

use std::num::NonZeroU32;

use contracts::rpc::RpcReply;
use contracts::subjects::auth;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app_with, stub_reply};

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
