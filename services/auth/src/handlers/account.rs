//! Proving an address and recovering an account: the verification link of the welcome
//! mail and the password reset flow.
//!
//! Both hand out single-use tokens by mail. Only their sha256 is stored, and a token is
//! spent by one conditional UPDATE (`used_at IS NULL AND expires_at > now`), so two
//! racing requests with the same token cannot both succeed.

use contracts::api::{Accepted, PasswordResetConfirm, PasswordResetRequest};
use contracts::events::PasswordResetRequestedV1;
use contracts::rpc::{NoBody, RpcRequest};
use contracts::{ErrorCode, EventMeta, Problem};
use runtime::db::{from_micros, to_micros};
use serde::de::IgnoredAny;
use sqlx::Row;

use super::{AuthState, Reply, TOKEN_MAX_LEN, hash_token, internal, micros, new_token, parse_id};
use crate::domain::{Password, normalize_email};

/// Longest address worth looking up, in characters (registration accepts no longer).
const EMAIL_MAX_LEN: usize = 254;

/// The presented token, when it has a shape worth looking up.
fn presented(token: Option<&String>) -> Option<&str> {
    let token = token?.trim();
    (!token.is_empty() && token.len() <= TOKEN_MAX_LEN).then_some(token)
}

fn accepted(status: &str) -> Accepted {
    Accepted {
        status: status.to_owned(),
    }
}

/// Marks the account's email verified with the token from the welcome mail (query
/// parameter `token`). Single use; an unknown, expired or used token is
/// `validation_failed` on `token`.
#[tracing::instrument(skip_all)]
pub async fn verify_email(state: &AuthState, request: RpcRequest<IgnoredAny>) -> Reply<Accepted> {
    let invalid = || {
        Problem::new(ErrorCode::ValidationFailed)
            .with_detail("the verification link is invalid, expired or already used")
            .with_field("token", "is invalid, expired or already used")
    };
    let token = presented(request.query.get("token")).ok_or_else(invalid)?;
    let s = &state.inner;
    let now = to_micros(jiff::Timestamp::now());
    let mut tx = s.db.begin_write().await.map_err(internal)?;
    let spent = sqlx::query(
        "UPDATE email_verifications SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
         RETURNING user_id",
    )
    .bind(now)
    .bind(hash_token(token))
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)?
    .ok_or_else(invalid)?;
    let user_id: String = spent.try_get("user_id").map_err(internal)?;
    sqlx::query(
        "UPDATE users SET email_verified_at = $1, version = version + 1 \
         WHERE id = $2 AND email_verified_at IS NULL",
    )
    .bind(now)
    .bind(&user_id)
    .execute(&mut *tx)
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    tracing::info!(%user_id, "email verified");
    Ok((200, accepted("verified")))
}

/// Starts a password reset. Always 202, so the answer does not tell who has an
/// account; for an existing one it spends the user's older reset tokens, stores a new
/// one and enqueues `PasswordResetRequestedV1` (with the plain token, for the mail) in
/// the same transaction.
#[tracing::instrument(skip_all)]
pub async fn request_password_reset(
    state: &AuthState,
    request: RpcRequest<PasswordResetRequest>,
) -> Reply<Accepted> {
    let s = &state.inner;
    let done = Ok((202, accepted("accepted")));
    // Like login: no shape check, a malformed address simply matches nobody.
    let email = normalize_email(&request.body.email);
    if email.is_empty() || email.chars().count() > EMAIL_MAX_LEN {
        return done;
    }
    let token = new_token();
    let now = to_micros(jiff::Timestamp::now());
    let expires_at = now.saturating_add(micros(s.reset_ttl));

    let mut tx = s.db.begin_write().await.map_err(internal)?;
    // Bumping the version both numbers the event and locks the user's row, so two
    // concurrent requests for one account leave exactly one usable token.
    let user = sqlx::query(
        "UPDATE users SET version = version + 1 WHERE email = $1 \
         RETURNING id, email, display_name, version",
    )
    .bind(&email)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)?;
    let Some(user) = user else {
        tx.rollback().await.map_err(internal)?;
        tracing::debug!("password reset requested for an unknown email");
        return done;
    };
    let id: String = user.try_get("id").map_err(internal)?;
    let user_id = parse_id(&id)?;
    let version: i64 = user.try_get("version").map_err(internal)?;
    sqlx::query("UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    sqlx::query(
        "INSERT INTO password_resets (token_hash, user_id, expires_at, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(hash_token(&token))
    .bind(&id)
    .bind(expires_at)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(internal)?;
    let event = PasswordResetRequestedV1 {
        meta: EventMeta::new(user_id, u64::try_from(version).unwrap_or_default()),
        user_id,
        email: user.try_get("email").map_err(internal)?,
        display_name: user.try_get("display_name").map_err(internal)?,
        token,
        expires_at: from_micros(expires_at),
    };
    runtime::outbox::enqueue(&mut tx, &event)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    s.waker.wake();
    tracing::info!(%user_id, "password reset requested");
    done
}

