//! `cargo xtask deny`: the dependency policy in `deny.toml`, checked with cargo-deny.
//!
//! cargo-deny is built from crates.io (`cargo install --locked`, pinned version) into
//! `.tools/cargo/bin` the first time (a few minutes on two cores; later runs reuse it).
//! Not `.tools/bin`: pip owns that folder and refuses to add to it once it exists.
//! `bans`, `licenses` and `sources` need nothing from the network. `advisories` needs the
//! RustSec database, a git repository fetched from GitHub, which some machines (this
//! project's CI among them) cannot reach: it runs when the fetch works and is skipped
//! with a message when it does not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo, tools};

/// The cargo-deny release the policy is written for.
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// Where `cargo install` puts it: `<repo>/.tools/cargo` (binary in `bin/`).
fn install_root(root: &Path) -> PathBuf {
    tools::tools_dir(root).join("cargo")
}

/// The `cargo-deny x.y.z` version of a binary, if it runs.
fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// cargo-deny at [`CARGO_DENY_VERSION`]: `$CARGO_DENY_BIN`, else `.tools/cargo/bin`, else
/// one on `PATH` of that version, else built from crates.io into `.tools/cargo`.
pub fn ensure_cargo_deny(root: &Path) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CARGO_DENY_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let local = install_root(root).join("bin").join("cargo-deny");
    if version_of(&local).as_deref() == Some(CARGO_DENY_VERSION) {
        return Ok(local);
    }
    let on_path = PathBuf::from("cargo-deny");
    if version_of(&on_path).as_deref() == Some(CARGO_DENY_VERSION) {
        return Ok(on_path);
    }
    eprintln!(
        "xtask: building cargo-deny {CARGO_DENY_VERSION} from crates.io into {} \
         (a few minutes, once)",
        install_root(root).display()
    );
    let status = cargo()
        .args(["install", "--locked", "--quiet"])
        .arg(format!("cargo-deny@{CARGO_DENY_VERSION}"))
        .arg("--root")
        .arg(install_root(root))
        .status()
        .context("Failed to run cargo install")?;
    if !status.success() {
        bail!("`cargo install cargo-deny@{CARGO_DENY_VERSION}` failed: {status}");
    }
    if version_of(&local).as_deref() != Some(CARGO_DENY_VERSION) {
        bail!("cargo install did not produce {}", local.display());
    }
    Ok(local)
}

fn deny_command(bin: &Path, root: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(root)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"));
    cmd
}

/// Runs the checks; the exit code of the first that fails, else 0.
pub fn check(root: &Path) -> Result<i32> {
    let bin = ensure_cargo_deny(root)?;
    println!(
        "xtask: {} ({})",
        version_of(&bin).unwrap_or_default(),
        bin.display()
    );
    // Without the inclusion graphs: the duplicate-version warnings would print the
    // whole dependency tree each.
    let status = deny_command(&bin, root)
        .args([
            "check",
            "--hide-inclusion-graph",
            "bans",
            "licenses",
            "sources",
        ])
        .status()
        .context("Failed to run cargo-deny")?;
    if !status.success() {
        eprintln!("xtask: `cargo deny check bans licenses sources` failed");
        return Ok(status.code().unwrap_or(1));
    }

    // The advisory database is a git clone from GitHub: try to fetch it, and check
    // against it only when that worked.
    let fetched = deny_command(&bin, root)
        .args(["fetch", "db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("Failed to run cargo-deny")?;
    if !fetched.success() {
        println!(
            "xtask: the RustSec advisory database cannot be fetched from this machine; \
             skipping `cargo deny check advisories` (run it where GitHub is reachable)"
        );
        return Ok(0);
    }
    let status = deny_command(&bin, root)
        .args(["check", "--disable-fetch", "advisories"])
        .status()
        .context("Failed to run cargo-deny")?;
    if !status.success() {
        eprintln!("xtask: `cargo deny check advisories` failed");
    }
    Ok(status.code().unwrap_or(1))
}
