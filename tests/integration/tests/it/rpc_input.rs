//! No input from the bus breaks a service: every request/reply endpoint of every
//! service (found through `$SRV.INFO`, so a new endpoint is covered without touching
//! this test) gets garbage, truncated, oversized, too deeply nested and wrong-typed
//! MessagePack straight over NATS, and must answer each with a well-formed error reply,
//! never a panic, a crash or silence.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use contracts::rpc::RpcReply;
use integration::{Backend, Mesh, tail_lines};
use serde::de::IgnoredAny;
use serde_json::{Value, json};

/// Services that answer requests on the bus.
const RPC_SERVICES: &[&str] = &["auth", "calendar", "push", "hospital"];

/// How long a reply may take (a handler that panicked never replies).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every endpoint subject each service registered.
async fn endpoint_subjects(client: &async_nats::Client) -> Result<Vec<(String, String)>> {
    let mut subjects = Vec::new();
    for service in RPC_SERVICES {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(format!("$SRV.INFO.{service}"), "".into()),
        )
        .await
        .with_context(|| format!("$SRV.INFO.{service}: no reply"))??;
        let info: Value = serde_json::from_slice(&reply.payload)?;
        for ep in info["endpoints"].as_array().into_iter().flatten() {
            let subject = ep["subject"].as_str().context("endpoint without subject")?;
            subjects.push(((*service).to_owned(), subject.to_owned()));
        }
    }
    ensure!(subjects.len() > 30, "only {} endpoints", subjects.len());
    Ok(subjects)
}

/// MessagePack of a JSON value (maps with string keys, as the gateway sends).
fn msgpack(value: &Value) -> Result<Vec<u8>> {
    Ok(contracts::wire::encode(value)?)
}

/// `depth` nested one-element arrays around `inner`.
fn nested(depth: usize, inner: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x91; depth];
    bytes.extend_from_slice(inner);
    bytes
}

/// Bytes that are not a request: each must be answered `validation_failed`.
fn garbage() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let valid = msgpack(&json!({
        "caller": {"user_id": uuid::Uuid::now_v7(), "role": "admin"},
        "params": {"id": uuid::Uuid::now_v7()},
        "query": {"limit": "5"},
        "body": {"title": "a title long enough", "status": "going", "reason": "why"},
    }))?;
    // A deterministic pseudo-random byte soup (xorshift).
    let mut x: u32 = 0x9e37_79b9;
    let soup: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect();
    let mut map_with_deep_body = vec![0x81, 0xa4];
    map_with_deep_body.extend_from_slice(b"body");
    map_with_deep_body.extend(nested(200_000, &[0xc0]));
    Ok(vec![
        ("empty", Vec::new()),
        ("never-used byte 0xc1", vec![0xc1, 0xc1, 0xc1]),
        ("random bytes", soup),
        ("truncated request", valid[..valid.len() / 2].to_vec()),
        (
            "request cut before its last byte",
            valid[..valid.len() - 1].to_vec(),
        ),
        ("JSON instead of MessagePack", br#"{"body":{}}"#.to_vec()),
        ("a bare string", msgpack(&json!("hello"))?),
        ("an array", msgpack(&json!([1, 2, 3]))?),
        ("no body field", msgpack(&json!({"params": {}}))?),
        (
            "params of the wrong type",
            msgpack(&json!({"params": 5, "body": {}}))?,
        ),
        (
            "a forged caller",
            msgpack(&json!({"caller": {"user_id": "nope", "role": "god"}, "body": {}}))?,
        ),
        (
            "query values that are not strings",
            msgpack(&json!({"query": {"limit": [1]}, "body": {}}))?,
        ),
        // A 4-billion-element array and string announced, a few bytes sent.
        (
            "array32 header with no elements",
            vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        (
            "str32 header with no bytes",
            vec![0xdb, 0xff, 0xff, 0xff, 0xff, 0x61],
        ),
        (
            "map32 header as body",
            [
                &[0x81, 0xa4][..],
                b"body",
                &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
            ]
            .concat(),
        ),
        ("200,000 nested arrays", nested(200_000, &[0xc0])),
        ("a body nested 200,000 deep", map_with_deep_body),
    ])
}

/// Well-formed envelopes with bodies, parameters and queries of the wrong shape, from
/// an admin: a handler may accept some (their body is ignored), but must not fail.
fn wrong_typed() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let admin = json!({"user_id": uuid::Uuid::now_v7(), "role": "admin"});
    let big = "x".repeat(900 * 1024);
    Ok(vec![
        (
            "wrong-typed fields",
            msgpack(&json!({
                "caller": admin,
                "body": {
                    "title": 5, "capacity": "many", "status": 7, "email": [],
                    "password": {}, "starts_at": true, "selection": "all", "reason": 1,
                    "body": null, "until": -1, "refresh_token": 3.5,
                },
            }))?,
        ),
        (
            "out-of-range values",
            msgpack(&json!({
                "caller": admin,
                "params": {"id": "00000000-0000-0000-0000-000000000000", "durable": "a.b>*"},
                "query": {
                    "limit": "-9223372036854775808", "cursor": "\u{0}\u{ffff}",
                    "from": "9999-99-99", "to": "-1", "unread": "maybe",
                    "status": "x\u{0}", "mine": "18446744073709551616",
                    "since": "zzz", "message_id": "", "after": "0",
                },
                "body": {
                    "title": "\u{0}", "capacity": u64::MAX, "status": "going",
                    "starts_at": "2030-06-01T18:00:00+99:00", "time_zone": "Mars/Olympus",
                    "ends_at": "0000-01-01T00:00:00Z", "reason": "",
                    "selection": {"ids": [], "filter": {"limit": -1}},
                    "rate_per_sec": u64::MAX, "dry_run": "yes",
                },
            }))?,
        ),
        (
            "an oversized body (900 KiB)",
            msgpack(&json!({
                "caller": admin,
                "body": {"title": big, "description": 1, "reason": 2},
            }))?,
        ),
        (
            "a body that is not a map",
            msgpack(&json!({"caller": admin, "body": [1, "two", null]}))?,
        ),
    ])
}

