//! The NATS request/reply endpoints: each turns an [`RpcRequest`] into a use case call
//! and its outcome into an [`RpcReply`]. Only translation lives here.

use std::future::Future;
use std::sync::Arc;

use contracts::api::{Notification, NotificationPage, NotificationsSince};
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::push as subj;
use contracts::{ErrorCode, Problem};
use runtime::routes::{Route, query};
use runtime::rpc::{Endpoint, endpoint, with_routes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::{self, ListQuery, RequestError};
use crate::service::{Notifications, ServiceError};

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Problem {
        match e {
            ServiceError::Request(r) => r.into(),
            other => runtime::rpc::internal(&other),
        }
    }
}

/// The authenticated user; every push operation is about the caller's own history.
fn caller<B>(req: &RpcRequest<B>) -> Result<Uuid, Problem> {
    req.caller
        .as_ref()
        .map(|c| c.user_id)
        .ok_or_else(|| RequestError::Unauthorized.into())
}

fn route<B, T, F, Fut>(
    notifications: &Arc<Notifications>,
    name: &'static str,
    subject: &'static str,
    f: F,
) -> Endpoint
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(Arc<Notifications>, RpcRequest<B>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, Problem>> + Send + 'static,
{
    let notifications = notifications.clone();
    endpoint(name, subject, move |req: RpcRequest<B>| {
        let fut = f(notifications.clone(), req);
        async move { RpcReply::from(fut.await) }
    })
}

/// The public routes push serves, by endpoint subject. Published in its discovery
/// metadata: the gateway routes and documents them from there. `since` has none: only
/// the gateway calls it, to resume a stream (whose route the gateway serves itself).
pub fn routes() -> Vec<(&'static str, Route)> {
    vec![
        (
            subj::RPC_LIST_NOTIFICATIONS,
            Route::get("/v1/notifications")
                .user()
                .errors(&[ErrorCode::BadRequest])
                .response::<NotificationPage>(200)
                .query(&["limit", "cursor", "unread"])
                .query_schema("limit", query::integer(1, domain::MAX_LIMIT.into()))
                .query_schema("unread", query::boolean())
                .summary("The caller's notifications, newest first"),
        ),
        (
            subj::RPC_MARK_READ,
            Route::post("/v1/notifications/{id}/read")
                .user()
                .errors(&[ErrorCode::NotFound])
                .response::<Notification>(200)
                .summary("Mark a notification read"),
        ),
    ]
}

/// Every push endpoint, with the public route it backs ([`routes`]).
pub fn endpoints(notifications: Arc<Notifications>) -> Vec<Endpoint> {
    let endpoints = vec![
        route(
            &notifications,
            "notifications_list",
            subj::RPC_LIST_NOTIFICATIONS,
            |n, req: RpcRequest<NoBody>| async move {
                let user = caller(&req)?;
                let q = ListQuery::parse(&req.query).map_err(Problem::from)?;
                Ok(n.list(user, &q).await?)
            },
        ),
        route(
            &notifications,
            "notifications_read",
            subj::RPC_MARK_READ,
            |n, req: RpcRequest<NoBody>| async move {
                let user = caller(&req)?;
                let id = domain::parse_id(req.params.get("id")).map_err(Problem::from)?;
                Ok(n.mark_read(user, id).await?)
            },
        ),
        route(
            &notifications,
            "notifications_since",
            subj::RPC_NOTIFICATIONS_SINCE,
            |n, req: RpcRequest<NotificationsSince>| async move {
                let user = caller(&req)?;
                Ok(n.since(user, &req.body).await?)
            },
        ),
    ];
    with_routes(endpoints, routes())
}
