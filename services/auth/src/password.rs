//! Password hashing with argon2id (the crate's default parameters: 19 MiB, 2 passes).
//!
//! Hashing is CPU- and memory-heavy by design, so it runs on the blocking pool and at
//! most a few hashes run at once: a burst of logins queues instead of exhausting memory
//! or starving the async workers.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::rngs::OsRng;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("the hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the hashing pool is closed")]
    Closed,
}

/// Hashes and verifies passwords off the async workers.
#[derive(Clone)]
pub struct Hasher {
    limit: Arc<Semaphore>,
    /// A hash of a random password, verified against when the email is unknown so that
    /// "no such user" costs the same time as "wrong password".
    dummy: Arc<str>,
}

impl Hasher {
    /// Builds the hasher, computing the dummy hash once.
    pub async fn new() -> Result<Hasher, PasswordError> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let limit = Arc::new(Semaphore::new(parallel * 2));
        let secret = {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            OsRng.fill_bytes(&mut bytes);
            hex::encode(bytes)
        };
        let dummy = tokio::task::spawn_blocking(move || hash_blocking(&secret)).await??;
        Ok(Hasher {
            limit,
            dummy: dummy.into(),
        })
    }

    /// An argon2id PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_blocking(&password)).await?
    }

    /// True when `password` matches `stored`; with `None` (unknown user) it does the same
    /// work against the dummy hash and returns false.
    pub async fn verify(
        &self,
        password: &str,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        let password = password.to_owned();
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.to_string());
        let matches = tokio::task::spawn_blocking(move || verify_blocking(&password, &phc)).await?;
        Ok(known && matches)
    }
}

fn hash_blocking(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// A stored hash that does not parse counts as a mismatch (and is logged): it can only
/// come from a broken row, and failing closed is the safe answer.
fn verify_blocking(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored password hash does not parse");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() -> Result<(), PasswordError> {
        let hasher = Hasher::new().await?;
        let phc = hasher.hash("correct horse").await?;
        assert!(phc.starts_with("$argon2id$"));
        assert!(hasher.verify("correct horse", Some(phc.clone())).await?);
        assert!(!hasher.verify("wrong horse", Some(phc)).await?);
        assert!(!hasher.verify("anything", None).await?);
        assert!(!hasher.verify("x", Some("not a hash".into())).await?);
        Ok(())
    }
}
