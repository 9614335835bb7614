//! The request/reply endpoints of the auth context and the state they share.
//!
//! Every handler returns `Result<(status, body), Problem>`: expected failures are
//! problems with a stable code; unexpected ones go through [`runtime::rpc::internal`],
//! which logs the cause chain once and answers an opaque 500.
//!
//! Accounts and tokens live here; [`account`] holds email verification and password
//! reset, [`preferences`] the notification preferences and unsubscribe links.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contracts::api::{
    Accepted, AccessClaims, Jwks, LoginRequest, LogoutRequest, PasswordResetConfirm,
    PasswordResetRequest, Preferences, RefreshRequest, RegisterRequest, TOKEN_AUDIENCE,
    TOKEN_ISSUER, TokenResponse, User,
};
use contracts::events::UserRegisteredV1;
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::auth as subjects;
use contracts::{ErrorCode, EventMeta, Problem, Role};
use rand::RngCore;
use rand::rngs::OsRng;
use runtime::db::{Database, from_micros, is_unique_violation, to_micros};
use runtime::outbox::RelayWaker;
use runtime::routes::Route;
use runtime::rpc::{Endpoint, endpoint, with_routes};
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::domain::{NewUser, normalize_email};
use crate::keys::KeyRing;
use crate::password::Hasher;
use crate::throttle::{Admission, LoginThrottle};

pub mod account;
pub mod preferences;

/// Longest token (refresh, verification, reset, unsubscribe) worth looking up; ours are
/// 43 characters.
const TOKEN_MAX_LEN: usize = 256;

/// What every handler needs; cheap to clone.
#[derive(Clone)]
pub struct AuthState {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    hasher: Hasher,
    keys: KeyRing,
    throttle: LoginThrottle,
    waker: RelayWaker,
    access_ttl: Duration,
    refresh_ttl: Duration,
    verification_ttl: Duration,
    reset_ttl: Duration,
    admin_emails: Vec<String>,
}

impl AuthState {
    pub fn new(
        db: Database,
        hasher: Hasher,
        keys: KeyRing,
        waker: RelayWaker,
        config: &crate::Config,
    ) -> AuthState {
        let throttle = LoginThrottle::new(db.clone(), config.login_throttle);
        AuthState {
            inner: Arc::new(Inner {
                db,
                hasher,
                keys,
                throttle,
                waker,
                access_ttl: config.access_token_ttl,
                refresh_ttl: config.refresh_token_ttl,
                verification_ttl: config.verification_ttl,
                reset_ttl: config.reset_ttl,
                admin_emails: config.admin_emails.clone(),
            }),
        }
    }
}

type Reply<T> = Result<(u16, T), Problem>;

fn into_reply<T>(result: Reply<T>) -> RpcReply<T> {
    match result {
        Ok((status, body)) => RpcReply::Ok { status, body },
        Err(problem) => RpcReply::Err(problem),
    }
}

fn internal<E: std::error::Error + 'static>(err: E) -> Problem {
    runtime::rpc::internal(&err)
}

