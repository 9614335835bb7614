//! The route table: which HTTP route goes to which NATS subject, under which auth rule.
//!
//! Routes are data, not handlers: one generic handler serves them all, and the OpenAPI
//! document is generated from the same table. [`routes`] builds the table in one place
//! so it can later be fed from the services' discovery metadata (`$SRV.INFO`, endpoint
//! metadata `{"http": "PUT /v1/events/{id}/rsvp"}`) instead.
//!
//! A few routes are answered by the gateway itself and are *not* in the table:
//! [`native_routes`] lists them for the documentation (the notification stream and its
//! tickets, served by [`crate::stream`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::http::Method;
use contracts::subjects::{auth, calendar, hospital, push};
use uuid::Uuid;

use crate::error::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRule {
    /// Anyone; rate-limited per client IP.
    Public,
    /// A valid access token; rate-limited per user.
    User,
    /// A valid access token with role `admin`.
    Admin,
}

/// One public route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// Path template; `{name}` is a whole-segment parameter, e.g. `/v1/events/{id}`.
    pub path: Cow<'static, str>,
    /// The request/reply subject of the owning service.
    pub subject: Cow<'static, str>,
    pub auth: AuthRule,
    /// Whether the route takes a JSON body (else the service receives `NoBody {}`).
    pub has_body: bool,
    /// Schema names of the request and success bodies (components of the OpenAPI document).
    pub request_schema: Option<&'static str>,
    pub response_schema: Option<&'static str>,
    /// The status of a success, for the documentation (the service's reply decides).
    pub success_status: u16,
    /// Query parameters the route understands, for the documentation.
    pub query: &'static [&'static str],
    /// One line for the documentation.
    pub summary: &'static str,
    /// Whether an `Idempotency-Key` is honoured. Off for routes whose answer is a secret
    /// (tokens), which must not sit in the shared idempotency store.
    pub idempotent: bool,
}

impl Route {
    fn new(method: Method, path: &'static str, subject: &'static str, auth: AuthRule) -> Self {
        Route {
            method,
            path: Cow::Borrowed(path),
            subject: Cow::Borrowed(subject),
            auth,
            has_body: false,
            request_schema: None,
            response_schema: None,
            success_status: 200,
            query: &[],
            summary: "",
            idempotent: true,
        }
    }

    fn secret_response(mut self) -> Self {
        self.idempotent = false;
        self
    }

    fn body(mut self, schema: &'static str) -> Self {
        self.has_body = true;
        self.request_schema = Some(schema);
        self
    }

    fn returns(mut self, status: u16, schema: Option<&'static str>) -> Self {
        self.success_status = status;
        self.response_schema = schema;
        self
    }

    fn query(mut self, names: &'static [&'static str]) -> Self {
        self.query = names;
        self
    }

    fn summary(mut self, summary: &'static str) -> Self {
        self.summary = summary;
        self
    }
}

