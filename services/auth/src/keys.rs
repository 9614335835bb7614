//! Ed25519 signing keys and access tokens.
//!
//! Keys live in auth's own database so every replica, and every restart, signs with the
//! same key and publishes the same JWKS. Exactly one key is *active* (signs): the row
//! with `active_slot = 1`, a unique column, so two replicas bootstrapping at once cannot
//! both install a key — the loser's insert does nothing and it re-reads the winner's.
//! Keys that are no longer active but not yet retired stay in the JWKS, so tokens they
//! signed keep verifying until they expire.
//!
//! Rotation (`mesh-auth rotate-key`, or a new `AUTH_SIGNING_KEY_PEM`) makes a new key
//! active and stamps the old one's `last_signed_at`. Every replica re-reads the active
//! key every `AUTH_SIGNING_KEY_RELOAD_SECS` ([`KeyRing::maintain`]) and, while it still
//! holds a key that is no longer active, stamps that key again: so a key stays published
//! until `AUTH_ACCESS_TOKEN_TTL_SECS` + `AUTH_SIGNING_KEY_GRACE_SECS` after the last
//! replica stopped signing with it, then leaves the JWKS (and is marked retired). The
//! gateway fetches the JWKS on an unknown `kid`, so new tokens verify at once, and drops
//! the old key at its next periodic refresh.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contracts::api::{AccessClaims, Jwk, Jwks, TOKEN_AUDIENCE, TOKEN_ISSUER};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::rngs::OsRng;
use runtime::db::{Database, to_micros};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("AUTH_SIGNING_KEY_PEM is not a PKCS#8 Ed25519 private key: {0}")]
    Pem(String),
    #[error("cannot encode the signing key: {0}")]
    Encode(String),
    #[error("the stored signing key {kid} is unusable: {reason}")]
    Stored { kid: String, reason: String },
    #[error("no active signing key after bootstrap")]
    Missing,
    #[error("signing key database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// The key this replica signs access tokens with.
#[derive(Clone)]
pub struct ActiveKey {
    kid: String,
    encoding: EncodingKey,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey").field("kid", &self.kid).finish()
    }
}

impl ActiveKey {
    /// Builds the key from PKCS#8 DER, checking it really is an Ed25519 key.
    fn from_pkcs8_der(kid: String, der: &[u8]) -> Result<ActiveKey, KeyError> {
        SigningKey::from_pkcs8_der(der).map_err(|e| KeyError::Stored {
            kid: kid.clone(),
            reason: e.to_string(),
        })?;
        // jsonwebtoken's rust_crypto backend reads this as PKCS#8 DER, not raw bytes.
        Ok(ActiveKey {
            kid,
            encoding: EncodingKey::from_ed_der(der),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as an EdDSA JWT with this key's `kid` in the header.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }
}

/// The JWK of a 32-byte Ed25519 public key.
pub fn jwk(kid: &str, public_key: &[u8]) -> Jwk {
    Jwk {
        kty: "OKP".to_owned(),
        crv: "Ed25519".to_owned(),
        x: URL_SAFE_NO_PAD.encode(public_key),
        kid: kid.to_owned(),
        alg: "EdDSA".to_owned(),
        use_: "sig".to_owned(),
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: a stable `kid` that every replica
/// derives alike from the same key.
pub fn thumbprint(public_key: &[u8]) -> String {
    // Members in lexicographic order, no whitespace, as the RFC requires.
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the token has no kid")]
    NoKid,
    #[error("no published key has kid {0}")]
    UnknownKid(String),
    #[error(transparent)]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Verifies an access token against a JWKS the way a relying party does: pick the key
/// by `kid`, check the EdDSA signature, issuer, audience and expiry.
pub fn verify(token: &str, jwks: &Jwks) -> Result<AccessClaims, VerifyError> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.ok_or(VerifyError::NoKid)?;
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| VerifyError::UnknownKid(kid.clone()))?;
    let key = DecodingKey::from_ed_components(&jwk.x)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[TOKEN_ISSUER]);
    validation.set_audience(&[TOKEN_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    Ok(jsonwebtoken::decode::<AccessClaims>(token, &key, &validation)?.claims)
}

/// A key pair ready to store.
struct NewKey {
    kid: String,
    private_der: Vec<u8>,
    public: Vec<u8>,
}

impl NewKey {
    fn from_signing_key(key: &SigningKey) -> Result<NewKey, KeyError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let public = key.verifying_key().to_bytes().to_vec();
        Ok(NewKey {
            kid: thumbprint(&public),
            private_der: der.as_bytes().to_vec(),
            public,
        })
    }
}

/// Makes sure one active key exists and returns it.
///
/// With `pem`, that key becomes the active one (idempotently: every replica given the
/// same PEM ends in the same state); the key it replaces stays published. Without it,
/// the stored active key is used, and one is generated when there is none.
pub async fn ensure_active_key(db: &Database, pem: Option<&str>) -> Result<ActiveKey, KeyError> {
    match pem {
        Some(pem) => {
            let key =
                SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| KeyError::Pem(e.to_string()))?;
            install_override(db, &NewKey::from_signing_key(&key)?).await?;
        }
        None => {
            if load_active(db).await?.is_none() {
                let key = SigningKey::generate(&mut OsRng);
                let new = NewKey::from_signing_key(&key)?;
                insert_if_no_active(db, &new).await?;
            }
        }
    }
    // Re-read: after a race the active key may be another replica's.
    let key = load_active(db).await?.ok_or(KeyError::Missing)?;
    tracing::info!(kid = %key.kid, "signing key ready");
    Ok(key)
}

async fn load_active(db: &Database) -> Result<Option<ActiveKey>, KeyError> {
    let row = sqlx::query(
        "SELECT kid, private_key FROM signing_keys WHERE active_slot = 1 AND retired_at IS NULL",
    )
    .fetch_optional(&db.pool)
    .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let kid: String = row.try_get("kid")?;
            let der: Vec<u8> = row.try_get("private_key")?;
            ActiveKey::from_pkcs8_der(kid, &der).map(Some)
        }
    }
}

/// Inserts `key` as the active key unless one already is (the unique `active_slot`
/// decides between racing replicas).
async fn insert_if_no_active(db: &Database, key: &NewKey) -> Result<(), KeyError> {
    let inserted = sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, public_key, active_slot, created_at) \
         VALUES ($1, $2, $3, 1, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&key.kid)
    .bind(&key.private_der)
    .bind(&key.public)
    .bind(to_micros(jiff::Timestamp::now()))
    .execute(db.writer())
    .await?
    .rows_affected();
    if inserted == 1 {
        tracing::info!(kid = %key.kid, "generated a new signing key");
    }
    Ok(())
}

