//! One integration-test binary: every journey runs against the real service binaries, a
//! real nats-server started per test on a free port with its own store, and fresh
//! databases, on SQLite and on PostgreSQL (`TEST_BACKENDS=sqlite` narrows it).

mod api_fuzz;
mod cache;
mod compose_cluster;
mod evolution;
mod foundation;
mod hospital;
mod observability;
mod permissions;
mod resilience;
mod rpc_input;
mod security;
mod subscribers;

use std::future::Future;

use anyhow::{Context, Result};
use integration::{Backend, backends};

/// Taken by the tests that load the machine for minutes (the API fuzz run) and those
/// whose bounds assume a machine not loaded by another such test (the resilience runs
/// under load): side by side on two cores, the fuzz run pushed the rolling restart's
/// SMTP sink past its duplicate bound.
pub static MACHINE_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `body` once per database backend, naming the backend in a failure.
pub async fn on_each_backend<F, Fut>(body: F) -> Result<()>
where
    F: Fn(Backend) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for backend in backends() {
        body(backend)
            .await
            .with_context(|| format!("on {}", backend.name()))?;
    }
    Ok(())
}