/// The public API.
pub fn routes() -> Vec<Route> {
    use AuthRule::{Public, User};
    let mut routes = vec![
        Route::new(
            Method::POST,
            "/v1/auth/register",
            auth::RPC_REGISTER,
            Public,
        )
        .body("RegisterRequest")
        .returns(201, Some("User"))
        .summary("Create an account"),
        Route::new(Method::POST, "/v1/auth/login", auth::RPC_LOGIN, Public)
            .body("LoginRequest")
            .returns(200, Some("TokenResponse"))
            .secret_response()
            .summary("Exchange email and password for tokens"),
        Route::new(Method::POST, "/v1/auth/refresh", auth::RPC_REFRESH, Public)
            .body("RefreshRequest")
            .returns(200, Some("TokenResponse"))
            .secret_response()
            .summary("Exchange a refresh token for new tokens (the old one is spent)"),
        Route::new(Method::POST, "/v1/auth/logout", auth::RPC_LOGOUT, Public)
            .body("LogoutRequest")
            .returns(204, None)
            .summary("Revoke a refresh token"),
        Route::new(Method::GET, "/v1/me", auth::RPC_ME, User)
            .returns(200, Some("User"))
            .summary("The caller's account"),
        Route::new(
            Method::GET,
            "/v1/me/preferences",
            auth::RPC_GET_PREFERENCES,
            User,
        )
        .returns(200, Some("Preferences"))
        .summary("The caller's notification preferences"),
        Route::new(
            Method::PUT,
            "/v1/me/preferences",
            auth::RPC_PUT_PREFERENCES,
            User,
        )
        .body("Preferences")
        .returns(200, Some("Preferences"))
        .summary("Replace the caller's notification preferences (absent kinds are on)"),
        Route::new(
            Method::GET,
            "/v1/auth/verify-email",
            auth::RPC_VERIFY_EMAIL,
            Public,
        )
        .returns(200, Some("Accepted"))
        .query(&["token"])
        .summary("Verify an email address with the token from the welcome mail"),
        Route::new(
            Method::POST,
            "/v1/auth/password-reset",
            auth::RPC_REQUEST_PASSWORD_RESET,
            Public,
        )
        .body("PasswordResetRequest")
        .returns(202, Some("Accepted"))
        .summary("Mail a password reset token (always 202)"),
        Route::new(
            Method::POST,
            "/v1/auth/password-reset/confirm",
            auth::RPC_CONFIRM_PASSWORD_RESET,
            Public,
        )
        .body("PasswordResetConfirm")
        .returns(204, None)
        .summary("Set a new password with a reset token"),
        Route::new(
            Method::POST,
            "/v1/unsubscribe",
            auth::RPC_UNSUBSCRIBE,
            Public,
        )
        .returns(200, Some("Accepted"))
        .query(&["token", "kind", "channel"])
        .summary("One-click unsubscribe (RFC 8058) from one kind of notification"),
        Route::new(
            Method::GET,
            "/v1/notifications",
            push::RPC_LIST_NOTIFICATIONS,
            User,
        )
        .returns(200, Some("NotificationPage"))
        .query(&["limit", "cursor", "unread"])
        .summary("The caller's notifications, newest first"),
        Route::new(
            Method::POST,
            "/v1/notifications/{id}/read",
            push::RPC_MARK_READ,
            User,
        )
        .returns(200, Some("Notification"))
        .summary("Mark a notification read"),
        Route::new(Method::POST, "/v1/events", calendar::RPC_CREATE_EVENT, User)
            .body("CreateEventRequest")
            .returns(201, Some("Event"))
            .summary("Create an event organized by the caller"),
        Route::new(Method::GET, "/v1/events", calendar::RPC_LIST_EVENTS, User)
            .returns(200, Some("EventPage"))
            .query(&["from", "to", "mine", "limit", "cursor"])
            .summary("List events by start time"),
        Route::new(
            Method::GET,
            "/v1/events/{id}",
            calendar::RPC_GET_EVENT,
            User,
        )
        .returns(200, Some("Event"))
        .summary("One event"),
        Route::new(
            Method::PATCH,
            "/v1/events/{id}",
            calendar::RPC_UPDATE_EVENT,
            User,
        )
        .body("UpdateEventRequest")
        .returns(200, Some("Event"))
        .summary("Change an event (organizer only)"),
        Route::new(
            Method::DELETE,
            "/v1/events/{id}",
            calendar::RPC_CANCEL_EVENT,
            User,
        )
        .returns(200, Some("Event"))
        .summary("Cancel an event (organizer only)"),
        Route::new(
            Method::PUT,
            "/v1/events/{id}/rsvp",
            calendar::RPC_PUT_RSVP,
            User,
        )
        .body("RsvpRequest")
        .returns(200, Some("RsvpResult"))
        .summary("Set the caller's RSVP"),
        Route::new(
            Method::GET,
            "/v1/events/{id}/rsvps",
            calendar::RPC_LIST_RSVPS,
            User,
        )
        .returns(200, Some("RsvpPage"))
        .query(&["limit", "cursor"])
        .summary("List an event's RSVPs"),
    ];
    routes.extend(admin_routes());
    routes
}

/// Query parameters of the dead-letter index (see `contracts::hospital::DeadLetterFilter`).
const DLQ_FILTER_QUERY: &[&str] = &[
    "durable",
    "subject",
    "message_type",
    "error_kind",
    "error",
    "status",
    "from",
    "to",
    "fingerprint",
    "limit",
    "cursor",
];