/// The public routes auth serves, by endpoint subject. Published in its discovery
/// metadata: the gateway routes and documents them from there. `jwks` has none: only
/// the gateway calls it.
pub fn routes() -> Vec<(&'static str, Route)> {
    vec![
        (
            subjects::RPC_REGISTER,
            Route::post("/v1/auth/register")
                .public()
                .errors(&[ErrorCode::ValidationFailed, ErrorCode::EmailTaken])
                .request::<RegisterRequest>()
                .response::<User>(201)
                .summary("Create an account"),
        ),
        (
            subjects::RPC_LOGIN,
            Route::post("/v1/auth/login")
                .public()
                .errors(&[ErrorCode::InvalidCredentials, ErrorCode::LoginThrottled])
                .request::<LoginRequest>()
                .response::<TokenResponse>(200)
                .secret_response()
                .summary("Exchange email and password for tokens"),
        ),
        (
            subjects::RPC_REFRESH,
            Route::post("/v1/auth/refresh")
                .public()
                .errors(&[ErrorCode::InvalidRefreshToken])
                .request::<RefreshRequest>()
                .response::<TokenResponse>(200)
                .secret_response()
                .summary("Exchange a refresh token for new tokens (the old one is spent)"),
        ),
        (
            subjects::RPC_LOGOUT,
            Route::post("/v1/auth/logout")
                .public()
                .errors(&[])
                .request::<LogoutRequest>()
                .empty_response(204)
                .summary("Revoke a refresh token"),
        ),
        (
            subjects::RPC_ME,
            Route::get("/v1/me")
                .user()
                .errors(&[ErrorCode::Unauthorized])
                .response::<User>(200)
                .summary("The caller's account"),
        ),
        (
            subjects::RPC_GET_PREFERENCES,
            Route::get("/v1/me/preferences")
                .user()
                .errors(&[ErrorCode::Unauthorized])
                .response::<Preferences>(200)
                .summary("The caller's notification preferences"),
        ),
        (
            subjects::RPC_PUT_PREFERENCES,
            Route::put("/v1/me/preferences")
                .user()
                .errors(&[
                    ErrorCode::Unauthorized,
                    ErrorCode::BadRequest,
                    ErrorCode::ValidationFailed,
                ])
                .request::<Preferences>()
                .response::<Preferences>(200)
                .summary("Replace the caller's notification preferences (absent kinds are on)"),
        ),
        (
            subjects::RPC_VERIFY_EMAIL,
            Route::get("/v1/auth/verify-email")
                .public()
                .errors(&[ErrorCode::ValidationFailed])
                .response::<Accepted>(200)
                .query(&["token"])
                .summary("Verify an email address with the token from the welcome mail"),
        ),
        (
            subjects::RPC_REQUEST_PASSWORD_RESET,
            Route::post("/v1/auth/password-reset")
                .public()
                .errors(&[ErrorCode::ValidationFailed])
                .request::<PasswordResetRequest>()
                .response::<Accepted>(202)
                .summary("Mail a password reset token (always 202)"),
        ),
        (
            subjects::RPC_CONFIRM_PASSWORD_RESET,
            Route::post("/v1/auth/password-reset/confirm")
                .public()
                .errors(&[ErrorCode::ValidationFailed])
                .request::<PasswordResetConfirm>()
                .empty_response(204)
                .summary("Set a new password with a reset token"),
        ),
        (
            subjects::RPC_UNSUBSCRIBE,
            Route::post("/v1/unsubscribe")
                .public()
                .errors(&[ErrorCode::BadRequest, ErrorCode::NotFound])
                .response::<Accepted>(200)
                .query(&["token", "kind", "channel"])
                .summary("One-click unsubscribe (RFC 8058) from one kind of notification"),
        ),
    ]
}

/// The endpoints, each with the public route it backs ([`routes`]).
pub fn endpoints(state: AuthState) -> Vec<Endpoint> {
    macro_rules! ep {
        ($name:literal, $subject:expr, $handler:path) => {{
            let state = state.clone();
            endpoint($name, $subject, move |request| {
                let state = state.clone();
                async move { into_reply($handler(&state, request).await) }
            })
        }};
    }
    let endpoints = vec![
        ep!("register", subjects::RPC_REGISTER, register),
        ep!("login", subjects::RPC_LOGIN, login),
        ep!("refresh", subjects::RPC_REFRESH, refresh),
        ep!("logout", subjects::RPC_LOGOUT, logout),
        ep!("me", subjects::RPC_ME, me),
        ep!("jwks", subjects::RPC_JWKS, jwks),
        ep!(
            "verify_email",
            subjects::RPC_VERIFY_EMAIL,
            account::verify_email
        ),
        ep!(
            "password_reset_request",
            subjects::RPC_REQUEST_PASSWORD_RESET,
            account::request_password_reset
        ),
        ep!(
            "password_reset_confirm",
            subjects::RPC_CONFIRM_PASSWORD_RESET,
            account::confirm_password_reset
        ),
        ep!(
            "preferences_get",
            subjects::RPC_GET_PREFERENCES,
            preferences::get_preferences
        ),
        ep!(
            "preferences_put",
            subjects::RPC_PUT_PREFERENCES,
            preferences::put_preferences
        ),
        ep!(
            "unsubscribe",
            subjects::RPC_UNSUBSCRIBE,
            preferences::unsubscribe
        ),
    ];
    with_routes(endpoints, routes())
}

