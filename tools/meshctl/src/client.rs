//! The HTTP client of the gateway: base URL, credentials, and one refresh on a 401.
//!
//! The access token is short-lived; when the API answers 401 `unauthorized` the client
//! spends the stored refresh token once (`POST /v1/auth/refresh`), saves the new pair,
//! and repeats the request. A token from `MESHCTL_TOKEN` is used as is and never
//! refreshed. Stored tokens are sent only to the gateway that issued them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use contracts::api::{RefreshRequest, TokenResponse};
use contracts::error::ErrorCode;
use jiff::{SignedDuration, Timestamp};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{DEFAULT_URL, GlobalArgs};
use crate::credentials::{self, Credentials};
use crate::error::{ApiProblem, Error, Result};

/// A decoded answer and the JSON it came from (for `--json`).
#[derive(Debug)]
pub struct Reply<T> {
    pub value: T,
    pub raw: Value,
}

enum Stored {
    Missing,
    Loaded(Credentials),
    /// Unreadable file: an error for authenticated calls, no obstacle to `login`.
    Unreadable(String),
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    config_path: Result<PathBuf, String>,
    env_token: Option<String>,
    stored: Stored,
}

impl Client {
    /// Resolves the config path, reads the stored credentials (if any) and the base URL:
    /// `--url`/`MESH_URL`, else the URL logged in to, else the default.
    pub fn open(global: &GlobalArgs) -> Result<Client> {
        let config_path = match &global.config {
            Some(path) => Ok(path.clone()),
            None => credentials::default_path().map_err(|e| e.to_string()),
        };
        let stored = match &config_path {
            Ok(path) => match credentials::load(path) {
                Ok(Some(c)) => Stored::Loaded(c),
                Ok(None) => Stored::Missing,
                Err(e) => Stored::Unreadable(e.to_string()),
            },
            Err(e) => Stored::Unreadable(e.clone()),
        };
        let explicit = global
            .url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let url = match (explicit, &stored) {
            (Some(url), _) => url,
            (None, Stored::Loaded(c)) => c.url.as_str(),
            (None, _) => DEFAULT_URL,
        };
        let base = parse_base(url)?;
        let env_token = global
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let http = reqwest::Client::builder()
            .user_agent(concat!("meshctl/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Other(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            config_path,
            env_token,
            stored,
        })
    }

    /// The gateway's base URL, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    pub fn config_path(&self) -> Result<&Path> {
        self.config_path
            .as_deref()
            .map_err(|e| Error::Usage(e.clone()))
    }

    /// The stored credentials, whatever gateway they are for.
    pub fn stored(&self) -> Option<&Credentials> {
        match &self.stored {
            Stored::Loaded(c) => Some(c),
            _ => None,
        }
    }

    /// Stores new credentials (after a login) and uses them from now on.
    pub fn save_credentials(&mut self, creds: Credentials) -> Result<()> {
        credentials::save(self.config_path()?, &creds)?;
        self.stored = Stored::Loaded(creds);
        Ok(())
    }

    pub async fn get<T: DeserializeOwned>(
        &mut self,
        segments: &[&str],
        query: &[(String, String)],
    ) -> Result<Reply<T>> {
        self.authed(Method::GET, segments, query, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &mut self,
        segments: &[&str],
        body: &B,
    ) -> Result<Reply<T>> {
        let body = to_json(body)?;
        self.authed(Method::POST, segments, &[], Some(body)).await
    }

    /// A POST without a token (login, refresh, logout) to `base`.
    pub async fn post_public<B: Serialize, T: DeserializeOwned>(
        &self,
        base: &str,
        segments: &[&str],
        body: &B,
    ) -> Result<Reply<T>> {
        let url = endpoint(&parse_base(base)?, segments, &[])?;
        let body = to_json(body)?;
        let (status, bytes) = self.send(&Method::POST, &url, None, Some(&body)).await?;
        decode(&Method::POST, &url, status, &bytes)
    }

    async fn authed<T: DeserializeOwned>(
        &mut self,
        method: Method,
        segments: &[&str],
        query: &[(String, String)],
        body: Option<Value>,
    ) -> Result<Reply<T>> {
        let url = endpoint(&self.base, segments, query)?;
        let token = self.access_token()?;
        let (mut status, mut bytes) = self
            .send(&method, &url, Some(&token), body.as_ref())
            .await?;
        if status == StatusCode::UNAUTHORIZED
            && self.can_refresh()
            && problem_code(&bytes).as_deref() == Some(ErrorCode::Unauthorized.as_str())
        {
            self.refresh().await?;
            let token = self.access_token()?;
            (status, bytes) = self
                .send(&method, &url, Some(&token), body.as_ref())
                .await?;
        }
        decode(&method, &url, status, &bytes)
    }

    fn access_token(&self) -> Result<String> {
        if let Some(token) = &self.env_token {
            return Ok(token.clone());
        }
        match &self.stored {
            Stored::Loaded(c) if same_gateway(&c.url, &self.base) => Ok(c.access_token.clone()),
            Stored::Loaded(c) => Err(Error::NotLoggedIn(format!(
                "the stored credentials are for {}, not {}: run `meshctl --url {} login`",
                c.url,
                self.base_url(),
                self.base_url()
            ))),
            Stored::Missing => Err(Error::NotLoggedIn(format!(
                "not logged in to {}: run `meshctl login` (or set MESHCTL_TOKEN)",
                self.base_url()
            ))),
            Stored::Unreadable(e) => Err(Error::NotLoggedIn(e.clone())),
        }
    }

    fn can_refresh(&self) -> bool {
        self.env_token.is_none()
            && matches!(&self.stored, Stored::Loaded(c) if same_gateway(&c.url, &self.base))
    }

    /// Spends the refresh token for a new pair and saves it.
    async fn refresh(&mut self) -> Result<()> {
        let Stored::Loaded(old) = &self.stored else {
            return Err(Error::NotLoggedIn(
                "not logged in: run `meshctl login`".into(),
            ));
        };
        let request = RefreshRequest {
            refresh_token: old.refresh_token.clone(),
        };
        let url = old.url.clone();
        let tokens: TokenResponse = match self
            .post_public(&url, &["v1", "auth", "refresh"], &request)
            .await
        {
            Ok(reply) => reply.value,
            Err(Error::Api(mut p)) => {
                let why = p.detail.take().unwrap_or_else(|| p.title.clone());
                p.detail = Some(format!(
                    "the session expired and could not be refreshed: {why}"
                ));
                return Err(Error::Api(p));
            }
            Err(e) => return Err(e),
        };
        let creds = Credentials {
            url,
            expires_at: expires_at(tokens.expires_in),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
        };
        // The old refresh token is spent now: if the new one cannot be saved, say so
        // rather than go on with a session that ends with this process.
        self.save_credentials(creds)
    }

    async fn send(
        &self,
        method: &Method,
        url: &Url,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let mut request = self.http.request(method.clone(), url.clone()).header(
            reqwest::header::ACCEPT,
            "application/json, application/problem+json",
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let network = |e: reqwest::Error| Error::Network {
            method: method.to_string(),
            url: url.to_string(),
            detail: error_chain(&e),
        };
        let response = request.send().await.map_err(network)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(network)?;
        Ok((status, bytes.to_vec()))
    }
}

/// When an access token issued now with this lifetime expires.
pub fn expires_at(expires_in: u64) -> Timestamp {
    let now = Timestamp::now();
    let lifetime = SignedDuration::from_secs(i64::try_from(expires_in).unwrap_or(i64::MAX));
    now.checked_add(lifetime).unwrap_or(Timestamp::MAX)
}

fn parse_base(text: &str) -> Result<Url> {
    let url = Url::parse(text.trim())
        .map_err(|e| Error::Usage(format!("invalid gateway URL `{text}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(Error::Usage(format!(
            "invalid gateway URL `{text}`: expected http://… or https://…"
        )));
    }
    Ok(url)
}

