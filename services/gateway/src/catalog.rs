//! What the gateway knows about the services' public routes, and the route table it
//! builds from that. Pure logic, no I/O: [`crate::discovery`] feeds it what `$SRV.INFO`
//! and the `gateway_routes` bucket say.
//!
//! - A service's routes are the union of what its running instances declare; when two
//!   instances declare the same route, the newer version's declaration wins (a rolling
//!   deploy runs old and new side by side).
//! - A service no instance of which answers keeps its last-known routes: the gateway
//!   still forwards them, and NATS says at once that nobody answers (503, not 404).
//! - A route its running instances stopped declaring is dropped after
//!   [`DROP_AFTER_ROUNDS`] discovery rounds in a row, so one late reply does not make a
//!   route flap.
//! - A declaration outside its service's path prefixes ([`RoutePrefixes`]), on a path
//!   the gateway serves itself, with an invalid template, or with the method and shape of
//!   another service's route is rejected; the route already in the table keeps it.
//!   Rejections are logged (warn) once per change, not every round.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::service::Info;
use runtime::routes::{self as declared, Schemas};
use serde::{Deserialize, Serialize};

use crate::routes::{Route, RouteTable, is_reserved};

/// Discovery rounds in a row a service's running instances must leave a known route
/// undeclared before it is dropped.
pub const DROP_AFTER_ROUNDS: u32 = 2;

/// One endpoint that declared a public route, as discovery reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownEndpoint {
    pub name: String,
    pub subject: String,
    /// Its discovery metadata: the route declaration (format in `runtime::routes`).
    pub metadata: BTreeMap<String, String>,
}

impl KnownEndpoint {
    /// The declared `METHOD /path` (what makes two declarations the same route).
    fn key(&self) -> String {
        self.metadata
            .get(declared::HTTP)
            .map(|h| h.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}

/// The public routes of one service as last discovered, as kept in the
/// `gateway_routes` bucket (one key per service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownService {
    pub name: String,
    /// The newest version among the instances that declared these routes.
    pub version: String,
    /// Endpoints with a route, sorted by route.
    pub endpoints: Vec<KnownEndpoint>,
    /// The JSON Schemas the routes name.
    pub schemas: Schemas,
}

impl KnownService {
    /// The record of a service's own declarations (what its instances would publish).
    pub fn from_declarations(
        name: &str,
        version: &str,
        routes: &[(&str, declared::Route)],
    ) -> KnownService {
        let mut endpoints: Vec<KnownEndpoint> = routes
            .iter()
            .map(|(subject, route)| KnownEndpoint {
                name: (*subject).to_owned(),
                subject: (*subject).to_owned(),
                metadata: route.to_metadata().into_iter().collect(),
            })
            .collect();
        endpoints.sort_by_key(KnownEndpoint::key);
        let schemas = declared::schemas_from_metadata(&declared::service_metadata(
            routes.iter().map(|(_, r)| r),
        ))
        .unwrap_or_default();
        KnownService {
            name: name.to_owned(),
            version: version.to_owned(),
            endpoints,
            schemas,
        }
    }

    /// The union of the routes `instances` (all of one service) declare, the newer
    /// version winning; with what could not be read.
    fn from_instances(name: &str, instances: &[&Info]) -> (KnownService, Vec<String>) {
        let mut sorted: Vec<&Info> = instances.to_vec();
        sorted.sort_by(|a, b| {
            version_key(&a.version)
                .cmp(&version_key(&b.version))
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut problems = Vec::new();
        let mut endpoints: BTreeMap<String, KnownEndpoint> = BTreeMap::new();
        let mut schemas = Schemas::new();
        for info in &sorted {
            for ep in &info.endpoints {
                if !ep.metadata.contains_key(declared::HTTP) {
                    continue;
                }
                let ep = KnownEndpoint {
                    name: ep.name.clone(),
                    subject: ep.subject.clone(),
                    metadata: ep.metadata.clone().into_iter().collect(),
                };
                endpoints.insert(ep.key(), ep);
            }
            match declared::schemas_from_metadata(&info.metadata) {
                Ok(s) => schemas.extend(s),
                Err(e) => problems.push(format!(
                    "service {name} {} (instance {}): {e}",
                    info.version, info.id
                )),
            }
        }
        let version = sorted.last().map(|i| i.version.clone()).unwrap_or_default();
        let service = KnownService {
            name: name.to_owned(),
            version,
            endpoints: endpoints.into_values().collect(),
            schemas,
        };
        (service, problems)
    }
}

/// Orders versions numerically where they are numbers (`1.10.0` after `1.9.0`).
fn version_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(['.', '-', '+'])
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (0, part.to_owned()),
        })
        .collect()
}

