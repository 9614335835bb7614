//! The scenarios and what they share: the settings, the load generator's client, the
//! token signer, the report, and the baselines (each measured at most once per run).

pub mod baselines;
pub mod connections;
pub mod e2e;
pub mod hospital;
pub mod write_read;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use http::HeaderValue;
use serde_json::Value;
use uuid::Uuid;

use crate::cli::{Scenario, Settings};
use crate::http::{Call, HttpClient, bearer};
use crate::load::Outcome;
use crate::report::Report;
use crate::tokens::Signer;

/// State of one run.
pub struct Ctx {
    pub settings: Settings,
    pub http: HttpClient,
    pub signer: Arc<Signer>,
    pub report: Report,
    /// The bench binary (baseline servers and SSE client processes are copies of it).
    pub exe: PathBuf,
    pub baselines: baselines::Baselines,
}

impl Ctx {
    pub fn new(settings: Settings) -> Result<Self> {
        let exe = std::env::current_exe().context("Failed to find the bench binary")?;
        Ok(Ctx {
            settings,
            http: HttpClient::new(),
            signer: Arc::new(Signer::generate()?),
            report: Report::default(),
            exe,
            baselines: baselines::Baselines::default(),
        })
    }

    /// `n` fresh users with minted tokens: (id, `Bearer …`).
    pub fn mint_users(&self, n: usize) -> Result<Vec<(Uuid, HeaderValue)>> {
        (0..n)
            .map(|_| {
                let id = Uuid::new_v4();
                Ok((id, bearer(&self.signer.user_token(id)?)?))
            })
            .collect()
    }
}

/// Runs `scenario` (or all), recording into `ctx.report`. A scenario that fails is
/// noted and the others still run; the error count is returned.
pub async fn run(ctx: &mut Ctx, scenario: Scenario) -> usize {
    let mut failures = 0;
    let mut step = |ctx: &mut Ctx, name: &str, result: Result<()>| {
        if let Err(err) = result {
            failures += 1;
            ctx.report.note(format!("{name} FAILED: {err:#}"));
        }
    };
    let all = scenario == Scenario::All;
    if ctx.settings.quick && ctx.settings.bin_dir == crate::mesh::default_bin_dir(true) {
        // The test profile's binaries: the integration harness builds missing ones.
        for service in ["auth", "calendar", "gateway", "email", "push"] {
            if let Err(err) = integration::service_binary(service) {
                step(ctx, "building the mesh", Err(err));
                return failures;
            }
        }
    }
    if all || scenario == Scenario::Baselines {
        let r = baselines::all(ctx).await;
        step(ctx, "baselines", r);
    }
    if all || matches!(scenario, Scenario::Write | Scenario::Read) {
        let r = write_read::run(
            ctx,
            all || scenario == Scenario::Write,
            all || scenario == Scenario::Read,
        )
        .await;
        step(ctx, "write/read", r);
    }
    if all || scenario == Scenario::E2e {
        let r = e2e::run(ctx).await;
        step(ctx, "e2e", r);
    }
    if all || scenario == Scenario::Connections {
        let r = connections::run(ctx).await;
        step(ctx, "connections", r);
    }
    if all || scenario == Scenario::Hospital {
        let r = hospital::run(ctx).await;
        step(ctx, "hospital", r);
    }
    failures
}

/// Sends `calls` with at most `concurrency` in flight; every answer must be 2xx.
/// Returns the JSON bodies in order. For set-up, not measurement.
pub async fn bulk(
    http: &HttpClient,
    base: &str,
    calls: Vec<Call>,
    concurrency: usize,
) -> Result<Vec<Value>> {
    let results: Vec<Result<Value>> = futures::stream::iter(calls)
        .map(|call| {
            let http = http.clone();
            let base = base.to_owned();
            async move { http.json_ok(&base, &call).await }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// The `id` field of a JSON body as a UUID.
pub fn id_of(body: &Value) -> Result<Uuid> {
    body.get("id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no id in {body}"))
}

/// A create-event body: one event per hour from 2030 on, in UTC, with room for all.
pub fn event_body(title: &str, index: usize) -> Value {
    let start = jiff::Timestamp::from_second(1_893_456_000 + 3600 * index as i64)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let end = start + jiff::SignedDuration::from_hours(2);
    let fmt = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string();
    serde_json::json!({
        "title": title,
        "description": "created by the bench",
        "starts_at": fmt(start),
        "ends_at": fmt(end),
        "time_zone": "UTC",
        "location": "bench",
        "capacity": 100_000,
    })
}

/// Fails unless `outcome` has at least one success.
pub fn require(outcome: &Outcome, what: &str) -> Result<()> {
    outcome.require_samples(what)
}

/// Fails with `what` when `n` is zero.
pub fn require_nonzero(n: u64, what: &str) -> Result<()> {
    if n == 0 {
        bail!("{what}: zero samples");
    }
    Ok(())
}

/// SplitMix64: a cheap, well-mixed hash of a sequence number.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `host:port` of an `http://host:port` URL.
pub fn authority(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bodies_use_utc_offsets() {
        let body = event_body("t", 1);
        assert_eq!(body["starts_at"], "2030-01-01T01:00:00+00:00");
        assert_eq!(body["ends_at"], "2030-01-01T03:00:00+00:00");
    }

    #[test]
    fn helpers() {
        assert_ne!(mix(1), mix(2));
        assert_eq!(authority("http://127.0.0.1:80"), "127.0.0.1:80");
    }
}