/// `base` + percent-encoded path segments + query.
fn endpoint(base: &Url, segments: &[&str], query: &[(String, String)]) -> Result<Url> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| Error::Usage(format!("invalid gateway URL `{base}`")))?
        .pop_if_empty()
        .extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

fn same_gateway(stored: &str, base: &Url) -> bool {
    stored.trim().trim_end_matches('/') == base.as_str().trim_end_matches('/')
}

fn to_json<B: Serialize>(body: &B) -> Result<Value> {
    serde_json::to_value(body).map_err(|e| Error::Other(format!("cannot encode the request: {e}")))
}

fn problem_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("code")?
        .as_str()
        .map(str::to_owned)
}

fn decode<T: DeserializeOwned>(
    method: &Method,
    url: &Url,
    status: StatusCode,
    body: &[u8],
) -> Result<Reply<T>> {
    if !status.is_success() {
        return Err(Error::Api(ApiProblem::from_response(
            status.as_u16(),
            status.canonical_reason(),
            body,
        )));
    }
    let unexpected = |e: serde_json::Error| {
        Error::Other(format!(
            "unexpected answer to {method} {url} (is meshctl as new as the gateway?): {e}"
        ))
    };
    let raw: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(unexpected)?
    };
    let value = serde_json::from_value(raw.clone()).map_err(unexpected)?;
    Ok(Reply { value, raw })
}

/// Why a request failed: the error's causes, `: `-separated, without repeats. The top
/// error itself only when it has no cause (reqwest's repeats the URL, said already).
fn error_chain(error: &dyn std::error::Error) -> String {
    let Some(first) = error.source() else {
        return error.to_string();
    };
    let mut text = first.to_string();
    let mut source = first.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_encode_segments_and_query() {
        let base = parse_base("http://gw.example:8080/mesh/").unwrap();
        let url = endpoint(
            &base,
            &["v1", "admin", "consumers", "odd name/x", "pause"],
            &[("error".into(), "a&b c".into())],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://gw.example:8080/mesh/v1/admin/consumers/odd%20name%2Fx/pause?error=a%26b+c"
        );
        assert!(parse_base("localhost:8080").is_err());
        assert!(parse_base("ftp://x").is_err());
        assert!(same_gateway(
            "http://a:1/",
            &parse_base("http://a:1").unwrap()
        ));
    }
}
