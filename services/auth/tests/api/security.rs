//! Brute-force limits on login, refresh-token families and signing-key rotation, each on
//! SQLite and PostgreSQL against a real nats-server.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use contracts::api::{LoginRequest, TokenResponse};
use contracts::events::PasswordResetRequestedV1;
use contracts::rpc::{RpcReply, RpcRequest};
use contracts::subjects::auth as subjects;
use contracts::{ErrorCode, Problem};
use sqlx::Row;

use super::{confirm_reset, jwks, login, ok, problem, refresh, request_reset};
use crate::helpers::{self, Backend, PASSWORD, Running, TestApp};

both_backends!(
    failed_logins_lock_an_account_for_a_bounded_time,
    unknown_accounts_are_limited_exactly_like_existing_ones,
    parallel_guesses_cannot_pass_the_limit,
    replicas_share_the_counts,
    failed_logins_are_limited_per_address,
    a_password_reset_ends_a_lockout,
    reuse_of_any_rotated_token_revokes_every_descendant,
    a_rotated_key_signs_new_tokens_and_the_old_one_retires_after_they_expire,
);

/// Limits small enough to hit in a test; the address limit off unless a test sets it.
fn throttled(account_max: u32, address_max: u32) -> auth::throttle::ThrottlePolicy {
    auth::throttle::ThrottlePolicy {
        account_max,
        address_max,
        window: Duration::from_secs(600),
        lockout: Duration::from_secs(2),
        lockout_max: Duration::from_secs(3),
    }
}

async fn login_from(
    app: &TestApp,
    email: &str,
    password: &str,
    ip: &str,
) -> Result<RpcReply<TokenResponse>> {
    let ip: IpAddr = ip.parse()?;
    app.rpc(
        subjects::RPC_LOGIN,
        &RpcRequest::new(LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        })
        .with_client_ip(ip),
    )
    .await
}

/// The code of a failed login, with `Retry-After` checked for a throttled one.
fn outcome(reply: RpcReply<TokenResponse>) -> Result<ErrorCode> {
    let p = problem(reply)?;
    match p.code {
        ErrorCode::InvalidCredentials => {
            ensure!(p.status == 401 && p.retry_after.is_none(), "{p:?}");
        }
        ErrorCode::LoginThrottled => {
            ensure!(p.status == 429, "{p:?}");
            // At least 1 s, at most the longest lockout any test sets.
            let secs = p.retry_after.unwrap_or(0);
            ensure!((1..=600).contains(&secs), "retry after {secs} s: {p:?}");
        }
        other => bail!("unexpected {other}: {p:?}"),
    }
    Ok(p.code)
}

const BAD: ErrorCode = ErrorCode::InvalidCredentials;
const THROTTLED: ErrorCode = ErrorCode::LoginThrottled;

async fn failed_logins_lock_an_account_for_a_bounded_time(backend: Backend) -> Result<()> {
    let app = TestApp::spawn_configured(backend, |c| c.login_throttle = throttled(3, 0)).await?;
    ok(app.register("ada@example.com", "Ada").await?, 201)?;
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(outcome(
            login(&app, "ada@example.com", "wrong guess").await?,
        )?);
    }
    // Past the limit even the right password is refused: the lock is checked before
    // the password, so the lock cannot be used to test guesses.
    codes.push(outcome(login(&app, "ada@example.com", PASSWORD).await?)?);
    codes.push(outcome(
        login(&app, " ADA@example.com", "wrong guess").await?,
    )?);
    assert_eq!(codes, [BAD, BAD, BAD, THROTTLED, THROTTLED]);

    // The lockout ends by itself (2 s here), and the owner gets in.
    let locked_at = Instant::now();
    let tokens = integration::poll_until_ok(Duration::from_secs(10), "the lockout to end", || {
        let app = &app;
        async move { ok(login(app, "ada@example.com", PASSWORD).await?, 200) }
    })
    .await?;
    assert!(!tokens.access_token.is_empty());
    assert!(locked_at.elapsed() < Duration::from_secs(6));

    // A success starts the count afresh: three more failures before the next lock.
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(outcome(
            login(&app, "ada@example.com", "wrong guess").await?,
        )?);
    }
    assert_eq!(codes, [BAD, BAD, BAD, THROTTLED]);
    app.shutdown().await
}

