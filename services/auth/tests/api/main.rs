//! End-to-end tests of the auth service over NATS request/reply, each run on SQLite and
//! on PostgreSQL against a real nats-server.

mod helpers;

use anyhow::{Context, Result, bail};
use contracts::api::{
    Accepted, Jwks, LoginRequest, LogoutRequest, NotificationKind, PasswordResetConfirm,
    PasswordResetRequest, Preferences, RefreshRequest, TOKEN_AUDIENCE, TOKEN_ISSUER, TokenResponse,
    User,
};
use contracts::events::{PasswordResetRequestedV1, PreferencesChangedV1, UserRegisteredV1};
use contracts::rpc::{Caller, NoBody, RpcReply, RpcRequest};
use contracts::subjects::auth as subjects;
use contracts::{ErrorCode, Problem, Role};
use helpers::{ADMIN_EMAIL, Backend, PASSWORD, TestApp};

/// Runs one scenario on both backends.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

mod security;

both_backends!(
    register_creates_the_user_and_publishes_one_event,
    duplicate_email_is_409_email_taken,
    invalid_bodies_are_422_validation_failed,
    login_succeeds_and_failures_are_indistinguishable,
    refresh_rotates_and_reuse_revokes_the_family,
    logout_revokes_and_is_idempotent,
    me_requires_a_known_caller,
    jwks_verifies_issued_access_tokens,
    events_committed_with_the_relay_off_are_published_after_restart,
    promote_makes_an_existing_user_admin,
    racing_key_bootstraps_leave_one_active_key,
    a_pem_key_takes_over_and_the_old_key_stays_published,
    the_verification_token_verifies_the_email_once,
    unsubscribe_turns_one_kind_off_and_emits_once,
    preferences_round_trip_with_increasing_versions,
    racing_preference_writes_get_distinct_versions,
    password_reset_for_an_unknown_email_is_accepted_silently,
    password_reset_replaces_the_password_once_and_signs_out,
);

/// How long a replaced signing key stays published, in the key tests.
const KEEP: std::time::Duration = std::time::Duration::from_secs(960);

fn ok<T: std::fmt::Debug>(reply: RpcReply<T>, status: u16) -> Result<T> {
    match reply {
        RpcReply::Ok { status: s, body } if s == status => Ok(body),
        other => bail!("expected {status}, got {other:?}"),
    }
}

fn problem<T: std::fmt::Debug>(reply: RpcReply<T>) -> Result<Problem> {
    match reply {
        RpcReply::Err(p) => Ok(p),
        other => bail!("expected a problem, got {other:?}"),
    }
}

async fn login(app: &TestApp, email: &str, password: &str) -> Result<RpcReply<TokenResponse>> {
    app.rpc(
        subjects::RPC_LOGIN,
        &RpcRequest::new(LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        }),
    )
    .await
}

async fn refresh(app: &TestApp, token: &str) -> Result<RpcReply<TokenResponse>> {
    app.rpc(
        subjects::RPC_REFRESH,
        &RpcRequest::new(RefreshRequest {
            refresh_token: token.to_owned(),
        }),
    )
    .await
}

async fn jwks(app: &TestApp) -> Result<Jwks> {
    ok(
        app.rpc(subjects::RPC_JWKS, &RpcRequest::new(NoBody {}))
            .await?,
        200,
    )
}

async fn register_creates_the_user_and_publishes_one_event(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(
        app.register("  Ada@Example.COM ", "  Ada Lovelace ")
            .await?,
        201,
    )?;
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.display_name, "Ada Lovelace");
    assert_eq!(user.role, Role::User);
    let admin = ok(
        app.register(&ADMIN_EMAIL.to_uppercase(), "Boss").await?,
        201,
    )?;
    assert_eq!(
        admin.role,
        Role::Admin,
        "AUTH_ADMIN_EMAILS is case-insensitive"
    );

    let events = app.registered_events().await?;
    assert_eq!(events.len(), 2, "{events:?}");
    let (event, msg_id) = events
        .iter()
        .find(|(e, _)| e.user_id == user.id)
        .context("no event for the user")?;
    assert_eq!(event.email, user.email);
    assert_eq!(event.display_name, user.display_name);
    assert_eq!(event.role, Role::User);
    assert_eq!(event.meta.aggregate_id, user.id);
    assert_eq!(event.meta.aggregate_version, 1);
    assert_eq!(msg_id, &event.meta.message_id.to_string());

    // Readiness reports both dependencies.
    let port = app.service()?.http_port;
    let ready: contracts::api::Health = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(ready.status, "ready");
    assert_eq!(ready.checks.len(), 2);
    app.shutdown().await
}

