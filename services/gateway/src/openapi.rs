//! `GET /openapi.json`, generated from the route table, the gateway's own routes, the
//! schemas the services publish with their routes and the gateway's own (errors, health,
//! stream tickets), so the document cannot drift from what the gateway actually routes.
//! It is rebuilt with every discovery round.

use std::collections::BTreeMap;

use axum::http::Method;
use contracts::api::{Health, HealthCheck, Notification, NotificationKind, StreamTicket};
use contracts::{ErrorCode, FieldError, Problem};
use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    Content, InfoBuilder, KnownFormat, OpenApi, OpenApiBuilder, Ref, RefOr, Required,
    ResponseBuilder,
};

use crate::console::{CSRF_HEADER, SESSION_COOKIE};
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

/// The error statuses a route can answer.
fn error_statuses(route: &Route) -> Vec<u16> {
    let mut s = vec![400, 401, 404, 429, 500, 503, 504];
    if route.auth != AuthRule::Public {
        s.push(403);
    }
    if route.method != Method::GET {
        s.push(409);
    }
    if route.has_body {
        s.extend([413, 415]);
    }
    if route.has_body || route.method == Method::POST {
        s.push(422);
    }
    s.sort_unstable();
    s
}

/// "Problem codes: `a`, `b`" for the codes that travel with `status`.
fn codes_for(status: u16) -> String {
    let codes: Vec<String> = ErrorCode::ALL
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| format!("`{c}`"))
        .collect();
    format!("Problem codes: {}", codes.join(", "))
}

fn problem_response(status: u16) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(codes_for(status))
        .content(
            PROBLEM_JSON,
            Content::new(Some(Ref::from_schema_name(Problem::name()))),
        )
        .build()
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
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .schema(Some(string_schema(None))),
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
    for status in error_statuses(route) {
        op = op.response(status.to_string(), problem_response(status));
    }
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
    op = op.response(
        route.success_status.to_string(),
        ResponseBuilder::new()
            .description("Success")
            .content(
                route.response_content_type,
                Content::new(Some(Ref::from_schema_name(route.response_schema))),
            )
            .build(),
    );
    for status in route.error_statuses {
        op = op.response(status.to_string(), problem_response(*status));
    }
    if route.auth != AuthRule::Public {
        // Alternatives: a bearer token, or (where accepted) a ticket.
        op = op.security(SecurityRequirement::new(BEARER, Vec::<String>::new()));
        if route.accepts_ticket {
            op = op.security(SecurityRequirement::new(TICKET, Vec::<String>::new()));
        }
    }
    op.build()
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
    for (path, summary) in [
        ("/healthz", "Liveness: the process runs"),
        (
            "/readyz",
            "Readiness: NATS connected and signing keys loaded (503 otherwise)",
        ),
    ] {
        let op = OperationBuilder::new()
            .tag("health")
            .summary(Some(summary))
            .response("200", json_response("Report", Some("Health")))
            .build();
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
            let content = &op["responses"][route.success_status.to_string()]["content"];
            assert_eq!(
                content[route.response_content_type]["schema"]["$ref"],
                format!("#/components/schemas/{}", route.response_schema)
            );
            assert!(json["components"]["schemas"][route.response_schema].is_object());
            assert!(op["security"].is_array());
        }
        let stream = &json["paths"]["/v1/notifications/stream"]["get"];
        assert_eq!(stream["security"].as_array().map(Vec::len), Some(2));
        assert!(
            stream["responses"]["200"]["content"]["text/event-stream"].is_object(),
            "{stream}"
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
