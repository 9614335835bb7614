//! Project automation, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `run`: build the services and run the mesh locally (nats-server + services).
//! - `test`: install the test tools, make sure PostgreSQL answers, build, `cargo test`.
//! - `lint`: rustfmt check and clippy with warnings as errors.
//! - `tools`: only install the tools into `.tools` and print where they are.
//! - `compose-check`: validate `compose/` without a container engine (CI).
//! - `deny`: the dependency policy (`deny.toml`) with cargo-deny, built into `.tools`.
//!
//! Kept to std + anyhow + libc so it compiles in seconds.

mod compose;
mod deny;
mod run;
mod sys;
mod tools;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  run [--release] [--no-build] [--services auth,calendar,gateway]
        build the workspace binaries, start nats-server (JetStream, store in .mesh/nats,
        port $MESH_NATS_PORT or 14222) and the services (SQLite in .mesh/data, logs in
        .mesh/logs), wait until every /readyz answers, then run until Ctrl-C
  test [cargo test args]
        install nats-server, aiosmtpd and schemathesis into .tools, make sure PostgreSQL answers
        (TEST_DATABASE_URL), build the binaries, run `cargo test --workspace [args]`,
        then print the figures tests reported (MESH_TEST_REPORT, e.g. mail counts)
  lint  cargo fmt --check, then clippy on every target with -D warnings
  tools install nats-server, aiosmtpd and schemathesis into .tools and print their paths
  compose-check
        validate compose/ without a container engine: docker-compose config, hadolint,
        Dockerfile binaries vs the workspace, compose env vs what each service reads,
        nats.conf, promtool on the Prometheus config and alert rules, the Grafana
        dashboards (installs Debian's docker-compose and unpacks its prometheus package
        for promtool under CI=true, hadolint into .tools)
  deny  `cargo deny check bans licenses sources` against deny.toml, then `advisories`
        when the RustSec database can be fetched (skipped with a message otherwise);
        builds cargo-deny from crates.io into .tools/cargo the first time

environment: NATS_SERVER_BIN (use this nats-server), MESH_NATS_PORT, TEST_DATABASE_URL,
             PYTHON (default python3), CARGO_TARGET_DIR, CARGO_DENY_BIN
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match dispatch(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(args: &[String]) -> Result<i32> {
    let root = repo_root();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    let wants_help = rest
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help");
    match command.as_str() {
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        _ if wants_help => {
            print!("{USAGE}");
            Ok(0)
        }
        "run" => {
            run::run(&root, run::RunOptions::parse(rest)?)?;
            Ok(0)
        }
        "test" => test(&root, rest),
        "lint" => lint(&root),
        "compose-check" => {
            no_args("compose-check", rest)?;
            compose::check(&root)
        }
        "deny" => {
            no_args("deny", rest)?;
            deny::check(&root)
        }
        "tools" => {
            no_args("tools", rest)?;
            let env = tool_env(&root)?;
            for (key, value) in &env {
                println!("{key}={}", value.to_string_lossy());
            }
            Ok(0)
        }
        other => {
            eprintln!("xtask: unknown command {other:?}\n");
            eprint!("{USAGE}");
            Ok(2)
        }
    }
}

fn no_args(command: &str, rest: &[String]) -> Result<()> {
    if let Some(arg) = rest.first() {
        bail!("`{command}` takes no arguments (got {arg:?})");
    }
    Ok(())
}

/// The repository root: xtask lives in `<root>/xtask`.
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `$CARGO` (set when run through cargo) or plain `cargo`.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<root>/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("Failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Install the tools and return the environment the tests need to find them.
fn tool_env(root: &Path) -> Result<Vec<(&'static str, OsString)>> {
    let nats = tools::ensure_nats_server(root)?;
    let nats = nats.canonicalize().unwrap_or(nats);
    println!(
        "xtask: {} ({})",
        tools::nats_server_version(&nats)?,
        nats.display()
    );
    let smtpd = tools::ensure_aiosmtpd(root)?;
    println!("xtask: aiosmtpd importable from {}", smtpd.display());
    let schemathesis = tools::ensure_schemathesis(root)?;
    println!(
        "xtask: schemathesis {} in {}",
        tools::SCHEMATHESIS_VERSION,
        schemathesis.display()
    );
    let tools_dir = tools::tools_dir(root);
    Ok(vec![
        ("NATS_SERVER_BIN", nats.into_os_string()),
        ("MESH_TOOLS_DIR", tools_dir.into_os_string()),
        ("PYTHONPATH", tools::python_path(root)?),
    ])
}

fn test(root: &Path, extra: &[String]) -> Result<i32> {
    let mut env = tool_env(root)?;
    let db_url = tools::ensure_postgres()?;
    println!("xtask: TEST_DATABASE_URL={db_url}");
    tools::ensure_browser(root)?;
    env.push(("TEST_DATABASE_URL", db_url.into()));

    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "--workspace", "--bins"])
        .envs(env.iter().cloned());
    run_checked(&mut build)?;

    let mut test = cargo();
    test.current_dir(root).arg("test");
    let selects_packages = extra
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a.starts_with("--package") || a == "--workspace");
    if !selects_packages {
        test.arg("--workspace");
    }
    // Figures the tests measured (integration::report), printed after the run: cargo's
    // test runner hides a passing test's output, and these belong in the CI log.
    let report = target_dir(root).join("test-report.txt");
    if let Err(e) = std::fs::remove_file(&report)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        bail!("cannot remove {}: {e}", report.display());
    }
    test.args(extra).envs(env).env("MESH_TEST_REPORT", &report);
    let status = test.status().context("Failed to run cargo test")?;
    if let Ok(lines) = std::fs::read_to_string(&report)
        && !lines.trim().is_empty()
    {
        println!(
            "\n== test report ({})\n{}",
            report.display(),
            lines.trim_end()
        );
    }
    Ok(status.code().unwrap_or(1))
}

fn lint(root: &Path) -> Result<i32> {
    let steps: [&[&str]; 2] = [
        &["fmt", "--all", "--", "--check"],
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    ];
    for step in steps {
        let status = cargo()
            .current_dir(root)
            .args(step)
            .status()
            .context("Failed to run cargo")?;
        if !status.success() {
            eprintln!("xtask: `cargo {}` failed", step.join(" "));
            return Ok(status.code().unwrap_or(1));
        }
    }
    Ok(0)
}
