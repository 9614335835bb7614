//! The web console: a small single-page app over the message hospital's admin API,
//! served at `/console` from files embedded in the binary (`console/`: HTML, CSS and
//! plain JavaScript, no build step, nothing loaded from elsewhere), and its session.
//!
//! `POST /console/login` exchanges email and password with auth (`svc.auth.v1.login`),
//! keeps the access token only when it belongs to an admin, and hands it to the browser
//! as the `HttpOnly` cookie `mesh_session`, beside a random `mesh_csrf` cookie that the
//! page's script can read. The proxy accepts the session cookie on `/v1/admin/…` only,
//! and only when no `Authorization` header is sent; a cookie-authenticated request other
//! than GET must repeat the CSRF cookie in `X-CSRF-Token` (double-submit: another site
//! can make the browser send cookies, but cannot read them). `SameSite=Strict` keeps the
//! cookies off cross-site requests in the first place; the CSRF check is the second lock.
//!
//! Every console response carries a strict Content-Security-Policy (scripts and styles
//! from the gateway only, no inline code, no framing) and `Cache-Control: no-store`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use contracts::Role;
use contracts::api::{LoginRequest, LogoutRequest, TokenResponse};
use contracts::rpc::{RpcReply, RpcRequest};
use contracts::subjects::auth;
use rand::RngCore;
use serde_json::Value;
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::Instrument;

use crate::error::ApiError;
use crate::proxy::{self, Gateway, REQUEST_ID_HEADER};
use crate::ratelimit::RateKey;

/// Where the console is served.
pub const CONSOLE_PATH: &str = "/console";
pub const LOGIN_PATH: &str = "/console/login";
pub const LOGOUT_PATH: &str = "/console/logout";
/// The session cookie: the admin's access token, `HttpOnly`.
pub const SESSION_COOKIE: &str = "mesh_session";
/// The CSRF cookie, readable by the console's script.
pub const CSRF_COOKIE: &str = "mesh_csrf";
/// The header a cookie-authenticated change must carry, equal to the CSRF cookie.
pub const CSRF_HEADER: &str = "X-CSRF-Token";
/// Only admin routes take the session cookie.
pub const ADMIN_PREFIX: &str = "/v1/admin/";
/// Schema name of [`ConsoleSession`] in the OpenAPI document.
pub const CONSOLE_SESSION_SCHEMA: &str = "ConsoleSession";

/// The answer to a console login (the token itself travels only in the cookie).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ConsoleSession {
    pub user_id: uuid::Uuid,
    pub role: Role,
    /// Seconds until the session (the access token in the cookie) expires.
    pub expires_in: u64,
}

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// State of the console's routes.
struct Console {
    gateway: Arc<Gateway>,
    /// Whether cookies get `Secure` (behind HTTPS).
    cookie_secure: bool,
}