async fn duplicate_email_is_409_email_taken(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    ok(app.register("grace@example.com", "Grace").await?, 201)?;
    let p = problem(app.register(" GRACE@example.com", "Another Grace").await?)?;
    assert_eq!((p.code, p.status), (ErrorCode::EmailTaken, 409));
    assert_eq!(
        app.registered_events().await?.len(),
        1,
        "no event for the rejected one"
    );
    app.shutdown().await
}

async fn invalid_bodies_are_422_validation_failed(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    // A missing field is a decode error, answered by the endpoint, not a panic.
    let missing = serde_json::json!({ "email": "x@example.com", "display_name": "X" });
    let reply: RpcReply<User> = app
        .rpc(subjects::RPC_REGISTER, &RpcRequest::new(missing))
        .await?;
    let p = problem(reply)?;
    assert_eq!((p.code, p.status), (ErrorCode::ValidationFailed, 422));
    assert!(p.detail.unwrap_or_default().contains("password"));

    // Present but invalid fields are each reported.
    let reply: RpcReply<User> = app
        .rpc(
            subjects::RPC_REGISTER,
            &RpcRequest::new(contracts::api::RegisterRequest {
                email: "not-an-email".into(),
                password: "short".into(),
                display_name: "   ".into(),
            }),
        )
        .await?;
    let p = problem(reply)?;
    assert_eq!(p.code, ErrorCode::ValidationFailed);
    let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["email", "password", "display_name"]);

    // The service keeps answering.
    ok(app.register("ok@example.com", "Ok").await?, 201)?;
    app.shutdown().await
}

async fn login_succeeds_and_failures_are_indistinguishable(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("linus@example.com", "Linus").await?, 201)?;
    let tokens = ok(login(&app, " LINUS@example.com", PASSWORD).await?, 200)?;
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
    assert_eq!(tokens.refresh_expires_in, 3600);
    assert_eq!(tokens.refresh_token.len(), 43);
    let claims = auth::keys::verify(&tokens.access_token, &jwks(&app).await?)?;
    assert_eq!((claims.sub, claims.role), (user.id, Role::User));

    let wrong_password = problem(login(&app, "linus@example.com", "not the password").await?)?;
    let unknown_user = problem(login(&app, "nobody@example.com", PASSWORD).await?)?;
    assert_eq!(wrong_password.code, ErrorCode::InvalidCredentials);
    assert_eq!(wrong_password.status, 401);
    assert_eq!(
        wrong_password, unknown_user,
        "the two failures must look the same"
    );
    app.shutdown().await
}

async fn refresh_rotates_and_reuse_revokes_the_family(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("rot@example.com", "Rot").await?, 201)?;
    let first = ok(login(&app, "rot@example.com", PASSWORD).await?, 200)?;
    let second = ok(refresh(&app, &first.refresh_token).await?, 200)?;
    assert_ne!(second.refresh_token, first.refresh_token);
    let claims = auth::keys::verify(&second.access_token, &jwks(&app).await?)?;
    assert_eq!(claims.sub, user.id);

    // The rotated token is spent; presenting it again looks like theft, so the whole
    // family goes, including the token issued in its place.
    let reused = problem(refresh(&app, &first.refresh_token).await?)?;
    assert_eq!(
        (reused.code, reused.status),
        (ErrorCode::InvalidRefreshToken, 401)
    );
    let after = problem(refresh(&app, &second.refresh_token).await?)?;
    assert_eq!(after.code, ErrorCode::InvalidRefreshToken);

    // Another login (another family) is unaffected; garbage is just invalid.
    let other = ok(login(&app, "rot@example.com", PASSWORD).await?, 200)?;
    ok(refresh(&app, &other.refresh_token).await?, 200)?;
    let garbage = problem(refresh(&app, "not-a-token").await?)?;
    assert_eq!(garbage.code, ErrorCode::InvalidRefreshToken);
    app.shutdown().await
}

