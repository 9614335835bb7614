//! Administrative commands run by the same binary.

use runtime::db::{Database, DbError};

use crate::domain::normalize_email;

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
            .execute(&db.pool)
            .await?
            .rows_affected();
    db.pool.close().await;
    if updated == 0 {
        return Err(PromoteError::UnknownUser(email));
    }
    Ok(())
}