async fn unknown_accounts_are_limited_exactly_like_existing_ones(backend: Backend) -> Result<()> {
    let app = TestApp::spawn_configured(backend, |c| c.login_throttle = throttled(3, 0)).await?;
    ok(app.register("real@example.com", "Real").await?, 201)?;
    let mut real = Vec::new();
    let mut ghost = Vec::new();
    for _ in 0..5 {
        real.push(problem(
            login(&app, "real@example.com", "wrong guess").await?,
        )?);
        ghost.push(problem(
            login(&app, "ghost@example.com", "wrong guess").await?,
        )?);
    }
    let shape = |p: &Problem| (p.code, p.status, p.detail.clone(), p.errors.clone());
    let real_shapes: Vec<_> = real.iter().map(shape).collect();
    let ghost_shapes: Vec<_> = ghost.iter().map(shape).collect();
    assert_eq!(real_shapes[..3], ghost_shapes[..3]);
    let codes = |ps: &[Problem]| ps.iter().map(|p| p.code).collect::<Vec<_>>();
    assert_eq!(codes(&real), [BAD, BAD, BAD, THROTTLED, THROTTLED]);
    assert_eq!(codes(&ghost), codes(&real));
    app.shutdown().await
}

async fn parallel_guesses_cannot_pass_the_limit(backend: Backend) -> Result<()> {
    let app = TestApp::spawn_configured(backend, |c| c.login_throttle = throttled(3, 0)).await?;
    ok(app.register("burst@example.com", "Burst").await?, 201)?;
    // Twelve guesses at once: attempts are reserved before the (slow) password check, so
    // exactly three are checked, however they interleave.
    let guesses = (0..12).map(|i| {
        let app = &app;
        async move { login(app, "burst@example.com", &format!("guess number {i}")).await }
    });
    let mut codes = Vec::new();
    for reply in futures::future::join_all(guesses).await {
        codes.push(outcome(reply?)?);
    }
    let bad = codes.iter().filter(|c| **c == BAD).count();
    assert_eq!((bad, codes.len() - bad), (3, 9), "{codes:?}");
    app.shutdown().await
}

async fn replicas_share_the_counts(backend: Backend) -> Result<()> {
    let policy = throttled(3, 0);
    let mut app = TestApp::spawn_configured(backend, |c| c.login_throttle = policy).await?;
    ok(app.register("shared@example.com", "Shared").await?, 201)?;
    let mut second_config = helpers::config(&app.nats.url(), app.db.url(), true);
    second_config.login_throttle = policy;
    let second = Running::start(second_config).await?;
    // Two failures while both replicas answer (the queue group spreads them) ...
    for _ in 0..2 {
        assert_eq!(
            outcome(login(&app, "shared@example.com", "wrong guess").await?)?,
            BAD
        );
    }
    // ... then the first replica goes away: the second knows the two failures.
    if let Some(first) = app.service.take() {
        first.stop().await?;
    }
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(outcome(
            login(&app, "shared@example.com", "wrong guess").await?,
        )?);
    }
    assert_eq!(codes, [BAD, THROTTLED]);
    app.service = Some(second);
    app.shutdown().await
}

