//! The web console: its files and security headers, the cookie session made by
//! `/console/login`, and where that cookie is (and is not) accepted.

use contracts::rpc::RpcReply;
use contracts::subjects::{auth, hospital};
use contracts::{ErrorCode, Problem, Role};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Stub, TestApp, assert_problem, spawn_app, spawn_app_with, stub, stub_reply};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn assert_security_headers(response: &reqwest::Response, what: &str) {
    let h = response.headers();
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(get("content-security-policy"), CSP, "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(get("cache-control"), "no-store", "{what}");
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

/// The `name=value` part of the Set-Cookie for `name`.
fn cookie_value(cookies: &[String], name: &str) -> Option<String> {
    cookies
        .iter()
        .filter_map(|c| c.split(';').next())
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
}

fn attributes<'a>(cookies: &'a [String], name: &str) -> Vec<&'a str> {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c.split(';').skip(1).map(str::trim).collect())
        .unwrap_or_default()
}

/// Stands in for auth's login: `admin@…` logs in as an admin, `user@…` as a plain
/// user, anything else is refused. Also answers auth's logout (the console revokes the
/// refresh token it does not keep).
async fn stub_auth(app: &TestApp) -> (Stub, Stub) {
    let signer = app.signer.clone();
    let login = stub(&app.nats, auth::RPC_LOGIN, move |request| {
        let signer = signer.clone();
        async move {
            let email = request.body["email"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let role = if email.starts_with("admin@") {
                Role::Admin
            } else if email.starts_with("user@") {
                Role::User
            } else {
                return Some(RpcReply::Err(
                    Problem::new(ErrorCode::Unauthorized).with_detail("wrong email or password"),
                ));
            };
            Some(RpcReply::ok(json!({
                "access_token": signer.token(Uuid::now_v7(), role, 900),
                "token_type": "Bearer",
                "expires_in": 900,
                "refresh_token": "refresh-secret",
                "refresh_expires_in": 86400,
            })))
        }
    })
    .await;
    let logout = stub_reply(
        &app.nats,
        auth::RPC_LOGOUT,
        RpcReply::Ok {
            status: 204,
            body: Value::Null,
        },
    )
    .await;
    (login, logout)
}

async fn login(app: &TestApp, email: &str) -> reqwest::Response {
    app.http
        .post(app.url("/console/login"))
        .json(&json!({"email": email, "password": "correct horse"}))
        .send()
        .await
        .expect("send")
}

/// Logs in as an admin; the `Cookie` header a browser would send afterwards, and the
/// CSRF token.
async fn admin_session(app: &TestApp) -> (String, String) {
    let response = login(app, "admin@example.com").await;
    assert_eq!(response.status(), 200);
    let cookies = set_cookies(&response);
    let session = cookie_value(&cookies, "mesh_session").expect("session cookie");
    let csrf = cookie_value(&cookies, "mesh_csrf").expect("csrf cookie");
    (format!("mesh_session={session}; mesh_csrf={csrf}"), csrf)
}

#[tokio::test]
async fn the_console_is_served_with_security_headers() {
    let app = spawn_app().await;

    for (path, content_type, marker) in [
        (
            "/console",
            "text/html; charset=utf-8",
            "data-testid=\"login-form\"",
        ),
        ("/console/", "text/html; charset=utf-8", "/console/app.js"),
        (
            "/console/app.js",
            "text/javascript; charset=utf-8",
            "textContent",
        ),
        ("/console/console.css", "text/css; charset=utf-8", ".badge"),
    ] {
        let response = app.http.get(app.url(path)).send().await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
        assert_security_headers(&response, path);
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        let body = response.text().await.expect("body");
        assert!(body.contains(marker), "{path} lacks {marker}");
    }

    // Errors of the console's own routes carry them too, as problem+json.
    let wrong_method = app
        .http
        .delete(app.url("/console/login"))
        .send()
        .await
        .expect("send");
    assert_security_headers(&wrong_method, "405");
    assert_problem(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn admins_get_a_session_cookie_and_a_csrf_cookie() {
    let app = spawn_app().await;
    let (login_stub, logout_stub) = stub_auth(&app).await;

    let response = login(&app, "admin@example.com").await;

    assert_eq!(response.status(), 200);
    assert_security_headers(&response, "login");
    let cookies = set_cookies(&response);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let session = cookie_value(&cookies, "mesh_session").expect("session cookie");
    assert_eq!(session.split('.').count(), 3, "the access token");
    let mut attrs = attributes(&cookies, "mesh_session");
    attrs.sort_unstable();
    assert_eq!(
        attrs,
        vec!["HttpOnly", "Max-Age=900", "Path=/", "SameSite=Strict"]
    );
    let csrf = cookie_value(&cookies, "mesh_csrf").expect("csrf cookie");
    assert!(csrf.len() >= 32, "{csrf}");
    let mut attrs = attributes(&cookies, "mesh_csrf");
    attrs.sort_unstable();
    assert_eq!(attrs, vec!["Max-Age=900", "Path=/", "SameSite=Strict"]);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["role"], "admin");
    assert!(body.get("access_token").is_none(), "no token in the body");

    let seen = login_stub.seen();
    assert_eq!(seen[0].request.caller, None);
    assert_eq!(seen[0].request.body["email"], "admin@example.com");
    assert_eq!(seen[0].request.body["password"], "correct horse");
    // The refresh token the console does not keep is revoked.
    logout_stub.wait_for(1).await;
    assert_eq!(
        logout_stub.seen()[0].request.body,
        json!({"refresh_token": "refresh-secret"})
    );

    // Each login gets its own CSRF token.
    let again = set_cookies(&login(&app, "admin@example.com").await);
    assert_ne!(cookie_value(&again, "mesh_csrf"), Some(csrf));
}

#[tokio::test]
async fn plain_users_and_wrong_passwords_get_no_cookie() {
    let app = spawn_app().await;
    stub_auth(&app).await;

    let user = login(&app, "user@example.com").await;
    assert!(set_cookies(&user).is_empty());
    assert_security_headers(&user, "403");
    assert_problem(user, 403, "forbidden").await;

    let wrong = login(&app, "nobody@example.com").await;
    assert!(set_cookies(&wrong).is_empty());
    let body = assert_problem(wrong, 401, "unauthorized").await;
    assert_eq!(body["detail"], "wrong email or password");

    let malformed = app
        .http
        .post(app.url("/console/login"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .expect("send");
    assert_problem(malformed, 400, "malformed_json").await;
    let not_json = app
        .http
        .post(app.url("/console/login"))
        .form(&[("email", "admin@example.com"), ("password", "x")])
        .send()
        .await
        .expect("send");
    assert_problem(not_json, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn cookies_are_secure_when_configured() {
    let app = spawn_app_with(|c| c.cookie_secure = true).await;
    stub_auth(&app).await;

    let response = login(&app, "admin@example.com").await;

    assert_eq!(response.status(), 200);
    let cookies = set_cookies(&response);
    assert!(attributes(&cookies, "mesh_session").contains(&"Secure"));
    assert!(attributes(&cookies, "mesh_csrf").contains(&"Secure"));
}

#[tokio::test]
async fn the_session_cookie_authenticates_admin_reads() {
    let app = spawn_app().await;
    stub_auth(&app).await;
    let stats = stub_reply(
        &app.nats,
        hospital::RPC_STATS,
        RpcReply::ok(json!({"consumers": [], "dlq_messages": 3})),
    )
    .await;
    let (cookie, _) = admin_session(&app).await;

    let response = app
        .http
        .get(app.url("/v1/admin/dlq/stats"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("send");

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["dlq_messages"], 3);
    let caller = stats.seen()[0].request.caller.clone().expect("caller");
    assert_eq!(caller.role, Role::Admin);

    // An expired or forged session is a 401, as a bad bearer token would be.
    let expired = app.signer.token(Uuid::now_v7(), Role::Admin, -60);
    let response = app
        .http
        .get(app.url("/v1/admin/dlq/stats"))
        .header("cookie", format!("mesh_session={expired}"))
        .send()
        .await
        .expect("send");
    assert_problem(response, 401, "unauthorized").await;
    assert_eq!(stats.count(), 1);
}

#[tokio::test]
async fn cookie_changes_need_the_csrf_header() {
    let app = spawn_app().await;
    stub_auth(&app).await;
    let replay = stub_reply(
        &app.nats,
        hospital::RPC_REPLAY,
        RpcReply::ok(json!({"dry_run": true, "matched": 2})),
    )
    .await;
    let (cookie, csrf) = admin_session(&app).await;
    let body = json!({"selection": {"ids": [Uuid::now_v7()]}, "reason": "fixed"});
    let post = |token: Option<&str>| {
        let mut request = app
            .http
            .post(app.url("/v1/admin/dlq/replay"))
            .header("cookie", &cookie)
            .json(&body);
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        request.send()
    };

    let missing = post(None).await.expect("send");
    let problem = assert_problem(missing, 403, "forbidden").await;
    assert_eq!(problem["detail"], "CSRF token missing or wrong");
    let wrong = post(Some("not-the-token")).await.expect("send");
    let problem = assert_problem(wrong, 403, "forbidden").await;
    assert_eq!(problem["detail"], "CSRF token missing or wrong");
    let almost = post(Some(&csrf[..csrf.len() - 1])).await.expect("send");
    assert_problem(almost, 403, "forbidden").await;
    assert_eq!(replay.count(), 0, "nothing forwarded without the token");

    let right = post(Some(&csrf)).await.expect("send");
    assert_eq!(right.status(), 200);
    assert_eq!(replay.count(), 1);
    assert_eq!(replay.seen()[0].request.body, body);

    // Bearer clients are unaffected: no CSRF header needed, cookies ignored.
    let bearer = app
        .http
        .post(app.url("/v1/admin/dlq/replay"))
        .bearer_auth(app.signer.token(Uuid::now_v7(), Role::Admin, 300))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(bearer.status(), 200);
    assert_eq!(replay.count(), 2);
}

#[tokio::test]
async fn the_cookie_is_ignored_outside_the_admin_api() {
    let app = spawn_app().await;
    stub_auth(&app).await;
    let me = stub_reply(&app.nats, auth::RPC_ME, RpcReply::ok(json!({}))).await;
    let create_event = stub_reply(
        &app.nats,
        contracts::subjects::calendar::RPC_CREATE_EVENT,
        RpcReply::created(json!({})),
    )
    .await;
    let (cookie, csrf) = admin_session(&app).await;

    let response = app
        .http
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("send");
    assert_problem(response, 401, "unauthorized").await;
    let response = app
        .http
        .post(app.url("/v1/events"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"title": "t"}))
        .send()
        .await
        .expect("send");
    assert_problem(response, 401, "unauthorized").await;
    let response = app
        .http
        .post(app.url("/v1/notifications/stream/ticket"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("send");
    assert_problem(response, 401, "unauthorized").await;
    assert_eq!(me.count() + create_event.count(), 0);
}

#[tokio::test]
async fn logout_clears_both_cookies() {
    let app = spawn_app().await;

    let response = app
        .http
        .post(app.url("/console/logout"))
        .send()
        .await
        .expect("send");

    assert_eq!(response.status(), 204);
    assert_security_headers(&response, "logout");
    let cookies = set_cookies(&response);
    assert_eq!(cookie_value(&cookies, "mesh_session").as_deref(), Some(""));
    assert_eq!(cookie_value(&cookies, "mesh_csrf").as_deref(), Some(""));
    assert!(attributes(&cookies, "mesh_session").contains(&"Max-Age=0"));
    assert!(attributes(&cookies, "mesh_session").contains(&"HttpOnly"));
    assert!(attributes(&cookies, "mesh_csrf").contains(&"Max-Age=0"));
}

/// A dead letter as the hospital lists it.
fn dead_letter(id: Uuid, durable: &str, error: &str) -> Value {
    json!({
        "id": id,
        "park_id": format!("park:{durable}:CALENDAR:7"),
        "status": "parked",
        "fingerprint": "fp-smtp-timeout",
        "diagnosis": {
            "service": "email",
            "durable": durable,
            "stream": "CALENDAR",
            "subject": "calendar.v1.rsvp.changed",
            "stream_sequence": 7,
            "message_id": Uuid::now_v7().to_string(),
            "message_type": "calendar.rsvp_changed",
            "schema_version": 1,
            "error_kind": "transient",
            "error": error,
            "deliveries": 5,
            "first_failure_at": "2030-01-01T10:00:00Z",
            "last_failure_at": "2030-01-01T10:05:00Z",
        },
        "parked_at": "2030-01-01T10:05:01Z",
        "replays": 0,
    })
}

/// A hospital of stubs with one group of two parked messages of `durable`; returns the
/// replay stub.
async fn stub_hospital(app: &TestApp, durable: &'static str) -> Stub {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let id = Uuid::now_v7();
    // Markup in the data must show as text, never run.
    let error = "SMTP timeout <img src=x onerror=alert(1)>";
    let letter = dead_letter(id, durable, error);
    let audit_entry = json!({
        "id": Uuid::now_v7(), "at": "2030-01-01T11:00:00Z", "actor": Uuid::now_v7(),
        "action": "replay", "target": format!("group {durable}/fp-smtp-timeout"), "count": 2,
        "reason": "console browser test: the cause is fixed", "detail": {"job": Uuid::now_v7()},
    });
    stub_reply(
        &app.nats,
        hospital::RPC_LIST,
        RpcReply::ok(
            json!({"items": [letter.clone(), dead_letter(Uuid::now_v7(), durable, error)]}),
        ),
    )
    .await;
    stub_reply(
        &app.nats,
        hospital::RPC_GET,
        RpcReply::ok(json!({
            "dead_letter": letter,
            "headers": [{"name": "Mesh-Message-Type", "value": "calendar.rsvp_changed"}],
            "body": {"event_id": Uuid::now_v7(), "title": "<script>alert(1)</script>", "going": 3},
            "payload_base64": "gqVldmVudA==",
            "history": [dead_letter(Uuid::now_v7(), durable, "earlier failure")],
            "audit": [audit_entry.clone()],
        })),
    )
    .await;
    stub_reply(
        &app.nats,
        hospital::RPC_GROUPS,
        RpcReply::ok(json!({"items": [{
            "durable": durable,
            "fingerprint": "fp-smtp-timeout",
            "error_kind": "transient",
            "sample_error": error,
            "total": 2,
            "parked": 2,
            "first_seen": "2030-01-01T10:00:00Z",
            "last_seen": "2030-01-01T10:05:00Z",
        }]})),
    )
    .await;
    let job_id = Uuid::now_v7();
    let job = move |status: &str, done: u64| {
        let mut job = json!({
            "id": job_id, "kind": "replay", "status": status, "total": 2, "done": done,
            "skipped": 0, "failed": 0, "actor": Uuid::now_v7(), "reason": "fixed",
            "created_at": "2030-01-01T11:00:00Z",
        });
        if status != "running" {
            job["finished_at"] = json!("2030-01-01T11:00:02Z");
        }
        job
    };
    let replay = stub_reply(
        &app.nats,
        hospital::RPC_REPLAY,
        RpcReply::ok(json!({"dry_run": false, "matched": 2, "job": job("running", 0)})),
    )
    .await;
    // Running on the first poll, completed on the next.
    let polls = Arc::new(AtomicUsize::new(0));
    stub(&app.nats, hospital::RPC_JOB, move |_| {
        let n = polls.fetch_add(1, Ordering::SeqCst);
        let body = if n == 0 {
            job("running", 1)
        } else {
            job("completed", 2)
        };
        async move { Some(RpcReply::ok(body)) }
    })
    .await;
    stub_reply(
        &app.nats,
        hospital::RPC_JOBS,
        RpcReply::ok(json!({"items": [job("completed", 2)]})),
    )
    .await;
    let consumer = |name: &str, paused: bool| {
        json!({
            "durable": name, "stream": "CALENDAR", "pending": 4, "ack_pending": 1,
            "redelivered": 6, "parked": 2, "paused": paused,
        })
    };
    stub_reply(
        &app.nats,
        hospital::RPC_STATS,
        RpcReply::ok(json!({
            "consumers": [consumer(durable, false), consumer("push-calendar", true)],
            "dlq_messages": 2, "dlq_bytes": 3_000_000u64, "dlq_max_bytes": 10_000_000u64,
        })),
    )
    .await;
    stub_reply(
        &app.nats,
        hospital::RPC_AUDIT,
        RpcReply::ok(json!({"items": [audit_entry]})),
    )
    .await;
    stub_reply(
        &app.nats,
        hospital::RPC_WHERE,
        RpcReply::ok(json!({"items": [{
            "message_id": "m-1", "stream": "CALENDAR", "stream_sequence": 7,
            "subject": "calendar.v1.rsvp.changed",
            "consumers": [
                {"durable": durable, "outcome": "parked", "detail": "SMTP timeout"},
                {"durable": "push-calendar", "outcome": "handled"},
            ],
        }]})),
    )
    .await;
    stub_reply(
        &app.nats,
        hospital::RPC_EDIT_REPLAY,
        RpcReply::ok(json!({
            "message_id": "m-2",
            "diff": "  {\n-   \"going\": 3,\n+   \"going\": 4,\n  }",
        })),
    )
    .await;
    for subject in [hospital::RPC_PAUSE, hospital::RPC_RESUME] {
        stub_reply(&app.nats, subject, RpcReply::ok(consumer(durable, true))).await;
    }
    replay
}

/// The browser journey of `tests/console/console.spec.mjs` against stub auth and
/// hospital responders. Needs node, `npm install --prefix tests/console` and Debian's
/// chromium (`cargo xtask test` installs them under CI=true, where this test is
/// required); elsewhere it skips itself unless `MESH_BROWSER_TESTS=1`.
#[tokio::test]
async fn browser_journey_against_stub_hospital() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = std::path::Path::new(&chromium).exists()
        && root
            .join("tests/console/node_modules/playwright-core")
            .exists();
    let required =
        std::env::var_os("CI").is_some() || std::env::var_os("MESH_BROWSER_TESTS").is_some();
    if !ready {
        assert!(
            !required,
            "the browser test needs {chromium} and tests/console/node_modules"
        );
        eprintln!("skipping the browser test: no {chromium} or tests/console/node_modules");
        return;
    }
    let app = spawn_app().await;
    stub_auth(&app).await;
    let durable = "email-calendar";
    let replay = stub_hospital(&app, durable).await;

    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/console/console.spec.mjs"))
        .env("GATEWAY_URL", &app.base)
        .env("ADMIN_EMAIL", "admin@example.com")
        .env("ADMIN_PASSWORD", "correct horse")
        .env("EXPECT_GROUP_DURABLE", durable)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "console journey failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    let seen = replay.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].request.body["selection"],
        json!({"group": {"durable": durable, "fingerprint": "fp-smtp-timeout"}})
    );
    assert_eq!(
        seen[0].request.body["reason"],
        "console browser test: the cause is fixed"
    );
}
