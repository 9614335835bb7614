//! `mesh-gateway`: the public HTTP API of the mesh (see the `gateway` library).

use anyhow::Context;
use gateway::{Application, Config};
use runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init(gateway::SERVICE);
    let config = Config::from_env().context("Failed to read the configuration")?;
    let app = Application::build(config)
        .await
        .context("Failed to start the gateway")?;
    app.run_until_stopped(shutdown::on_signal())
        .await
        .context("The gateway failed")
}