/// The message hospital's admin API (role `admin`; the console may call it with its
/// session cookie, see [`crate::console`]).
pub fn admin_routes() -> Vec<Route> {
    use AuthRule::Admin;
    vec![
        Route::new(
            Method::GET,
            "/v1/admin/dlq/messages",
            hospital::RPC_LIST,
            Admin,
        )
        .returns(200, Some("DeadLetterPage"))
        .query(DLQ_FILTER_QUERY)
        .summary("Dead letters, newest first, filtered"),
        Route::new(
            Method::GET,
            "/v1/admin/dlq/messages/{id}",
            hospital::RPC_GET,
            Admin,
        )
        .returns(200, Some("DeadLetterDetail"))
        .summary("One dead letter with its headers, decoded body, history and audit"),
        Route::new(
            Method::GET,
            "/v1/admin/dlq/groups",
            hospital::RPC_GROUPS,
            Admin,
        )
        .returns(200, Some("FailureGroupList"))
        .query(DLQ_FILTER_QUERY)
        .summary("Failures grouped by consumer and cause"),
        Route::new(
            Method::POST,
            "/v1/admin/dlq/replay",
            hospital::RPC_REPLAY,
            Admin,
        )
        .body("ReplayRequest")
        .returns(200, Some("BulkResult"))
        .summary("Re-send parked messages to the consumer that failed them"),
        Route::new(
            Method::POST,
            "/v1/admin/dlq/discard",
            hospital::RPC_DISCARD,
            Admin,
        )
        .body("BulkRequest")
        .returns(200, Some("BulkResult"))
        .summary("Drop parked messages on purpose, with a reason"),
        Route::new(
            Method::POST,
            "/v1/admin/dlq/purge",
            hospital::RPC_PURGE,
            Admin,
        )
        .body("BulkRequest")
        .returns(200, Some("BulkResult"))
        .summary("Discard parked messages and delete their stored copies"),
        Route::new(
            Method::POST,
            "/v1/admin/dlq/messages/{id}/edit-replay",
            hospital::RPC_EDIT_REPLAY,
            Admin,
        )
        .body("EditReplayRequest")
        .returns(200, Some("EditReplayResult"))
        .summary("Replace a dead letter's body and replay the edited copy"),
        Route::new(Method::GET, "/v1/admin/dlq/jobs", hospital::RPC_JOBS, Admin)
            .returns(200, Some("JobList"))
            .query(&["limit", "status"])
            .summary("Bulk jobs, newest first"),
        Route::new(
            Method::GET,
            "/v1/admin/dlq/jobs/{id}",
            hospital::RPC_JOB,
            Admin,
        )
        .returns(200, Some("Job"))
        .summary("One bulk job and its progress"),
        Route::new(
            Method::GET,
            "/v1/admin/dlq/stats",
            hospital::RPC_STATS,
            Admin,
        )
        .returns(200, Some("HospitalStats"))
        .summary("Consumers' lag, parked counts and pause state; the DLQ stream's size"),
        Route::new(
            Method::GET,
            "/v1/admin/dlq/where",
            hospital::RPC_WHERE,
            Admin,
        )
        .returns(200, Some("WhereaboutsList"))
        .query(&["message_id", "trace_id"])
        .summary("Where a message is: each consumer's outcome"),
        Route::new(Method::GET, "/v1/admin/audit", hospital::RPC_AUDIT, Admin)
            .returns(200, Some("AuditPage"))
            .query(&["limit", "cursor", "action", "target"])
            .summary("Ops actions, newest first"),
        Route::new(
            Method::POST,
            "/v1/admin/consumers/{durable}/pause",
            hospital::RPC_PAUSE,
            Admin,
        )
        .body("PauseRequest")
        .returns(200, Some("ConsumerState"))
        .summary("Pause a durable consumer (deliveries stop until resumed or expired)"),
        Route::new(
            Method::POST,
            "/v1/admin/consumers/{durable}/resume",
            hospital::RPC_RESUME,
            Admin,
        )
        .body("ResumeRequest")
        .returns(200, Some("ConsumerState"))
        .summary("Resume a paused durable consumer"),
    ]
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
    /// Media type and schema of a success (for a stream: of each event's data).
    pub response_content_type: &'static str,
    pub response_schema: &'static str,
    pub query: &'static [&'static str],
    /// Request headers the route understands besides `Authorization`.
    pub headers: &'static [&'static str],
    pub error_statuses: &'static [u16],
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
}

/// The routes the gateway answers itself.
pub fn native_routes() -> Vec<NativeRoute> {
    use crate::stream::{STREAM_PATH, TICKET_PATH};
    vec![
        NativeRoute {
            method: Method::POST,
            path: TICKET_PATH,
            auth: AuthRule::User,
            accepts_ticket: false,
            success_status: 201,
            response_content_type: "application/json",
            response_schema: "StreamTicket",
            query: &[],
            headers: &[],
            error_statuses: &[401, 429, 500, 503, 504],
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
            response_content_type: "text/event-stream",
            response_schema: "Notification",
            query: &["ticket", "last_event_id"],
            headers: &["Last-Event-ID"],
            error_statuses: &[400, 401, 429, 500, 503, 504],
            operation_id: "gateway_notifications_stream",
            summary: "The caller's new notifications, live, as Server-Sent Events",
            description: "Answered by the gateway. Each notification is an event with \
                          `id: <notification id>`, `event: notification` and the \
                          `Notification` as JSON in `data`. With `Last-Event-ID` (header, or \
                          query `last_event_id`) the notifications missed since that id come \
                          first, oldest first, without duplicates. An `event: warning` \
                          (plain text) says when missed notifications cannot be loaded; the \
                          stream then carries new ones only. Comments keep an idle stream \
                          alive. Authenticate with a bearer token or a ticket from \
                          `POST /v1/notifications/stream/ticket`.",
        },
    ]
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

/// The compiled table the handler matches against.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<(Route, Vec<Segment>)>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Result<Self, TemplateError> {
        let routes = routes
            .into_iter()
            .map(|r| compile(&r.path).map(|segs| (r, segs)))
            .collect::<Result<_, _>>()?;
        Ok(RouteTable { routes })
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|(r, _)| r)
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
    use contracts::ErrorCode;

    fn table() -> RouteTable {
        RouteTable::new(routes()).expect("the built-in table compiles")
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
        rs.push(Route::new(
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
        let rs = vec![Route::new(
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
        assert_eq!(admin.len(), 14);
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
            let r = Route::new(Method::GET, bad, "svc.x", AuthRule::Public);
            assert!(RouteTable::new(vec![r]).is_err(), "{bad}");
        }
    }
}