async fn logout_revokes_and_is_idempotent(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    ok(app.register("bye@example.com", "Bye").await?, 201)?;
    let tokens = ok(login(&app, "bye@example.com", PASSWORD).await?, 200)?;
    let logout = |token: String| {
        let app = &app;
        async move {
            app.rpc::<_, NoBody>(
                subjects::RPC_LOGOUT,
                &RpcRequest::new(LogoutRequest {
                    refresh_token: token,
                }),
            )
            .await
        }
    };
    ok(logout(tokens.refresh_token.clone()).await?, 204)?;
    let p = problem(refresh(&app, &tokens.refresh_token).await?)?;
    assert_eq!(p.code, ErrorCode::InvalidRefreshToken);
    ok(logout(tokens.refresh_token.clone()).await?, 204)?;
    ok(logout("never-issued".to_owned()).await?, 204)?;
    app.shutdown().await
}

async fn me_requires_a_known_caller(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("me@example.com", "Me").await?, 201)?;
    let me = |caller: Option<Caller>| {
        let app = &app;
        async move {
            let mut request = RpcRequest::new(NoBody {});
            request.caller = caller;
            app.rpc::<_, User>(subjects::RPC_ME, &request).await
        }
    };
    let found = ok(
        me(Some(Caller {
            user_id: user.id,
            role: Role::User,
        }))
        .await?,
        200,
    )?;
    assert_eq!(found, user);

    let anonymous = problem(me(None).await?)?;
    assert_eq!(
        (anonymous.code, anonymous.status),
        (ErrorCode::Unauthorized, 401)
    );
    let ghost = problem(
        me(Some(Caller {
            user_id: uuid::Uuid::now_v7(),
            role: Role::User,
        }))
        .await?,
    )?;
    assert_eq!(ghost.code, ErrorCode::Unauthorized);
    app.shutdown().await
}

async fn jwks_verifies_issued_access_tokens(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let admin = ok(app.register(ADMIN_EMAIL, "Boss").await?, 201)?;
    let tokens = ok(login(&app, ADMIN_EMAIL, PASSWORD).await?, 200)?;
    let jwks = jwks(&app).await?;
    assert_eq!(jwks.keys.len(), 1);
    let jwk = &jwks.keys[0];
    assert_eq!(
        (
            jwk.kty.as_str(),
            jwk.crv.as_str(),
            jwk.alg.as_str(),
            jwk.use_.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );

    // Verify independently of the helper, exactly as the gateway will.
    let header = jsonwebtoken::decode_header(&tokens.access_token)?;
    assert_eq!(header.kid.as_deref(), Some(jwk.kid.as_str()));
    let key = jsonwebtoken::DecodingKey::from_ed_components(&jwk.x)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[TOKEN_ISSUER]);
    validation.set_audience(&[TOKEN_AUDIENCE]);
    let claims = jsonwebtoken::decode::<contracts::api::AccessClaims>(
        &tokens.access_token,
        &key,
        &validation,
    )?
    .claims;
    assert_eq!((claims.sub, claims.role), (admin.id, Role::Admin));
    assert_eq!(claims.exp - claims.iat, 900);
    app.shutdown().await
}

async fn events_committed_with_the_relay_off_are_published_after_restart(
    backend: Backend,
) -> Result<()> {
    let mut app = TestApp::spawn_with(backend, false).await?;
    let user = ok(app.register("late@example.com", "Late").await?, 201)?;
    let kid_before = jwks(&app).await?.keys[0].kid.clone();
    let tokens = ok(login(&app, "late@example.com", PASSWORD).await?, 200)?;
    // Nothing leaves the outbox while the relay is off.
    assert_eq!(runtime::outbox::backlog(&app.service()?.db).await?, 1);
    assert!(helpers::read_registered(&app.js).await?.is_empty());

    app.restart(true).await?;
    let events = app.registered_events().await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0.user_id, user.id);

    // The signing key survived the restart: old tokens still verify, nothing rotated.
    let jwks_after = jwks(&app).await?;
    assert_eq!(jwks_after.keys.len(), 1);
    assert_eq!(jwks_after.keys[0].kid, kid_before);
    auth::keys::verify(&tokens.access_token, &jwks_after)?;
    ok(refresh(&app, &tokens.refresh_token).await?, 200)?;

    // Another restart publishes nothing twice.
    app.restart(true).await?;
    assert_eq!(app.registered_events().await?.len(), 1);
    app.shutdown().await
}

