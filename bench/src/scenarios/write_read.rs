//! The write path (authenticated `PUT /v1/events/{id}/rsvp`) and the read path
//! (`GET /v1/events/{id}`, `GET /v1/events`, hot and cold), closed loop, on auth +
//! calendar + gateway. Users (minted tokens) and events exist before any window opens.

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderValue, Method};
use uuid::Uuid;

use super::{Ctx, baselines, bulk, event_body, id_of, mix, require};
use crate::http::Call;
use crate::load::{ClosedLoop, Outcome, closed_loop};
use crate::mesh::{BenchMesh, MeshSpec};
use crate::report::{Row, Target};

/// Write path: at least this share of the axum + NATS baseline…
const WRITE_RATIO: f64 = 0.30;
/// …with a p99 below this (ms).
const WRITE_P99_MS: f64 = 50.0;
/// Read path: at least this share of the axum + NATS baseline.
const READ_RATIO: f64 = 0.70;
/// Events read over and over by the hot read.
const HOT_EVENTS: usize = 10;
/// Organizers of the bench's events (the first users).
const ORGANIZERS: usize = 20;

/// Users and events the closed loops pick from.
struct Fixture {
    users: Vec<HeaderValue>,
    events: Vec<Uuid>,
}

pub async fn run(ctx: &mut Ctx, write: bool, read: bool) -> Result<()> {
    eprintln!("bench: write/read: starting auth + calendar + gateway");
    let spec = MeshSpec::new(
        &["auth", "calendar", "gateway"],
        ctx.settings.backend,
        &ctx.settings.bin_dir,
    )
    .with_env("auth", "AUTH_SIGNING_KEY_PEM", ctx.signer.pem());
    let mut mesh = BenchMesh::start(spec).await?;
    let result = body(ctx, &mut mesh, write, read).await;
    if result.is_err() {
        eprintln!("{}", mesh.log_tails(30));
    }
    mesh.shutdown().await;
    result
}

async fn body(ctx: &mut Ctx, mesh: &mut BenchMesh, write: bool, read: bool) -> Result<()> {
    let baseline = baselines::axum_nats(ctx).await?;
    let gateway = mesh.gateway_urls()[0].clone();
    let users: Vec<HeaderValue> = ctx
        .mint_users(ctx.settings.users)?
        .into_iter()
        .map(|(_, auth)| auth)
        .collect();
    let events = create_events(
        ctx,
        &gateway,
        &users,
        "bench write",
        ctx.settings.write_events,
    )
    .await?;
    let fixture = Arc::new(Fixture { users, events });

    if write {
        let one = write_path(ctx, std::slice::from_ref(&gateway), &fixture).await?;
        push_write_rows(ctx, "write", "1 replica", &one, baseline);
        ctx.report.detail("write_1_replica", &one);
        if ctx.settings.replicas >= 2 {
            eprintln!("bench: write: adding a second calendar and gateway replica");
            mesh.add_replica("calendar").await?;
            mesh.add_replica("gateway").await?;
            let two = write_path(ctx, &mesh.gateway_urls(), &fixture).await?;
            ctx.report.push(
                Row::new("write", "throughput, 2 replicas", two.throughput, "req/s")
                    .baseline("1 replica", one.throughput)
                    .note(format!("p99 {:.1} ms", two.latency.p99_ms)),
            );
            ctx.report.detail("write_2_replicas", &two);
        }
    }
    if read {
        read_path(ctx, &gateway, &fixture, baseline).await?;
    }
    Ok(())
}

/// Creates `n` events, organized round-robin by the first users.
async fn create_events(
    ctx: &Ctx,
    gateway: &str,
    users: &[HeaderValue],
    prefix: &str,
    n: usize,
) -> Result<Vec<Uuid>> {
    eprintln!("bench:   creating {n} events ({prefix})");
    let organizers = users.len().clamp(1, ORGANIZERS);
    let calls = (0..n)
        .map(|i| {
            Call::with_json(
                Method::POST,
                "/v1/events",
                users.get(i % organizers),
                &event_body(&format!("{prefix} {i:05}"), i),
            )
        })
        .collect();
    let bodies = bulk(&ctx.http, gateway, calls, 32).await?;
    bodies.iter().map(id_of).collect()
}

