//! `GET /openapi.json`, generated from the route table, the gateway's own routes, the
//! schemas the services publish with their routes and the gateway's own (errors, health,
//! stream tickets), so the document cannot drift from what the gateway actually routes.
//! It is rebuilt with every discovery round.

use std::collections::BTreeMap;

use axum::http::Method;
use contracts::api::{
    Health, HealthCheck, LoginRequest, Notification, NotificationKind, StreamTicket,
};
use contracts::{ErrorCode, FieldError, Problem};
use utoipa::ToSchema;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AllOfBuilder, ComponentsBuilder, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    Content, InfoBuilder, KnownFormat, OpenApi, OpenApiBuilder, Ref, RefOr, Required,
    ResponseBuilder,
};

use crate::console::{CSRF_HEADER, ConsoleSession, SESSION_COOKIE};
use crate::error::PROBLEM_JSON;
use crate::routes::{
    AuthRule, MAX_DURABLE_LEN, NativeRoute, ParamKind, Route, RouteTable, native_routes,
};
use runtime::routes::Schemas as Discovered;

/// Name of the bearer security scheme.
const BEARER: &str = "bearer";
/// Name of the stream-ticket security scheme (only the notification stream takes it).
const TICKET: &str = "stream_ticket";
/// Name of the console's session-cookie scheme (admin routes only).
const SESSION: &str = "console_session";

type Schemas = BTreeMap<String, RefOr<Schema>>;

fn add<T: ToSchema>(schemas: &mut Schemas) {
    schemas.insert(T::name().into_owned(), T::schema());
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    schemas.extend(nested);
}

/// The schemas of what the gateway answers itself: errors, health, the notification
/// stream and its tickets. The services publish the schemas of their routes.
fn own_schemas() -> Schemas {
    let mut s = Schemas::new();
    add::<Problem>(&mut s);
    add::<ErrorCode>(&mut s);
    add::<FieldError>(&mut s);
    add::<Health>(&mut s);
    add::<HealthCheck>(&mut s);
    add::<Notification>(&mut s);
    add::<NotificationKind>(&mut s);
    add::<StreamTicket>(&mut s);
    add::<ConsoleSession>(&mut s);
    add::<LoginRequest>(&mut s);
    s
}

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        Method::TRACE => HttpMethod::Trace,
        _ => return None,
    })
}

fn string_schema(format: Option<KnownFormat>) -> Schema {
    let mut b = ObjectBuilder::new().schema_type(Type::String);
    if let Some(f) = format {
        b = b.format(Some(SchemaFormat::KnownFormat(f)));
    }
    b.into()
}

