//! One integration-test binary: every journey runs against the real service binaries, a
//! real nats-server started per test on a free port with its own store, and fresh
//! databases, on SQLite and on PostgreSQL (`TEST_BACKENDS=sqlite` narrows it).

mod api_fuzz;
mod compose_cluster;
mod evolution;
mod foundation;
mod hospital;
mod permissions;
mod resilience;
mod rpc_input;
mod subscribers;

use std::future::Future;

use anyhow::{Context, Result};
use integration::{Backend, backends};

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