/// One closed loop of RSVPs over random (user, event, status), spread over `gateways`.
async fn write_path(ctx: &Ctx, gateways: &[String], fixture: &Arc<Fixture>) -> Result<Outcome> {
    eprintln!(
        "bench: write: PUT /v1/events/{{id}}/rsvp, {} users × {} events, c={} over {} gateway(s)",
        fixture.users.len(),
        fixture.events.len(),
        ctx.settings.closed.concurrency,
        gateways.len()
    );
    let bodies: Arc<[Bytes; 3]> = Arc::new(
        ["going", "maybe", "declined"]
            .map(|s| Bytes::from(serde_json::json!({ "status": s }).to_string())),
    );
    let f = fixture.clone();
    let outcome = closed_loop(&ctx.http, gateways, &ctx.settings.closed, move |seq| {
        let h = mix(seq);
        let user = &f.users[(h % f.users.len() as u64) as usize];
        let event = f.events[((h >> 20) % f.events.len() as u64) as usize];
        Call {
            method: Method::PUT,
            path: format!("/v1/events/{event}/rsvp"),
            auth: Some(user.clone()),
            body: Some(bodies[((h >> 44) % 3) as usize].clone()),
        }
    })
    .await;
    require(&outcome, "write path")?;
    Ok(outcome)
}

fn push_write_rows(ctx: &mut Ctx, scenario: &str, label: &str, o: &Outcome, baseline: f64) {
    let mut row = Row::new(
        scenario,
        &format!("RSVP throughput, {label}"),
        o.throughput,
        "req/s",
    )
    .baseline("axum+NATS", baseline)
    .target(Target::RatioAtLeast(WRITE_RATIO));
    if o.errors > 0 {
        row = row.note(format!(
            "{} errors: {}",
            o.errors,
            o.first_error.as_deref().unwrap_or("?")
        ));
    }
    ctx.report.push(row);
    latency_rows(ctx, scenario, "RSVP", o, Some(WRITE_P99_MS));
}

/// p50, p99 (with an optional target) and p99.9 rows.
fn latency_rows(ctx: &mut Ctx, scenario: &str, what: &str, o: &Outcome, p99_target: Option<f64>) {
    ctx.report.push(Row::new(
        scenario,
        &format!("{what} p50"),
        o.latency.p50_ms,
        "ms",
    ));
    let mut p99 = Row::new(scenario, &format!("{what} p99"), o.latency.p99_ms, "ms");
    if let Some(target) = p99_target {
        p99 = p99.target(Target::Below(target));
    }
    ctx.report.push(p99);
    ctx.report.push(Row::new(
        scenario,
        &format!("{what} p99.9"),
        o.latency.p999_ms,
        "ms",
    ));
}

