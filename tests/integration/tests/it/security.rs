//! The security model against the real binaries: login brute-force limits (per account
//! and per client address, through a trusted proxy or not), refresh-token families,
//! signing-key rotation without logging anyone out, and the gateway's closed CORS and
//! body limit.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use contracts::api::Jwks;
use contracts::rpc::{NoBody, RpcRequest};
use integration::{Api, Backend, HeaderMap, Mesh, StatusCode, poll_until, poll_until_ok};
use serde_json::{Value, json};

use crate::on_each_backend;

const PASSWORD: &str = "correct horse battery staple";

/// A login through the gateway, with an optional `X-Forwarded-For`.
async fn login(
    api: &Api,
    email: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> Result<(StatusCode, HeaderMap, Value)> {
    let body = json!({"email": email, "password": password});
    let headers: Vec<(&str, &str)> = forwarded_for
        .map(|f| vec![("x-forwarded-for", f)])
        .unwrap_or_default();
    api.request_with_headers(
        integration::Method::POST,
        integration::LOGIN_PATH,
        None,
        Some(&body),
        &headers,
    )
    .await
}

/// The problem code of an answer, checking the problem+json shape; for a throttled login
/// also `Retry-After` (header and body agree, at least 1 s, at most `max_wait`).
fn code_of(answer: &(StatusCode, HeaderMap, Value), max_wait: u64) -> Result<String> {
    let (status, headers, body) = answer;
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        content_type == "application/problem+json",
        "{status} {content_type}: {body}"
    );
    ensure!(body["status"] == status.as_u16(), "{body}");
    let code = body["code"].as_str().unwrap_or_default().to_owned();
    if code == "login_throttled" {
        ensure!(*status == StatusCode::TOO_MANY_REQUESTS, "{status}");
        let header: u64 = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("a throttled login has Retry-After")?;
        ensure!(
            (1..=max_wait).contains(&header),
            "Retry-After {header} not in 1..={max_wait}"
        );
        ensure!(body["retry_after"] == header, "{body}");
    }
    Ok(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_account_and_per_client() -> Result<()> {
    on_each_backend(login_throttling).await
}

async fn login_throttling(backend: Backend) -> Result<()> {
    let mesh = Mesh::builder(backend)
        .without_service("calendar")
        .with_env("auth", "AUTH_LOGIN_MAX_FAILURES", "3")
        .with_env("auth", "AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS", "6")
        .with_env("auth", "AUTH_LOGIN_LOCKOUT_SECS", "2")
        .with_env("auth", "AUTH_LOGIN_LOCKOUT_MAX_SECS", "2")
        // The test talks to the gateway from 127.0.0.1 as if through a proxy there.
        .with_env("gateway", "GATEWAY_TRUSTED_PROXIES", "127.0.0.1")
        .start()
        .await?;
    let api = mesh.api();
    let email = integration::unique_email("locked");
    api.register(&email, PASSWORD, "Locked").await?;

    // Per account: three failures, then even the right password waits; an unknown
    // account goes exactly the same way. Each from its own client address.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..4 {
        let (password, client) = if i < 3 {
            ("wrong password!", format!("198.51.100.{i}"))
        } else {
            (PASSWORD, "198.51.100.9".to_owned())
        };
        known.push(code_of(
            &login(&api, &email, password, Some(&client)).await?,
            2,
        )?);
        let ghost = login(&api, "ghost@example.com", password, Some(&client)).await?;
        unknown.push(code_of(&ghost, 2)?);
    }
    let expected = [
        "invalid_credentials",
        "invalid_credentials",
        "invalid_credentials",
        "login_throttled",
    ];
    ensure!(known == expected, "known account: {known:?}");
    ensure!(unknown == expected, "unknown account: {unknown:?}");

    // The lockout is bounded: the owner gets in once it is over.
    let started = Instant::now();
    poll_until_ok(Duration::from_secs(15), "the lockout to end", || async {
        api.login(&email, PASSWORD).await
    })
    .await?;
    ensure!(started.elapsed() < Duration::from_secs(10));

    // Per client address (the trusted proxy's X-Forwarded-For): six failures on six
    // accounts, then that client is refused, even for a right password.
    const SPRAYER: &str = "1.2.3.4, 203.0.113.77";
    for i in 0..6 {
        let answer = login(
            &api,
            &format!("spray{i}@example.com"),
            "password1",
            Some(SPRAYER),
        )
        .await?;
        ensure!(
            code_of(&answer, 2)? == "invalid_credentials",
            "{i}: {answer:?}"
        );
    }
    let refused = login(&api, &email, PASSWORD, Some("9.9.9.9, 203.0.113.77")).await?;
    ensure!(code_of(&refused, 2)? == "login_throttled", "{refused:?}");
    // Another client behind the same proxy is not affected.
    let other = login(&api, &email, PASSWORD, Some("203.0.113.78")).await?;
    ensure!(other.0 == StatusCode::OK, "{other:?}");
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_closed_by_default() -> Result<()> {
    on_each_backend(closed_by_default).await
}

/// Default gateway settings: `X-Forwarded-For` is the client's own claim and is ignored,
/// cross-origin preflights get no CORS allowance, and oversized bodies get 413.
async fn closed_by_default(backend: Backend) -> Result<()> {
    let mesh = Mesh::builder(backend)
        .without_service("calendar")
        .with_env("auth", "AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS", "3")
        .start()
        .await?;
    let api = mesh.api();

    // A made-up X-Forwarded-For per attempt does not dodge the per-address limit.
    let mut codes = Vec::new();
    for i in 0..4 {
        let forged = format!("203.0.113.{i}");
        let answer = login(
            &api,
            &format!("spray{i}@example.com"),
            "password1",
            Some(&forged),
        )
        .await?;
        codes.push(code_of(&answer, 60)?);
    }
    ensure!(
        codes
            == [
                "invalid_credentials",
                "invalid_credentials",
                "invalid_credentials",
                "login_throttled"
            ],
        "{codes:?}"
    );

    // A cross-origin preflight gets no CORS header, so a browser refuses the call.
    let preflight = api
        .http()
        .request(integration::Method::OPTIONS, api.url("/v1/auth/login"))
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await?;
    let cors: Vec<String> = preflight
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect();
    ensure!(cors.is_empty(), "CORS headers by default: {cors:?}");

    // A body over GATEWAY_MAX_BODY_BYTES (64 KiB) is refused before it reaches auth.
    let huge = json!({
        "email": "big@example.com",
        "password": PASSWORD,
        "display_name": "x".repeat(70 * 1024),
    });
    // Each on a client of its own: the gateway refuses the body without reading it and
    // closes the connection, and a pooled connection reused in that moment fails the
    // write (broken pipe) before its answer can be read.
    let answer = mesh
        .api()
        .post(integration::REGISTER_PATH, None, &huge)
        .await?;
    ensure!(
        answer.0 == StatusCode::PAYLOAD_TOO_LARGE,
        "{:?} {}",
        answer.0,
        answer.2
    );
    ensure!(code_of(&answer, 60)? == "payload_too_large", "{answer:?}");
    let console = mesh.api().post("/console/login", None, &huge).await?;
    ensure!(code_of(&console, 60)? == "payload_too_large", "{console:?}");
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_logs_out_the_whole_family() -> Result<()> {
    on_each_backend(refresh_family).await
}

async fn refresh(api: &Api, token: &str) -> Result<(StatusCode, HeaderMap, Value)> {
    api.post("/v1/auth/refresh", None, &json!({"refresh_token": token}))
        .await
}

async fn refresh_family(backend: Backend) -> Result<()> {
    let mesh = Mesh::builder(backend)
        .without_service("calendar")
        .start()
        .await?;
    let api = mesh.api();
    let (_, victim) = api.new_user("Victim").await?;
    // The victim refreshes twice; the thief copied the first refresh token.
    let stolen = victim.refresh.clone();
    let (status, _, second) = refresh(&api, &victim.refresh).await?;
    ensure!(status == StatusCode::OK, "{status} {second}");
    let second = second["refresh_token"]
        .as_str()
        .context("token")?
        .to_owned();
    let (status, _, newest) = refresh(&api, &second).await?;
    ensure!(status == StatusCode::OK, "{status} {newest}");
    let newest = newest["refresh_token"]
        .as_str()
        .context("token")?
        .to_owned();

    let replay = refresh(&api, &stolen).await?;
    ensure!(
        replay.0 == StatusCode::UNAUTHORIZED && code_of(&replay, 1)? == "invalid_refresh_token",
        "{replay:?}"
    );
    // The victim's newest token went with it: both must log in again.
    let victim_next = refresh(&api, &newest).await?;
    ensure!(
        victim_next.0 == StatusCode::UNAUTHORIZED
            && code_of(&victim_next, 1)? == "invalid_refresh_token",
        "{victim_next:?}"
    );
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_logs_nobody_out() -> Result<()> {
    on_each_backend(key_rotation).await
}

async fn published_kids(mesh: &Mesh) -> Result<Vec<String>> {
    let client = mesh.nats_client().await?;
    let reply = integration::rpc::<_, Jwks>(
        &client,
        contracts::subjects::auth::RPC_JWKS,
        &RpcRequest::new(NoBody {}),
        Duration::from_secs(5),
    )
    .await?;
    Ok(integration::expect_status(reply, 200)?
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect())
}

/// Part `n` of a JWT (0: header, 1: claims) as JSON; no verification.
fn jwt_part(token: &str, n: usize) -> Result<Value> {
    use base64::Engine;
    let part = token.split('.').nth(n).context("a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn kid_of(token: &str) -> Result<String> {
    jwt_part(token, 0)?["kid"]
        .as_str()
        .map(str::to_owned)
        .context("the token names its key")
}

fn expiry_of(token: &str) -> Result<i64> {
    jwt_part(token, 1)?["exp"].as_i64().context("exp")
}

/// `mesh-auth rotate-key` against auth's database, as an operator runs it.
async fn rotate_key(database_url: String) -> Result<String> {
    let binary = integration::service_binary("auth")?;
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary)
            .arg("rotate-key")
            .env("DATABASE_URL", database_url)
            .env_remove("AUTH_SIGNING_KEY_PEM")
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "rotate-key failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

async fn key_rotation(backend: Backend) -> Result<()> {
    const TTL_SECS: i64 = 4;
    let mesh = Mesh::builder(backend)
        .without_service("calendar")
        .with_env("auth", "AUTH_ACCESS_TOKEN_TTL_SECS", &TTL_SECS.to_string())
        .with_env("auth", "AUTH_SIGNING_KEY_RELOAD_SECS", "1")
        .with_env("auth", "AUTH_SIGNING_KEY_GRACE_SECS", "1")
        .with_env("gateway", "GATEWAY_JWKS_REFRESH_SECS", "1")
        .with_env("gateway", "GATEWAY_JWT_LEEWAY_SECS", "0")
        .start()
        .await?;
    let api = mesh.api();
    let email = integration::unique_email("rotated");
    api.register(&email, PASSWORD, "Rotated").await?;
    let before = api.login(&email, PASSWORD).await?;
    let old_kid = kid_of(&before.access)?;
    let old_expiry = expiry_of(&before.access)?;

    let printed = rotate_key(
        mesh.database_url("auth")
            .context("auth has a database")?
            .to_owned(),
    )
    .await?;
    ensure!(printed.contains("is now active"), "{printed}");

    // New tokens carry the new key once auth reloaded it (within a second), and the
    // gateway accepts them at once (it fetches the JWKS for an unknown kid).
    let (new_kid, after) = poll_until_ok(
        Duration::from_secs(15),
        "a token signed with the new key",
        || async {
            let tokens = api.login(&email, PASSWORD).await?;
            let kid = kid_of(&tokens.access)?;
            ensure!(kid != old_kid, "still signed with the old key");
            Ok((kid, tokens.access))
        },
    )
    .await?;
    let (status, _, body) = api.get("/v1/me", Some(&after)).await?;
    ensure!(status == StatusCode::OK, "new token: {status} {body}");
    let kids = published_kids(&mesh).await?;
    ensure!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "JWKS {kids:?}"
    );

    // The old token keeps working until it expires...
    while jiff::Timestamp::now().as_second() < old_expiry {
        let (status, _, body) = api.get("/v1/me", Some(&before.access)).await?;
        ensure!(
            status == StatusCode::OK,
            "old token before expiry: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ... and only then does its key leave the JWKS, and the gateway's key set.
    poll_until(Duration::from_secs(20), "the old key to retire", || async {
        let kids = published_kids(&mesh).await.ok()?;
        (!kids.contains(&old_kid)).then_some(())
    })
    .await?;
    ensure!(
        jiff::Timestamp::now().as_second() >= old_expiry,
        "retired before the token expired"
    );
    // Expired now, the old token is refused (the gateway allows no clock skew here).
    poll_until_ok(
        Duration::from_secs(10),
        "the expired token refused",
        || async {
            let (status, _, body) = api.get("/v1/me", Some(&before.access)).await?;
            ensure!(
                status == StatusCode::UNAUTHORIZED,
                "expired old token: {status} {body}"
            );
            Ok(())
        },
    )
    .await?;
    let (_, fresh) = api.new_user("Fresh").await?;
    let (status, _, _) = api.get("/v1/me", Some(&fresh.access)).await?;
    ensure!(status == StatusCode::OK);
    mesh.shutdown().await
}
