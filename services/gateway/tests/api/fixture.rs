//! The real services' route declarations (each service's `handlers::routes()`), and the
//! public API they must add up to.

use contracts::subjects;
use gateway::catalog::{Catalog, KnownService, RoutePrefixes};
use gateway::routes::{AuthRule, Route};
use runtime::routes::Route as Declared;

/// Method, path and auth rule of every route the services declare: the public API.
pub const EXPECTED: &[(&str, &str, &str)] = &[
    ("POST", "/v1/auth/register", "public"),
    ("POST", "/v1/auth/login", "public"),
    ("POST", "/v1/auth/refresh", "public"),
    ("POST", "/v1/auth/logout", "public"),
    ("GET", "/v1/auth/verify-email", "public"),
    ("POST", "/v1/auth/password-reset", "public"),
    ("POST", "/v1/auth/password-reset/confirm", "public"),
    ("POST", "/v1/unsubscribe", "public"),
    ("GET", "/v1/me", "user"),
    ("GET", "/v1/me/preferences", "user"),
    ("PUT", "/v1/me/preferences", "user"),
    ("GET", "/v1/notifications", "user"),
    ("POST", "/v1/notifications/{id}/read", "user"),
    ("POST", "/v1/events", "user"),
    ("GET", "/v1/events", "user"),
    ("GET", "/v1/events/{id}", "user"),
    ("PATCH", "/v1/events/{id}", "user"),
    ("DELETE", "/v1/events/{id}", "user"),
    ("PUT", "/v1/events/{id}/rsvp", "user"),
    ("GET", "/v1/events/{id}/rsvps", "user"),
    ("GET", "/v1/admin/dlq/messages", "admin"),
    ("GET", "/v1/admin/dlq/messages/{id}", "admin"),
    ("GET", "/v1/admin/dlq/groups", "admin"),
    ("POST", "/v1/admin/dlq/replay", "admin"),
    ("POST", "/v1/admin/dlq/discard", "admin"),
    ("POST", "/v1/admin/dlq/purge", "admin"),
    ("POST", "/v1/admin/dlq/messages/{id}/edit-replay", "admin"),
    ("GET", "/v1/admin/dlq/jobs", "admin"),
    ("GET", "/v1/admin/dlq/jobs/{id}", "admin"),
    ("GET", "/v1/admin/dlq/stats", "admin"),
    ("GET", "/v1/admin/dlq/where", "admin"),
    ("GET", "/v1/admin/audit", "admin"),
    ("POST", "/v1/admin/consumers/{durable}/pause", "admin"),
    ("POST", "/v1/admin/consumers/{durable}/resume", "admin"),
    ("GET", "/v1/admin/services", "admin"),
];

/// Each real service's name and its declarations.
pub fn declarations() -> Vec<(&'static str, Vec<(&'static str, Declared)>)> {
    vec![
        (subjects::auth::SERVICE, auth_service::handlers::routes()),
        (
            subjects::calendar::SERVICE,
            calendar_service::handlers::routes(),
        ),
        (subjects::push::SERVICE, push_service::handlers::routes()),
        (
            subjects::hospital::SERVICE,
            hospital_service::handlers::routes(),
        ),
    ]
}

/// The records discovery would keep for them.
pub fn services() -> Vec<KnownService> {
    declarations()
        .into_iter()
        .map(|(name, routes)| KnownService::from_declarations(name, "0.1.0", &routes))
        .collect()
}

/// The route table they make.
pub fn routes() -> Vec<Route> {
    let mut catalog = Catalog::new(RoutePrefixes::default());
    for s in services() {
        catalog.remember(s);
    }
    let built = catalog.build();
    assert!(built.problems.is_empty(), "{:?}", built.problems);
    built.table.routes().cloned().collect()
}

/// The message hospital's admin API.
pub fn admin_routes() -> Vec<Route> {
    routes()
        .into_iter()
        .filter(|r| r.auth == AuthRule::Admin)
        .collect()
}
