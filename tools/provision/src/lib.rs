//! The mesh's provisioning identity, and the NATS server configuration that gives every
//! identity its permissions.
//!
//! - [`provision`]: connected as the `provision` user (the only one allowed to create,
//!   change or delete streams and buckets), creates or updates every stream and
//!   key-value bucket the mesh uses, idempotently (the `DLQ` stream with the limits of
//!   [`WardLimits`]). Services then run with `PROVISION=off`.
//! - [`check`]: every stream and bucket exists (the compose health check).
//! - [`nats_config`]: the nats-server `authorization { users = [...] }` block built from
//!   [`contracts::permissions`], with bcrypt-hashed passwords; `compose/nats/auth.conf`
//!   is its output for the default development passwords, and a test keeps the two
//!   equal.

use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream;
use contracts::permissions::{self, Identity};
use contracts::subjects::{self, buckets};
use sha2::{Digest, Sha256};

/// Every key-value bucket the mesh uses, with its entries' maximum age (zero: kept
/// until deleted).
pub const BUCKETS: [(&str, Duration); 4] = [
    (buckets::IDEMPOTENCY, Duration::from_secs(24 * 3600)),
    (buckets::SSE_TICKETS, Duration::from_secs(60)),
    (
        buckets::CONSUMER_FAILURES,
        Duration::from_secs(7 * 24 * 3600),
    ),
    (buckets::ROUTES, Duration::ZERO),
];

/// bcrypt work factor of the generated password hashes (nats-server checks them once
/// per connection).
pub const BCRYPT_COST: u32 = 11;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Nats(#[from] runtime::nats::NatsError),
    #[error("cannot create or update the DLQ stream: {0}")]
    Dlq(#[source] jetstream::context::CreateStreamError),
    #[error("missing: {0}")]
    Missing(String),
    #[error("cannot hash the password of {user}: {source}")]
    Hash {
        user: String,
        #[source]
        source: bcrypt::BcryptError,
    },
}

/// The ward's (`DLQ` stream's) limits, read from the hospital's own setting names:
/// `HOSPITAL_DLQ_MAX_BYTES` (default 1 GiB) and `HOSPITAL_DLQ_MAX_AGE_SECS` (default
/// 30 days). In a deployment every service runs with `PROVISION=off`, so the
/// provisioner is the one that applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WardLimits {
    pub max_bytes: i64,
    pub max_age: Duration,
}

impl Default for WardLimits {
    fn default() -> Self {
        WardLimits {
            max_bytes: subjects::DLQ_MAX_BYTES,
            max_age: Duration::from_secs(subjects::DLQ_STREAM.max_age_secs),
        }
    }
}

impl WardLimits {
    pub fn from_env() -> Result<Self, runtime::ConfigError> {
        let defaults = WardLimits::default();
        let max_bytes: i64 = runtime::config::parse("HOSPITAL_DLQ_MAX_BYTES", defaults.max_bytes)?;
        if max_bytes == 0 || max_bytes < -1 {
            return Err(runtime::ConfigError::Invalid {
                name: "HOSPITAL_DLQ_MAX_BYTES".into(),
                value: max_bytes.to_string(),
                reason: "must be positive (or -1 for no limit)".into(),
            });
        }
        let max_age = runtime::config::secs(
            "HOSPITAL_DLQ_MAX_AGE_SECS",
            subjects::DLQ_STREAM.max_age_secs,
        )?;
        Ok(WardLimits { max_bytes, max_age })
    }

    /// The `DLQ` stream with these limits (discard-new, limits retention, the explicit
    /// duplicate window: `runtime::consumer::dlq_stream_config`).
    pub fn stream_config(&self) -> jetstream::stream::Config {
        let mut config = runtime::consumer::dlq_stream_config(self.max_bytes);
        config.max_age = self.max_age;
        config
    }
}

/// Creates or updates the domain streams, the `DLQ` stream (with `ward`'s limits) and
/// the buckets.
pub async fn provision(js: &jetstream::Context, ward: WardLimits) -> Result<(), ProvisionError> {
    runtime::nats::provision_streams(js, subjects::ALL_STREAMS).await?;
    js.create_or_update_stream(ward.stream_config())
        .await
        .map_err(ProvisionError::Dlq)?;
    tracing::info!(
        stream = subjects::DLQ_STREAM.name,
        max_bytes = ward.max_bytes,
        max_age_secs = ward.max_age.as_secs(),
        "provisioned"
    );
    for (bucket, ttl) in BUCKETS {
        runtime::nats::provision_bucket(js, bucket, ttl).await?;
        tracing::info!(bucket, max_age_secs = ttl.as_secs(), "bucket provisioned");
    }
    Ok(())
}

