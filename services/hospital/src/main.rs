//! `mesh-hospital`: the message hospital process.

use anyhow::Context;
use hospital::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = runtime::telemetry::init("hospital");
    let config = Config::from_env().context("Failed to read the configuration")?;
    let app = Application::build(config)
        .await
        .context("Failed to start the hospital")?;
    app.run_until_stopped(runtime::shutdown::on_signal())
        .await
        .context("The hospital failed")
}