async fn promote_makes_an_existing_user_admin(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("rise@example.com", "Rise").await?, 201)?;
    let tokens = ok(login(&app, "rise@example.com", PASSWORD).await?, 200)?;
    auth::promote(app.db.url(), " RISE@example.com ").await?;
    // The new role shows from the next refresh on.
    let refreshed = ok(refresh(&app, &tokens.refresh_token).await?, 200)?;
    let claims = auth::keys::verify(&refreshed.access_token, &jwks(&app).await?)?;
    assert_eq!((claims.sub, claims.role), (user.id, Role::Admin));
    let unknown = auth::promote(app.db.url(), "ghost@example.com").await;
    assert!(matches!(
        unknown,
        Err(auth::cli::PromoteError::UnknownUser(_))
    ));
    app.shutdown().await
}

async fn racing_key_bootstraps_leave_one_active_key(backend: Backend) -> Result<()> {
    let test_db = helpers::TestDb::create(backend).await?;
    let db = runtime::db::Database::connect(test_db.url(), &auth::migrations()).await?;
    // Eight "replicas" start at once on an empty key table.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { auth::keys::ensure_active_key(&db, None).await })
        })
        .collect();
    let mut kids = Vec::new();
    for task in tasks {
        kids.push(task.await??.kid().to_owned());
    }
    kids.dedup();
    assert_eq!(
        kids.len(),
        1,
        "replicas disagree on the active key: {kids:?}"
    );
    let published = auth::keys::published(&db, KEEP).await?;
    assert_eq!(published.keys.len(), 1);
    assert_eq!(published.keys[0].kid, kids[0]);
    db.pool.close().await;
    Ok(())
}

async fn a_pem_key_takes_over_and_the_old_key_stays_published(backend: Backend) -> Result<()> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

    let test_db = helpers::TestDb::create(backend).await?;
    let db = runtime::db::Database::connect(test_db.url(), &auth::migrations()).await?;
    let generated = auth::keys::ensure_active_key(&db, None).await?;

    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key.to_pkcs8_pem(LineEnding::LF)?;
    let kid = auth::keys::thumbprint(key.verifying_key().as_bytes());
    // Twice, as two replicas with the same PEM would.
    for _ in 0..2 {
        let active = auth::keys::ensure_active_key(&db, Some(pem.as_str())).await?;
        assert_eq!(active.kid(), kid);
    }
    let published: Vec<String> = auth::keys::published(&db, KEEP)
        .await?
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(published.len(), 2, "{published:?}");
    assert!(published.contains(&kid) && published.contains(&generated.kid().to_owned()));
    // Without the PEM, a restart keeps signing with it (it is the stored active key).
    assert_eq!(auth::keys::ensure_active_key(&db, None).await?.kid(), kid);

    let bad = auth::keys::ensure_active_key(&db, Some("not a pem")).await;
    assert!(matches!(bad, Err(auth::keys::KeyError::Pem(_))));
    db.pool.close().await;
    Ok(())
}

// ---- email verification, preferences, password reset ----

fn caller(user: &User) -> Caller {
    Caller {
        user_id: user.id,
        role: user.role,
    }
}

/// The `UserRegisteredV1` of `user`.
async fn registered(app: &TestApp, user: &User) -> Result<UserRegisteredV1> {
    app.registered_events()
        .await?
        .into_iter()
        .map(|(e, _)| e)
        .find(|e| e.user_id == user.id)
        .context("no UserRegisteredV1 for the user")
}

async fn verify_email(app: &TestApp, token: Option<&str>) -> Result<RpcReply<Accepted>> {
    let mut request = RpcRequest::new(NoBody {});
    if let Some(token) = token {
        request = request.with_query("token", token);
    }
    app.rpc(subjects::RPC_VERIFY_EMAIL, &request).await
}

async fn verified_at(app: &TestApp, user: &User) -> Result<Option<i64>> {
    use sqlx::Row;
    let row = sqlx::query("SELECT email_verified_at FROM users WHERE id = $1")
        .bind(user.id.to_string())
        .fetch_one(&app.service()?.db.pool)
        .await?;
    Ok(row.try_get("email_verified_at")?)
}

