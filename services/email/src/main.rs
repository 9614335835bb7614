//! `mesh-email`: the email subscriber process.

use anyhow::Context;
use email::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = runtime::telemetry::init("email");
    let config = Config::from_env().context("Failed to read the configuration")?;
    let app = Application::build(config)
        .await
        .context("Failed to start the email service")?;
    app.run_until_stopped(runtime::shutdown::on_signal())
        .await
        .context("The email service failed")
}
