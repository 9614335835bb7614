//! The NATS request/reply endpoints: each turns an [`RpcRequest`] into a use case call
//! and its outcome into an [`RpcReply`]. No rule lives here, only the translation
//! (caller, path and query parameters in; status codes and problems out).

use std::future::Future;
use std::sync::Arc;

use contracts::api::{
    CreateEventRequest, Event, EventPage, RsvpPage, RsvpRequest, RsvpResult, UpdateEventRequest,
};
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::calendar as subj;
use contracts::{ErrorCode, Problem};
use runtime::routes::{CachePolicy, Route, query};
use runtime::rpc::{Endpoint, endpoint, with_routes};
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
    f: F,
) -> Endpoint
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(Arc<Calendar>, RpcRequest<B>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(u16, T), Problem>> + Send + 'static,
{
    let calendar = calendar.clone();
    endpoint(name, subject, move |req: RpcRequest<B>| {
        let fut = f(calendar.clone(), req);
        async move {
            match fut.await {
                Ok((status, body)) => RpcReply::Ok { status, body },
                Err(p) => RpcReply::Err(p),
            }
        }
    })
}

/// The public routes calendar serves, by endpoint subject. Published in its discovery
/// metadata: the gateway routes and documents them from there. Every one needs a token.
pub fn routes() -> Vec<(&'static str, Route)> {
    vec![
        (
            subj::RPC_CREATE_EVENT,
            Route::post("/v1/events")
                .user()
                .errors(&[ErrorCode::ValidationFailed, ErrorCode::TimeZoneMismatch])
                .request::<CreateEventRequest>()
                .response::<Event>(201)
                .summary("Create an event organized by the caller"),
        ),
        (
            subj::RPC_LIST_EVENTS,
            Route::get("/v1/events")
                .user()
                .errors(&[ErrorCode::BadRequest])
                .response::<EventPage>(200)
                .query(&["from", "to", "mine", "limit", "cursor"])
                .query_schema("from", query::date_time())
                .query_schema("to", query::date_time())
                .query_schema("mine", query::one_of(&["organizing", "attending"]))
                .query_schema("limit", query::integer(1, domain::MAX_LIMIT.into()))
                .summary("List events by start time")
                .cached(any_event_invalidates(10)),
        ),
        (
            subj::RPC_GET_EVENT,
            Route::get("/v1/events/{id}")
                .user()
                .errors(&[ErrorCode::NotFound])
                .response::<Event>(200)
                .summary("One event")
                .cached(its_events_invalidate(60)),
        ),
        (
            subj::RPC_UPDATE_EVENT,
            Route::patch("/v1/events/{id}")
                .user()
                .errors(&[
                    ErrorCode::ValidationFailed,
                    ErrorCode::TimeZoneMismatch,
                    ErrorCode::Forbidden,
                    ErrorCode::NotFound,
                    ErrorCode::EventCancelled,
                    ErrorCode::CapacityBelowGoing,
                ])
                .request::<UpdateEventRequest>()
                .response::<Event>(200)
                .summary("Change an event (organizer only)"),
        ),
        (
            subj::RPC_CANCEL_EVENT,
            Route::delete("/v1/events/{id}")
                .user()
                .errors(&[ErrorCode::Forbidden, ErrorCode::NotFound])
                .response::<Event>(200)
                .summary("Cancel an event (organizer only)"),
        ),
        (
            subj::RPC_PUT_RSVP,
            Route::put("/v1/events/{id}/rsvp")
                .user()
                .errors(&[
                    ErrorCode::ValidationFailed,
                    ErrorCode::NotFound,
                    ErrorCode::EventCancelled,
                    ErrorCode::EventPast,
                    ErrorCode::EventFull,
                ])
                .request::<RsvpRequest>()
                .response::<RsvpResult>(200)
                .summary("Set the caller's RSVP"),
        ),
        (
            subj::RPC_LIST_RSVPS,
            Route::get("/v1/events/{id}/rsvps")
                .user()
                .errors(&[
                    ErrorCode::BadRequest,
                    ErrorCode::Forbidden,
                    ErrorCode::NotFound,
                ])
                .response::<RsvpPage>(200)
                .query(&["status", "limit", "cursor"])
                .query_schema("status", query::one_of(&["going", "maybe", "declined"]))
                .query_schema("limit", query::integer(1, domain::MAX_LIMIT.into()))
                .summary("List an event's RSVPs")
                .cached(its_events_invalidate(60)),
        ),
    ]
}

/// The gateway may cache an event's answers until one of ITS events (the aggregate in
/// the path's `{id}`) says it changed.
fn its_events_invalidate(max_age_secs: u32) -> CachePolicy {
    CachePolicy {
        invalidated_by: contracts::subjects::CALENDAR_STREAM.subjects[0].to_owned(),
        aggregate_param: Some("id".to_owned()),
        max_age_secs,
    }
}

/// The gateway may cache a list until any calendar event (a list may show any event).
fn any_event_invalidates(max_age_secs: u32) -> CachePolicy {
    CachePolicy {
        invalidated_by: contracts::subjects::CALENDAR_STREAM.subjects[0].to_owned(),
        aggregate_param: None,
        max_age_secs,
    }
}

/// Every calendar endpoint, with the public route it backs ([`routes`]).
pub fn endpoints(calendar: Arc<Calendar>) -> Vec<Endpoint> {
    let endpoints = vec![
        route(
            &calendar,
            "events_create",
            subj::RPC_CREATE_EVENT,
            |c, req: RpcRequest<CreateEventRequest>| async move {
                let user = caller(&req)?;
                Ok((201, c.create_event(user, &req.body).await?))
            },
        ),
        route(
            &calendar,
            "events_list",
            subj::RPC_LIST_EVENTS,
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
            |c, req: RpcRequest<NoBody>| async move {
                let user = caller(&req)?;
                let id = path_id(&req)?;
                let q = RsvpQuery::parse(&req.query).map_err(Problem::from)?;
                Ok((200, c.list_rsvps(user, id, &q).await?))
            },
        ),
    ];
    with_routes(endpoints, routes())
}
