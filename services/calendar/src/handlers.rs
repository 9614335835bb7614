//! The NATS request/reply endpoints: each turns an [`RpcRequest`] into a use case call
//! and its outcome into an [`RpcReply`]. No rule lives here, only the translation
//! (caller, path and query parameters in; status codes and problems out).

use std::future::Future;
use std::sync::Arc;

use contracts::api::{CreateEventRequest, RsvpRequest, UpdateEventRequest};
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::calendar as subj;
use contracts::{ErrorCode, Problem};
use runtime::rpc::{Endpoint, endpoint};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::{self, EventQuery, RsvpQuery};
use crate::service::{Calendar, ServiceError};

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Problem {
        match e {
            ServiceError::Domain(d) => d.into(),
            other => runtime::rpc::internal(&other),
        }
    }
}

/// The authenticated user; the gateway sets it on every calendar route.
fn caller<B>(req: &RpcRequest<B>) -> Result<Uuid, Problem> {
    req.caller
        .as_ref()
        .map(|c| c.user_id)
        .ok_or_else(|| Problem::new(ErrorCode::Unauthorized))
}

fn path_id<B>(req: &RpcRequest<B>) -> Result<Uuid, Problem> {
    Ok(domain::parse_id(req.params.get("id"))?)
}

/// Wraps a handler body that answers `Result<(status, T), Problem>`.
fn route<B, T, F, Fut>(
    calendar: &Arc<Calendar>,
    name: &'static str,
    subject: &'static str,
    http: &'static str,
    f: F,
) -> Endpoint
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(Arc<Calendar>, RpcRequest<B>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(u16, T), Problem>> + Send + 'static,
{
    let calendar = calendar.clone();
    endpoint(name, subject, Some(http), move |req: RpcRequest<B>| {
        let fut = f(calendar.clone(), req);
        async move {
            match fut.await {
                Ok((status, body)) => RpcReply::Ok { status, body },
                Err(p) => RpcReply::Err(p),
            }
        }
    })
}

/// Every calendar endpoint, with the public route it backs (discovery metadata).
pub fn endpoints(calendar: Arc<Calendar>) -> Vec<Endpoint> {
    vec![
        route(
            &calendar,
            "events_create",
            subj::RPC_CREATE_EVENT,
            "POST /v1/events",
            |c, req: RpcRequest<CreateEventRequest>| async move {
                let user = caller(&req)?;
                Ok((201, c.create_event(user, &req.body).await?))
            },
        ),
        route(
            &calendar,
            "events_list",
            subj::RPC_LIST_EVENTS,
            "GET /v1/events",
            |c, req: RpcRequest<NoBody>| async move {
                let user = caller(&req)?;
                let q = EventQuery::parse(&req.query).map_err(Problem::from)?;
                Ok((200, c.list_events(user, &q).await?))
            },
        ),
        route(
            &calendar,
            "events_get",
            subj::RPC_GET_EVENT,
            "GET /v1/events/{id}",
            |c, req: RpcRequest<NoBody>| async move {
                let user = caller(&req)?;
                let id = path_id(&req)?;
                Ok((200, c.get_event(user, id).await?))
            },
        ),
        route(
            &calendar,
            "events_update",
            subj::RPC_UPDATE_EVENT,
            "PATCH /v1/events/{id}",
            |c, req: RpcRequest<UpdateEventRequest>| async move {
                let user = caller(&req)?;
                let id = path_id(&req)?;
                Ok((200, c.update_event(user, id, &req.body).await?))
            },
        ),
        route(
            &calendar,
            "events_cancel",
            subj::RPC_CANCEL_EVENT,
            "DELETE /v1/events/{id}",
            |c, req: RpcRequest<NoBody>| async move {
                let user = caller(&req)?;
                let id = path_id(&req)?;
                Ok((200, c.cancel_event(user, id).await?))
            },
        ),
        route(
            &calendar,
            "rsvp_put",
            subj::RPC_PUT_RSVP,
            "PUT /v1/events/{id}/rsvp",
            |c, req: RpcRequest<RsvpRequest>| async move {
                let user = caller(&req)?;
                let id = path_id(&req)?;
                Ok((200, c.put_rsvp(user, id, req.body.status).await?))
            },
        ),
        route(
            &calendar,
            "rsvp_list",
            subj::RPC_LIST_RSVPS,
            "GET /v1/events/{id}/rsvps",
            |c, req: RpcRequest<NoBody>| async move {
                let user = caller(&req)?;
                let id = path_id(&req)?;
                let q = RsvpQuery::parse(&req.query).map_err(Problem::from)?;
                Ok((200, c.list_rsvps(user, id, &q).await?))
            },
        ),
    ]
}