fn path_params(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// The codes of the statuses services answer, for a route whose service declared none
/// (an older build): every code that can travel with those statuses.
const UNDECLARED_STATUSES: &[u16] = &[400, 401, 403, 404, 409, 422];

/// Codes only the gateway itself answers: a service that declares one is ignored.
const GATEWAY_ONLY: &[ErrorCode] = &[
    ErrorCode::RouteNotFound,
    ErrorCode::MethodNotAllowed,
    ErrorCode::MalformedJson,
    ErrorCode::IdempotencyKeyInFlight,
    ErrorCode::IdempotencyKeyReused,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
];

/// Every error code a forwarded route can answer: the gateway's own (by the route's
/// auth rule, body and idempotency) and the service's (as it declared them).
pub fn error_codes(route: &Route) -> Vec<ErrorCode> {
    use ErrorCode::*;
    // A bad path parameter, query string or `Idempotency-Key`; transport and limits.
    let mut codes = vec![
        BadRequest,
        RateLimited,
        Internal,
        ServiceUnavailable,
        Timeout,
    ];
    if route.auth != AuthRule::Public {
        codes.push(Unauthorized);
    }
    if route.auth == AuthRule::Admin {
        // The role check, and the CSRF check of a console session.
        codes.push(Forbidden);
    }
    if route.has_body {
        // The service answers `validation_failed` for a body that does not fit.
        codes.extend([
            MalformedJson,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
        ]);
    }
    if route.method == Method::POST && route.idempotent {
        codes.extend([IdempotencyKeyInFlight, IdempotencyKeyReused]);
    }
    match &route.errors {
        Some(declared) => codes.extend(declared.iter().filter(|c| !GATEWAY_ONLY.contains(c))),
        None => codes.extend(
            ErrorCode::ALL
                .iter()
                .filter(|c| UNDECLARED_STATUSES.contains(&c.status()) && !GATEWAY_ONLY.contains(c)),
        ),
    }
    normalize(codes)
}

/// Sorted by status, then in the order of [`ErrorCode::ALL`], without duplicates.
fn normalize(mut codes: Vec<ErrorCode>) -> Vec<ErrorCode> {
    let rank = |c: &ErrorCode| ErrorCode::ALL.iter().position(|a| a == c);
    codes.sort_by_key(|c| (c.status(), rank(c)));
    codes.dedup();
    codes
}

/// The codes grouped by the status they travel with.
fn by_status(codes: &[ErrorCode]) -> BTreeMap<u16, Vec<ErrorCode>> {
    let mut map: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in normalize(codes.to_vec()) {
        map.entry(code.status()).or_default().push(code);
    }
    map
}

/// The error response of one status: a `Problem` whose `status` and `code` are narrowed
/// to what this operation answers with that status, so a client (or a fuzzer checking
/// conformance) knows exactly which codes to expect.
fn problem_response(status: u16, codes: &[ErrorCode]) -> utoipa::openapi::Response {
    let listed: Vec<String> = codes
        .iter()
        .map(|c| format!("`{c}` ({})", c.title()))
        .collect();
    let narrowed = ObjectBuilder::new()
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        )
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes.iter().map(|c| c.as_str()))),
        );
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(Problem::name()))
        .item(narrowed);
    let mut response = ResponseBuilder::new()
        .description(format!("Problem codes: {}", listed.join(", ")))
        .content(PROBLEM_JSON, Content::new(Some(schema)));
    match status {
        401 => {
            response = response.header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(string_schema(None))
                    .description(Some("`Bearer` when no valid access token was sent"))
                    .build(),
            );
        }
        429 | 503 => {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    )
                    .description(Some("Seconds to wait before retrying"))
                    .build(),
            );
        }
        _ => {}
    }
    response.build()
}

/// Adds an error response per status of `codes`.
fn with_errors(mut op: OperationBuilder, codes: &[ErrorCode]) -> OperationBuilder {
    for (status, codes) in by_status(codes) {
        op = op.response(status.to_string(), problem_response(status, &codes));
    }
    op
}

fn json_response(description: &str, schema: Option<&str>) -> utoipa::openapi::Response {
    let mut b = ResponseBuilder::new().description(description);
    if let Some(schema) = schema {
        b = b.content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(schema))),
        );
    }
    b.build()
}

fn operation(route: &Route) -> utoipa::openapi::path::Operation {
    let tag = route.path.split('/').nth(2).unwrap_or("api");
    let mut op = OperationBuilder::new()
        .tag(tag)
        .summary(Some(route.summary.as_str()))
        .description(Some(format!(
            "Served by `{}` (`{}`).",
            route.service, route.subject
        )))
        .operation_id(Some(
            route.subject.trim_start_matches("svc.").replace('.', "_"),
        ));
    for name in path_params(&route.path) {
        let schema: Schema = match ParamKind::of(name) {
            ParamKind::Uuid => string_schema(Some(KnownFormat::Uuid)),
            ParamKind::Durable => ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^[A-Za-z0-9_-]{{1,{MAX_DURABLE_LEN}}}$")))
                .into(),
            ParamKind::Segment => string_schema(None),
        };
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(schema)),
        );
    }
    for name in &route.query {
        // A declared schema that does not read as one is documented as a string.
        let schema = route
            .query_schemas
            .get(name)
            .and_then(|v| serde_json::from_value::<Schema>(v.clone()).ok())
            .unwrap_or_else(|| string_schema(None));
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .schema(Some(schema)),
        );
    }
    if route.method == Method::POST && route.idempotent {
        op = op.parameter(
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "1-255 visible ASCII characters; a retry with the same key and body \
                     replays the first response (header `Idempotent-Replayed: true`)",
                ))
                .schema(Some(string_schema(None))),
        );
    }
    if let Some(schema) = &route.request_schema {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name(schema))),
                )
                .build(),
        ));
    }
    op = op.response(
        route.success_status.to_string(),
        json_response("Success", route.response_schema.as_deref()),
    );
    op = with_errors(op, &error_codes(route));
    if route.auth == AuthRule::Admin && route.method != Method::GET {
        op = op.parameter(
            ParameterBuilder::new()
                .name(CSRF_HEADER)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Required when authenticated by the console's session cookie: the value \
                     of the `mesh_csrf` cookie",
                ))
                .schema(Some(string_schema(None))),
        );
    }
    if route.auth != AuthRule::Public {
        op = op.security(SecurityRequirement::new(BEARER, Vec::<String>::new()));
    }
    if route.auth == AuthRule::Admin {
        // The console's alternative: its session cookie (used only without a bearer token).
        op = op.security(SecurityRequirement::new(SESSION, Vec::<String>::new()));
    }
    op.build()
}