/// Creates an account and enqueues `UserRegisteredV1` in the same transaction. The
/// event carries the plain verification token (only its hash is stored) and the
/// account's unsubscribe token, for the links of the welcome mail.
#[tracing::instrument(skip_all)]
pub async fn register(state: &AuthState, request: RpcRequest<RegisterRequest>) -> Reply<User> {
    let s = &state.inner;
    let new = NewUser::parse(request.body)?;
    let password_hash = s
        .hasher
        .hash(new.password.expose())
        .await
        .map_err(internal)?;
    let role = if s.admin_emails.iter().any(|e| e == new.email.as_str()) {
        Role::Admin
    } else {
        Role::User
    };
    let user = User {
        id: Uuid::now_v7(),
        email: new.email.as_str().to_owned(),
        display_name: new.display_name.as_str().to_owned(),
        role,
        // Stored in microseconds; round now so the reply equals what `me` reads back.
        created_at: from_micros(to_micros(jiff::Timestamp::now())),
    };
    let verification_token = new_token();
    let unsubscribe_token = new_token();
    let created_us = to_micros(user.created_at);
    let event = UserRegisteredV1 {
        meta: EventMeta::new(user.id, 1),
        user_id: user.id,
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        role,
        verification_token: Some(verification_token.clone()),
        unsubscribe_token: Some(unsubscribe_token.clone()),
    };

    let mut tx = s.db.begin_write().await.map_err(internal)?;
    let inserted = sqlx::query(
        "INSERT INTO users \
         (id, email, password_hash, display_name, role, created_at, unsubscribe_token) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(user.id.to_string())
    .bind(&user.email)
    .bind(&password_hash)
    .bind(&user.display_name)
    .bind(role.as_str())
    .bind(created_us)
    .bind(&unsubscribe_token)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        // The only other unique key is the 256-bit random unsubscribe token.
        Err(e) if is_unique_violation(&e) => {
            return Err(Problem::new(ErrorCode::EmailTaken)
                .with_detail("an account with this email already exists")
                .with_field("email", "is already registered"));
        }
        Err(e) => return Err(internal(e)),
    }
    sqlx::query(
        "INSERT INTO email_verifications (token_hash, user_id, expires_at, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(hash_token(&verification_token))
    .bind(user.id.to_string())
    .bind(created_us.saturating_add(micros(s.verification_ttl)))
    .bind(created_us)
    .execute(&mut *tx)
    .await
    .map_err(internal)?;
    runtime::outbox::enqueue(&mut tx, &event)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    s.waker.wake();
    tracing::info!(user_id = %user.id, role = role.as_str(), "user registered");
    Ok((201, user))
}

/// Exchanges email and password for a token pair. Unknown email and wrong password are
/// indistinguishable, in the answer, in the time it takes, and in the brute-force limits
/// (see [`crate::throttle`]): failed attempts count per account (known or not) and per
/// client address, and past the limit a login is refused with `login_throttled` and
/// `Retry-After` before its password is even checked.
#[tracing::instrument(skip_all)]
pub async fn login(state: &AuthState, request: RpcRequest<LoginRequest>) -> Reply<TokenResponse> {
    let s = &state.inner;
    let email = normalize_email(&request.body.email);
    let keys = s.throttle.keys(&email, request.client_ip);
    if let Admission::Refused { retry_after_secs } =
        s.throttle.begin(&keys).await.map_err(internal)?
    {
        return Err(Problem::new(ErrorCode::LoginThrottled)
            .with_detail(format!(
                "too many failed logins; try again in {retry_after_secs} s"
            ))
            .with_retry_after(retry_after_secs));
    }
    let row = sqlx::query("SELECT id, password_hash, role FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(&s.db.pool)
        .await
        .map_err(internal)?;
    let (account, stored) = match row {
        Some(row) => {
            let id: String = row.try_get("id").map_err(internal)?;
            let role: String = row.try_get("role").map_err(internal)?;
            let hash: String = row.try_get("password_hash").map_err(internal)?;
            (Some((id, role)), Some(hash))
        }
        None => (None, None),
    };
    let ok = s
        .hasher
        .verify(&request.body.password, stored)
        .await
        .map_err(internal)?;
    let (id, role) = match account {
        Some(account) if ok => account,
        // The reserved attempt stays counted.
        _ => {
            return Err(Problem::new(ErrorCode::InvalidCredentials)
                .with_detail("email or password is incorrect"));
        }
    };
    let user_id = parse_id(&id)?;
    let role = parse_role(&role)?;
    s.throttle.succeeded(&keys).await.map_err(internal)?;
    let refresh = new_token();
    let now = jiff::Timestamp::now();
    insert_refresh(s.db.writer(), state, user_id, Uuid::now_v7(), &refresh, now).await?;
    tracing::info!(%user_id, "user logged in");
    Ok((200, token_response(state, user_id, role, refresh, now)?))
}

/// Rotates a refresh token: the presented one is revoked, a new pair is issued in the
/// same family. Presenting an already revoked token (a replay of a rotated token, so
/// possibly a stolen one) revokes the whole family.
#[tracing::instrument(skip_all)]
pub async fn refresh(
    state: &AuthState,
    request: RpcRequest<RefreshRequest>,
) -> Reply<TokenResponse> {
    let s = &state.inner;
    let invalid = || {
        Problem::new(ErrorCode::InvalidRefreshToken)
            .with_detail("the refresh token is unknown, expired or revoked")
    };
    let presented = request.body.refresh_token.trim();
    if presented.is_empty() || presented.len() > TOKEN_MAX_LEN {
        return Err(invalid());
    }
    let hash = hash_token(presented);
    let now = jiff::Timestamp::now();
    let now_us = to_micros(now);

    let mut tx = s.db.begin_write().await.map_err(internal)?;
    // One statement decides the race between two refreshes of the same token.
    let rotated = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 \
         WHERE token_hash = $2 AND revoked_at IS NULL AND expires_at > $1 \
         RETURNING user_id, family_id",
    )
    .bind(now_us)
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)?;
    let Some(rotated) = rotated else {
        let known =
            sqlx::query("SELECT family_id, revoked_at FROM refresh_tokens WHERE token_hash = $1")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(internal)?;
        if let Some(row) = known {
            let family: String = row.try_get("family_id").map_err(internal)?;
            let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(internal)?;
            if revoked_at.is_some() {
                let n = sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
                )
                .bind(now_us)
                .bind(&family)
                .execute(&mut *tx)
                .await
                .map_err(internal)?
                .rows_affected();
                tx.commit().await.map_err(internal)?;
                tracing::warn!(family_id = %family, revoked = n, "revoked refresh token reused; family revoked");
            }
        }
        return Err(invalid());
    };
    let user_id: String = rotated.try_get("user_id").map_err(internal)?;
    let family: String = rotated.try_get("family_id").map_err(internal)?;
    let role = sqlx::query("SELECT role FROM users WHERE id = $1")
        .bind(&user_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
    let Some(role) = role else {
        return Err(invalid());
    };
    let role = parse_role(&role.try_get::<String, _>("role").map_err(internal)?)?;
    let user_id = parse_id(&user_id)?;
    let family = parse_id(&family)?;
    let next = new_token();
    insert_refresh(&mut *tx, state, user_id, family, &next, now).await?;
    tx.commit().await.map_err(internal)?;
    Ok((200, token_response(state, user_id, role, next, now)?))
}

