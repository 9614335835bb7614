//! The foundation's journeys: register, log in, create, RSVP, read back; capacity under
//! concurrency; token and input rejections; idempotent POSTs; the outbox across a NATS
//! outage and a calendar restart.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration::{Api, Backend, Mesh, StatusCode, Tokens, poll_until};
use serde_json::{Value, json};

use crate::on_each_backend;

fn event_body(title: &str, capacity: u32) -> Value {
    json!({
        "title": title,
        "description": "Talks and pizza",
        "starts_at": "2030-06-01T18:00:00+02:00",
        "ends_at": "2030-06-01T21:00:00+02:00",
        "time_zone": "Europe/Berlin",
        "location": "c-base",
        "capacity": capacity,
    })
}

async fn create_event(api: &Api, tokens: &Tokens, title: &str, capacity: u32) -> Result<String> {
    let (status, _, body) = api
        .post(
            "/v1/events",
            Some(&tokens.access),
            &event_body(title, capacity),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "create event: {status} {body}"
    );
    body["id"]
        .as_str()
        .map(str::to_owned)
        .context("created event has an id")
}

/// Asserts a problem+json answer with the given status and code.
fn assert_problem(
    what: &str,
    status: StatusCode,
    headers: &integration::HeaderMap,
    body: &Value,
    want_status: u16,
    want_code: &str,
) -> Result<()> {
    ensure!(
        status.as_u16() == want_status && body["code"] == want_code,
        "{what}: expected {want_status} {want_code}, got {status} {body}"
    );
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        content_type.starts_with("application/problem+json"),
        "{what}: content-type {content_type:?}"
    );
    ensure!(body["status"] == want_status, "{what}: body status {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsvp_journey_with_rejections_and_idempotency() -> Result<()> {
    on_each_backend(rsvp_journey).await
}

