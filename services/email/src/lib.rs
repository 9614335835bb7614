//! The email subscriber (placeholder). Its durable JetStream consumers on the AUTH and
//! CALENDAR streams arrive with the subscribers issue; until then this crate only
//! reserves its place in the workspace, and `mesh-email` is not started by the runner.

/// The service's name on the bus.
pub const SERVICE: &str = "email";
