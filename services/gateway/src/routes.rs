//! The route table: which HTTP route goes to which NATS subject, under which auth rule.
//!
//! Routes are data, not handlers: one generic handler serves them all, and the OpenAPI
//! document is generated from the same table. The services declare them (see
//! `runtime::routes`); [`crate::catalog`] turns what discovery found into a
//! [`RouteTable`].
//!
//! A few routes are answered by the gateway itself and are *not* in the table:
//! [`native_routes`] lists them for the documentation (the notification stream and its
//! tickets, served by [`crate::stream`]), and [`is_reserved`] keeps declarations off
//! every path the gateway serves itself.

use std::collections::BTreeMap;

use axum::http::Method;
use contracts::ErrorCode;
use uuid::Uuid;

use crate::error::ApiError;

pub use runtime::routes::AuthRule;

/// One public route, forwarded to the service that declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// Path template; `{name}` is a whole-segment parameter, e.g. `/v1/events/{id}`.
    pub path: String,
    /// The NATS service that declared it.
    pub service: String,
    /// The request/reply subject of the endpoint that serves it.
    pub subject: String,
    pub auth: AuthRule,
    /// Whether the route takes a JSON body (else the service receives `NoBody {}`).
    pub has_body: bool,
    /// Schema names of the request and success bodies (components of the OpenAPI document).
    pub request_schema: Option<String>,
    pub response_schema: Option<String>,
    /// The status of a success, for the documentation (the service's reply decides).
    pub success_status: u16,
    /// Query parameters the route understands, for the documentation.
    pub query: Vec<String>,
    /// JSON Schemas of some of them (the others are strings).
    pub query_schemas: BTreeMap<String, serde_json::Value>,
    /// One line for the documentation.
    pub summary: String,
    /// Whether an `Idempotency-Key` is honoured. Off for routes whose answer is a secret
    /// (tokens), which must not sit in the shared idempotency store.
    pub idempotent: bool,
    /// Whether the gateway may cache the answers (see [`crate::cache`]).
    pub cache: Option<runtime::routes::CachePolicy>,
    /// The error codes the service declared it may answer (`None`: undeclared).
    pub errors: Option<Vec<ErrorCode>>,
}

impl Route {
    /// The route `service` declared for its endpoint on `subject`.
    pub fn declared(service: &str, subject: &str, declaration: runtime::routes::Route) -> Self {
        Route {
            has_body: declaration.request.is_some(),
            method: declaration.method,
            path: declaration.path,
            service: service.to_owned(),
            subject: subject.to_owned(),
            auth: declaration.auth,
            request_schema: declaration.request,
            response_schema: declaration.response,
            success_status: declaration.status,
            query: declaration.query,
            query_schemas: declaration.query_schemas,
            summary: declaration.summary,
            idempotent: declaration.idempotent,
            cache: declaration.cache,
            errors: declaration.errors,
        }
    }
}

/// A route the gateway answers itself instead of forwarding it (not in the route table;
/// listed for the OpenAPI document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeRoute {
    pub method: Method,
    pub path: &'static str,
    pub auth: AuthRule,
    /// Whether a stream ticket (`?ticket=`) is accepted instead of a bearer token.
    pub accepts_ticket: bool,
    pub success_status: u16,
    /// Schema name of the JSON body it takes, if any.
    pub request_schema: Option<&'static str>,
    /// Media type and schema name of a success's body (for a stream: of each event's
    /// data); `None`: no body.
    pub response: Option<(&'static str, &'static str)>,
    /// Response headers of a success, with their meaning.
    pub response_headers: &'static [(&'static str, &'static str)],
    pub query: &'static [&'static str],
    /// Request headers the route understands besides `Authorization`.
    pub headers: &'static [&'static str],
    /// The error codes it may answer.
    pub errors: &'static [ErrorCode],
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
}