/// Sends `payload` to `subject` and returns the decoded reply (or why there is none).
async fn ask(
    client: &async_nats::Client,
    subject: &str,
    payload: Vec<u8>,
) -> Result<RpcReply<IgnoredAny>> {
    let reply = tokio::time::timeout(
        REPLY_TIMEOUT,
        client.request(subject.to_owned(), payload.into()),
    )
    .await
    .context("no reply in time (did the handler panic?)")?
    .context("request failed")?;
    if let Some(error) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
    {
        bail!("a NATS service error instead of a reply: {error}");
    }
    contracts::wire::decode(&reply.payload).context("the reply is not an RpcReply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_bus_input_with_an_error_reply() -> Result<()> {
    // The decoding and the handlers do not depend on the database backend.
    let mesh = Mesh::builder(Backend::Sqlite)
        .with_service("push")
        .with_service("hospital")
        .without_service("gateway")
        .start()
        .await?;
    let client = mesh.nats_client().await?;
    let subjects = endpoint_subjects(&client).await?;
    let garbage = garbage()?;
    let wrong_typed = wrong_typed()?;
    let mut failures = Vec::new();
    let mut answered: HashMap<&str, usize> = HashMap::new();
    for (service, subject) in &subjects {
        for (what, payload) in &garbage {
            match ask(&client, subject, payload.clone()).await {
                Ok(RpcReply::Err(p)) if p.code == contracts::ErrorCode::ValidationFailed => {
                    *answered.entry(service).or_default() += 1;
                }
                Ok(other) => failures.push(format!(
                    "{subject} ← {what}: expected validation_failed, got {}",
                    describe(&other)
                )),
                Err(e) => failures.push(format!("{subject} ← {what}: {e:#}")),
            }
        }
        for (what, payload) in &wrong_typed {
            match ask(&client, subject, payload.clone()).await {
                Ok(RpcReply::Err(p)) if p.status >= 500 => failures.push(format!(
                    "{subject} ← {what}: {} {} {:?}",
                    p.status, p.code, p.detail
                )),
                Ok(_) => *answered.entry(service).or_default() += 1,
                Err(e) => failures.push(format!("{subject} ← {what}: {e:#}")),
            }
        }
    }
    // Every service is still up and still answering, and none logged a panic.
    for service in RPC_SERVICES {
        let process = mesh.service(service);
        ensure!(
            process.is_ready().await,
            "{service} is not ready any more:\n{}",
            tail_lines(&process.log_text(), 40)
        );
        let log = process.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            failures.push(format!("{service} panicked: {line}"));
        }
        ensure!(
            answered.get(service).copied().unwrap_or_default() > 0,
            "{service} answered nothing"
        );
    }
    if let Some((_, subject)) = subjects.first() {
        ask(&client, subject, vec![0xc1])
            .await
            .context("a service stopped answering")?;
    }
    ensure!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    mesh.shutdown().await
}

fn describe(reply: &RpcReply<IgnoredAny>) -> String {
    match reply {
        RpcReply::Ok { status, .. } => format!("success {status}"),
        RpcReply::Err(p) => format!("{} {} {:?}", p.status, p.code, p.detail),
    }
}