async fn read_path(
    ctx: &mut Ctx,
    gateway: &str,
    fixture: &Arc<Fixture>,
    baseline: f64,
) -> Result<()> {
    let cold = create_events(
        ctx,
        gateway,
        &fixture.users,
        "bench cold",
        ctx.settings.cold_events,
    )
    .await?;
    let bases = [gateway.to_owned()];
    let spec = ctx.settings.closed.clone();

    eprintln!("bench: read: GET /v1/events/{{id}} hot ({HOT_EVENTS} events)");
    let f = fixture.clone();
    let hot_get = closed_loop(&ctx.http, &bases, &spec, move |seq| {
        let h = mix(seq);
        let event = f.events[(h % HOT_EVENTS.min(f.events.len()) as u64) as usize];
        Call::get(
            format!("/v1/events/{event}"),
            Some(&f.users[((h >> 20) % f.users.len() as u64) as usize]),
        )
    })
    .await;
    require(&hot_get, "read GET /v1/events/{id} hot")?;
    read_rows(ctx, "GET /v1/events/{id} hot", &hot_get, baseline);

    eprintln!("bench: read: GET /v1/events hot (one query)");
    let f = fixture.clone();
    let hot_list = closed_loop(&ctx.http, &bases, &spec, move |seq| {
        let h = mix(seq);
        Call::get(
            "/v1/events?limit=20",
            Some(&f.users[(h % f.users.len() as u64) as usize]),
        )
    })
    .await;
    require(&hot_list, "read GET /v1/events hot")?;
    read_rows(ctx, "GET /v1/events hot", &hot_list, baseline);

    // Cold: every event read once, in a scrambled order, no warm-up.
    eprintln!(
        "bench: read: GET /v1/events/{{id}} cold ({} events, each once)",
        cold.len()
    );
    let cold_spec = ClosedLoop {
        warmup: std::time::Duration::ZERO,
        measure: spec.measure * 6,
        max_requests: Some(cold.len() as u64),
        ..spec.clone()
    };
    let f = fixture.clone();
    let cold = Arc::new(cold);
    let n = cold.len() as u64;
    // Stepping through by a stride coprime with n visits each index once.
    let stride = coprime_stride(n);
    let ids = cold.clone();
    let cold_get = closed_loop(&ctx.http, &bases, &cold_spec, move |seq| {
        let index = (seq.wrapping_mul(stride) % n.max(1)) as usize;
        Call::get(
            format!("/v1/events/{}", ids[index]),
            Some(&f.users[(mix(seq) % f.users.len() as u64) as usize]),
        )
    })
    .await;
    require(&cold_get, "read GET /v1/events/{id} cold")?;
    read_rows(ctx, "GET /v1/events/{id} cold", &cold_get, baseline);

    // Cold list: each request a window starting at a different minute.
    eprintln!("bench: read: GET /v1/events cold (a new window each request)");
    let cold_list_spec = ClosedLoop {
        warmup: std::time::Duration::ZERO,
        ..spec.clone()
    };
    let f = fixture.clone();
    let cold_list = closed_loop(&ctx.http, &bases, &cold_list_spec, move |seq| {
        let from = jiff::Timestamp::from_second(1_893_456_000 + 60 * seq as i64)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .strftime("%Y-%m-%dT%H:%M:%S%%2B00:00")
            .to_string();
        Call::get(
            format!("/v1/events?limit=20&from={from}"),
            Some(&f.users[(mix(seq) % f.users.len() as u64) as usize]),
        )
    })
    .await;
    require(&cold_list, "read GET /v1/events cold")?;
    read_rows(ctx, "GET /v1/events cold", &cold_list, baseline);

    ctx.report.detail(
        "read",
        serde_json::json!({
            "get_hot": hot_get, "list_hot": hot_list,
            "get_cold": cold_get, "list_cold": cold_list,
        }),
    );
    Ok(())
}

fn read_rows(ctx: &mut Ctx, what: &str, o: &Outcome, baseline: f64) {
    let mut row = Row::new("read", &format!("{what} throughput"), o.throughput, "req/s")
        .baseline("axum+NATS", baseline)
        .target(Target::RatioAtLeast(READ_RATIO));
    if o.errors > 0 {
        row = row.note(format!(
            "{} errors: {}",
            o.errors,
            o.first_error.as_deref().unwrap_or("?")
        ));
    }
    ctx.report.push(row);
    ctx.report.push(Row::new(
        "read",
        &format!("{what} p99"),
        o.latency.p99_ms,
        "ms",
    ));
}

/// A stride that is coprime with `n` (so `i * stride mod n` is a permutation).
fn coprime_stride(n: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut stride = 7919; // a prime: usually coprime already
    while n > 1 && gcd(stride, n) != 1 {
        stride += 2;
    }
    stride
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_visit_everything_once() {
        for n in [1u64, 2, 100, 7919, 10_000] {
            let s = coprime_stride(n);
            let mut seen: Vec<u64> = (0..n).map(|i| (i * s) % n).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len() as u64, n);
        }
    }
}