/// The console's routes, with the security headers on every response.
pub fn router(gateway: Arc<Gateway>, cookie_secure: bool) -> Router {
    let headers: [(&'static str, &'static str); 5] = [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ];
    let mut router = Router::new()
        .route(CONSOLE_PATH, get(index))
        .route("/console/", get(index))
        .route("/console/app.js", get(script))
        .route("/console/console.css", get(style))
        .route(LOGIN_PATH, post(login))
        .route(LOGOUT_PATH, post(logout))
        .with_state(Arc::new(Console {
            gateway,
            cookie_secure,
        }));
    for (name, value) in headers {
        router = router.layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    router
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// `POST /console/login`.
async fn login(State(console): State<Arc<Console>>, request: Request) -> Response {
    crate::stream::record_route(&Method::POST, LOGIN_PATH);
    match console.login(request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// `POST /console/logout`: clears both cookies. Needs no session: it only makes the
/// browser forget (the access token itself stays valid until it expires).
async fn logout(State(console): State<Arc<Console>>) -> Response {
    crate::stream::record_route(&Method::POST, LOGOUT_PATH);
    let mut response = StatusCode::NO_CONTENT.into_response();
    for cookie in [
        session_cookie("", 0, console.cookie_secure),
        csrf_cookie("", 0, console.cookie_secure),
    ] {
        match HeaderValue::from_str(&cookie) {
            Ok(v) => {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
            Err(e) => return ApiError::internal("cannot build a cookie", e).into_response(),
        }
    }
    response
}

impl Console {
    async fn login(&self, request: Request) -> Result<Response, ApiError> {
        let (parts, body) = request.into_parts();
        let gateway = &self.gateway;
        // Public, like `/v1/auth/login`: limited per client address (and auth throttles
        // failed logins per address with the same one).
        let client_ip = gateway.client_ip(&parts);
        gateway.limits.check(RateKey::Ip(client_ip))?;
        proxy::require_json(&parts.headers)?;
        let raw = proxy::read_body(&parts.headers, body, gateway.max_body_bytes).await?;
        let credentials: LoginRequest = serde_json::from_slice(&raw).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::MalformedJson(e.to_string())
            } else {
                ApiError::BadRequest(format!("expected {{\"email\", \"password\"}}: {e}"))
            }
        })?;
        let request_id = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let payload =
            contracts::wire::encode(&RpcRequest::new(credentials).with_client_ip(client_ip))
                .map_err(|e| ApiError::internal("cannot encode the login request", e))?;
        let reply: RpcReply<TokenResponse> = gateway
            .request(auth::RPC_LOGIN, payload.into(), request_id.as_deref())
            .await?;
        let tokens = reply.into_result().map_err(ApiError::Upstream)?;
        // The session is the access token alone: the browser never refreshes it, so the
        // refresh token would only sit unused in auth's store.
        self.revoke(tokens.refresh_token.clone(), request_id);

        let claims = gateway
            .keys
            .verify(&tokens.access_token)
            .await
            .map_err(|e| match e {
                ApiError::Unauthorized(why) => {
                    ApiError::internal("auth issued a token the gateway cannot verify", why)
                }
                other => other,
            })?;
        if claims.role != Role::Admin {
            return Err(ApiError::Forbidden);
        }
        let csrf = random_token()?;
        let max_age = tokens.expires_in;
        let body = serde_json::to_vec(&ConsoleSession {
            user_id: claims.sub,
            role: claims.role,
            expires_in: max_age,
        })
        .map_err(|e| ApiError::internal("cannot encode the login answer", e))?;
        let mut response = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        for cookie in [
            session_cookie(&tokens.access_token, max_age, self.cookie_secure),
            csrf_cookie(&csrf, max_age, self.cookie_secure),
        ] {
            let value = HeaderValue::from_str(&cookie)
                .map_err(|e| ApiError::internal("cannot build a cookie", e))?;
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        tracing::info!(user = %claims.sub, "console session opened");
        Ok(response)
    }

    /// Revokes a refresh token in the background; a failure only leaves it to expire.
    fn revoke(&self, refresh_token: String, request_id: Option<String>) {
        let gateway = self.gateway.clone();
        let task = async move {
            let payload =
                match contracts::wire::encode(&RpcRequest::new(LogoutRequest { refresh_token })) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot encode the logout request");
                        return;
                    }
                };
            let result: Result<RpcReply<Value>, ApiError> = gateway
                .request(auth::RPC_LOGOUT, payload.into(), request_id.as_deref())
                .await;
            if let Err(e) = result.and_then(|r| r.into_result().map_err(ApiError::Upstream)) {
                tracing::debug!(error = %e, "cannot revoke the console's refresh token");
            }
        };
        tokio::spawn(task.in_current_span());
    }
}

fn session_cookie(value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    )
}

fn csrf_cookie(value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{CSRF_COOKIE}={value}; SameSite=Strict; Path=/; Max-Age={max_age}{secure}")
}

