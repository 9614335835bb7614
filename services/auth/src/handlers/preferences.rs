//! Notification preferences: per user, per channel (email, push), per kind, all on by
//! default. The email and push services learn them from `PreferencesChangedV1`.
//!
//! The stored row carries a version that increases with every change and becomes the
//! event's aggregate version, so a subscriber that sees two changes out of order keeps
//! the newer one. A write that changes nothing emits nothing.

use contracts::api::{Accepted, NotificationKind, Preferences};
use contracts::events::PreferencesChangedV1;
use contracts::rpc::{Caller, RpcRequest};
use contracts::{ErrorCode, EventMeta, Problem};
use runtime::db::to_micros;
use serde::de::IgnoredAny;
use sqlx::Row;
use uuid::Uuid;

use super::{AuthState, Reply, TOKEN_MAX_LEN, internal, unauthorized};
use crate::domain::Channel;

/// How often a preferences write re-reads after losing a race with another writer of
/// the same user (only PostgreSQL lets two run at once; SQLite serializes writers).
const MAX_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
enum PreferencesError {
    #[error("stored preferences of user {user_id} do not parse: {source}")]
    Corrupt {
        user_id: Uuid,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode preferences: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("stored preferences version {0} is negative")]
    Version(i64),
    #[error("preferences of user {0} kept changing under {MAX_ATTEMPTS} attempts to write")]
    Contention(Uuid),
}

/// The caller's preferences (defaults when never changed).
#[tracing::instrument(skip_all)]
pub async fn get_preferences(
    state: &AuthState,
    request: RpcRequest<IgnoredAny>,
) -> Reply<Preferences> {
    let caller = signed_in(request.caller)?;
    let mut conn = state.inner.db.pool.acquire().await.map_err(internal)?;
    let (preferences, _) = load(&mut conn, caller.user_id)
        .await?
        .ok_or_else(|| unauthorized("sign in to see your preferences"))?;
    Ok((200, preferences))
}

/// Replaces the caller's preferences; replies what is stored.
#[tracing::instrument(skip_all)]
pub async fn put_preferences(
    state: &AuthState,
    request: RpcRequest<Preferences>,
) -> Reply<Preferences> {
    let caller = signed_in(request.caller)?;
    let wanted = request.body;
    let stored = change(state, caller.user_id, |_| wanted)
        .await?
        .ok_or_else(|| unauthorized("sign in to change your preferences"))?;
    Ok((200, stored))
}

/// The one-click unsubscribe link of a mail: query `token` (the user's unsubscribe
/// token), `kind` (a notification kind) and optional `channel` (`email`, the default,
/// or `push`). Turns that kind off; repeating it changes and emits nothing.
#[tracing::instrument(skip_all)]
pub async fn unsubscribe(state: &AuthState, request: RpcRequest<IgnoredAny>) -> Reply<Accepted> {
    let bad = |detail: String| Err(Problem::new(ErrorCode::BadRequest).with_detail(detail));
    let query = &request.query;
    let Some(token) = query
        .get("token")
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    else {
        return bad("query parameter `token` is required".to_owned());
    };
    let kind = query.get("kind").map(String::as_str).unwrap_or_default();
    let Some(kind) = NotificationKind::parse(kind) else {
        let kinds: Vec<&str> = NotificationKind::ALL.iter().map(|k| k.as_str()).collect();
        return bad(format!(
            "query parameter `kind` must be one of: {}",
            kinds.join(", ")
        ));
    };
    let channel = query.get("channel").map_or("email", String::as_str);
    let Some(channel) = Channel::parse(channel) else {
        return bad("query parameter `channel` must be `email` or `push`".to_owned());
    };
    let not_found =
        || Problem::new(ErrorCode::NotFound).with_detail("this unsubscribe link is not valid");
    if token.len() > TOKEN_MAX_LEN {
        return Err(not_found());
    }
    let row = sqlx::query("SELECT id FROM users WHERE unsubscribe_token = $1")
        .bind(token)
        .fetch_optional(&state.inner.db.pool)
        .await
        .map_err(internal)?
        .ok_or_else(not_found)?;
    let id: String = row.try_get("id").map_err(internal)?;
    let user_id = super::parse_id(&id)?;
    change(state, user_id, |mut preferences| {
        channel.of(&mut preferences).set(kind, false);
        preferences
    })
    .await?
    .ok_or_else(not_found)?;
    Ok((
        200,
        Accepted {
            status: "unsubscribed".to_owned(),
        },
    ))
}

