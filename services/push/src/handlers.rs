//! The NATS request/reply endpoints: each turns an [`RpcRequest`] into a use case call
//! and its outcome into an [`RpcReply`]. Only translation lives here.

use std::future::Future;
use std::sync::Arc;

use contracts::Problem;
use contracts::api::NotificationsSince;
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::push as subj;
use runtime::rpc::{Endpoint, endpoint};
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
    http: Option<&'static str>,
    f: F,
) -> Endpoint
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(Arc<Notifications>, RpcRequest<B>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, Problem>> + Send + 'static,
{
    let notifications = notifications.clone();
    endpoint(name, subject, http, move |req: RpcRequest<B>| {
        let fut = f(notifications.clone(), req);
        async move { RpcReply::from(fut.await) }
    })
}

/// Every push endpoint, with the public route it backs (discovery metadata). `since`
/// has none: only the gateway calls it, to resume a stream.
pub fn endpoints(notifications: Arc<Notifications>) -> Vec<Endpoint> {
    vec![
        route(
            &notifications,
            "notifications_list",
            subj::RPC_LIST_NOTIFICATIONS,
            Some("GET /v1/notifications"),
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
            Some("POST /v1/notifications/{id}/read"),
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
            None,
            |n, req: RpcRequest<NotificationsSince>| async move {
                let user = caller(&req)?;
                Ok(n.since(user, req.body.after, req.body.limit).await?)
            },
        ),
    ]
}