async fn rsvp_journey(backend: Backend) -> Result<()> {
    let mesh = Mesh::start(backend).await?;
    let api = mesh.api();

    // Register, log in, who am I.
    let (organizer, org) = api.new_user("Organizer").await?;
    let (status, _, me) = api.get("/v1/me", Some(&org.access)).await?;
    ensure!(status == StatusCode::OK, "me: {status} {me}");
    ensure!(
        me["id"] == organizer["id"] && me["role"] == "user",
        "me: {me}"
    );

    // Duplicate email is 409; wrong password and unknown user are the same 401.
    let email = organizer["email"].as_str().context("email")?;
    let (status, headers, body) = api
        .post(
            "/v1/auth/register",
            None,
            &json!({"email": email, "password": "another password", "display_name": "X"}),
        )
        .await?;
    assert_problem(
        "duplicate email",
        status,
        &headers,
        &body,
        409,
        "email_taken",
    )?;
    let (s1, h1, wrong_pw) = api
        .post(
            "/v1/auth/login",
            None,
            &json!({"email": email, "password": "wrong password!"}),
        )
        .await?;
    assert_problem(
        "wrong password",
        s1,
        &h1,
        &wrong_pw,
        401,
        "invalid_credentials",
    )?;
    let (s2, h2, unknown) = api
        .post(
            "/v1/auth/login",
            None,
            &json!({"email": "nobody@example.com", "password": "wrong password!"}),
        )
        .await?;
    assert_problem(
        "unknown user",
        s2,
        &h2,
        &unknown,
        401,
        "invalid_credentials",
    )?;
    ensure!(
        wrong_pw["detail"] == unknown["detail"],
        "same 401 body: {wrong_pw} vs {unknown}"
    );

    // Create, RSVP, read back counts.
    let event_id = create_event(&api, &org, "Rust meetup", 2).await?;
    let (attendee, att) = api.new_user("Attendee").await?;
    let (status, _, rsvp) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&att.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && rsvp["changed"] == true,
        "rsvp: {status} {rsvp}"
    );
    let (status, _, again) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&att.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && again["changed"] == false,
        "repeat rsvp: {status} {again}"
    );
    let (status, _, event) = api
        .get(&format!("/v1/events/{event_id}"), Some(&att.access))
        .await?;
    ensure!(status == StatusCode::OK, "get event: {status} {event}");
    ensure!(
        event["counts"] == json!({"going": 1, "maybe": 0, "declined": 0})
            && event["my_rsvp"] == "going",
        "counts after one going: {event}"
    );
    ensure!(
        event["starts_at"] == "2030-06-01T18:00:00+02:00",
        "rendered in its zone: {event}"
    );

    // Organizer-only reads and edits.
    let (status, _, rsvps) = api
        .get(&format!("/v1/events/{event_id}/rsvps"), Some(&org.access))
        .await?;
    ensure!(status == StatusCode::OK, "rsvps: {status} {rsvps}");
    ensure!(
        rsvps["items"][0]["user_id"] == attendee["id"],
        "rsvp list: {rsvps}"
    );
    let (status, headers, body) = api
        .get(&format!("/v1/events/{event_id}/rsvps"), Some(&att.access))
        .await?;
    assert_problem(
        "attendee lists rsvps",
        status,
        &headers,
        &body,
        403,
        "forbidden",
    )?;
    let (status, headers, body) = api
        .patch(
            &format!("/v1/events/{event_id}"),
            Some(&att.access),
            &json!({"title": "Mine now"}),
        )
        .await?;
    assert_problem(
        "non-organizer edit",
        status,
        &headers,
        &body,
        403,
        "forbidden",
    )?;
    let (status, _, body) = api
        .patch(
            &format!("/v1/events/{event_id}"),
            Some(&org.access),
            &json!({"title": "Rust meetup #2"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && body["title"] == "Rust meetup #2",
        "organizer edit: {status} {body}"
    );

    // Lists: organizing and attending.
    let (status, _, page) = api
        .get("/v1/events?mine=attending", Some(&att.access))
        .await?;
    ensure!(
        status == StatusCode::OK && page["items"].as_array().map(Vec::len) == Some(1),
        "attending: {page}"
    );
    let (status, _, page) = api
        .get("/v1/events?mine=organizing", Some(&att.access))
        .await?;
    ensure!(
        status == StatusCode::OK && page["items"].as_array().map(Vec::len) == Some(0),
        "organizing: {page}"
    );

    // Bad input is 4xx problem+json, never 500.
    let raw = api
        .http()
        .post(api.url("/v1/events"))
        .bearer_auth(&org.access)
        .header("content-type", "application/json")
        .body("{\"title\": \"oops\",")
        .send()
        .await?;
    let status = raw.status();
    let headers = raw.headers().clone();
    let body: Value = raw.json().await?;
    assert_problem(
        "malformed JSON",
        status,
        &headers,
        &body,
        400,
        "malformed_json",
    )?;
    let (status, headers, body) = api
        .post(
            "/v1/events",
            Some(&org.access),
            &json!({"title": "No times"}),
        )
        .await?;
    assert_problem(
        "missing fields",
        status,
        &headers,
        &body,
        422,
        "validation_failed",
    )?;
    let mut backwards = event_body("Backwards", 5);
    backwards["ends_at"] = json!("2030-06-01T17:00:00+02:00");
    let (status, headers, body) = api
        .post("/v1/events", Some(&org.access), &backwards)
        .await?;
    assert_problem(
        "end before start",
        status,
        &headers,
        &body,
        422,
        "validation_failed",
    )?;
    let mut wrong_offset = event_body("Wrong offset", 5);
    wrong_offset["starts_at"] = json!("2030-06-01T18:00:00+05:00");
    let (status, headers, body) = api
        .post("/v1/events", Some(&org.access), &wrong_offset)
        .await?;
    assert_problem(
        "offset disagrees with zone",
        status,
        &headers,
        &body,
        422,
        "time_zone_mismatch",
    )?;
    let (status, headers, body) = api
        .put(
            &format!("/v1/events/{event_id}/rsvp"),
            Some(&att.access),
            &json!({"status": "perhaps"}),
        )
        .await?;
    assert_problem(
        "unknown status",
        status,
        &headers,
        &body,
        422,
        "validation_failed",
    )?;
    let (status, headers, body) = api
        .put(
            "/v1/events/not-a-uuid/rsvp",
            Some(&att.access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(
        status.is_client_error() && body["code"].is_string(),
        "bad id: {status} {body}"
    );
    ensure!(
        headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json")),
        "bad id content type"
    );
    let (status, headers, body) = api.get("/v1/nowhere", Some(&att.access)).await?;
    assert_problem(
        "unknown route",
        status,
        &headers,
        &body,
        404,
        "route_not_found",
    )?;

    // Tokens: missing, garbage, tampered, alg=none are all 401.
    let (status, headers, body) = api.get("/v1/me", None).await?;
    assert_problem(
        "missing token",
        status,
        &headers,
        &body,
        401,
        "unauthorized",
    )?;
    let (status, headers, body) = api.get("/v1/me", Some("not.a.jwt")).await?;
    assert_problem(
        "garbage token",
        status,
        &headers,
        &body,
        401,
        "unauthorized",
    )?;
    let (status, headers, body) = api.get("/v1/me", Some(&tamper_role(&att.access)?)).await?;
    assert_problem(
        "tampered token",
        status,
        &headers,
        &body,
        401,
        "unauthorized",
    )?;
    let (status, headers, body) = api.get("/v1/me", Some(&unsigned(&att.access)?)).await?;
    assert_problem(
        "alg none token",
        status,
        &headers,
        &body,
        401,
        "unauthorized",
    )?;

    // Refresh rotates; logout revokes.
    let (status, _, refreshed) = api
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": att.refresh}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "refresh: {status} {refreshed}");
    let (status, headers, body) = api
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": att.refresh}),
        )
        .await?;
    assert_problem(
        "rotated refresh token",
        status,
        &headers,
        &body,
        401,
        "invalid_refresh_token",
    )?;
    let new_refresh = refreshed["refresh_token"]
        .as_str()
        .context("new refresh token")?;
    let (status, _, _) = api
        .post(
            "/v1/auth/logout",
            None,
            &json!({"refresh_token": new_refresh}),
        )
        .await?;
    ensure!(status.is_success(), "logout: {status}");
    let (status, headers, body) = api
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": new_refresh}),
        )
        .await?;
    assert_problem(
        "logged-out refresh token",
        status,
        &headers,
        &body,
        401,
        "invalid_refresh_token",
    )?;

    // A retried POST with the same Idempotency-Key creates one event.
    let body = event_body("Idempotent meetup", 5);
    let key = [("Idempotency-Key", "create-once-1")];
    let (s1, _, first) = api
        .request_with_headers(
            integration::Method::POST,
            "/v1/events",
            Some(&org.access),
            Some(&body),
            &key,
        )
        .await?;
    let (s2, _, second) = api
        .request_with_headers(
            integration::Method::POST,
            "/v1/events",
            Some(&org.access),
            Some(&body),
            &key,
        )
        .await?;
    ensure!(
        s1 == StatusCode::CREATED && s2 == StatusCode::CREATED,
        "idempotent creates: {s1} {s2}"
    );
    ensure!(
        first["id"] == second["id"],
        "retry returned the first response: {first} vs {second}"
    );
    let (status, _, page) = api
        .get("/v1/events?mine=organizing&limit=200", Some(&org.access))
        .await?;
    ensure!(status == StatusCode::OK, "list: {status} {page}");
    let copies = page["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|e| e["title"] == "Idempotent meetup")
        .count();
    ensure!(copies == 1, "one event created, found {copies}");
    let mut changed = body.clone();
    changed["capacity"] = json!(6);
    let (status, headers, reused) = api
        .request_with_headers(
            integration::Method::POST,
            "/v1/events",
            Some(&org.access),
            Some(&changed),
            &key,
        )
        .await?;
    assert_problem(
        "key reused with another body",
        status,
        &headers,
        &reused,
        422,
        "idempotency_key_reused",
    )?;

    // Capacity: 50 concurrent RSVPs against capacity 10.
    let crowded = create_event(&api, &org, "Crowded", 10).await?;
    let mut users = Vec::new();
    for i in 0..50 {
        let (_, tokens) = api.new_user(&format!("Guest {i}")).await?;
        users.push(tokens);
    }
    let path = format!("/v1/events/{crowded}/rsvp");
    let answers = futures::future::join_all(users.iter().map(|t| {
        let api = api.clone();
        let path = path.clone();
        async move {
            api.put(&path, Some(&t.access), &json!({"status": "going"}))
                .await
        }
    }))
    .await;
    let mut seated = Vec::new();
    let mut turned_away = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let (status, _, body) = answer?;
        match (status.as_u16(), body["code"].as_str()) {
            (200, _) => seated.push(i),
            (409, Some("event_full")) => turned_away.push(i),
            other => bail!("unexpected RSVP answer {other:?}: {body}"),
        }
    }
    ensure!(
        seated.len() == 10 && turned_away.len() == 40,
        "10 going and 40 event_full, got {} and {}",
        seated.len(),
        turned_away.len()
    );
    let (_, _, event) = api
        .get(&format!("/v1/events/{crowded}"), Some(&org.access))
        .await?;
    ensure!(event["counts"]["going"] == 10, "going count: {event}");
    // Leaving `going` frees the seat for someone who was turned away.
    let (status, _, body) = api
        .put(
            &path,
            Some(&users[seated[0]].access),
            &json!({"status": "declined"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && body["counts"]["going"] == 9,
        "decline: {status} {body}"
    );
    let (status, _, body) = api
        .put(
            &path,
            Some(&users[turned_away[0]].access),
            &json!({"status": "going"}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && body["counts"]["going"] == 10,
        "freed seat taken: {status} {body}"
    );
    let (status, headers, body) = api
        .put(
            &path,
            Some(&users[turned_away[1]].access),
            &json!({"status": "going"}),
        )
        .await?;
    assert_problem("full again", status, &headers, &body, 409, "event_full")?;

    // No instance of a service: 503 at once, not a timeout.
    let mut mesh = mesh;
    mesh.stop_service("calendar").await?;
    let (status, headers, body) = api.get("/v1/events", Some(&org.access)).await?;
    assert_problem(
        "calendar down",
        status,
        &headers,
        &body,
        503,
        "service_unavailable",
    )?;
    mesh.shutdown().await
}

/// The token with its payload's role changed to admin and the original signature.
fn tamper_role(token: &str) -> Result<String> {
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3, "a JWT has three parts");
    let payload = URL_SAFE_NO_PAD.decode(parts[1])?;
    let mut claims: Value = serde_json::from_slice(&payload)?;
    claims["role"] = json!("admin");
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    Ok(format!("{}.{forged}.{}", parts[0], parts[2]))
}

/// The token's claims under an `alg: none` header and no signature.
fn unsigned(token: &str) -> Result<String> {
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3, "a JWT has three parts");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    Ok(format!("{header}.{}.", parts[1]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_token_is_rejected() -> Result<()> {
    on_each_backend(|backend| async move {
        let mesh = Mesh::builder(backend)
            .with_env("auth", "AUTH_ACCESS_TOKEN_TTL_SECS", "1")
            .with_env("gateway", "GATEWAY_JWT_LEEWAY_SECS", "0")
            .start()
            .await?;
        let api = mesh.api();
        let (_, tokens) = api.new_user("Shortlived").await?;
        poll_until(
            Duration::from_secs(15),
            "the access token to expire",
            || {
                let api = api.clone();
                let token = tokens.access.clone();
                async move {
                    let (status, _, body) = api.get("/v1/me", Some(&token)).await.ok()?;
                    (status == StatusCode::UNAUTHORIZED && body["code"] == "unauthorized")
                        .then_some(())
                }
            },
        )
        .await?;
        // A refresh still works and gives a token that is accepted.
        let (status, _, fresh) = api
            .post(
                "/v1/auth/refresh",
                None,
                &json!({"refresh_token": tokens.refresh}),
            )
            .await?;
        ensure!(status == StatusCode::OK, "refresh: {status} {fresh}");
        let access = fresh["access_token"].as_str().context("access token")?;
        let (status, _, me) = api.get("/v1/me", Some(access)).await?;
        // The fresh token lives one second too; accept either a quick 200 or, on a
        // slow machine, the same expiry, but never another error.
        ensure!(
            status == StatusCode::OK
                || (status == StatusCode::UNAUTHORIZED && me["code"] == "unauthorized"),
            "fresh token: {status} {me}"
        );
        mesh.shutdown().await
    })
    .await
}

/// Messages in the CALENDAR stream: (count, distinct message ids, subjects).
async fn calendar_stream(mesh: &Mesh) -> Result<(u64, HashSet<String>, Vec<String>)> {
    let js = mesh.nats().jetstream().await?;
    let mut stream = js.get_stream("CALENDAR").await.context("CALENDAR stream")?;
    let info = stream.info().await?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let count = info.state.messages;
    let mut ids = HashSet::new();
    let mut subjects = Vec::new();
    if count > 0 {
        for seq in first..=last {
            let msg = stream.get_raw_message(seq).await?;
            let id = msg
                .headers
                .get("Mesh-Message-Id")
                .map(|v| v.as_str().to_owned())
                .context("event without Mesh-Message-Id")?;
            ids.insert(id);
            subjects.push(msg.subject.to_string());
        }
    }
    Ok((count, ids, subjects))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_nats_outage_and_calendar_restart() -> Result<()> {
    on_each_backend(|backend| async move {
        const RSVPS: usize = 8;
        let mut mesh = Mesh::builder(backend)
            .with_env("calendar", "OUTBOX_RELAY", "off")
            .start()
            .await?;
        let api = mesh.api();
        let (_, org) = api.new_user("Organizer").await?;
        let event_id = create_event(&api, &org, "Outage party", 100).await?;
        for i in 0..RSVPS {
            let (_, tokens) = api.new_user(&format!("Guest {i}")).await?;
            let status = if i % 2 == 0 { "going" } else { "maybe" };
            let (s, _, body) = api
                .put(
                    &format!("/v1/events/{event_id}/rsvp"),
                    Some(&tokens.access),
                    &json!({"status": status}),
                )
                .await?;
            ensure!(s == StatusCode::OK, "rsvp {i}: {s} {body}");
        }
        // The relay is held back: the writes are committed, the stream is still empty.
        let (count, _, _) = calendar_stream(&mesh).await?;
        ensure!(
            count == 0,
            "relay held back, but {count} events were published"
        );

        // NATS goes away; calendar restarts with its relay on while NATS is down.
        mesh.nats_mut().stop().await?;
        mesh.stop_service("calendar").await?;
        mesh.service_mut("calendar").set_env("OUTBOX_RELAY", "on");
        mesh.start_service("calendar")?;
        let calendar_health = mesh.calendar().url("/healthz");
        poll_until(
            Duration::from_secs(20),
            "calendar to run while NATS is down",
            || {
                let url = calendar_health.clone();
                async move {
                    let r = reqwest::get(&url).await.ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await?;
        mesh.nats_mut().start_again().await?;

        let expected = 1 + RSVPS as u64;
        let (count, ids, subjects) = poll_until(
            Duration::from_secs(30),
            "every outbox row in the stream",
            || {
                let mesh = &mesh;
                async move {
                    let got = calendar_stream(mesh).await.ok()?;
                    (got.0 >= expected).then_some(got)
                }
            },
        )
        .await?;
        ensure!(
            count == expected,
            "exactly {expected} events, found {count}"
        );
        ensure!(
            ids.len() as u64 == expected,
            "no duplicate message ids: {} distinct of {count}",
            ids.len()
        );
        ensure!(
            subjects
                .iter()
                .filter(|s| *s == "calendar.v1.rsvp.changed")
                .count()
                == RSVPS
                && subjects
                    .iter()
                    .filter(|s| *s == "calendar.v1.event.created")
                    .count()
                    == 1,
            "subjects: {subjects:?}"
        );
        // The relay marks the rows published (after the stream's acks, so a moment after
        // the stream has them), and nothing is sent again.
        let db = mesh
            .database_url("calendar")
            .context("calendar database")?
            .to_owned();
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&db).await?;
        let unpublished = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .ok()
        };
        poll_until(
            Duration::from_secs(30),
            "the relay to mark every outbox row published",
            || async { (unpublished().await? == 0).then_some(()) },
        )
        .await?;
        pool.close().await;
        let (count_later, _, _) = calendar_stream(&mesh).await?;
        ensure!(
            count_later == expected,
            "stream grew to {count_later} after the relay settled"
        );
        mesh.shutdown().await
    })
    .await
}
