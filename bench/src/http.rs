//! The load generator's HTTP/1.1 client: hyper with a keep-alive connection pool.
//!
//! Lighter than reqwest per request (no redirect, proxy or cookie machinery), which
//! matters on a two-core box where the generator shares the CPU with the servers it
//! measures. The same client drives the baselines and the mesh, so its cost is in both
//! sides of every ratio.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One request, relative to a base URL (so the same call can go to any replica).
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// Path and query, e.g. `/v1/events/…`.
    pub path: String,
    /// `Bearer …`, built once per user.
    pub auth: Option<HeaderValue>,
    /// A JSON body.
    pub body: Option<Bytes>,
}

impl Call {
    pub fn get(path: impl Into<String>, auth: Option<&HeaderValue>) -> Self {
        Call {
            method: Method::GET,
            path: path.into(),
            auth: auth.cloned(),
            body: None,
        }
    }

    pub fn with_json(
        method: Method,
        path: impl Into<String>,
        auth: Option<&HeaderValue>,
        body: &serde_json::Value,
    ) -> Self {
        Call {
            method,
            path: path.into(),
            auth: auth.cloned(),
            body: Some(Bytes::from(body.to_string())),
        }
    }
}

/// `Bearer <token>` as a header value.
pub fn bearer(token: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}")).context("token is not a valid header value")
}

/// A pooled HTTP/1.1 client (cheap to clone).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        HttpClient { inner }
    }

    /// Send `call` to `base` (e.g. `http://127.0.0.1:8080`); returns status and body.
    pub async fn send(&self, base: &str, call: &Call) -> Result<(StatusCode, Bytes)> {
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(format!("{base}{}", call.path));
        if let Some(auth) = &call.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let body = match &call.body {
            Some(body) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Full::new(body.clone())
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .with_context(|| format!("bad request {} {}", call.method, call.path))?;
        let exchange = async {
            let response = self.inner.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result.with_context(|| format!("{} {}", call.method, call.path)),
            Err(_) => bail!(
                "{} {} took longer than {REQUEST_TIMEOUT:?}",
                call.method,
                call.path
            ),
        }
    }

    /// [`Self::send`], the body parsed as JSON (`Null` when empty).
    pub async fn json(&self, base: &str, call: &Call) -> Result<(StatusCode, serde_json::Value)> {
        let (status, body) = self.send(base, call).await?;
        let value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            })
        };
        Ok((status, value))
    }

    /// [`Self::json`] that fails unless the status is 2xx.
    pub async fn json_ok(&self, base: &str, call: &Call) -> Result<serde_json::Value> {
        let (status, value) = self.json(base, call).await?;
        if !status.is_success() {
            bail!("{} {} answered {status}: {value}", call.method, call.path);
        }
        Ok(value)
    }
}