/// Revokes one refresh token. Always 204, so it can be retried and does not tell
/// whether the token existed.
#[tracing::instrument(skip_all)]
pub async fn logout(state: &AuthState, request: RpcRequest<LogoutRequest>) -> Reply<NoBody> {
    let presented = request.body.refresh_token.trim();
    if !presented.is_empty() && presented.len() <= TOKEN_MAX_LEN {
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL")
            .bind(to_micros(jiff::Timestamp::now()))
            .bind(hash_token(presented))
            .execute(state.inner.db.writer())
            .await
            .map_err(internal)?;
    }
    Ok((204, NoBody {}))
}

/// The caller's own account.
#[tracing::instrument(skip_all)]
pub async fn me(state: &AuthState, request: RpcRequest<IgnoredAny>) -> Reply<User> {
    let denied = || unauthorized("sign in to see your account");
    let caller = request.caller.ok_or_else(denied)?;
    let row =
        sqlx::query("SELECT id, email, display_name, role, created_at FROM users WHERE id = $1")
            .bind(caller.user_id.to_string())
            .fetch_optional(&state.inner.db.pool)
            .await
            .map_err(internal)?;
    // A valid token for a user that no longer exists authenticates nobody.
    let row = row.ok_or_else(denied)?;
    Ok((200, user_from_row(&row)?))
}

