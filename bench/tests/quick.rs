//! CI smoke test: `bench all --quick` on the test profile's binaries must run every
//! scenario and measure something in each. It checks the harness, not the figures:
//! targets may be missed, but no scenario may fail or come back empty.
//!
//! Needs what the integration tests need: a nats-server (`NATS_SERVER_BIN`, or
//! `.tools/bin/nats-server` from `cargo xtask tools`). Missing mesh binaries are built.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

#[test]
fn quick_bench_runs_every_scenario() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("quick.json");
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["all", "--quick", "--replicas", "2", "--out"])
        .arg(&out)
        .output()
        .context("Failed to run the bench")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    ensure!(
        run.status.success(),
        "bench --quick failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    println!("{stdout}");
    ensure!(
        stdout.contains("| scenario | metric | value | baseline | ratio | target | met? |"),
        "no table on stdout:\n{stdout}"
    );

    let results: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let rows = results["rows"].as_array().context("rows")?;
    let scenarios: BTreeSet<&str> = rows.iter().filter_map(|r| r["scenario"].as_str()).collect();
    let mut expected = vec!["baseline", "write", "read", "e2e", "connections"];
    // The hospital is measured when its binary exists, else skipped with a note.
    let hospital_skipped = results["notes"].as_array().is_some_and(|n| {
        n.iter().any(|n| {
            n.as_str()
                .is_some_and(|n| n.starts_with("hospital skipped"))
        })
    });
    if !hospital_skipped {
        expected.push("hospital");
    }
    for scenario in expected {
        ensure!(
            scenarios.contains(scenario),
            "no {scenario} rows in {scenarios:?}"
        );
    }
    for row in rows {
        let value = row["value"].as_f64().context("value")?;
        ensure!(value.is_finite() && value >= 0.0, "bad figure: {row}");
    }
    ensure!(
        rows.iter().any(|r| r["metric"]
            .as_str()
            .is_some_and(|m| m.contains("2 replicas"))),
        "the 2-replica write path is missing"
    );
    Ok(())
}