/// Makes `key` the active key, demoting (not retiring) the previous one.
async fn install_override(db: &Database, key: &NewKey) -> Result<(), KeyError> {
    let now = to_micros(jiff::Timestamp::now());
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE signing_keys SET active_slot = NULL, last_signed_at = $2 \
         WHERE active_slot = 1 AND kid <> $1",
    )
    .bind(&key.kid)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, public_key, active_slot, created_at) \
         VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (kid) DO UPDATE SET active_slot = 1, retired_at = NULL",
    )
    .bind(&key.kid)
    .bind(&key.private_der)
    .bind(&key.public)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The keys relying parties verify with, newest first: the active key, and every other
/// key that signed a token within `keep` (the access-token lifetime plus a grace) and is
/// not retired.
pub async fn published(db: &Database, keep: Duration) -> Result<Jwks, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kid, public_key FROM signing_keys WHERE retired_at IS NULL \
         AND (active_slot = 1 OR last_signed_at IS NULL OR last_signed_at > $1) \
         ORDER BY created_at DESC, kid",
    )
    .bind(cutoff(keep))
    .fetch_all(&db.pool)
    .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let kid: String = row.try_get("kid")?;
        let public: Vec<u8> = row.try_get("public_key")?;
        keys.push(jwk(&kid, &public));
    }
    Ok(Jwks { keys })
}

/// Microseconds of now minus `keep`.
fn cutoff(keep: Duration) -> i64 {
    let keep = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
    to_micros(jiff::Timestamp::now()).saturating_sub(keep)
}

/// The outcome of [`rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new active key.
    pub kid: String,
    /// The key it replaced (still published until its tokens have expired).
    pub previous: Option<String>,
}

/// Generates a new key and makes it the active one; the previous active key is demoted
/// (still published, stamped as signing until now). Running replicas switch at their
/// next reload.
pub async fn rotate(db: &Database) -> Result<Rotation, KeyError> {
    let new = NewKey::from_signing_key(&SigningKey::generate(&mut OsRng))?;
    let now = to_micros(jiff::Timestamp::now());
    let mut tx = db.begin_write().await?;
    let previous = sqlx::query(
        "UPDATE signing_keys SET active_slot = NULL, last_signed_at = $1 \
         WHERE active_slot = 1 RETURNING kid",
    )
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?
    .map(|row| row.try_get::<String, _>("kid"))
    .transpose()?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, public_key, active_slot, created_at) \
         VALUES ($1, $2, $3, 1, $4)",
    )
    .bind(&new.kid)
    .bind(&new.private_der)
    .bind(&new.public)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(kid = %new.kid, previous = ?previous, "signing key rotated");
    Ok(Rotation {
        kid: new.kid,
        previous,
    })
}

/// The key this replica signs with, kept current by [`KeyRing::maintain`].
#[derive(Clone)]
pub struct KeyRing {
    db: Database,
    current: Arc<RwLock<ActiveKey>>,
    /// Signing with `AUTH_SIGNING_KEY_PEM`: the key never changes at run time.
    pinned: bool,
    /// How long a key that stopped signing stays published.
    keep: Duration,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current().kid)
            .field("pinned", &self.pinned)
            .field("keep", &self.keep)
            .finish()
    }
}

