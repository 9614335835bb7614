//! Test fixture: the route table the real services' declarations make (each service's
//! `handlers::routes()`), built the way discovery builds it.

use contracts::subjects;

use crate::catalog::{Built, Catalog, KnownService, RoutePrefixes};
use crate::routes::{AuthRule, Route, RouteTable};

/// The record of every real service, as discovery would keep it.
pub fn services() -> Vec<KnownService> {
    vec![
        KnownService::from_declarations(
            subjects::auth::SERVICE,
            "0.1.0",
            &auth_service::handlers::routes(),
        ),
        KnownService::from_declarations(
            subjects::calendar::SERVICE,
            "0.1.0",
            &calendar_service::handlers::routes(),
        ),
        KnownService::from_declarations(
            subjects::push::SERVICE,
            "0.1.0",
            &push_service::handlers::routes(),
        ),
        KnownService::from_declarations(
            subjects::hospital::SERVICE,
            "0.1.0",
            &hospital_service::handlers::routes(),
        ),
    ]
}

/// What the catalog builds from them with the default prefixes.
pub fn built() -> Built {
    let mut catalog = Catalog::new(RoutePrefixes::default());
    for s in services() {
        catalog.remember(s);
    }
    catalog.build()
}

pub fn table() -> RouteTable {
    built().table
}

pub fn routes() -> Vec<Route> {
    table().routes().cloned().collect()
}

pub fn admin_routes() -> Vec<Route> {
    routes()
        .into_iter()
        .filter(|r| r.auth == AuthRule::Admin)
        .collect()
}