async fn the_verification_token_verifies_the_email_once(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("proof@example.com", "Proof").await?, 201)?;
    let late = ok(app.register("late@example.com", "Late").await?, 201)?;
    let event = registered(&app, &user).await?;
    let token = event.verification_token.context("no verification token")?;
    let unsubscribe = event.unsubscribe_token.context("no unsubscribe token")?;
    assert_eq!(token.len(), 43);
    assert_ne!(token, unsubscribe);
    assert_eq!(verified_at(&app, &user).await?, None);

    let verified = ok(verify_email(&app, Some(&token)).await?, 200)?;
    assert_eq!(verified.status, "verified");
    assert!(verified_at(&app, &user).await?.is_some());

    // Single use; garbage, a missing token and an expired one are all the same 422.
    let again = problem(verify_email(&app, Some(&token)).await?)?;
    assert_eq!(
        (again.code, again.status),
        (ErrorCode::ValidationFailed, 422)
    );
    assert_eq!(again.errors[0].field, "token");
    for bad in [Some("nope"), Some(""), None] {
        let p = problem(verify_email(&app, bad).await?)?;
        assert_eq!(p.code, ErrorCode::ValidationFailed, "{bad:?}");
    }
    let late_token = registered(&app, &late)
        .await?
        .verification_token
        .context("no verification token")?;
    sqlx::query("UPDATE email_verifications SET expires_at = 0 WHERE user_id = $1")
        .bind(late.id.to_string())
        .execute(&app.service()?.db.pool)
        .await?;
    let expired = problem(verify_email(&app, Some(&late_token)).await?)?;
    assert_eq!(expired.code, ErrorCode::ValidationFailed);
    assert_eq!(verified_at(&app, &late).await?, None);
    app.shutdown().await
}

async fn unsubscribe(
    app: &TestApp,
    token: &str,
    kind: &str,
    channel: Option<&str>,
) -> Result<RpcReply<Accepted>> {
    let mut request = RpcRequest::new(NoBody {})
        .with_query("token", token)
        .with_query("kind", kind);
    if let Some(channel) = channel {
        request = request.with_query("channel", channel);
    }
    app.rpc(subjects::RPC_UNSUBSCRIBE, &request).await
}

async fn get_preferences(app: &TestApp, caller: Option<Caller>) -> Result<RpcReply<Preferences>> {
    let mut request = RpcRequest::new(NoBody {});
    request.caller = caller;
    app.rpc(subjects::RPC_GET_PREFERENCES, &request).await
}

async fn put_preferences(
    app: &TestApp,
    caller: Option<Caller>,
    preferences: Preferences,
) -> Result<RpcReply<Preferences>> {
    let mut request = RpcRequest::new(preferences);
    request.caller = caller;
    app.rpc(subjects::RPC_PUT_PREFERENCES, &request).await
}

/// The `PreferencesChangedV1` events in the stream as (user, version, preferences).
async fn preference_changes(app: &TestApp) -> Result<Vec<(uuid::Uuid, u64, Preferences)>> {
    Ok(app
        .events::<PreferencesChangedV1>()
        .await?
        .into_iter()
        .map(|(e, _)| {
            assert_eq!(e.meta.aggregate_id, e.user_id);
            (e.user_id, e.meta.aggregate_version, e.preferences)
        })
        .collect())
}

async fn unsubscribe_turns_one_kind_off_and_emits_once(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("quiet@example.com", "Quiet").await?, 201)?;
    let token = registered(&app, &user)
        .await?
        .unsubscribe_token
        .context("no unsubscribe token")?;

    let reply = ok(unsubscribe(&app, &token, "rsvp_received", None).await?, 200)?;
    assert_eq!(reply.status, "unsubscribed");
    let mut expected = Preferences::default();
    expected.email.rsvp_received = false;
    let stored = ok(get_preferences(&app, Some(caller(&user))).await?, 200)?;
    assert_eq!(stored, expected);
    assert_eq!(preference_changes(&app).await?, [(user.id, 1, expected)]);

    // Already off: the same answer, no second event.
    ok(
        unsubscribe(&app, &token, "rsvp_received", Some("email")).await?,
        200,
    )?;
    assert_eq!(preference_changes(&app).await?.len(), 1);

    // Another channel is its own switch.
    ok(
        unsubscribe(&app, &token, "event_changed", Some("push")).await?,
        200,
    )?;
    expected.push.event_changed = false;
    let changes = preference_changes(&app).await?;
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1], (user.id, 2, expected));

    let unknown = problem(unsubscribe(&app, "not-a-token", "rsvp_received", None).await?)?;
    assert_eq!((unknown.code, unknown.status), (ErrorCode::NotFound, 404));
    for (kind, channel) in [("spam", None), ("", None), ("rsvp_received", Some("sms"))] {
        let p = problem(unsubscribe(&app, &token, kind, channel).await?)?;
        assert_eq!((p.code, p.status), (ErrorCode::BadRequest, 400), "{kind}");
    }
    assert_eq!(preference_changes(&app).await?.len(), 2);
    app.shutdown().await
}