/// The routes the gateway answers itself.
pub fn native_routes() -> Vec<NativeRoute> {
    use crate::console::{CONSOLE_SESSION_SCHEMA, LOGIN_PATH, LOGOUT_PATH};
    use crate::stream::{STREAM_PATH, TICKET_PATH};
    vec![
        NativeRoute {
            method: Method::POST,
            path: TICKET_PATH,
            auth: AuthRule::User,
            accepts_ticket: false,
            success_status: 201,
            request_schema: None,
            response: Some(("application/json", "StreamTicket")),
            response_headers: &[("Cache-Control", "`no-store`: the ticket is a secret")],
            query: &[],
            headers: &[],
            errors: &[
                ErrorCode::Unauthorized,
                ErrorCode::RateLimited,
                ErrorCode::Internal,
                ErrorCode::ServiceUnavailable,
                ErrorCode::Timeout,
            ],
            operation_id: "gateway_notifications_stream_ticket",
            summary: "A single-use ticket to open the notification stream from a browser",
            description: "Answered by the gateway. `EventSource` cannot send an \
                          `Authorization` header: open `GET /v1/notifications/stream?ticket=…` \
                          with this ticket instead, within `expires_in` seconds. A ticket \
                          opens one stream, on any gateway replica.",
        },
        NativeRoute {
            method: Method::GET,
            path: STREAM_PATH,
            auth: AuthRule::User,
            accepts_ticket: true,
            success_status: 200,
            request_schema: None,
            response: Some(("text/event-stream", "Notification")),
            response_headers: &[],
            query: &["ticket", "last_event_id"],
            headers: &["Last-Event-ID"],
            errors: &[
                ErrorCode::BadRequest,
                ErrorCode::Unauthorized,
                ErrorCode::RateLimited,
                ErrorCode::Internal,
                ErrorCode::ServiceUnavailable,
                ErrorCode::Timeout,
            ],
            operation_id: "gateway_notifications_stream",
            summary: "The caller's new notifications, live, as Server-Sent Events",
            description: "Answered by the gateway. Each notification is an event with \
                          `id: <notification seq>` (the user's notification number, in the \
                          order they were stored), `event: notification` and the \
                          `Notification` as JSON in `data`; events come in `seq` order. With \
                          `Last-Event-ID` (header, or query `last_event_id`) the \
                          notifications missed since that id come first, oldest first, \
                          without duplicates (a notification id from before `seq` is accepted \
                          too). An `event: warning` \
                          (plain text) says when missed notifications cannot be loaded; the \
                          stream then carries new ones only. Comments keep an idle stream \
                          alive. Authenticate with a bearer token or a ticket from \
                          `POST /v1/notifications/stream/ticket`.",
        },
        NativeRoute {
            method: Method::POST,
            path: LOGIN_PATH,
            auth: AuthRule::Public,
            accepts_ticket: false,
            success_status: 200,
            request_schema: Some("LoginRequest"),
            response: Some(("application/json", CONSOLE_SESSION_SCHEMA)),
            response_headers: &[(
                "Set-Cookie",
                "`mesh_session` (the access token, `HttpOnly; SameSite=Strict`) and \
                 `mesh_csrf` (to repeat in `X-CSRF-Token`)",
            )],
            query: &[],
            headers: &[],
            errors: &[
                ErrorCode::MalformedJson,
                ErrorCode::BadRequest,
                ErrorCode::InvalidCredentials,
                ErrorCode::LoginThrottled,
                ErrorCode::Forbidden,
                ErrorCode::PayloadTooLarge,
                ErrorCode::UnsupportedMediaType,
                ErrorCode::ValidationFailed,
                ErrorCode::RateLimited,
                ErrorCode::Internal,
                ErrorCode::ServiceUnavailable,
                ErrorCode::Timeout,
            ],
            operation_id: "gateway_console_login",
            summary: "Open a web console session (admins only)",
            description: "Answered by the gateway. Logs in through auth like \
                          `POST /v1/auth/login`, keeps the access token only when it belongs \
                          to an admin (else 403 `forbidden`) and hands it to the browser as \
                          the `HttpOnly` cookie `mesh_session`, with a readable `mesh_csrf` \
                          cookie beside it. The session is accepted on `/v1/admin/…` only.",
        },
        NativeRoute {
            method: Method::POST,
            path: LOGOUT_PATH,
            auth: AuthRule::Public,
            accepts_ticket: false,
            success_status: 204,
            request_schema: None,
            response: None,
            response_headers: &[("Set-Cookie", "both console cookies, expired")],
            query: &[],
            headers: &[],
            errors: &[ErrorCode::Internal, ErrorCode::Timeout],
            operation_id: "gateway_console_logout",
            summary: "End the web console session in this browser",
            description: "Answered by the gateway: clears the console's cookies (the access \
                          token itself stays valid until it expires).",
        },
    ]
}

