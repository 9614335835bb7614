//! The message hospital's admin API: admin-only, forwarded to the hospital's subjects.

use contracts::Role;
use contracts::rpc::RpcReply;
use contracts::subjects::hospital;
use gateway::routes::Route;
use serde_json::json;
use uuid::Uuid;

use crate::fixture::admin_routes;
use crate::helpers::{Stub, TestApp, assert_problem, spawn_app, stub_reply};

/// A concrete path for a route template.
fn path_of(route: &Route, id: Uuid) -> String {
    route
        .path
        .replace("{id}", &id.to_string())
        .replace("{durable}", "email-calendar")
}

fn request(app: &TestApp, route: &Route, path: &str) -> reqwest::RequestBuilder {
    let mut request = app
        .http
        .request(route.method.clone(), app.url(path))
        .header("x-csrf-token", "irrelevant-for-bearer-and-anonymous");
    if route.has_body {
        request = request.json(&json!({"reason": "test"}));
    }
    request
}

/// One stub per admin subject, answering `{}`.
async fn stub_all(app: &TestApp) -> Vec<Stub> {
    let mut stubs = Vec::new();
    for route in admin_routes() {
        stubs.push(stub_reply(&app.nats, &route.subject, RpcReply::ok(json!({}))).await);
    }
    stubs
}

#[tokio::test]
async fn every_admin_route_refuses_users_and_anonymous_callers() {
    let app = spawn_app().await;
    let stubs = stub_all(&app).await;
    let routes = admin_routes();
    assert_eq!(routes.len(), 15);

    for route in &routes {
        let path = path_of(route, Uuid::now_v7());
        let as_user = request(&app, route, &path)
            .bearer_auth(app.signer.token(Uuid::now_v7(), Role::User, 300))
            .send()
            .await
            .expect("send");
        assert_eq!(
            as_user.status(),
            403,
            "{} {} as a plain user",
            route.method,
            path
        );
        assert_problem(as_user, 403, "forbidden").await;

        let anonymous = request(&app, route, &path).send().await.expect("send");
        assert_eq!(
            anonymous.status(),
            401,
            "{} {} without a token",
            route.method,
            path
        );
        assert_problem(anonymous, 401, "unauthorized").await;

        // A session cookie belonging to a plain user is refused the same way.
        let user_cookie = format!(
            "mesh_session={}; mesh_csrf=c",
            app.signer.token(Uuid::now_v7(), Role::User, 300)
        );
        let by_cookie = app
            .http
            .request(route.method.clone(), app.url(&path))
            .header("cookie", user_cookie)
            .header("x-csrf-token", "c")
            .json(&json!({"reason": "test"}))
            .send()
            .await
            .expect("send");
        assert_problem(by_cookie, 403, "forbidden").await;
    }
    let reached: usize = stubs.iter().map(Stub::count).sum();
    assert_eq!(reached, 0, "nothing reached the hospital");
}

#[tokio::test]
async fn admins_reach_the_hospital_with_params_query_and_body() {
    let app = spawn_app().await;
    let stubs = stub_all(&app).await;
    let admin = Uuid::now_v7();
    let token = app.signer.token(admin, Role::Admin, 300);

    for (route, stub) in admin_routes().iter().zip(&stubs) {
        let id = Uuid::now_v7();
        let path = path_of(route, id);
        let mut request = app
            .http
            .request(route.method.clone(), app.url(&path))
            .bearer_auth(&token);
        if route.has_body {
            request = request.json(&json!({"reason": "because"}));
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 200, "{} {}", route.method, path);
        let seen = stub.seen();
        assert_eq!(seen.len(), 1, "{} {}", route.method, path);
        let caller = seen[0].request.caller.clone().expect("caller");
        assert_eq!((caller.user_id, caller.role), (admin, Role::Admin));
        if route.path.contains("{id}") {
            assert_eq!(seen[0].request.params.get("id"), Some(&id.to_string()));
        }
        if route.path.contains("{durable}") {
            assert_eq!(
                seen[0].request.params.get("durable").map(String::as_str),
                Some("email-calendar")
            );
        }
        if route.has_body {
            assert_eq!(seen[0].request.body, json!({"reason": "because"}));
        }
    }

    // The list's stub sees the query.
    let list = admin_routes()
        .iter()
        .position(|r| r.subject == hospital::RPC_LIST)
        .expect("the list is an admin route");
    let response = app
        .http
        .get(app.url(
            "/v1/admin/dlq/messages?durable=email-auth&error_kind=permanent&cursor=abc&limit=5",
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let seen = stubs[list].seen();
    assert_eq!(seen.len(), 2);
    let query = &seen[1].request.query;
    assert_eq!(query.get("durable").map(String::as_str), Some("email-auth"));
    assert_eq!(
        query.get("error_kind").map(String::as_str),
        Some("permanent")
    );
    assert_eq!(query.get("cursor").map(String::as_str), Some("abc"));
}

#[tokio::test]
async fn durable_names_are_checked_before_forwarding() {
    let app = spawn_app().await;
    let pause = stub_reply(&app.nats, hospital::RPC_PAUSE, RpcReply::ok(json!({}))).await;
    let token = app.signer.token(Uuid::now_v7(), Role::Admin, 300);
    let long = "d".repeat(65);
    for bad in ["email.auth", "email*", "a%20b", "%3E", long.as_str()] {
        let response = app
            .http
            .post(app.url(&format!("/v1/admin/consumers/{bad}/pause")))
            .bearer_auth(&token)
            .json(&json!({"reason": "r"}))
            .send()
            .await
            .expect("send");
        assert_problem(response, 400, "bad_request").await;
    }
    let bad_id = app
        .http
        .get(app.url("/v1/admin/dlq/jobs/not-a-uuid"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_problem(bad_id, 400, "bad_request").await;
    assert_eq!(pause.count(), 0);
}

#[tokio::test]
async fn the_openapi_document_lists_the_admin_api() {
    let app = spawn_app().await;
    let doc: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    for route in admin_routes() {
        let op = &doc["paths"][&*route.path][route.method.as_str().to_lowercase()];
        assert!(op.is_object(), "{} {}", route.method, route.path);
        assert!(op["responses"]["403"].is_object());
        if let Some(schema) = &route.request_schema {
            assert_eq!(
                op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
                format!("#/components/schemas/{schema}")
            );
        }
        let schema = route
            .response_schema
            .expect("every admin route answers a body");
        assert!(
            doc["components"]["schemas"][&schema].is_object(),
            "{schema}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["console_session"]["in"],
        "cookie"
    );
}
