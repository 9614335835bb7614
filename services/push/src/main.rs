//! `mesh-push`: the push subscriber process.

use anyhow::Context;
use push::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = runtime::telemetry::init("push");
    let config = Config::from_env().context("Failed to read the configuration")?;
    let app = Application::build(config)
        .await
        .context("Failed to start the push service")?;
    app.run_until_stopped(runtime::shutdown::on_signal())
        .await
        .context("The push service failed")
}