/// The operation of a route the gateway answers itself.
fn native_operation(route: &NativeRoute) -> utoipa::openapi::path::Operation {
    let tag = route.path.split('/').nth(2).unwrap_or("api");
    let mut op = OperationBuilder::new()
        .tag(tag)
        .summary(Some(route.summary))
        .description(Some(route.description))
        .operation_id(Some(route.operation_id));
    for name in route.query {
        op = op.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .schema(Some(string_schema(None))),
        );
    }
    for name in route.headers {
        op = op.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .schema(Some(string_schema(None))),
        );
    }
    if let Some(schema) = route.request_schema {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name(schema))),
                )
                .build(),
        ));
    }
    let mut success = ResponseBuilder::new().description("Success");
    if let Some((content_type, schema)) = route.response {
        success = success.content(
            content_type,
            Content::new(Some(Ref::from_schema_name(schema))),
        );
    }
    for (name, description) in route.response_headers {
        success = success.header(
            *name,
            HeaderBuilder::new()
                .schema(string_schema(None))
                .description(Some(*description))
                .build(),
        );
    }
    op = op.response(route.success_status.to_string(), success.build());
    op = with_errors(op, route.errors);
    if route.auth != AuthRule::Public {
        // Alternatives: a bearer token, or (where accepted) a ticket.
        op = op.security(SecurityRequirement::new(BEARER, Vec::<String>::new()));
        if route.accepts_ticket {
            op = op.security(SecurityRequirement::new(TICKET, Vec::<String>::new()));
        }
    }
    op.build()
}

/// The operations of health, metrics and this document (no auth, no rate limit).
fn own_operations() -> Vec<(&'static str, utoipa::openapi::path::Operation)> {
    let get = |id: &str, summary: &str| {
        OperationBuilder::new()
            .tag("operations")
            .operation_id(Some(id))
            .summary(Some(summary))
    };
    let timeout_only = [ErrorCode::Timeout];
    vec![
        (
            "/healthz",
            with_errors(
                get("gateway_healthz", "Liveness: the process runs")
                    .response("200", json_response("Report", Some("Health"))),
                &timeout_only,
            )
            .build(),
        ),
        (
            "/readyz",
            with_errors(
                get(
                    "gateway_readyz",
                    "Readiness: NATS connected and signing keys loaded",
                )
                .response("200", json_response("Ready", Some("Health")))
                .response(
                    "503",
                    json_response(
                        "Not ready: the report says which check fails",
                        Some("Health"),
                    ),
                ),
                &timeout_only,
            )
            .build(),
        ),
        (
            "/metrics",
            with_errors(
                get(
                    "gateway_metrics",
                    "Prometheus metrics (text exposition format)",
                )
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("Metrics")
                        .content("text/plain", Content::new(Some(string_schema(None))))
                        .build(),
                ),
                &timeout_only,
            )
            .build(),
        ),
        (
            "/openapi.json",
            with_errors(
                get(
                    "gateway_openapi",
                    "This document, of the routes currently discovered",
                )
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("OpenAPI 3.1 document")
                        .content(
                            "application/json",
                            Content::new(Some(ObjectBuilder::new().schema_type(Type::Object))),
                        )
                        .build(),
                ),
                &timeout_only,
            )
            .build(),
        ),
    ]
}

