//! `mesh-calendar`: the calendar service process.

use anyhow::Context;
use calendar::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = runtime::telemetry::init("calendar");
    let config = Config::from_env().context("Failed to read the configuration")?;
    let app = Application::build(config)
        .await
        .context("Failed to start the calendar service")?;
    app.run_until_stopped(runtime::shutdown::on_signal())
        .await
        .context("The calendar service failed")
}