/// Paths the gateway answers itself besides [`native_routes`]: health, metrics, the
/// OpenAPI document.
pub const OWN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// True when `template` is a path the gateway serves itself (any method): the native
/// routes, health, metrics, the OpenAPI document and everything under the console.
/// No service may declare it: the gateway's own handler would shadow it.
pub fn is_reserved(template: &str) -> bool {
    let console = crate::console::CONSOLE_PATH;
    OWN_PATHS.contains(&template)
        || native_routes().iter().any(|r| r.path == template)
        || template == console
        || template
            .strip_prefix(console)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A template that cannot be matched.
#[derive(Debug, thiserror::Error)]
#[error("invalid route template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

fn compile(template: &str) -> Result<Vec<Segment>, TemplateError> {
    let err = |reason| TemplateError {
        template: template.to_owned(),
        reason,
    };
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| err("must start with /"))?;
    rest.split('/')
        .map(|seg| {
            if let Some(name) = seg.strip_prefix('{') {
                let name = name
                    .strip_suffix('}')
                    .ok_or_else(|| err("unclosed parameter"))?;
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(err("bad parameter name"));
                }
                Ok(Segment::Param(name.to_owned()))
            } else if seg.is_empty() || seg.contains(['{', '}']) {
                Err(err("empty segment or stray brace"))
            } else {
                Ok(Segment::Literal(seg.to_owned()))
            }
        })
        .collect()
}

/// A request matched to its route.
#[derive(Debug)]
pub struct Matched<'a> {
    pub route: &'a Route,
    /// Path parameters by name (ids normalized to lowercase hyphenated UUIDs).
    pub params: BTreeMap<String, String>,
}

/// Why a route cannot join a table.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The table has a route with the same method and shape (the one returned).
    #[error("conflicts with {} {}", .0.method, .0.path)]
    Conflict(Box<Route>),
}

/// The compiled table the handler matches against.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<(Route, Vec<Segment>)>,
}

impl RouteTable {
    pub fn empty() -> Self {
        RouteTable::default()
    }

    /// A table of `routes`, which must all be valid and free of conflicts.
    pub fn new(routes: Vec<Route>) -> Result<Self, InsertError> {
        let mut table = RouteTable::empty();
        for r in routes {
            table.insert(r)?;
        }
        Ok(table)
    }

    /// Adds a route, unless its template is invalid or the table has a route with the
    /// same method that matches exactly the same paths (literals equal, parameters at
    /// the same places, whatever their names).
    pub fn insert(&mut self, route: Route) -> Result<(), InsertError> {
        let segments = compile(&route.path)?;
        let clash = self.routes.iter().find(|(r, s)| {
            r.method == route.method
                && s.len() == segments.len()
                && s.iter().zip(&segments).all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
        });
        if let Some((other, _)) = clash {
            return Err(InsertError::Conflict(Box::new(other.clone())));
        }
        self.routes.push((route, segments));
        Ok(())
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|(r, _)| r)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for `method` and `path`: `RouteNotFound` when no template matches the
    /// path, `MethodNotAllowed` (listing the allowed methods) when one does with another
    /// method, `BadRequest` when an id parameter is not a UUID.
    pub fn find(&self, method: &Method, path: &str) -> Result<Matched<'_>, ApiError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(ApiError::RouteNotFound);
        };
        let parts: Vec<&str> = rest.split('/').collect();
        // Of the templates matching the path, the most literal ones win
        // (`/v1/events/mine` over `/v1/events/{id}`).
        let mut best: Option<usize> = None;
        let mut candidates: Vec<(usize, &(Route, Vec<Segment>))> = Vec::new();
        for entry in &self.routes {
            if let Some(literals) = match_segments(&entry.1, &parts) {
                best = Some(best.map_or(literals, |b| b.max(literals)));
                candidates.push((literals, entry));
            }
        }
        let Some(best) = best else {
            return Err(ApiError::RouteNotFound);
        };
        let candidates: Vec<&(Route, Vec<Segment>)> = candidates
            .into_iter()
            .filter(|(l, _)| *l == best)
            .map(|(_, e)| e)
            .collect();
        let Some((route, segments)) = candidates.iter().find(|(r, _)| r.method == method) else {
            let mut allow: Vec<Method> = Vec::new();
            for (r, _) in &candidates {
                if !allow.contains(&r.method) {
                    allow.push(r.method.clone());
                }
            }
            // A stable order, whatever order the routes were discovered in.
            allow.sort_by_key(method_rank);
            return Err(ApiError::MethodNotAllowed { allow });
        };
        let mut params = BTreeMap::new();
        for (segment, value) in segments.iter().zip(&parts) {
            if let Segment::Param(name) = segment {
                params.insert(name.clone(), parse_param(name, value)?);
            }
        }
        Ok(Matched { route, params })
    }
}

/// The conventional order of methods in an `Allow` header.
fn method_rank(method: &Method) -> usize {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .iter()
    .position(|m| m == method)
    .unwrap_or(usize::MAX)
}