fn signed_in(caller: Option<Caller>) -> Result<Caller, Problem> {
    caller.ok_or_else(|| unauthorized("sign in to manage your notification preferences"))
}

/// The user's preferences and their version (0: never changed, the defaults); `None`
/// when the user does not exist.
async fn load(
    conn: &mut sqlx::AnyConnection,
    user_id: Uuid,
) -> Result<Option<(Preferences, i64)>, Problem> {
    let row = sqlx::query(
        "SELECT p.settings, p.version FROM users u \
         LEFT JOIN preferences p ON p.user_id = u.id WHERE u.id = $1",
    )
    .bind(user_id.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(internal)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let settings: Option<String> = row.try_get("settings").map_err(internal)?;
    let version: Option<i64> = row.try_get("version").map_err(internal)?;
    match (settings, version) {
        (Some(settings), Some(version)) => {
            let preferences = serde_json::from_str(&settings)
                .map_err(|source| internal(PreferencesError::Corrupt { user_id, source }))?;
            Ok(Some((preferences, version)))
        }
        _ => Ok(Some((Preferences::default(), 0))),
    }
}

/// Applies `edit` to the user's preferences. When the result differs, stores it with the
/// next version and enqueues `PreferencesChangedV1` in the same transaction. Returns the
/// stored preferences, or `None` when the user does not exist.
async fn change(
    state: &AuthState,
    user_id: Uuid,
    edit: impl Fn(Preferences) -> Preferences,
) -> Result<Option<Preferences>, Problem> {
    let s = &state.inner;
    for _ in 0..MAX_ATTEMPTS {
        let mut tx = s.db.begin_write().await.map_err(internal)?;
        let Some((current, version)) = load(&mut tx, user_id).await? else {
            tx.rollback().await.map_err(internal)?;
            return Ok(None);
        };
        let next = edit(current);
        if next == current {
            tx.rollback().await.map_err(internal)?;
            return Ok(Some(current));
        }
        let settings =
            serde_json::to_string(&next).map_err(|e| internal(PreferencesError::Encode(e)))?;
        let next_version = version.saturating_add(1);
        let now = to_micros(jiff::Timestamp::now());
        // Compare-and-set on the version read above: a concurrent writer that got in
        // first makes this touch no row, and we read again.
        let written = if version == 0 {
            sqlx::query(
                "INSERT INTO preferences (user_id, settings, version, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id.to_string())
            .bind(&settings)
            .bind(next_version)
            .bind(now)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE preferences SET settings = $1, version = $2, updated_at = $3 \
                 WHERE user_id = $4 AND version = $5",
            )
            .bind(&settings)
            .bind(next_version)
            .bind(now)
            .bind(user_id.to_string())
            .bind(version)
            .execute(&mut *tx)
            .await
        }
        .map_err(internal)?
        .rows_affected();
        if written == 0 {
            tx.rollback().await.map_err(internal)?;
            continue;
        }
        let aggregate_version = u64::try_from(next_version)
            .map_err(|_| internal(PreferencesError::Version(next_version)))?;
        let event = PreferencesChangedV1 {
            meta: EventMeta::new(user_id, aggregate_version),
            user_id,
            preferences: next,
        };
        runtime::outbox::enqueue(&mut tx, &event)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        s.waker.wake();
        tracing::info!(%user_id, version = next_version, "preferences changed");
        return Ok(Some(next));
    }
    Err(internal(PreferencesError::Contention(user_id)))
}