async fn failed_logins_are_limited_per_address(backend: Backend) -> Result<()> {
    let app = TestApp::spawn_configured(backend, |c| c.login_throttle = throttled(100, 3)).await?;
    ok(app.register("victim@example.com", "Victim").await?, 201)?;
    ok(app.register("nat@example.com", "Nat").await?, 201)?;
    const ATTACKER: &str = "203.0.113.66";
    // A different account each time, so only the address limit can catch it.
    let mut codes = Vec::new();
    for i in 0..3 {
        let email = format!("sprayed{i}@example.com");
        codes.push(outcome(
            login_from(&app, &email, "password1", ATTACKER).await?,
        )?);
    }
    codes.push(outcome(
        login_from(&app, "victim@example.com", PASSWORD, ATTACKER).await?,
    )?);
    assert_eq!(codes, [BAD, BAD, BAD, THROTTLED]);
    // Another address is not affected, nor is the victim's account.
    ok(
        login_from(&app, "victim@example.com", PASSWORD, "198.51.100.1").await?,
        200,
    )?;
    // IPv6 clients count by /64: another address in the same /64 is the same client.
    const V6: &str = "2001:db8:7:7::1";
    for i in 0..3 {
        let email = format!("v6-{i}@example.com");
        outcome(login_from(&app, &email, "password1", V6).await?)?;
    }
    let same_64 = login_from(&app, "victim@example.com", PASSWORD, "2001:db8:7:7:ffff::2").await?;
    assert_eq!(outcome(same_64)?, THROTTLED);
    // Successful logins do not add up: many users behind one NAT are fine.
    const NAT: &str = "192.0.2.10";
    for _ in 0..10 {
        ok(
            login_from(&app, "nat@example.com", PASSWORD, NAT).await?,
            200,
        )?;
    }
    app.shutdown().await
}

async fn a_password_reset_ends_a_lockout(backend: Backend) -> Result<()> {
    const NEW_PASSWORD: &str = "a brand new secret";
    let app = TestApp::spawn_configured(backend, |c| {
        let mut policy = throttled(2, 0);
        // Long enough that only the reset can end it within the test.
        policy.lockout = Duration::from_secs(600);
        policy.lockout_max = Duration::from_secs(600);
        c.login_throttle = policy;
    })
    .await?;
    ok(app.register("locked@example.com", "Locked").await?, 201)?;
    for _ in 0..3 {
        outcome(login(&app, "locked@example.com", "wrong guess").await?)?;
    }
    assert_eq!(
        outcome(login(&app, "locked@example.com", PASSWORD).await?)?,
        THROTTLED
    );
    ok(request_reset(&app, "locked@example.com").await?, 202)?;
    let events = app.events::<PasswordResetRequestedV1>().await?;
    let token = &events
        .last()
        .map(|(e, _)| e.token.clone())
        .unwrap_or_default();
    ok(confirm_reset(&app, token, NEW_PASSWORD).await?, 204)?;
    ok(login(&app, "locked@example.com", NEW_PASSWORD).await?, 200)?;
    app.shutdown().await
}

async fn reuse_of_any_rotated_token_revokes_every_descendant(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    ok(app.register("chain@example.com", "Chain").await?, 201)?;
    let first = ok(login(&app, "chain@example.com", PASSWORD).await?, 200)?;
    let second = ok(refresh(&app, &first.refresh_token).await?, 200)?;
    let third = ok(refresh(&app, &second.refresh_token).await?, 200)?;
    let fourth = ok(refresh(&app, &third.refresh_token).await?, 200)?;
    // Another session of the same user, which must survive.
    let other = ok(login(&app, "chain@example.com", PASSWORD).await?, 200)?;

    // A thief replays the second token (rotated long ago): 401, and the newest token of
    // the family, held by the victim, is revoked too. Both must log in again.
    let replay = problem(refresh(&app, &second.refresh_token).await?)?;
    assert_eq!(
        (replay.code, replay.status),
        (ErrorCode::InvalidRefreshToken, 401)
    );
    for token in [
        &fourth.refresh_token,
        &third.refresh_token,
        &first.refresh_token,
    ] {
        let p = problem(refresh(&app, token).await?)?;
        assert_eq!(p.code, ErrorCode::InvalidRefreshToken);
    }
    let db = &app.service()?.db;
    let live: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM refresh_tokens WHERE revoked_at IS NULL AND family_id = \
         (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
    )
    .bind(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        first.refresh_token.as_bytes(),
    )))
    .fetch_one(&db.pool)
    .await?
    .try_get("n")?;
    assert_eq!(live, 0, "every token of the family is revoked");
    ok(refresh(&app, &other.refresh_token).await?, 200)?;
    app.shutdown().await
}

fn kid_of(token: &str) -> Result<String> {
    jsonwebtoken::decode_header(token)?
        .kid
        .ok_or_else(|| anyhow::anyhow!("token without kid"))
}

