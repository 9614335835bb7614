//! Administrative commands run by the same binary.

use runtime::db::{Database, DbError};

use crate::domain::normalize_email;
use crate::keys::{self, KeyError, Rotation};

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot update the user: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("no user has the email {0}")]
    UnknownUser(String),
}

/// Gives the user with `email` the `admin` role. Tokens issued before keep the old
/// role until they are refreshed.
pub async fn promote(database_url: &str, email: &str) -> Result<(), PromoteError> {
    let db = Database::connect(database_url, &crate::migrations()).await?;
    let email = normalize_email(email);
    let updated =
        sqlx::query("UPDATE users SET role = 'admin', version = version + 1 WHERE email = $1")
            .bind(&email)
            .execute(db.writer())
            .await?
            .rows_affected();
    db.pool.close().await;
    if updated == 0 {
        return Err(PromoteError::UnknownUser(email));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "AUTH_SIGNING_KEY_PEM is set: replicas sign with that key, not the stored one; \
         rotate by deploying a new PEM instead"
    )]
    PemConfigured,
}

/// Makes a new signing key the active one (see [`keys::rotate`]). Running replicas sign
/// with it from their next reload (`AUTH_SIGNING_KEY_RELOAD_SECS`); the previous key
/// stays in the JWKS until every token it signed has expired, so nobody is logged out.
/// Refused when `pem_configured`: a replica given a PEM ignores the stored active key.
pub async fn rotate_key(database_url: &str, pem_configured: bool) -> Result<Rotation, RotateError> {
    if pem_configured {
        return Err(RotateError::PemConfigured);
    }
    let db = Database::connect(database_url, &crate::migrations()).await?;
    let rotation = keys::rotate(&db).await;
    db.pool.close().await;
    Ok(rotation?)
}
