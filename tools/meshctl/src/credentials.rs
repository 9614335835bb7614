//! The credentials file: the gateway logged in to and its tokens, readable by the owner
//! only. Written whole to a temporary file and renamed, so a crash never leaves half a
//! file and a refresh never leaves a world-readable one.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The gateway that issued the tokens; they are sent nowhere else.
    pub url: String,
    pub access_token: String,
    pub refresh_token: String,
    /// When the access token expires.
    pub expires_at: Timestamp,
}

/// `$XDG_CONFIG_HOME/meshctl/credentials.json`, else `~/.config/meshctl/credentials.json`.
pub fn default_path() -> Result<PathBuf> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        // The XDG spec says relative values are to be ignored.
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            Error::Usage(
                "cannot find a config directory (neither XDG_CONFIG_HOME nor HOME is set): \
                 use --config or MESHCTL_CONFIG"
                    .to_owned(),
            )
        })?;
    Ok(config_home.join("meshctl").join("credentials.json"))
}

/// The stored credentials; `Ok(None)` when there is no file.
pub fn load(path: &Path) -> Result<Option<Credentials>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Other(format!(
                "cannot read credentials file {}: {e}",
                path.display()
            )));
        }
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::NotLoggedIn(format!(
            "credentials file {} is unreadable ({e}): run `meshctl login`",
            path.display()
        ))
    })
}

pub fn save(path: &Path, credentials: &Credentials) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Other(format!(
            "cannot {what} credentials file {}: {e}",
            path.display()
        ))
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(|e| fail("create the folder of the", e))?;
    let json = serde_json::to_vec_pretty(credentials)
        .map_err(|e| Error::Other(format!("cannot encode credentials: {e}")))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "credentials.json".to_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| {
        // A stale copy (same pid, earlier crash) might have other permissions.
        let _ = std::fs::remove_file(&tmp);
        let mut file = open_private(&tmp)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: do not leave a stray copy of the tokens behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", e));
    }
    Ok(())
}

/// Removes the file; `Ok(false)` when there was none.
pub fn delete(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Other(format!(
            "cannot delete credentials file {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}
