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
        Command::RotateKey => {
            let pem = runtime::config::var("AUTH_SIGNING_KEY_PEM").is_some();
            let rotation = auth::rotate_key(&auth::config::database_url(), pem)
                .await
                .context("Failed to rotate the signing key")?;
            println!("signing key {} is now active", rotation.kid);
            if let Some(previous) = rotation.previous {
                println!(
                    "the previous key {previous} stays in the JWKS until the tokens it signed \
                     have expired (AUTH_ACCESS_TOKEN_TTL_SECS + AUTH_SIGNING_KEY_GRACE_SECS)"
                );
            }
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