async fn a_rotated_key_signs_new_tokens_and_the_old_one_retires_after_they_expire(
    backend: Backend,
) -> Result<()> {
    const TTL: u64 = 3;
    let app = TestApp::spawn_configured(backend, |c| {
        c.access_token_ttl = Duration::from_secs(TTL);
        c.signing_key_reload = Duration::from_millis(200);
        c.signing_key_grace = Duration::from_secs(1);
    })
    .await?;
    ok(app.register("keys@example.com", "Keys").await?, 201)?;
    let before = ok(login(&app, "keys@example.com", PASSWORD).await?, 200)?;
    let old_kid = kid_of(&before.access_token)?;

    let pem = auth::rotate_key(app.db.url(), true).await;
    assert!(matches!(pem, Err(auth::cli::RotateError::PemConfigured)));
    let rotation = auth::rotate_key(app.db.url(), false).await?;
    let rotated_at = Instant::now();
    assert_eq!(rotation.previous.as_deref(), Some(old_kid.as_str()));
    assert_ne!(rotation.kid, old_kid);

    // The replica switches at its next reload; the old token still verifies.
    let after =
        integration::poll_until_ok(Duration::from_secs(10), "tokens with the new kid", || {
            let app = &app;
            let kid = rotation.kid.clone();
            async move {
                let tokens = ok(login(app, "keys@example.com", PASSWORD).await?, 200)?;
                ensure!(kid_of(&tokens.access_token)? == kid, "still the old key");
                Ok(tokens)
            }
        })
        .await?;
    let published = jwks(&app).await?;
    let kids: Vec<&str> = published.keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&rotation.kid.as_str()));
    auth::keys::verify(&after.access_token, &published)?;
    let old_claims = auth::keys::verify(&before.access_token, &published)?;

    // The old key leaves the JWKS only after every token it signed has expired.
    integration::poll_until(
        Duration::from_secs(20),
        "the old key to leave the JWKS",
        || {
            let app = &app;
            let old_kid = old_kid.clone();
            async move {
                let published = jwks(app).await.ok()?;
                (!published.keys.iter().any(|k| k.kid == old_kid)).then_some(())
            }
        },
    )
    .await?;
    let retired_after = rotated_at.elapsed();
    let now = jiff::Timestamp::now().as_second();
    assert!(
        now >= old_claims.exp,
        "the key left the JWKS at {now}, before its token expired at {}",
        old_claims.exp
    );
    assert!(
        retired_after >= Duration::from_secs(TTL),
        "retired after {retired_after:?}"
    );
    let published = jwks(&app).await?;
    assert_eq!(published.keys.len(), 1);
    assert_eq!(published.keys[0].kid, rotation.kid);
    // The next upkeep round marks it retired (the JWKS already left it out by age).
    let db = app.service()?.db.clone();
    integration::poll_until(
        Duration::from_secs(10),
        "the old key marked retired",
        || {
            let db = db.clone();
            let old_kid = old_kid.clone();
            async move {
                let row = sqlx::query("SELECT retired_at FROM signing_keys WHERE kid = $1")
                    .bind(&old_kid)
                    .fetch_one(&db.pool)
                    .await
                    .ok()?;
                row.try_get::<Option<i64>, _>("retired_at").ok().flatten()
            }
        },
    )
    .await?;
    app.shutdown().await
}

/// `DATABASE_STATEMENT_TIMEOUT_MS`: on PostgreSQL a statement running longer fails
/// instead of holding its connection (and its caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_calls_have_deadlines() -> Result<()> {
    use runtime::db::{Database, DbTimeouts};
    let test_db = helpers::TestDb::create(Backend::Postgres).await?;
    let timeouts = DbTimeouts {
        acquire: Duration::from_millis(300),
        statement: Duration::from_millis(200),
    };
    let db = Database::connect_with(test_db.url(), &auth::migrations(), timeouts).await?;
    let started = Instant::now();
    let slow = sqlx::query("SELECT pg_sleep(5)").execute(&db.pool).await;
    let err = match slow {
        Ok(_) => bail!("a 5 s statement ran to the end"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("statement timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Quick statements are unaffected.
    sqlx::query("SELECT 1").execute(&db.pool).await?;
    db.pool.close().await;
    Ok(())
}