async fn preferences_round_trip_with_increasing_versions(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("prefs@example.com", "Prefs").await?, 201)?;
    let me = Some(caller(&user));
    let defaults = ok(get_preferences(&app, me.clone()).await?, 200)?;
    assert_eq!(defaults, Preferences::default());
    for kind in NotificationKind::ALL {
        assert!(defaults.email.allows(kind) && defaults.push.allows(kind));
    }

    // Putting the defaults changes nothing.
    ok(put_preferences(&app, me.clone(), defaults).await?, 200)?;
    assert!(preference_changes(&app).await?.is_empty());

    let mut first = Preferences::default();
    first.push.rsvp_confirmation = false;
    first.email.event_changed = false;
    assert_eq!(
        ok(put_preferences(&app, me.clone(), first).await?, 200)?,
        first
    );
    assert_eq!(ok(get_preferences(&app, me.clone()).await?, 200)?, first);

    let mut second = first;
    second.email.event_changed = true;
    assert_eq!(
        ok(put_preferences(&app, me.clone(), second).await?, 200)?,
        second
    );
    // Unchanged: stored as is, no event.
    assert_eq!(
        ok(put_preferences(&app, me.clone(), second).await?, 200)?,
        second
    );
    assert_eq!(
        preference_changes(&app).await?,
        [(user.id, 1, first), (user.id, 2, second)]
    );

    // Absent channels and kinds are on (the JSON API may omit them).
    let partial: RpcReply<Preferences> = app
        .rpc(
            subjects::RPC_PUT_PREFERENCES,
            &RpcRequest::new(serde_json::json!({ "email": { "rsvp_received": false } }))
                .with_caller(caller(&user)),
        )
        .await?;
    let mut third = Preferences::default();
    third.email.rsvp_received = false;
    assert_eq!(ok(partial, 200)?, third);
    let changes = preference_changes(&app).await?;
    assert_eq!(changes.len(), 3);
    assert_eq!(changes[2], (user.id, 3, third));

    // Anonymous and unknown callers are 401.
    let anonymous = problem(get_preferences(&app, None).await?)?;
    assert_eq!(
        (anonymous.code, anonymous.status),
        (ErrorCode::Unauthorized, 401)
    );
    let ghost = Some(Caller {
        user_id: uuid::Uuid::now_v7(),
        role: Role::User,
    });
    let p = problem(put_preferences(&app, ghost.clone(), first).await?)?;
    assert_eq!(p.code, ErrorCode::Unauthorized);
    let p = problem(get_preferences(&app, ghost).await?)?;
    assert_eq!(p.code, ErrorCode::Unauthorized);
    app.shutdown().await
}

async fn racing_preference_writes_get_distinct_versions(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("race@example.com", "Race").await?, 201)?;
    // Six different settings written at once: each must land with its own version.
    let wanted: Vec<Preferences> = (0..6)
        .map(|i| {
            let mut p = Preferences::default();
            let kind = NotificationKind::ALL[i % 3];
            if i < 3 {
                p.email.set(kind, false);
            } else {
                p.push.set(kind, false);
            }
            p
        })
        .collect();
    let replies = futures::future::join_all(
        wanted
            .iter()
            .map(|p| put_preferences(&app, Some(caller(&user)), *p)),
    )
    .await;
    for (reply, p) in replies.into_iter().zip(&wanted) {
        assert_eq!(ok(reply?, 200)?, *p);
    }
    let mut versions: Vec<u64> = preference_changes(&app)
        .await?
        .into_iter()
        .map(|(_, v, _)| v)
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    app.shutdown().await
}

