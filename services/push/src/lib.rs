//! The push subscriber (placeholder). Its durable JetStream consumers on the AUTH and
//! CALENDAR streams arrive with the subscribers issue; until then this crate only
//! reserves its place in the workspace, and `mesh-push` is not started by the runner.

/// The service's name on the bus.
pub const SERVICE: &str = "push";
