//! The mesh's performance harness: it starts its own nats-server, the mesh binaries
//! (release by default), an SMTP sink that timestamps arrivals and its own load
//! generator, measures baselines in the same run (plain axum, axum + one NATS
//! request/reply, JetStream publish and pull, plain axum SSE memory), then the mesh's
//! write, read, end-to-end, connection and dead-letter scenarios, and prints one
//! markdown table of figures, baselines, ratios and the targets, plus JSON.
//!
//! - [`cli`]: the command line and every size and duration per mode (`--quick`).
//! - [`mesh`]: the mesh under test, built from the integration harness's processes.
//! - [`load`] / [`http`]: closed and open loops over a pooled hyper client, HDR histograms.
//! - [`smtp`]: the SMTP sink; [`sse`]: a raw SSE client; [`clients`]: SSE clients in
//!   child processes (each process has its own open-file budget).
//! - [`serve`]: the baseline servers (the bench binary with `BENCH_SERVE=<role>`).
//! - [`tokens`]: access tokens minted with the key auth is started with.
//! - [`scenarios`]: what is measured; [`report`]: the table and the JSON.

pub mod cli;
pub mod clients;
pub mod http;
pub mod load;
pub mod mesh;
pub mod report;
pub mod scenarios;
pub mod serve;
pub mod smtp;
pub mod sse;
pub mod tokens;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::{Cli, Scenario, Settings};

/// Where every run writes its JSON: `bench/results/latest.json`, or `quick.json` for
/// `--quick` (so a CI smoke run never overwrites the figures of a full run).
pub fn results_json(quick: bool) -> PathBuf {
    let name = if quick { "quick.json" } else { "latest.json" };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("results")
        .join(name)
}

/// Runs the bench as the command line says; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    if cli.scenario == Scenario::SseClients {
        let addr = cli.addr.context("sse-clients needs --addr")?;
        let tokens = cli.tokens.context("sse-clients needs --tokens")?;
        clients::run_child(addr, cli.path, tokens, cli.connect_concurrency).await?;
        return Ok(0);
    }
    let settings = Settings::from_cli(&cli);
    eprintln!(
        "bench: {} ({}), services from {}, {} backend",
        cli.scenario.name(),
        if settings.quick { "quick" } else { "full" },
        settings.bin_dir.display(),
        settings.backend.name()
    );
    let mut ctx = scenarios::Ctx::new(settings.clone())?;
    fill_meta(&mut ctx, &cli);
    let started = std::time::Instant::now();
    let failures = scenarios::run(&mut ctx, cli.scenario).await;
    ctx.report.meta.insert(
        "duration_secs".into(),
        started.elapsed().as_secs_f64().into(),
    );
    let table = ctx.report.markdown();
    println!("{}\n", machine_line(&ctx.report));
    println!("{table}");
    let mut paths = vec![results_json(settings.quick)];
    paths.extend(settings.out.clone());
    for path in paths {
        ctx.report.write_json(&path)?;
        eprintln!("bench: results written to {}", path.display());
    }
    if ctx.report.rows.is_empty() && failures == 0 {
        eprintln!("bench: nothing was measured");
        return Ok(1);
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

/// One line naming the box and the run, for above the table.
fn machine_line(report: &report::Report) -> String {
    let m = &report.meta;
    let get = |k: &str| {
        m.get(k)
            .map(|v| v.to_string().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    format!(
        "bench {} ({}), {} backend, {} calendar/gateway replica(s) · {} × {} · {} MiB RAM · Linux {} · {}",
        get("scenario"),
        get("mode"),
        get("backend"),
        get("replicas"),
        get("cpus"),
        get("cpu"),
        get("memory_mib"),
        get("kernel"),
        get("started_at"),
    )
}

/// The box and the settings the figures were measured with.
fn fill_meta(ctx: &mut scenarios::Ctx, cli: &Cli) {
    let s = &ctx.settings;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let meta = serde_json::json!({
        "scenario": cli.scenario.name(),
        "mode": if s.quick { "quick" } else { "full" },
        "started_at": jiff::Timestamp::now().to_string(),
        "backend": s.backend.name(),
        "replicas": s.replicas,
        "bin_dir": s.bin_dir.display().to_string(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": kernel,
        "memory_mib": mem_kib / 1024,
        "concurrency": s.closed.concurrency,
        "measure_secs": s.closed.measure.as_secs_f64(),
        "e2e_rate": s.e2e_rate,
        "sse_clients": s.sse_clients,
        "parked": s.parked,
    });
    if let serde_json::Value::Object(map) = meta {
        ctx.report.meta = map;
    }
}