/// 256 random bits, URL-safe base64.
fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ApiError::internal("no randomness for the CSRF token", e))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The value of cookie `name` in the request's `Cookie` headers (the first one wins).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// Compares in time independent of where the inputs differ, so the CSRF cookie cannot
/// be guessed byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session token of a request to an admin route that authenticates by cookie:
/// `None` when it sends an `Authorization` header (bearer clients are unaffected), is
/// not under `/v1/admin/`, or has no session cookie. A cookie-authenticated request
/// other than GET/HEAD must carry `X-CSRF-Token` equal to the CSRF cookie, else
/// [`ApiError::CsrfRejected`].
pub fn session_credentials(parts: &Parts) -> Result<Option<&str>, ApiError> {
    if parts.headers.contains_key(header::AUTHORIZATION)
        || !parts.uri.path().starts_with(ADMIN_PREFIX)
    {
        return Ok(None);
    }
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let expected = cookie(&parts.headers, CSRF_COOKIE).unwrap_or_default();
        let presented = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if expected.is_empty() || !constant_time_eq(expected.as_bytes(), presented.as_bytes()) {
            return Err(ApiError::CsrfRejected);
        }
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn cookies_are_found_among_others() {
        let p = parts(
            Method::GET,
            "/",
            &[
                ("cookie", "a=1; mesh_session=tok.en.x ;b=2"),
                ("cookie", "mesh_csrf=c"),
            ],
        );
        assert_eq!(cookie(&p.headers, SESSION_COOKIE), Some("tok.en.x"));
        assert_eq!(cookie(&p.headers, CSRF_COOKIE), Some("c"));
        assert_eq!(cookie(&p.headers, "mesh"), None);
    }

    #[test]
    fn the_session_cookie_counts_on_admin_routes_only() {
        let c = ("cookie", "mesh_session=t; mesh_csrf=c");
        let got = |p: &Parts| {
            session_credentials(p)
                .map(|t| t.map(str::to_owned))
                .map_err(|e| e.code())
        };
        assert_eq!(
            got(&parts(Method::GET, "/v1/admin/dlq/stats", &[c])),
            Ok(Some("t".to_owned()))
        );
        assert_eq!(got(&parts(Method::GET, "/v1/me", &[c])), Ok(None));
        assert_eq!(
            got(&parts(
                Method::GET,
                "/v1/admin/dlq/stats",
                &[c, ("authorization", "Bearer x")]
            )),
            Ok(None),
            "a bearer token wins"
        );
        assert_eq!(
            got(&parts(Method::POST, "/v1/admin/dlq/replay", &[])),
            Ok(None)
        );
    }

    #[test]
    fn changes_by_cookie_need_the_csrf_header() {
        let c = ("cookie", "mesh_session=t; mesh_csrf=secret");
        let post = |headers: &[(&str, &str)]| {
            session_credentials(&parts(Method::POST, "/v1/admin/dlq/replay", headers))
                .map(|t| t.map(str::to_owned))
                .map_err(|e| matches!(e, ApiError::CsrfRejected))
        };
        assert_eq!(post(&[c]), Err(true));
        assert_eq!(post(&[c, ("x-csrf-token", "secreT")]), Err(true));
        assert_eq!(post(&[c, ("x-csrf-token", "secret2")]), Err(true));
        assert_eq!(
            post(&[c, ("X-CSRF-Token", "secret")]),
            Ok(Some("t".to_owned()))
        );
        // No CSRF cookie at all: nothing can match, not even an empty header.
        assert_eq!(
            post(&[("cookie", "mesh_session=t"), ("x-csrf-token", "")]),
            Err(true)
        );
    }

    #[test]
    fn cookies_are_built_as_documented() {
        assert_eq!(
            session_cookie("tok", 900, false),
            "mesh_session=tok; HttpOnly; SameSite=Strict; Path=/; Max-Age=900"
        );
        assert_eq!(
            csrf_cookie("c", 900, true),
            "mesh_csrf=c; SameSite=Strict; Path=/; Max-Age=900; Secure"
        );
        let a = random_token().expect("random");
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token().expect("random"));
    }

    #[test]
    fn assets_have_no_inline_code_and_no_foreign_urls() {
        assert!(!INDEX_HTML.contains("<script>"), "inline script");
        assert!(!INDEX_HTML.contains("<style"), "inline style");
        assert!(!INDEX_HTML.contains(" style="), "inline style attribute");
        // No `on…=` event-handler attributes.
        for (i, _) in INDEX_HTML.match_indices(" on") {
            let rest = &INDEX_HTML[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            assert!(
                name_len == 0 || !rest[name_len..].starts_with('='),
                "inline event handler"
            );
        }
        for asset in [INDEX_HTML, APP_JS, CONSOLE_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        assert!(!APP_JS.contains("innerHTML"), "text only, never markup");
        assert!(!APP_JS.contains("eval("));
    }
}