/// The number of literal segments when `parts` fits `segments`.
fn match_segments(segments: &[Segment], parts: &[&str]) -> Option<usize> {
    if segments.len() != parts.len() {
        return None;
    }
    let mut literals = 0;
    for (segment, part) in segments.iter().zip(parts) {
        match segment {
            Segment::Literal(l) if l == part => literals += 1,
            Segment::Param(_) if !part.is_empty() => {}
            _ => return None,
        }
    }
    Some(literals)
}

/// The kind of value a path parameter holds, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `id`, `*_id`: a UUID, passed on in canonical form.
    Uuid,
    /// `durable`: a consumer name, `[A-Za-z0-9_-]{1,64}` (it becomes part of NATS
    /// subjects and API names, where `.`, `*`, `>` and spaces mean something else).
    Durable,
    /// Anything else: one non-empty segment, passed on as is.
    Segment,
}

impl ParamKind {
    pub fn of(name: &str) -> Self {
        if name == "id" || name.ends_with("_id") {
            ParamKind::Uuid
        } else if name == "durable" {
            ParamKind::Durable
        } else {
            ParamKind::Segment
        }
    }
}

/// Longest durable name accepted in a path.
pub const MAX_DURABLE_LEN: usize = 64;

fn parse_param(name: &str, value: &str) -> Result<String, ApiError> {
    match ParamKind::of(name) {
        ParamKind::Uuid => Uuid::parse_str(value)
            .map(|u| u.to_string())
            .map_err(|_| ApiError::BadRequest(format!("path parameter {name} must be a UUID"))),
        ParamKind::Durable => {
            let ok = (1..=MAX_DURABLE_LEN).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if ok {
                Ok(value.to_owned())
            } else {
                Err(ApiError::BadRequest(format!(
                    "path parameter {name} must be 1-{MAX_DURABLE_LEN} of A-Z, a-z, 0-9, _ and -"
                )))
            }
        }
        ParamKind::Segment => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{admin_routes, routes, table};
    use contracts::ErrorCode;
    use contracts::subjects::{calendar, hospital};

    fn route(method: Method, path: &str, subject: &str, auth: AuthRule) -> Route {
        let declared = runtime::routes::Route::new(method, path);
        let declared = match auth {
            AuthRule::Public => declared.public(),
            AuthRule::User => declared.user(),
            AuthRule::Admin => declared.admin(),
        };
        Route::declared("test", subject, declared)
    }

    #[test]
    fn every_route_matches_its_own_template() {
        let t = table();
        let id = Uuid::now_v7().to_string();
        for r in routes() {
            let path = r
                .path
                .replace("{id}", &id)
                .replace("{durable}", "email-auth");
            let m = t.find(&r.method, &path).expect("matches");
            assert_eq!(m.route.subject, r.subject);
        }
    }

    #[test]
    fn native_routes_stay_out_of_the_table() {
        let t = table();
        for r in native_routes() {
            assert!(
                routes()
                    .iter()
                    .all(|f| f.path != r.path || f.method != r.method),
                "{} {} is both native and forwarded",
                r.method,
                r.path
            );
            assert!(compile(r.path).is_ok(), "{}", r.path);
            assert!(is_reserved(r.path), "{}", r.path);
            assert!(t.find(&r.method, r.path).is_err(), "{}", r.path);
        }
    }

    #[test]
    fn ids_are_extracted_and_normalized() {
        let t = table();
        let id = Uuid::now_v7();
        let upper = id.to_string().to_uppercase();
        let m = t
            .find(&Method::PUT, &format!("/v1/events/{upper}/rsvp"))
            .expect("matches");
        assert_eq!(m.route.subject, calendar::RPC_PUT_RSVP);
        assert_eq!(m.params.get("id"), Some(&id.to_string()));
    }

    #[test]
    fn bad_ids_are_bad_requests() {
        let err = table()
            .find(&Method::GET, "/v1/events/not-a-uuid")
            .expect_err("rejected");
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let t = table();
        for path in [
            "/",
            "",
            "/v1",
            "/v1/events/",
            "/v1/nope",
            "//v1/events",
            "/v1/events/x/y/z",
        ] {
            let err = t.find(&Method::GET, path).expect_err(path);
            assert_eq!(err.code(), ErrorCode::RouteNotFound, "{path}");
        }
    }

    #[test]
    fn wrong_methods_list_the_allowed_ones() {
        let t = table();
        let id = Uuid::now_v7();
        match t.find(&Method::POST, &format!("/v1/events/{id}")) {
            Err(ApiError::MethodNotAllowed { allow }) => {
                assert_eq!(allow, vec![Method::GET, Method::PATCH, Method::DELETE]);
            }
            other => panic!("expected 405, got {other:?}"),
        }
        match t.find(&Method::PUT, "/v1/auth/login") {
            Err(ApiError::MethodNotAllowed { allow }) => assert_eq!(allow, vec![Method::POST]),
            other => panic!("expected 405, got {other:?}"),
        }
    }

    #[test]
    fn literal_segments_win_over_parameters() {
        let mut rs = routes();
        rs.push(route(
            Method::GET,
            "/v1/events/mine",
            "svc.test.mine",
            AuthRule::User,
        ));
        let t = RouteTable::new(rs).expect("compiles");
        let m = t.find(&Method::GET, "/v1/events/mine").expect("matches");
        assert_eq!(m.route.subject, "svc.test.mine");
        assert!(m.params.is_empty());
    }

    #[test]
    fn non_id_params_pass_through() {
        let rs = vec![route(
            Method::GET,
            "/v1/tags/{name}",
            "svc.test.tag",
            AuthRule::Public,
        )];
        let t = RouteTable::new(rs).expect("compiles");
        let m = t.find(&Method::GET, "/v1/tags/rust").expect("matches");
        assert_eq!(m.params.get("name").map(String::as_str), Some("rust"));
    }

    #[test]
    fn admin_routes_are_admin_only_and_durables_are_checked() {
        let admin: Vec<Route> = admin_routes();
        assert_eq!(admin.len(), 15);
        for r in &admin {
            assert_eq!(r.auth, AuthRule::Admin, "{} {}", r.method, r.path);
            assert!(r.path.starts_with("/v1/admin/"), "{}", r.path);
            assert!(
                routes().contains(r),
                "{} {} not in the table",
                r.method,
                r.path
            );
        }
        let t = table();
        let m = t
            .find(&Method::POST, "/v1/admin/consumers/email-calendar_2/pause")
            .expect("matches");
        assert_eq!(m.route.subject, hospital::RPC_PAUSE);
        assert_eq!(
            m.params.get("durable").map(String::as_str),
            Some("email-calendar_2")
        );
        let long = "a".repeat(MAX_DURABLE_LEN + 1);
        for bad in ["a.b", "a*", "%3E", "a%20b", long.as_str()] {
            let err = t
                .find(&Method::POST, &format!("/v1/admin/consumers/{bad}/resume"))
                .expect_err(bad);
            assert_eq!(err.code(), ErrorCode::BadRequest, "{bad}");
        }
        let max = "a".repeat(MAX_DURABLE_LEN);
        assert!(
            t.find(&Method::POST, &format!("/v1/admin/consumers/{max}/resume"))
                .is_ok()
        );
        let err = t
            .find(&Method::GET, "/v1/admin/dlq/messages/not-a-uuid")
            .expect_err("rejected");
        assert_eq!(err.code(), ErrorCode::BadRequest);
        let id = Uuid::now_v7();
        let m = t
            .find(
                &Method::POST,
                &format!("/v1/admin/dlq/messages/{id}/edit-replay"),
            )
            .expect("matches");
        assert_eq!(m.route.subject, hospital::RPC_EDIT_REPLAY);
    }

    #[test]
    fn broken_templates_are_rejected() {
        for bad in ["v1/x", "/v1//x", "/v1/{", "/v1/{}", "/v1/a{b}", "/v1/{a}}"] {
            let r = route(Method::GET, bad, "svc.x", AuthRule::Public);
            assert!(RouteTable::new(vec![r]).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_of_one_method_and_shape_conflict() {
        let mut t = RouteTable::empty();
        let get = |path: &str| route(Method::GET, path, "svc.x", AuthRule::User);
        t.insert(get("/v1/things/{id}")).expect("first");
        match t.insert(get("/v1/things/{thing_id}")) {
            Err(InsertError::Conflict(other)) => assert_eq!(other.path, "/v1/things/{id}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        t.insert(get("/v1/things/mine")).expect("more literal");
        t.insert(route(
            Method::DELETE,
            "/v1/things/{x}",
            "svc.x",
            AuthRule::User,
        ))
        .expect("other method");
        t.insert(get("/v1/things/{id}/parts")).expect("longer");
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn the_gateway_keeps_its_own_paths() {
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/console",
            "/console/login",
            "/console/anything/else",
            "/v1/notifications/stream",
            "/v1/notifications/stream/ticket",
        ] {
            assert!(is_reserved(path), "{path}");
        }
        for path in [
            "/consoles",
            "/v1/notifications",
            "/v1/notifications/{id}/read",
        ] {
            assert!(!is_reserved(path), "{path}");
        }
    }
}