/// Sets a new password with a reset token. In one transaction: the token is spent, the
/// password replaced, every refresh token of the user revoked (whoever held the old
/// password is signed out), the email counts as verified (the mail was read), and the
/// account's failed-login count is cleared.
#[tracing::instrument(skip_all)]
pub async fn confirm_password_reset(
    state: &AuthState,
    request: RpcRequest<PasswordResetConfirm>,
) -> Reply<NoBody> {
    let s = &state.inner;
    let PasswordResetConfirm {
        token,
        new_password,
    } = request.body;
    const TOKEN_INVALID: &str = "is invalid, expired or already used";
    let invalid = || {
        Problem::new(ErrorCode::ValidationFailed)
            .with_detail("the password reset link is invalid, expired or already used")
            .with_field("token", TOKEN_INVALID)
    };
    let password = Password::parse(new_password);
    let token = presented(Some(&token)).map(hash_token);

    // A cheap read first, so a guessed token never costs an argon2 hash.
    let live = match &token {
        Some(hash) => sqlx::query(
            "SELECT user_id FROM password_resets \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hash)
        .bind(to_micros(jiff::Timestamp::now()))
        .fetch_optional(&s.db.pool)
        .await
        .map_err(internal)?
        .is_some(),
        None => false,
    };
    let (password, hash) = match (password, token) {
        (Ok(password), Some(hash)) if live => (password, hash),
        (password, _) => {
            let mut problem = Problem::new(ErrorCode::ValidationFailed)
                .with_detail("the password reset has invalid fields");
            if !live {
                problem = problem.with_field("token", TOKEN_INVALID);
            }
            if let Err(message) = password {
                problem = problem.with_field("new_password", message);
            }
            return Err(problem);
        }
    };
    let password_hash = s.hasher.hash(password.expose()).await.map_err(internal)?;

    let now = to_micros(jiff::Timestamp::now());
    let mut tx = s.db.begin_write().await.map_err(internal)?;
    // The read above may have raced with another confirm; this UPDATE decides.
    let spent = sqlx::query(
        "UPDATE password_resets SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
         RETURNING user_id",
    )
    .bind(now)
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)?
    .ok_or_else(invalid)?;
    let user_id: String = spent.try_get("user_id").map_err(internal)?;
    let email: String = sqlx::query(
        "UPDATE users SET password_hash = $1, version = version + 1, \
         email_verified_at = COALESCE(email_verified_at, $2) WHERE id = $3 RETURNING email",
    )
    .bind(&password_hash)
    .bind(now)
    .bind(&user_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(internal)?
    .try_get("email")
    .map_err(internal)?;
    // Whoever read the mail owns the account: a lockout of its logins ends here.
    crate::throttle::clear_account(&mut *tx, &email)
        .await
        .map_err(internal)?;
    let revoked = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(&user_id)
    .execute(&mut *tx)
    .await
    .map_err(internal)?
    .rows_affected();
    tx.commit().await.map_err(internal)?;
    tracing::info!(%user_id, revoked, "password reset; sessions revoked");
    Ok((204, NoBody {}))
}