/// The public keys access tokens are verified with.
#[tracing::instrument(skip_all)]
pub async fn jwks(state: &AuthState, _request: RpcRequest<IgnoredAny>) -> Reply<Jwks> {
    let jwks = state.inner.keys.published().await.map_err(internal)?;
    Ok((200, jwks))
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(ErrorCode::Unauthorized).with_detail(detail)
}

fn user_from_row(row: &AnyRow) -> Result<User, Problem> {
    let id: String = row.try_get("id").map_err(internal)?;
    let role: String = row.try_get("role").map_err(internal)?;
    let created_at: i64 = row.try_get("created_at").map_err(internal)?;
    Ok(User {
        id: parse_id(&id)?,
        email: row.try_get("email").map_err(internal)?,
        display_name: row.try_get("display_name").map_err(internal)?,
        role: parse_role(&role)?,
        created_at: from_micros(created_at),
    })
}

#[derive(Debug, thiserror::Error)]
enum CorruptRow {
    #[error("stored id {0:?} is not a UUID")]
    Id(String),
    #[error("stored role {0:?} is unknown")]
    Role(String),
}

fn parse_id(s: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(s).map_err(|_| internal(CorruptRow::Id(s.to_owned())))
}

fn parse_role(s: &str) -> Result<Role, Problem> {
    Role::parse(s).ok_or_else(|| internal(CorruptRow::Role(s.to_owned())))
}

/// 32 random bytes, base64url without padding (43 characters).
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Only this hash is stored: a leaked table does not yield usable tokens. The token has
/// 256 bits of entropy, so a plain (unsalted, fast) hash is enough.
fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

async fn insert_refresh<'e, E>(
    executor: E,
    state: &AuthState,
    user_id: Uuid,
    family_id: Uuid,
    token: &str,
    now: jiff::Timestamp,
) -> Result<(), Problem>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let now_us = to_micros(now);
    let expires = now_us.saturating_add(micros(state.inner.refresh_ttl));
    sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, token_hash, family_id, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(user_id.to_string())
    .bind(hash_token(token))
    .bind(family_id.to_string())
    .bind(expires)
    .bind(now_us)
    .execute(executor)
    .await
    .map_err(internal)?;
    Ok(())
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn token_response(
    state: &AuthState,
    user_id: Uuid,
    role: Role,
    refresh_token: String,
    now: jiff::Timestamp,
) -> Result<TokenResponse, Problem> {
    let s = &state.inner;
    let iat = now.as_second();
    let claims = AccessClaims {
        sub: user_id,
        role,
        iss: TOKEN_ISSUER.to_owned(),
        aud: TOKEN_AUDIENCE.to_owned(),
        iat,
        exp: iat.saturating_add(secs(s.access_ttl)),
        jti: Uuid::now_v7(),
    };
    let access_token = s.keys.current().sign(&claims).map_err(internal)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: s.access_ttl.as_secs(),
        refresh_token,
        refresh_expires_in: s.refresh_ttl.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_unique() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(hash_token(&a).len(), 64);
    }
}