/// The path prefixes each service may declare routes under (`GATEWAY_ROUTE_PREFIXES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePrefixes(BTreeMap<String, Vec<String>>);

impl RoutePrefixes {
    /// The mesh's services and the paths they own.
    pub const DEFAULT: &'static str = "auth=/v1/auth,/v1/me,/v1/unsubscribe;\
                                       calendar=/v1/events;push=/v1/notifications;\
                                       hospital=/v1/admin";

    /// Parses `service=/prefix,/prefix;service=/prefix`. A prefix covers itself and
    /// everything below it on segment boundaries (`/v1/events` covers
    /// `/v1/events/{id}`, not `/v1/eventsx`); `/` covers every path.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (service, list) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not service=/prefix,…"))?;
            let service = service.trim();
            let valid_name = !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(format!("{service:?} is not a service name"));
            }
            let mut prefixes = Vec::new();
            for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !p.starts_with('/') || p.contains(['{', '}']) || p.contains("//") {
                    return Err(format!("prefix {p:?} of {service} must be a literal /path"));
                }
                prefixes.push(p.trim_end_matches('/').to_owned());
            }
            if prefixes.is_empty() {
                return Err(format!("{service} has no prefix"));
            }
            if map.insert(service.to_owned(), prefixes).is_some() {
                return Err(format!("{service} is listed twice"));
            }
        }
        Ok(RoutePrefixes(map))
    }

    /// The prefixes of `service` (none for a service not listed).
    pub fn of(&self, service: &str) -> &[String] {
        self.0.get(service).map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether `service` may declare a route on `path`.
    pub fn allows(&self, service: &str, path: &str) -> bool {
        self.of(service).iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

impl Default for RoutePrefixes {
    fn default() -> Self {
        RoutePrefixes::parse(Self::DEFAULT).unwrap_or(RoutePrefixes(BTreeMap::new()))
    }
}

/// The gateway's knowledge of every service's routes.
#[derive(Debug)]
pub struct Catalog {
    prefixes: RoutePrefixes,
    services: BTreeMap<String, KnownService>,
    /// Per (service, route key): discovery rounds in a row it went undeclared.
    missing: BTreeMap<(String, String), u32>,
    /// Per service: what its last discovered instances published that could not be read.
    problems: BTreeMap<String, Vec<String>>,
    /// `METHOD path` of the routes in the last table, in order: they keep their place
    /// when a newcomer conflicts with them.
    incumbents: Vec<(String, String)>,
    /// The problems logged last time (each is logged once, when it appears).
    warned: BTreeSet<String>,
}

/// What [`Catalog::build`] made.
#[derive(Debug)]
pub struct Built {
    pub table: RouteTable,
    /// The schemas of the services with a route in the table.
    pub schemas: Schemas,
    /// Every declaration rejected and every other problem, one line each.
    pub problems: Vec<String>,
}

impl Catalog {
    pub fn new(prefixes: RoutePrefixes) -> Self {
        Catalog {
            prefixes,
            services: BTreeMap::new(),
            missing: BTreeMap::new(),
            problems: BTreeMap::new(),
            incumbents: Vec::new(),
            warned: BTreeSet::new(),
        }
    }

    pub fn services(&self) -> impl Iterator<Item = &KnownService> {
        self.services.values()
    }

    pub fn service(&self, name: &str) -> Option<&KnownService> {
        self.services.get(name)
    }

    /// Adds a service known from the store, unless discovery already knows it better.
    /// True when it was added.
    pub fn remember(&mut self, service: KnownService) -> bool {
        if self.services.contains_key(&service.name) {
            return false;
        }
        self.services.insert(service.name.clone(), service);
        true
    }

    /// Takes in one discovery round: every service with a running instance gets the
    /// routes its instances declare now (see the module doc for what is kept); services
    /// without one keep theirs. Returns the names of the services whose record changed.
    pub fn observe(&mut self, instances: &[Info]) -> Vec<String> {
        let mut by_service: BTreeMap<&str, Vec<&Info>> = BTreeMap::new();
        for info in instances {
            by_service.entry(info.name.as_str()).or_default().push(info);
        }
        let mut changed = Vec::new();
        for (name, infos) in by_service {
            let (mut fresh, problems) = KnownService::from_instances(name, &infos);
            self.problems.insert(name.to_owned(), problems);
            let declared_now: BTreeSet<String> =
                fresh.endpoints.iter().map(KnownEndpoint::key).collect();
            self.missing
                .retain(|(s, key), _| s != name || !declared_now.contains(key));
            let old = self.services.get(name);
            if let Some(old) = old {
                let mut kept = false;
                for ep in &old.endpoints {
                    let key = ep.key();
                    if declared_now.contains(&key) {
                        continue;
                    }
                    let rounds = self.missing.entry((name.to_owned(), key)).or_insert(0);
                    *rounds += 1;
                    if *rounds < DROP_AFTER_ROUNDS {
                        fresh.endpoints.push(ep.clone());
                        kept = true;
                    }
                }
                if kept {
                    let mut schemas = old.schemas.clone();
                    schemas.extend(std::mem::take(&mut fresh.schemas));
                    fresh.schemas = schemas;
                    fresh.endpoints.sort_by_key(KnownEndpoint::key);
                }
                self.missing
                    .retain(|(s, _), rounds| s != name || *rounds < DROP_AFTER_ROUNDS);
            } else if fresh.endpoints.is_empty() {
                // A service without public routes (e.g. email): nothing to remember.
                continue;
            }
            if old != Some(&fresh) {
                changed.push(name.to_owned());
                self.services.insert(name.to_owned(), fresh);
            }
        }
        changed
    }

    /// The route table of what is known now. New problems are logged (warn); ones
    /// already logged are not repeated.
    pub fn build(&mut self) -> Built {
        let mut problems: Vec<String> = self.problems.values().flatten().cloned().collect();
        let mut candidates: Vec<Route> = Vec::new();
        for service in self.services.values() {
            for ep in &service.endpoints {
                match declared::Route::from_metadata(&ep.metadata) {
                    Ok(Some(route)) => {
                        candidates.push(Route::declared(&service.name, &ep.subject, route));
                    }
                    Ok(None) => {}
                    Err(e) => problems.push(format!(
                        "rejected route of {} endpoint {} ({}): {e}",
                        service.name, ep.name, ep.subject
                    )),
                }
            }
        }
        // Routes already in the table first: a newcomer cannot take their place.
        let place = |r: &Route| {
            self.incumbents
                .iter()
                .position(|(m, p)| *m == r.method.as_str() && *p == r.path)
                .unwrap_or(usize::MAX)
        };
        candidates.sort_by(|a, b| {
            place(a)
                .cmp(&place(b))
                .then_with(|| a.service.cmp(&b.service))
                .then_with(|| a.path.cmp(&b.path))
                .then_with(|| a.method.as_str().cmp(b.method.as_str()))
        });

        let mut table = RouteTable::empty();
        for route in candidates {
            let what = format!("{} {} {}", route.service, route.method, route.path);
            if !self.prefixes.allows(&route.service, &route.path) {
                problems.push(format!(
                    "rejected route {what}: outside the service's path prefixes {:?}",
                    self.prefixes.of(&route.service)
                ));
                continue;
            }
            if is_reserved(&route.path) {
                problems.push(format!(
                    "rejected route {what}: the gateway serves this path itself"
                ));
                continue;
            }
            match table.insert(route) {
                Ok(()) => {}
                Err(crate::routes::InsertError::Template(e)) => {
                    problems.push(format!("rejected route {what}: {e}"));
                }
                Err(crate::routes::InsertError::Conflict(other)) => {
                    problems.push(format!(
                        "rejected route {what}: conflicts with {} {} {}",
                        other.service, other.method, other.path
                    ));
                }
            }
        }
        self.incumbents = table
            .routes()
            .map(|r| (r.method.as_str().to_owned(), r.path.clone()))
            .collect();

        // The schemas of the services that made it into the table; a name two services
        // define differently keeps the first definition (by service name).
        let mut schemas = Schemas::new();
        let mut owner: BTreeMap<String, &str> = BTreeMap::new();
        let routed: BTreeSet<&str> = table.routes().map(|r| r.service.as_str()).collect();
        for service in self.services.values() {
            if !routed.contains(service.name.as_str()) {
                continue;
            }
            for (name, schema) in &service.schemas {
                match schemas.get(name) {
                    None => {
                        schemas.insert(name.clone(), schema.clone());
                        owner.insert(name.clone(), &service.name);
                    }
                    Some(existing) if existing == schema => {}
                    Some(_) => problems.push(format!(
                        "schema {name} of {} differs from the one of {}; documenting the latter",
                        service.name,
                        owner.get(name).copied().unwrap_or("?")
                    )),
                }
            }
        }
        for route in table.routes() {
            for name in route.request_schema.iter().chain(&route.response_schema) {
                if !schemas.contains_key(name) {
                    problems.push(format!(
                        "route {} {} {} names schema {name}, which {} does not publish",
                        route.service, route.method, route.path, route.service
                    ));
                }
            }
        }

        let now: BTreeSet<String> = problems.iter().cloned().collect();
        for p in now.difference(&self.warned) {
            tracing::warn!(problem = %p, "route discovery");
        }
        self.warned = now;
        Built {
            table,
            schemas,
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use axum::http::Method;
    use runtime::routes::Route as Declared;
    use std::collections::HashMap;

    /// An instance of `name` at `version` with `routes`, as `$SRV.INFO` reports it.
    fn instance(name: &str, version: &str, routes: &[(&str, Declared)]) -> Info {
        let endpoints = routes
            .iter()
            .map(|(subject, route)| async_nats::service::endpoint::Info {
                name: (*subject).to_owned(),
                subject: (*subject).to_owned(),
                queue_group: "mesh".to_owned(),
                metadata: route.to_metadata(),
            })
            .collect();
        Info {
            kind: "io.nats.micro.v1.info_response".to_owned(),
            name: name.to_owned(),
            id: format!("{name}-{version}"),
            description: String::new(),
            version: version.to_owned(),
            metadata: declared::service_metadata(routes.iter().map(|(_, r)| r)),
            endpoints,
        }
    }

    fn keys(built: &Built) -> Vec<String> {
        built
            .table
            .routes()
            .map(|r| format!("{} {} {}", r.service, r.method, r.path))
            .collect()
    }

    fn events() -> Declared {
        Declared::get("/v1/events")
            .response::<contracts::api::EventPage>(200)
            .summary("List")
    }

    #[test]
    fn prefixes_parse_and_cover_whole_segments() {
        let p = RoutePrefixes::default();
        assert_eq!(p.of("auth"), ["/v1/auth", "/v1/me", "/v1/unsubscribe"]);
        assert!(p.allows("calendar", "/v1/events"));
        assert!(p.allows("calendar", "/v1/events/{id}/rsvp"));
        assert!(!p.allows("calendar", "/v1/eventsx"));
        assert!(!p.allows("calendar", "/v1/admin/dlq"));
        assert!(!p.allows("email", "/v1/events"));
        let all = RoutePrefixes::parse(" x = / ; y=/v1/y/ ").expect("parses");
        assert!(all.allows("x", "/anything/at/all"));
        assert!(all.allows("y", "/v1/y/z") && !all.allows("y", "/v1/yz"));
        for bad in [
            "calendar",
            "=/v1/x",
            "a b=/x",
            "a=v1/x",
            "a=/v1/{id}",
            "a=",
            "a=/x;a=/y",
        ] {
            assert!(RoutePrefixes::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn declarations_outside_the_prefixes_or_on_gateway_paths_are_rejected() {
        let mut c = Catalog::new(RoutePrefixes::default());
        c.observe(&[instance(
            "calendar",
            "1.0.0",
            &[
                ("svc.calendar.list", events()),
                (
                    "svc.calendar.steal",
                    Declared::get("/v1/admin/secrets").admin(),
                ),
                ("svc.calendar.me", Declared::get("/v1/me")),
            ],
        )]);
        c.observe(&[instance(
            "push",
            "1.0.0",
            &[(
                "svc.push.stream",
                Declared::post("/v1/notifications/stream"),
            )],
        )]);
        let built = c.build();
        assert_eq!(keys(&built), ["calendar GET /v1/events"]);
        let text = built.problems.join("\n");
        assert!(
            text.contains("calendar GET /v1/admin/secrets: outside"),
            "{text}"
        );
        assert!(text.contains("calendar GET /v1/me: outside"), "{text}");
        assert!(
            text.contains("push POST /v1/notifications/stream: the gateway serves"),
            "{text}"
        );
        // Unknown to the prefixes: nothing it declares is routed.
        let mut c = Catalog::new(RoutePrefixes::default());
        c.observe(&[instance("rogue", "1.0.0", &[("svc.rogue", events())])]);
        assert!(c.build().table.is_empty());
    }

    #[test]
    fn conflicts_keep_the_route_already_in_the_table() {
        let prefixes = RoutePrefixes::parse("calendar=/v1/events;other=/v1/events").expect("ok");
        let mut c = Catalog::new(prefixes);
        c.observe(&[instance(
            "other",
            "1.0.0",
            &[("svc.other.get", Declared::get("/v1/events/{id}"))],
        )]);
        assert_eq!(keys(&c.build()), ["other GET /v1/events/{id}"]);
        // A newcomer with the same method and shape (another parameter name) loses,
        // although it would sort first; its other, distinct routes are fine.
        c.observe(&[instance(
            "calendar",
            "1.0.0",
            &[
                ("svc.calendar.get", Declared::get("/v1/events/{event_id}")),
                (
                    "svc.calendar.patch",
                    Declared::patch("/v1/events/{event_id}"),
                ),
                ("svc.calendar.mine", Declared::get("/v1/events/mine")),
            ],
        )]);
        let built = c.build();
        assert_eq!(
            keys(&built),
            [
                "other GET /v1/events/{id}",
                "calendar GET /v1/events/mine",
                "calendar PATCH /v1/events/{event_id}",
            ]
        );
        assert!(
            built
                .problems
                .iter()
                .any(|p| p.contains("calendar GET /v1/events/{event_id}: conflicts with other")),
            "{:?}",
            built.problems
        );
        // Logged once per change: the same problems again are not news.
        assert_eq!(c.warned.len(), built.problems.len());
    }

    #[test]
    fn instances_add_up_and_the_newer_declaration_wins() {
        let mut c = Catalog::new(RoutePrefixes::default());
        let old = instance(
            "calendar",
            "1.9.0",
            &[("svc.calendar.list", events().summary("old"))],
        );
        let new = instance(
            "calendar",
            "1.10.0",
            &[
                ("svc.calendar.list.v2", events().summary("new")),
                (
                    "svc.calendar.summary",
                    Declared::get("/v1/events/{id}/summary").response::<contracts::api::Event>(200),
                ),
            ],
        );
        assert_eq!(c.observe(&[new.clone(), old.clone()]), ["calendar"]);
        let built = c.build();
        let list = built
            .table
            .routes()
            .find(|r| r.path == "/v1/events")
            .expect("list");
        assert_eq!(
            (list.summary.as_str(), list.subject.as_str()),
            ("new", "svc.calendar.list.v2")
        );
        assert_eq!(built.table.len(), 2);
        assert_eq!(
            c.service("calendar").map(|s| s.version.as_str()),
            Some("1.10.0")
        );
        assert!(built.schemas.contains_key("Event") && built.schemas.contains_key("EventPage"));
        // Nothing new: nothing changed.
        assert!(c.observe(&[old, new]).is_empty());
    }

    #[test]
    fn routes_outlive_their_instances_and_drop_only_when_undeclared_twice() {
        let mut c = Catalog::new(RoutePrefixes::default());
        let both = instance(
            "calendar",
            "1.0.0",
            &[
                ("svc.calendar.list", events()),
                ("svc.calendar.get", Declared::get("/v1/events/{id}")),
            ],
        );
        c.observe(&[both]);
        // No instance at all: everything is kept.
        for _ in 0..5 {
            assert!(c.observe(&[]).is_empty());
        }
        assert_eq!(c.build().table.len(), 2);
        // Instances that no longer declare a route: kept one round, dropped the next.
        let one = instance("calendar", "1.1.0", &[("svc.calendar.list", events())]);
        c.observe(std::slice::from_ref(&one));
        assert_eq!(c.build().table.len(), 2);
        assert_eq!(c.observe(std::slice::from_ref(&one)), ["calendar"]);
        assert_eq!(keys(&c.build()), ["calendar GET /v1/events"]);
    }

    #[test]
    fn stored_records_round_trip_and_discovery_takes_precedence() {
        let record = KnownService::from_declarations(
            "calendar",
            "1.0.0",
            &[("svc.calendar.list", events())],
        );
        let json = serde_json::to_vec(&record).expect("json");
        let back: KnownService = serde_json::from_slice(&json).expect("parses");
        assert_eq!(back, record);

        let mut c = Catalog::new(RoutePrefixes::default());
        c.observe(&[instance(
            "calendar",
            "2.0.0",
            &[("svc.calendar.get", Declared::get("/v1/events/{id}"))],
        )]);
        assert!(!c.remember(back), "discovery knows calendar better");
        assert!(c.remember(KnownService::from_declarations(
            "push",
            "1.0.0",
            &[("svc.push.list", Declared::get("/v1/notifications"),)],
        )));
        assert_eq!(
            keys(&c.build()),
            ["calendar GET /v1/events/{id}", "push GET /v1/notifications"]
        );
    }

    #[test]
    fn bad_metadata_is_reported_not_routed() {
        let mut info = instance("calendar", "1.0.0", &[("svc.calendar.list", events())]);
        info.metadata
            .insert(declared::HTTP_SCHEMAS.to_owned(), "{not json".to_owned());
        let mut bad = HashMap::new();
        bad.insert(declared::HTTP.to_owned(), "GET /v1/events/{id}".to_owned());
        info.endpoints.push(async_nats::service::endpoint::Info {
            name: "no_auth".to_owned(),
            subject: "svc.calendar.get".to_owned(),
            queue_group: "mesh".to_owned(),
            metadata: bad,
        });
        let mut c = Catalog::new(RoutePrefixes::default());
        c.observe(&[info]);
        let built = c.build();
        assert_eq!(keys(&built), ["calendar GET /v1/events"]);
        let text = built.problems.join("\n");
        assert!(text.contains("http.schemas"), "{text}");
        assert!(
            text.contains("no_auth") && text.contains("missing"),
            "{text}"
        );
        assert!(text.contains("names schema EventPage"), "{text}");
    }

    #[test]
    fn the_real_services_declarations_build_cleanly() {
        let built = fixture::built();
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        // auth 11, calendar 7, push 2, hospital 15 (the exact list: tests/api/fixture.rs).
        assert_eq!(built.table.len(), 35);
        for route in built.table.routes() {
            assert!(route.method != Method::HEAD);
            for name in route.request_schema.iter().chain(&route.response_schema) {
                assert!(built.schemas.contains_key(name), "{name}");
            }
        }
    }
}