async fn request_reset(app: &TestApp, email: &str) -> Result<RpcReply<Accepted>> {
    app.rpc(
        subjects::RPC_REQUEST_PASSWORD_RESET,
        &RpcRequest::new(PasswordResetRequest {
            email: email.to_owned(),
        }),
    )
    .await
}

async fn confirm_reset(app: &TestApp, token: &str, password: &str) -> Result<RpcReply<NoBody>> {
    app.rpc(
        subjects::RPC_CONFIRM_PASSWORD_RESET,
        &RpcRequest::new(PasswordResetConfirm {
            token: token.to_owned(),
            new_password: password.to_owned(),
        }),
    )
    .await
}

async fn password_reset_for_an_unknown_email_is_accepted_silently(backend: Backend) -> Result<()> {
    let app = TestApp::spawn(backend).await?;
    ok(app.register("known@example.com", "Known").await?, 201)?;
    for email in ["nobody@example.com", "", "not an email"] {
        let reply = ok(request_reset(&app, email).await?, 202)?;
        assert_eq!(reply.status, "accepted");
    }
    assert!(app.events::<PasswordResetRequestedV1>().await?.is_empty());
    app.shutdown().await
}

async fn password_reset_replaces_the_password_once_and_signs_out(backend: Backend) -> Result<()> {
    const NEW_PASSWORD: &str = "a brand new secret";
    let app = TestApp::spawn(backend).await?;
    let user = ok(app.register("forgot@example.com", "Forgot").await?, 201)?;
    let session = ok(login(&app, "forgot@example.com", PASSWORD).await?, 200)?;

    // Two requests: the second spends the first's token.
    ok(request_reset(&app, "forgot@example.com").await?, 202)?;
    ok(request_reset(&app, " FORGOT@example.com ").await?, 202)?;
    let events = app.events::<PasswordResetRequestedV1>().await?;
    assert_eq!(events.len(), 2, "{events:?}");
    let (first, second) = (&events[0].0, &events[1].0);
    assert_eq!(
        (
            second.user_id,
            second.email.as_str(),
            second.display_name.as_str()
        ),
        (user.id, "forgot@example.com", "Forgot")
    );
    assert_eq!(second.meta.aggregate_id, user.id);
    assert!(second.meta.aggregate_version > first.meta.aggregate_version);
    let ttl = second.expires_at.duration_since(jiff::Timestamp::now());
    assert!(
        ttl.as_secs() > 1700 && ttl.as_secs() <= 1800,
        "expires in {ttl:?}"
    );
    let superseded = problem(confirm_reset(&app, &first.token, NEW_PASSWORD).await?)?;
    assert_eq!(
        (superseded.code, superseded.errors[0].field.as_str()),
        (ErrorCode::ValidationFailed, "token")
    );

    // A weak password is refused without spending the token.
    let weak = problem(confirm_reset(&app, &second.token, "short").await?)?;
    assert_eq!((weak.code, weak.status), (ErrorCode::ValidationFailed, 422));
    let fields: Vec<&str> = weak.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["new_password"]);

    ok(confirm_reset(&app, &second.token, NEW_PASSWORD).await?, 204)?;
    ok(login(&app, "forgot@example.com", NEW_PASSWORD).await?, 200)?;
    let old = problem(login(&app, "forgot@example.com", PASSWORD).await?)?;
    assert_eq!(old.code, ErrorCode::InvalidCredentials);
    let revoked = problem(refresh(&app, &session.refresh_token).await?)?;
    assert_eq!(revoked.code, ErrorCode::InvalidRefreshToken);
    // Reading the mail proved the address.
    assert!(verified_at(&app, &user).await?.is_some());

    let again = problem(confirm_reset(&app, &second.token, "yet another secret").await?)?;
    assert_eq!(
        (again.code, again.status),
        (ErrorCode::ValidationFailed, 422)
    );
    assert_eq!(again.errors[0].field, "token");
    ok(login(&app, "forgot@example.com", NEW_PASSWORD).await?, 200)?;
    // Confirming emits nothing.
    assert_eq!(app.events::<PasswordResetRequestedV1>().await?.len(), 2);
    app.shutdown().await
}
