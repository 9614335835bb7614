//! The small runtime every mesh service shares: configuration from the environment,
//! telemetry, NATS wiring (connect, provisioning, request/reply endpoints and the public
//! routes they declare, service discovery, trace context), the database handle on both
//! backends, the transactional outbox and its relay, health endpoints and graceful
//! shutdown.
//!
//! It holds plumbing only; no bounded context's rules live here.

pub mod config;
pub mod consumer;
pub mod db;
pub mod discovery;
pub mod health;
pub mod nats;
pub mod outbox;
pub mod routes;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use config::ConfigError;
