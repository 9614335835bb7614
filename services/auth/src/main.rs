use anyhow::Context;
use auth::{Application, Command, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match auth::parse_args(&args) {
        Ok(command) => command,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let _telemetry = runtime::telemetry::init("auth");
    match command {
        Command::Promote(email) => {
            auth::promote(&auth::config::database_url(), &email)
                .await
                .with_context(|| format!("Failed to promote {email}"))?;
            println!("{email} is now an admin");
            Ok(())
        }
        Command::Serve => {
            let config = Config::from_env().context("Failed to read configuration")?;
            let app = Application::build(config)
                .await
                .context("Failed to start")?;
            app.run_until_stopped(runtime::shutdown::on_signal())
                .await
                .context("Failed while running")
        }
    }
}