/// The whole document: `discovered` are the schemas the services publish (the gateway's
/// own take precedence on a name clash).
pub fn document(routes: &RouteTable, discovered: &Discovered) -> serde_json::Value {
    let mut paths = PathsBuilder::new();
    for route in routes.routes() {
        let Some(method) = http_method(&route.method) else {
            tracing::warn!(method = %route.method, path = %route.path, "method not documentable");
            continue;
        };
        paths = paths.path(route.path.clone(), PathItem::new(method, operation(route)));
    }
    for route in native_routes() {
        let Some(method) = http_method(&route.method) else {
            continue;
        };
        paths = paths.path(route.path, PathItem::new(method, native_operation(&route)));
    }
    for (path, op) in own_operations() {
        paths = paths.path(path, PathItem::new(HttpMethod::Get, op));
    }
    let components = ComponentsBuilder::new()
        .schemas_from_iter(own_schemas())
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        )
        .security_scheme(
            SESSION,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "The web console's session (set by `POST /console/login`, admins only); \
                 accepted on `/v1/admin/…` without an `Authorization` header, and on \
                 anything but GET only with `X-CSRF-Token` equal to the `mesh_csrf` cookie",
            ))),
        )
        .security_scheme(
            TICKET,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "ticket",
                "A single-use ticket from `POST /v1/notifications/stream/ticket`",
            ))),
        )
        .build();
    let doc: OpenApi = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Mesh API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The public API of the mesh. Errors are RFC 9457 problem+json bodies \
                     with a stable `code`.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build();
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    // The discovered schemas are JSON already: added as they are, not re-parsed.
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (name, schema) in discovered {
            schemas
                .entry(name.clone())
                .or_insert_with(|| schema.clone());
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    fn doc() -> serde_json::Value {
        let built = fixture::built();
        document(&built.table, &built.schemas)
    }

    #[test]
    fn every_route_and_referenced_schema_is_documented() {
        let json = doc();
        let schemas = &json["components"]["schemas"];
        for route in fixture::routes() {
            let method = route.method.as_str().to_lowercase();
            let op = &json["paths"][&*route.path][&method];
            assert!(op.is_object(), "{} {} missing", route.method, route.path);
            for schema in route
                .request_schema
                .iter()
                .chain(route.response_schema.iter())
            {
                assert!(schemas[schema].is_object(), "schema {schema} missing");
                let body = if route.request_schema.as_ref() == Some(schema) {
                    &op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                } else {
                    &op["responses"][route.success_status.to_string()]["content"]["application/json"]
                        ["schema"]["$ref"]
                };
                assert_eq!(*body, format!("#/components/schemas/{schema}"));
            }
            // Every reference resolves.
            for r in refs(op) {
                let name = r.trim_start_matches("#/components/schemas/");
                assert!(schemas[name].is_object(), "{r} dangles");
            }
            assert!(op["responses"]["500"].is_object());
            assert_eq!(op["security"].is_array(), route.auth != AuthRule::Public);
            for name in path_params(&route.path) {
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(declared, "{} {}: {name}", route.method, route.path);
            }
        }
        for name in [
            "Problem",
            "ErrorCode",
            "FieldError",
            "RsvpCounts",
            "EventStatus",
            "RsvpStatus",
            "Role",
            "Health",
        ] {
            assert!(schemas[name].is_object(), "schema {name} missing");
        }
        assert!(json["components"]["securitySchemes"][BEARER].is_object());
        assert!(json["components"]["securitySchemes"][TICKET].is_object());
        assert!(json["components"]["securitySchemes"][SESSION].is_object());
    }

    #[test]
    fn admin_routes_use_hospital_schemas_and_typed_params() {
        let json = doc();
        let schemas = &json["components"]["schemas"];
        for name in [
            "ErrorKind",
            "Diagnosis",
            "DeadLetterStatus",
            "DeadLetter",
            "DeadLetterPage",
            "DeadLetterDetail",
            "Header",
            "DeadLetterFilter",
            "FailureGroup",
            "FailureGroupList",
            "Selection",
            "GroupKey",
            "ReplayRequest",
            "BulkRequest",
            "BulkResult",
            "JobKind",
            "JobStatus",
            "Job",
            "JobList",
            "EditReplayRequest",
            "EditReplayResult",
            "PauseRequest",
            "ResumeRequest",
            "ConsumerState",
            "HospitalStats",
            "Outcome",
            "ConsumerOutcome",
            "MessageWhereabouts",
            "WhereaboutsList",
            "AuditEntry",
            "AuditPage",
        ] {
            assert!(schemas[name].is_object(), "schema {name} missing");
        }
        let pause = &json["paths"]["/v1/admin/consumers/{durable}/pause"]["post"];
        let durable = &pause["parameters"][0];
        assert_eq!(durable["name"], "durable");
        assert!(durable["schema"]["pattern"].is_string(), "{durable}");
        assert_eq!(pause["security"].as_array().map(Vec::len), Some(2));
        let get = &json["paths"]["/v1/admin/dlq/messages/{id}"]["get"];
        assert_eq!(get["parameters"][0]["schema"]["format"], "uuid");
    }

    #[test]
    fn native_routes_are_documented() {
        let json = doc();
        for route in native_routes() {
            let method = route.method.as_str().to_lowercase();
            let op = &json["paths"][route.path][&method];
            assert!(op.is_object(), "{} {} missing", route.method, route.path);
            let success = &op["responses"][route.success_status.to_string()];
            assert!(success.is_object(), "{} {}", route.method, route.path);
            if let Some((content_type, schema)) = route.response {
                assert_eq!(
                    success["content"][content_type]["schema"]["$ref"],
                    format!("#/components/schemas/{schema}")
                );
                assert!(json["components"]["schemas"][schema].is_object());
            }
            if let Some(schema) = route.request_schema {
                assert_eq!(
                    op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
                    format!("#/components/schemas/{schema}")
                );
            }
            assert_eq!(op["security"].is_array(), route.auth != AuthRule::Public);
            for code in route.errors {
                assert_documents(op, *code, &format!("{} {}", route.method, route.path));
            }
        }
        let stream = &json["paths"]["/v1/notifications/stream"]["get"];
        assert_eq!(stream["security"].as_array().map(Vec::len), Some(2));
        assert!(
            stream["responses"]["200"]["content"]["text/event-stream"].is_object(),
            "{stream}"
        );
        let login = &json["paths"]["/console/login"]["post"];
        assert!(login["responses"]["200"]["headers"]["Set-Cookie"].is_object());
        assert_eq!(
            login["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ConsoleSession"
        );
        assert!(json["paths"]["/console/logout"]["post"]["responses"]["204"].is_object());
    }

    /// `op` answers `code` with its status, as problem+json narrowed to that code.
    fn assert_documents(op: &serde_json::Value, code: ErrorCode, what: &str) {
        let status = code.status().to_string();
        let response = &op["responses"][&status];
        let schema = &response["content"][PROBLEM_JSON]["schema"];
        assert_eq!(
            schema["allOf"][0]["$ref"], "#/components/schemas/Problem",
            "{what} {status}: {response}"
        );
        let narrowed = &schema["allOf"][1]["properties"];
        assert_eq!(narrowed["status"]["enum"][0], code.status(), "{what}");
        let codes = narrowed["code"]["enum"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            codes.contains(&serde_json::Value::from(code.as_str())),
            "{what} {status} lacks {code}: {codes:?}"
        );
        let description = response["description"].as_str().unwrap_or_default();
        assert!(description.contains(&format!("`{code}`")), "{what}");
    }

    /// The codes `op` documents for `status`.
    fn codes_of(op: &serde_json::Value, status: u16) -> Vec<String> {
        op["responses"][status.to_string()]["content"][PROBLEM_JSON]["schema"]["allOf"][1]
            ["properties"]["code"]["enum"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_operation_documents_the_errors_it_can_answer() {
        let json = doc();
        for route in fixture::routes() {
            let what = format!("{} {}", route.method, route.path);
            let op = &json["paths"][&*route.path][route.method.as_str().to_lowercase()];
            let mut expected = vec![
                ErrorCode::BadRequest,
                ErrorCode::RateLimited,
                ErrorCode::Internal,
                ErrorCode::ServiceUnavailable,
                ErrorCode::Timeout,
            ];
            if route.auth != AuthRule::Public {
                expected.push(ErrorCode::Unauthorized);
            }
            if route.auth == AuthRule::Admin {
                expected.push(ErrorCode::Forbidden);
            }
            if route.has_body {
                expected.extend([
                    ErrorCode::MalformedJson,
                    ErrorCode::PayloadTooLarge,
                    ErrorCode::UnsupportedMediaType,
                    ErrorCode::ValidationFailed,
                ]);
            }
            if route.method == Method::POST && route.idempotent {
                expected.extend([
                    ErrorCode::IdempotencyKeyInFlight,
                    ErrorCode::IdempotencyKeyReused,
                ]);
            }
            expected.extend(route.errors.clone().unwrap_or_default());
            for code in expected {
                assert_documents(op, code, &what);
            }
            // No status without a code, no code twice, and nothing a route cannot answer.
            let responses = op["responses"].as_object().cloned().unwrap_or_default();
            for (status, _) in responses.iter().filter(|(s, _)| s.starts_with(['4', '5'])) {
                let status: u16 = status.parse().unwrap_or_default();
                let codes = codes_of(op, status);
                assert!(!codes.is_empty(), "{what} {status}");
                let mut unique = codes.clone();
                unique.dedup();
                assert_eq!(unique, codes, "{what} {status}");
            }
            if !route.has_body {
                assert!(op["responses"]["413"].is_null(), "{what}");
                assert!(op["responses"]["415"].is_null(), "{what}");
            }
            assert!(op["responses"]["429"]["headers"]["Retry-After"].is_object());
        }
        // Declared codes narrow what a route documents.
        let get = &json["paths"]["/v1/events/{id}"]["get"];
        assert!(get["responses"]["409"].is_null(), "{get}");
        let list = &json["paths"]["/v1/events"]["get"]["parameters"];
        let limit = list
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
            .expect("limit documented");
        assert_eq!(limit["schema"]["type"], "integer", "{limit}");
        assert_eq!(limit["schema"]["maximum"], 200, "{limit}");
        assert_eq!(codes_of(get, 404), vec!["not_found"]);
        let rsvp = &json["paths"]["/v1/events/{id}/rsvp"]["put"];
        assert_eq!(
            codes_of(rsvp, 409),
            vec!["event_full", "event_cancelled", "event_past"]
        );
        assert_eq!(codes_of(rsvp, 422), vec!["validation_failed"]);
        let create = &json["paths"]["/v1/events"]["post"];
        assert_eq!(codes_of(create, 409), vec!["idempotency_key_in_flight"]);
        assert_eq!(
            codes_of(create, 422),
            vec![
                "validation_failed",
                "time_zone_mismatch",
                "idempotency_key_reused"
            ]
        );
    }

    #[test]
    fn undeclared_routes_document_every_code_of_the_usual_statuses() {
        let mut route = fixture::routes()
            .into_iter()
            .find(|r| r.path == "/v1/events/{id}" && r.method == Method::GET)
            .expect("route");
        route.errors = None;
        let codes = error_codes(&route);
        for code in [
            ErrorCode::NotFound,
            ErrorCode::EventFull,
            ErrorCode::Forbidden,
        ] {
            assert!(codes.contains(&code), "{code}");
        }
        assert!(!codes.contains(&ErrorCode::RouteNotFound));
        assert!(!codes.contains(&ErrorCode::PayloadTooLarge));
    }

    #[test]
    fn health_metrics_and_the_document_itself_are_documented() {
        let json = doc();
        for path in crate::routes::OWN_PATHS {
            let op = &json["paths"][*path]["get"];
            assert!(op["responses"]["200"].is_object(), "{path}");
            assert!(op["security"].is_null(), "{path}");
        }
        assert_eq!(
            json["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/Health"
        );
    }

    /// Every `$ref` under `value`.
    fn refs(value: &serde_json::Value) -> Vec<String> {
        match value {
            serde_json::Value::Object(m) => m
                .iter()
                .flat_map(|(k, v)| match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => vec![r.to_owned()],
                    _ => refs(v),
                })
                .collect(),
            serde_json::Value::Array(a) => a.iter().flat_map(refs).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let json = doc();
        let schemas = &json["components"]["schemas"];
        let all = refs(&json);
        assert!(all.len() > 50, "{}", all.len());
        for r in all {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(schemas[name].is_object(), "{r} dangles");
        }
    }

    #[test]
    fn the_gateway_documents_its_own_routes_without_services() {
        let json = document(&RouteTable::empty(), &Discovered::new());
        assert!(json["paths"]["/v1/notifications/stream"]["get"].is_object());
        assert!(json["paths"]["/healthz"]["get"].is_object());
        assert!(json["paths"]["/v1/events"].is_null());
        for r in refs(&json) {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                json["components"]["schemas"][name].is_object(),
                "{r} dangles"
            );
        }
    }
}
