//! Access-token verification against a locally cached JWKS.
//!
//! The gateway never calls auth per request: it fetches auth's public keys
//! (`svc.auth.v1.jwks`) at start, again every `GATEWAY_JWKS_REFRESH_SECS`, and at once
//! (at most every [`UNKNOWN_KID_REFRESH_INTERVAL`]) when a token names a key it does not
//! know, so a key rotation is picked up before the first token signed with it fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::Client;
use axum::http::{HeaderMap, header};
use base64::Engine;
use contracts::api::{AccessClaims, Jwks, TOKEN_AUDIENCE, TOKEN_ISSUER};
use contracts::rpc::{Caller, NoBody, RpcReply, RpcRequest};
use contracts::subjects;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::routes::AuthRule;

/// A token naming an unknown key triggers a refetch at most this often, so forged
/// tokens cannot turn the gateway into a load generator against auth.
pub const UNKNOWN_KID_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Why the key set could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot encode the JWKS request")]
    Encode(#[source] contracts::wire::WireError),
    #[error("JWKS request to auth failed")]
    Request(#[source] async_nats::RequestError),
    #[error("cannot decode the JWKS reply")]
    Decode(#[source] contracts::wire::WireError),
    #[error("auth answered the JWKS request with a problem")]
    Problem(#[source] contracts::Problem),
    #[error("the JWKS holds no usable Ed25519 key")]
    NoUsableKey,
}

/// The verification keys by key id.
type Keys = HashMap<String, DecodingKey>;

/// How many verified tokens the gateway remembers.
const VERIFIED_TOKENS: u64 = 200_000;

/// A token whose signature and claims were checked, remembered by its SHA-256 (the
/// token itself is not kept).
struct Verified {
    claims: AccessClaims,
    /// The key that signed it: once the key leaves the key set, so does the token.
    kid: Option<String>,
}

/// The cached key set and how tokens are checked against it.
pub struct KeyStore {
    client: Client,
    fetch_timeout: Duration,
    validation: Validation,
    keys: RwLock<Arc<Keys>>,
    loaded: AtomicBool,
    /// When the last fetch for an unknown kid started; held across that fetch so
    /// concurrent requests with the same new kid wait for one fetch instead of each
    /// starting one.
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
    /// Tokens verified before: an Ed25519 check costs tens of microseconds, the
    /// largest part of a cheap request, and clients send the same token for minutes.
    /// A hit still checks expiry and that the signing key is still published.
    verified: moka::sync::Cache<[u8; 32], Arc<Verified>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    pub fn new(client: Client, fetch_timeout: Duration, leeway_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = leeway_secs;
        KeyStore {
            client,
            fetch_timeout,
            validation,
            keys: RwLock::new(Arc::new(HashMap::new())),
            loaded: AtomicBool::new(false),
            last_unknown_kid_fetch: Mutex::new(None),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                // No access token lives longer; expiry is also checked on every hit.
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
        }
    }

    /// True once a key set has been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn keys(&self) -> Arc<Keys> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs a key set (also used by tests that bypass NATS).
    pub fn install(&self, jwks: &Jwks) -> Result<usize, JwksError> {
        let keys = parse_jwks(jwks);
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        let n = keys.len();
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut k) => *k = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        self.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    /// Fetches the key set from auth and installs it.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let jwks = self.fetch().await?;
        self.install(&jwks)
    }

    async fn fetch(&self) -> Result<Jwks, JwksError> {
        let payload =
            contracts::wire::encode(&RpcRequest::new(NoBody {})).map_err(JwksError::Encode)?;
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.fetch_timeout));
        let reply = self
            .client
            .send_request(subjects::auth::RPC_JWKS, request)
            .await
            .map_err(JwksError::Request)?;
        let reply: RpcReply<Jwks> =
            contracts::wire::decode(&reply.payload).map_err(JwksError::Decode)?;
        reply.into_result().map_err(JwksError::Problem)
    }

    /// Refetches after a token named an unknown key, unless a fetch started within
    /// [`UNKNOWN_KID_REFRESH_INTERVAL`]. Returns whether the keys may have changed.
    async fn refresh_for_unknown_kid(&self) -> bool {
        let mut last = self.last_unknown_kid_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFRESH_INTERVAL) {
            // Someone fetched a moment ago (perhaps while we waited for the lock).
            return true;
        }
        *last = Some(Instant::now());
        let result = self.fetch().await;
        drop(last);
        match result.and_then(|jwks| self.install(&jwks)) {
            Ok(n) => {
                tracing::info!(keys = n, "JWKS refreshed for an unknown key id");
                true
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "JWKS refresh for an unknown key id failed");
                false
            }
        }
    }

    /// Checks a token's signature and claims.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, ApiError> {
        if !self.is_loaded() {
            return Err(ApiError::ServiceUnavailable("signing keys not loaded yet"));
        }
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.verified.get(&digest) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
            let key_published = match &known.kid {
                Some(kid) => self.keys().contains_key(kid),
                None => true,
            };
            if now <= known.claims.exp.saturating_add(leeway) && key_published {
                return Ok(known.claims.clone());
            }
            // Expired, or its key was retired: check it in full (and answer why).
            self.verified.invalidate(&digest);
        }
        let claims = self.verify_signature(token).await?;
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        self.verified.insert(
            digest,
            Arc::new(Verified {
                claims: claims.clone(),
                kid,
            }),
        );
        Ok(claims)
    }

    /// The full check: signature against the key set, then the claims.
    async fn verify_signature(&self, token: &str) -> Result<AccessClaims, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::Unauthorized("malformed token"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(ApiError::Unauthorized("invalid token"));
        }
        match header.kid {
            Some(kid) => {
                let mut key = self.keys().get(&kid).cloned();
                if key.is_none() && self.refresh_for_unknown_kid().await {
                    key = self.keys().get(&kid).cloned();
                }
                let key = key.ok_or(ApiError::Unauthorized("invalid token"))?;
                self.decode(token, &key)
            }
            // Without a kid, any current key may have signed it.
            None => {
                let keys = self.keys();
                let mut last = Err(ApiError::Unauthorized("invalid token"));
                for key in keys.values() {
                    last = self.decode(token, key);
                    if last.is_ok() {
                        break;
                    }
                }
                last
            }
        }
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<AccessClaims, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::Unauthorized("token expired"),
                _ => ApiError::Unauthorized("invalid token"),
            })
    }

    /// Applies `rule` to the request's `Authorization` header: `None` for public routes,
    /// the verified caller otherwise.
    pub async fn authorize(
        &self,
        rule: AuthRule,
        headers: &HeaderMap,
    ) -> Result<Option<Caller>, ApiError> {
        if rule == AuthRule::Public {
            return Ok(None);
        }
        let token = bearer_token(headers)?;
        self.authorize_token(rule, token).await.map(Some)
    }

    /// Applies `rule` (`User` or `Admin`) to a token however it arrived (bearer header or
    /// the console's session cookie).
    pub async fn authorize_token(&self, rule: AuthRule, token: &str) -> Result<Caller, ApiError> {
        let claims = self.verify(token).await?;
        let caller = Caller {
            user_id: claims.sub,
            role: claims.role,
        };
        if rule == AuthRule::Admin && caller.role != contracts::Role::Admin {
            return Err(ApiError::Forbidden);
        }
        Ok(caller)
    }

    /// Loads the key set, retrying until auth answers, then refreshes it every `every`
    /// until `cancel`.
    pub async fn run(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wait = match self.refresh().await {
                Ok(n) => {
                    tracing::debug!(keys = n, "JWKS loaded");
                    backoff = Duration::from_millis(100);
                    every
                }
                Err(e) => {
                    let level_warn = self.is_loaded() || backoff >= Duration::from_secs(2);
                    if level_warn {
                        tracing::warn!(error = %error_chain(&e), "cannot load JWKS, retrying");
                    } else {
                        tracing::debug!(error = %error_chain(&e), "JWKS not available yet");
                    }
                    let wait = if self.is_loaded() {
                        every.min(backoff)
                    } else {
                        backoff
                    };
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    wait
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(ApiError::Unauthorized("malformed authorization header"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::Unauthorized("malformed authorization header"));
    }
    Ok(token)
}

/// The usable keys of a JWKS: Ed25519 keys for EdDSA whose `x` is 32 bytes.
fn parse_jwks(jwks: &Jwks) -> Keys {
    let mut keys = HashMap::new();
    for jwk in &jwks.keys {
        let usable = jwk.kty == "OKP"
            && jwk.crv == "Ed25519"
            && (jwk.alg.is_empty() || jwk.alg == "EdDSA")
            && (jwk.use_.is_empty() || jwk.use_ == "sig");
        // jsonwebtoken slices the first 32 bytes of `x` when verifying, so a shorter
        // key must never reach it.
        let x_ok = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk.x.trim_end_matches('='))
            .is_ok_and(|x| x.len() == 32);
        if !usable || !x_ok {
            tracing::warn!(kid = %jwk.kid, "ignoring unusable JWK");
            continue;
        }
        match DecodingKey::from_ed_components(jwk.x.trim_end_matches('=')) {
            Ok(key) => {
                keys.insert(jwk.kid.clone(), key);
            }
            Err(e) => tracing::warn!(kid = %jwk.kid, error = %e, "ignoring unusable JWK"),
        }
    }
    keys
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use contracts::api::Jwk;

    fn jwk(kid: &str, x: &str) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: x.into(),
            kid: kid.into(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }

    #[test]
    fn short_or_foreign_keys_are_skipped() {
        let good = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 16]);
        let mut rsa = jwk("rsa", &good);
        rsa.kty = "RSA".into();
        let jwks = Jwks {
            keys: vec![jwk("a", &good), jwk("b", &short), jwk("c", "!!"), rsa],
        };
        let keys = parse_jwks(&jwks);
        assert_eq!(keys.len(), 1);
        assert!(keys.contains_key("a"));
    }

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            h
        };
        assert_eq!(bearer_token(&with("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer_token(&with("bearer  abc ")).ok(), Some("abc"));
        assert!(bearer_token(&with("Basic abc")).is_err());
        assert!(bearer_token(&with("Bearer")).is_err());
        assert!(bearer_token(&with("Bearer ")).is_err());
        assert!(bearer_token(&HeaderMap::new()).is_err());
    }
}
