//! Access tokens minted in bulk by the bench itself.
//!
//! Auth signs with the Ed25519 key it is given in `AUTH_SIGNING_KEY_PEM`; the bench
//! generates that key, so it can sign thousands of tokens for its users in a second
//! instead of logging each one in (argon2 per login would dominate the set-up). The
//! gateway cannot tell them apart: same key id (RFC 7638 thumbprint, as auth derives
//! it), issuer, audience and claims.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contracts::api::{AccessClaims, TOKEN_AUDIENCE, TOKEN_ISSUER};
use contracts::rpc::Role;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The signing key auth is started with, and a minting function for it.
pub struct Signer {
    pem: String,
    kid: String,
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key
            .to_pkcs8_der()
            .context("Failed to encode the signing key as PKCS#8")?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .context("Failed to encode the signing key as PEM")?
            .to_string();
        Ok(Signer {
            pem,
            kid: thumbprint(key.verifying_key().as_bytes()),
            key: EncodingKey::from_ed_der(der.as_bytes()),
        })
    }

    /// The value for auth's `AUTH_SIGNING_KEY_PEM`.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// An access token for `user` valid for `ttl`.
    pub fn mint(&self, user: Uuid, role: Role, ttl: Duration) -> Result<String> {
        let now = jiff::Timestamp::now().as_second();
        let claims = AccessClaims {
            sub: user,
            role,
            iss: TOKEN_ISSUER.to_owned(),
            aud: TOKEN_AUDIENCE.to_owned(),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: Uuid::now_v7(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).context("Failed to sign a token")
    }

    /// A user token for `user`, valid for a day (longer than any run).
    pub fn user_token(&self, user: Uuid) -> Result<String> {
        self.mint(user, Role::User, Duration::from_secs(24 * 3600))
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: auth's key id.
fn thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_carry_the_kid_and_claims() -> Result<()> {
        let signer = Signer::generate()?;
        assert!(signer.pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let user = Uuid::now_v7();
        let token = signer.user_token(user)?;
        let header = jsonwebtoken::decode_header(&token)?;
        assert_eq!(header.kid.as_deref(), Some(signer.kid.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
        Ok(())
    }
}