/// Every stream and bucket exists.
pub async fn check(js: &jetstream::Context) -> Result<(), ProvisionError> {
    let streams = subjects::ALL_STREAMS
        .iter()
        .chain([&subjects::DLQ_STREAM])
        .map(|s| s.name.to_owned())
        .chain(BUCKETS.iter().map(|(b, _)| format!("KV_{b}")));
    let mut missing = Vec::new();
    for name in streams {
        if js.get_stream(&name).await.is_err() {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProvisionError::Missing(missing.join(", ")))
    }
}

/// The environment variable holding `user`'s password for the generator:
/// `NATS_PASSWORD_<USER>`.
pub fn password_variable(user: &str) -> String {
    format!("NATS_PASSWORD_{}", user.to_ascii_uppercase())
}

/// The documented development password of `user`: `<user>-nats-dev`.
pub fn default_password(user: &str) -> String {
    format!("{user}-nats-dev")
}

/// `user`'s password from `NATS_PASSWORD_<USER>`, or its development default.
pub fn password_from_env(user: &str) -> String {
    runtime::config::var(&password_variable(user)).unwrap_or_else(|| default_password(user))
}

/// A bcrypt hash whose salt is derived from the user and password, so the same inputs
/// always give the same file (the committed config can be compared with the
/// generator's output) while different passwords still get different salts.
pub fn hash_password(user: &str, password: &str) -> Result<String, ProvisionError> {
    let digest = Sha256::new()
        .chain_update(b"mesh-nats-password\0")
        .chain_update(user.as_bytes())
        .chain_update(b"\0")
        .chain_update(password.as_bytes())
        .finalize();
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&digest[..16]);
    bcrypt::hash_with_salt(password, BCRYPT_COST, salt)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
        .map_err(|source| ProvisionError::Hash {
            user: user.to_owned(),
            source,
        })
}

/// The nats-server `authorization` block for every identity, with the passwords
/// `password(user)` returns (hashed).
pub fn nats_config(password: impl Fn(&str) -> String) -> Result<String, ProvisionError> {
    let mut out = String::new();
    out.push_str(HEADER);
    out.push_str("authorization {\n    users = [\n");
    for identity in permissions::identities() {
        let hash = hash_password(identity.user, &password(identity.user))?;
        write_user(&mut out, &identity, &hash);
    }
    out.push_str("    ]\n}\n");
    Ok(out)
}

const HEADER: &str = "\
# GENERATED by `mesh-provision nats-config --out compose/nats/auth.conf`: do not edit.
# The source is shared/contracts/src/permissions.rs; a test fails when this file and the
# generator's output differ.
#
# One user per deployable, with its subject permissions (least privilege on the bus).
# Passwords are bcrypt hashes of NATS_PASSWORD_<USER> as set when generating, by default
# the development passwords `<user>-nats-dev` (compose/README.md). For a real
# deployment, generate this file with real passwords and give each service its own as
# NATS_PASSWORD.
";

/// One quoted subject per line, indented under its key.
fn quoted_list(items: &[String], indent: &str) -> String {
    let mut out = String::from("[\n");
    for item in items {
        let _ = writeln!(out, "{indent}    \"{item}\"");
    }
    out.push_str(indent);
    out.push(']');
    out
}

fn write_user(out: &mut String, identity: &Identity, hash: &str) {
    const IN: &str = "                    ";
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "        {{\n            user: \"{user}\"\n            password: \"{hash}\"\n            permissions: {{\n                publish: {{\n                    allow: {publish}\n                }}\n                subscribe: {{\n                    allow: {subscribe}\n                }}\n",
        user = identity.user,
        publish = quoted_list(&identity.publish, IN),
        subscribe = quoted_list(&identity.subscribe, IN),
    );
    if identity.allow_responses {
        out.push_str("                allow_responses: true\n");
    }
    out.push_str("            }\n        }\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_bcrypt_and_stable() {
        let a = hash_password("calendar", "calendar-nats-dev").expect("hash");
        assert!(a.starts_with("$2a$11$"), "{a}");
        assert_eq!(
            a,
            hash_password("calendar", "calendar-nats-dev").expect("hash")
        );
        assert!(bcrypt::verify("calendar-nats-dev", &a).expect("verify"));
        assert_ne!(a, hash_password("calendar", "other").expect("hash"));
    }

    #[test]
    fn the_committed_server_config_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../compose/nats/auth.conf");
        let committed = std::fs::read_to_string(path).expect("compose/nats/auth.conf exists");
        let generated = nats_config(default_password).expect("generate");
        assert!(
            committed == generated,
            "compose/nats/auth.conf differs from the generator's output: run \
             `cargo run -p provision -- nats-config --out compose/nats/auth.conf` \
             (with no NATS_PASSWORD_* set)"
        );
    }
}
