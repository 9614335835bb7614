//! The gateway against a real nats-server, with stub responders in place of the
//! services (the full journey with the real services lives in tests/integration).

mod admin;
mod auth;
mod console;
mod discovery;
mod fixture;
mod forwarding;
mod helpers;
mod idempotency;
mod limits;
mod platform;
mod stream;