impl KeyRing {
    /// Bootstraps the key ([`ensure_active_key`]) and holds it. `keep` is how long a key
    /// stays published after it last signed (access-token lifetime plus a grace).
    pub async fn start(db: Database, pem: Option<&str>, keep: Duration) -> Result<Self, KeyError> {
        let key = ensure_active_key(&db, pem).await?;
        Ok(KeyRing {
            db,
            current: Arc::new(RwLock::new(key)),
            pinned: pem.is_some(),
            keep,
        })
    }

    /// The key to sign with now.
    pub fn current(&self) -> ActiveKey {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The JWKS as published now.
    pub async fn published(&self) -> Result<Jwks, sqlx::Error> {
        published(&self.db, self.keep).await
    }

    /// One round of upkeep: switch to the stored active key (unless pinned to a PEM);
    /// keep the key this replica signed with published if it is no longer the active
    /// one; start the clock for demoted keys that never got a stamp; mark keys past
    /// their publishing window retired.
    pub async fn maintain(&self) -> Result<(), KeyError> {
        let held = self.current();
        if !self.pinned
            && let Some(active) = load_active(&self.db).await?
            && active.kid != held.kid
        {
            tracing::info!(kid = %active.kid, previous = %held.kid, "now signing with the rotated key");
            match self.current.write() {
                Ok(mut k) => *k = active,
                Err(poisoned) => *poisoned.into_inner() = active,
            }
        }
        let now = to_micros(jiff::Timestamp::now());
        let mut tx = self.db.begin_write().await?;
        // Until this moment tokens may have been signed with `held`.
        sqlx::query(
            "UPDATE signing_keys SET last_signed_at = $1, retired_at = NULL \
             WHERE kid = $2 AND active_slot IS NULL",
        )
        .bind(now)
        .bind(&held.kid)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE signing_keys SET last_signed_at = $1 \
             WHERE active_slot IS NULL AND last_signed_at IS NULL AND retired_at IS NULL",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let retired = sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 \
             WHERE active_slot IS NULL AND retired_at IS NULL AND last_signed_at <= $2",
        )
        .bind(now)
        .bind(cutoff(self.keep))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if retired > 0 {
            tracing::info!(
                retired,
                "signing keys retired: every token they signed has expired"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn claims(exp_in: i64) -> AccessClaims {
        let now = jiff::Timestamp::now().as_second();
        AccessClaims {
            sub: Uuid::now_v7(),
            role: contracts::Role::User,
            iss: TOKEN_ISSUER.to_owned(),
            aud: TOKEN_AUDIENCE.to_owned(),
            iat: now,
            exp: now + exp_in,
            jti: Uuid::now_v7(),
        }
    }

    fn fresh() -> Result<(ActiveKey, Jwks), KeyError> {
        let key = SigningKey::generate(&mut OsRng);
        let new = NewKey::from_signing_key(&key)?;
        let active = ActiveKey::from_pkcs8_der(new.kid.clone(), &new.private_der)?;
        let jwks = Jwks {
            keys: vec![jwk(&new.kid, &new.public)],
        };
        Ok((active, jwks))
    }

    #[test]
    fn a_signed_token_verifies_from_the_jwk_x_component() -> Result<(), Box<dyn std::error::Error>>
    {
        let (key, jwks) = fresh()?;
        let claims = claims(60);
        let token = key.sign(&claims)?;
        let header = jsonwebtoken::decode_header(&token)?;
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        // The path the gateway takes: DecodingKey::from_ed_components(x).
        assert_eq!(verify(&token, &jwks)?, claims);
        Ok(())
    }

    #[test]
    fn another_key_expiry_and_tampering_are_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let (key, jwks) = fresh()?;
        let (_, other_jwks) = fresh()?;
        let token = key.sign(&claims(60))?;
        assert!(matches!(
            verify(&token, &other_jwks),
            Err(VerifyError::UnknownKid(_))
        ));
        // Same kid, other key material: the signature must fail.
        let mut forged = other_jwks.clone();
        forged.keys[0].kid = key.kid().to_owned();
        assert!(verify(&token, &forged).is_err());
        let expired = key.sign(&claims(-3600))?;
        assert!(verify(&expired, &jwks).is_err());
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = key.sign(&claims(120))?;
        let other_payload = other.split('.').nth(1).unwrap_or_default().to_owned();
        parts[1] = &other_payload;
        assert!(verify(&parts.join("."), &jwks).is_err());
        Ok(())
    }

    #[test]
    fn pem_keys_load_and_kids_are_stable() -> Result<(), Box<dyn std::error::Error>> {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        let key = SigningKey::generate(&mut OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF)?;
        let parsed = SigningKey::from_pkcs8_pem(&pem)?;
        let a = NewKey::from_signing_key(&key)?;
        let b = NewKey::from_signing_key(&parsed)?;
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.public.len(), 32);
        Ok(())
    }

    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        // RFC 8037 appendix A.3.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let public = URL_SAFE_NO_PAD.decode(x).unwrap_or_default();
        assert_eq!(
            thumbprint(&public),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
