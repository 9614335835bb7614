//! `mesh-provision`: create or update every stream and bucket, then exit (default);
//! `mesh-provision check`: exit 0 when they all exist; `mesh-provision nats-config
//! [--out FILE]`: print or write the NATS server's users and permissions.

use std::time::Duration;

use anyhow::{Context, bail};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["nats-config"] => {
            print!("{}", provision::nats_config(provision::password_from_env)?);
            Ok(())
        }
        ["nats-config", "--out", path] => {
            let text = provision::nats_config(provision::password_from_env)?;
            std::fs::write(path, text).with_context(|| format!("Failed to write {path}"))?;
            Ok(())
        }
        [] | ["run"] => {
            let ward = provision::WardLimits::from_env()?;
            with_jetstream(|js| async move { Ok(provision::provision(&js, ward).await?) }).await
        }
        ["check"] => with_jetstream(|js| async move { Ok(provision::check(&js).await?) }).await,
        _ => bail!("usage: mesh-provision [run | check | nats-config [--out FILE]]"),
    }
}

/// Connects as `NATS_USER` and runs `work`, giving up after `PROVISION_TIMEOUT_SECS`
/// (default 120): a one-shot job must fail visibly rather than wait for NATS forever.
async fn with_jetstream<F, Fut>(work: F) -> anyhow::Result<()>
where
    F: FnOnce(async_nats::jetstream::Context) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let _telemetry = runtime::telemetry::init("provision");
    let config = runtime::config::CommonConfig::from_env("127.0.0.1:0")?;
    let timeout = runtime::config::secs("PROVISION_TIMEOUT_SECS", 120)?;
    let run = async {
        let client = runtime::nats::connect(&config, "provision").await?;
        work(async_nats::jetstream::new(client)).await
    };
    match tokio::time::timeout(timeout.max(Duration::from_secs(1)), run).await {
        Ok(result) => result,
        Err(_) => bail!(
            "gave up after {timeout:?} (is NATS at {} reachable?)",
            config.nats_url
        ),
    }
}
