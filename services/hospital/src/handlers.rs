//! The NATS request/reply endpoints of the admin API: each checks that the caller is an
//! admin, turns the request into a use case call and its outcome into an
//! [`RpcReply`]. Only translation lives here.

use std::future::Future;

use contracts::hospital::{
    AuditPage, BulkRequest, BulkResult, ConsumerState, DeadLetterDetail, DeadLetterPage,
    EditReplayRequest, EditReplayResult, FailureGroupList, HospitalStats, Job, JobKind, JobList,
    PauseRequest, ReplayRequest, ResumeRequest, ServiceList, WhereaboutsList,
};
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::hospital as subj;
use contracts::{ErrorCode, Problem, Role};
use runtime::routes::{Route, query};
use runtime::rpc::{Endpoint, endpoint, with_routes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::{self, RequestError};
use crate::service::{Hospital, ServiceError};

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Problem {
        match e {
            ServiceError::Request(r) => r.into(),
            ServiceError::Bus(b) => {
                tracing::warn!(error = %b, "NATS operation failed");
                Problem::new(ErrorCode::ServiceUnavailable).with_detail(b.to_string())
            }
            other => runtime::rpc::internal(&other),
        }
    }
}

/// The admin on whose behalf the request runs: no caller → 401, not an admin → 403.
fn admin<B>(req: &RpcRequest<B>) -> Result<Uuid, Problem> {
    match &req.caller {
        None => Err(RequestError::Unauthorized.into()),
        Some(c) if c.role == Role::Admin => Ok(c.user_id),
        Some(_) => Err(RequestError::Forbidden.into()),
    }
}

/// An endpoint whose handler runs only for admins.
fn route<B, T, F, Fut>(
    hospital: &Hospital,
    name: &'static str,
    subject: &'static str,
    f: F,
) -> Endpoint
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(Hospital, Uuid, RpcRequest<B>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, ServiceError>> + Send + 'static,
{
    let hospital = hospital.clone();
    let f = std::sync::Arc::new(f);
    endpoint(name, subject, move |req: RpcRequest<B>| {
        let hospital = hospital.clone();
        let f = f.clone();
        async move {
            let actor = match admin(&req) {
                Ok(a) => a,
                Err(p) => return RpcReply::Err(p),
            };
            RpcReply::from(f(hospital, actor, req).await.map_err(Problem::from))
        }
    })
}

fn bulk_kind(
    hospital: &Hospital,
    name: &'static str,
    subject: &'static str,
    kind: JobKind,
) -> Endpoint {
    route(
        hospital,
        name,
        subject,
        move |h, actor, req: RpcRequest<BulkRequest>| async move {
            let b = req.body;
            h.bulk(actor, kind, &b.selection, b.dry_run, &b.reason, None)
                .await
        },
    )
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

/// The public routes of the admin API, by endpoint subject: role `admin` (the console
/// may call them with its session cookie). Published in the hospital's discovery
/// metadata: the gateway routes and documents them from there.
pub fn routes() -> Vec<(&'static str, Route)> {
    vec![
        (
            subj::RPC_LIST,
            Route::get("/v1/admin/dlq/messages")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::Forbidden])
                .response::<DeadLetterPage>(200)
                .query(DLQ_FILTER_QUERY)
                .query_schema(
                    "status",
                    query::one_of(&["parked", "replayed", "discarded"]),
                )
                .query_schema("error_kind", query::one_of(&["transient", "permanent"]))
                .query_schema("from", query::date_time())
                .query_schema("to", query::date_time())
                .query_schema("limit", query::integer(1, domain::MAX_LIMIT.into()))
                .summary("Dead letters, newest first, filtered"),
        ),
        (
            subj::RPC_GET,
            Route::get("/v1/admin/dlq/messages/{id}")
                .admin()
                .errors(&[ErrorCode::NotFound, ErrorCode::Forbidden])
                .response::<DeadLetterDetail>(200)
                .summary("One dead letter with its headers, decoded body, history and audit"),
        ),
        (
            subj::RPC_GROUPS,
            Route::get("/v1/admin/dlq/groups")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::Forbidden])
                .response::<FailureGroupList>(200)
                .query(DLQ_FILTER_QUERY)
                .query_schema(
                    "status",
                    query::one_of(&["parked", "replayed", "discarded", "all"]),
                )
                .query_schema("error_kind", query::one_of(&["transient", "permanent"]))
                .query_schema("from", query::date_time())
                .query_schema("to", query::date_time())
                .summary("Failures grouped by consumer and cause"),
        ),
        (
            subj::RPC_REPLAY,
            Route::post("/v1/admin/dlq/replay")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::ValidationFailed, ErrorCode::Forbidden])
                .request::<ReplayRequest>()
                .response::<BulkResult>(200)
                .summary("Re-send parked messages to the consumer that failed them"),
        ),
        (
            subj::RPC_DISCARD,
            Route::post("/v1/admin/dlq/discard")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::ValidationFailed, ErrorCode::Forbidden])
                .request::<BulkRequest>()
                .response::<BulkResult>(200)
                .summary("Drop parked messages on purpose, with a reason"),
        ),
        (
            subj::RPC_PURGE,
            Route::post("/v1/admin/dlq/purge")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::ValidationFailed, ErrorCode::Forbidden])
                .request::<BulkRequest>()
                .response::<BulkResult>(200)
                .summary("Discard parked messages and delete their stored copies"),
        ),
        (
            subj::RPC_EDIT_REPLAY,
            Route::post("/v1/admin/dlq/messages/{id}/edit-replay")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::NotFound, ErrorCode::ValidationFailed, ErrorCode::Forbidden])
                .request::<EditReplayRequest>()
                .response::<EditReplayResult>(200)
                .summary("Replace a dead letter's body and replay the edited copy"),
        ),
        (
            subj::RPC_JOBS,
            Route::get("/v1/admin/dlq/jobs")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::Forbidden])
                .response::<JobList>(200)
                .query(&["limit", "status"])
                .query_schema("limit", query::integer(1, domain::MAX_LIMIT.into()))
                .summary("Bulk jobs, newest first"),
        ),
        (
            subj::RPC_JOB,
            Route::get("/v1/admin/dlq/jobs/{id}")
                .admin()
                .errors(&[ErrorCode::NotFound, ErrorCode::Forbidden])
                .response::<Job>(200)
                .summary("One bulk job and its progress"),
        ),
        (
            subj::RPC_STATS,
            Route::get("/v1/admin/dlq/stats")
                .admin()
                .errors(&[ErrorCode::Forbidden])
                .response::<HospitalStats>(200)
                .summary("Consumers' lag, parked counts and pause state; the DLQ stream's size"),
        ),
        (
            subj::RPC_SERVICES,
            Route::get("/v1/admin/services")
                .admin()
                .errors(&[ErrorCode::Forbidden])
                .response::<ServiceList>(200)
                .summary(
                    "Running service instances with their versions and event contracts; consumer lag",
                ),
        ),
        (
            subj::RPC_WHERE,
            Route::get("/v1/admin/dlq/where")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::NotFound, ErrorCode::Forbidden])
                .response::<WhereaboutsList>(200)
                .query(&["message_id", "trace_id"])
                .query_schema(
                    "trace_id",
                    serde_json::json!({"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}),
                )
                .summary("Where a message is: each consumer's outcome"),
        ),
        (
            subj::RPC_AUDIT,
            Route::get("/v1/admin/audit")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::Forbidden])
                .response::<AuditPage>(200)
                .query(&["limit", "cursor", "action", "target"])
                .query_schema("limit", query::integer(1, domain::MAX_LIMIT.into()))
                .summary("Ops actions, newest first"),
        ),
        (
            subj::RPC_PAUSE,
            Route::post("/v1/admin/consumers/{durable}/pause")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::NotFound, ErrorCode::ValidationFailed, ErrorCode::Forbidden])
                .request::<PauseRequest>()
                .response::<ConsumerState>(200)
                .summary("Pause a durable consumer (deliveries stop until resumed or expired)"),
        ),
        (
            subj::RPC_RESUME,
            Route::post("/v1/admin/consumers/{durable}/resume")
                .admin()
                .errors(&[ErrorCode::BadRequest, ErrorCode::NotFound, ErrorCode::ValidationFailed, ErrorCode::Forbidden])
                .request::<ResumeRequest>()
                .response::<ConsumerState>(200)
                .summary("Resume a paused durable consumer"),
        ),
    ]
}

/// Every hospital endpoint, with the public route it backs ([`routes`]).
pub fn endpoints(hospital: &Hospital) -> Vec<Endpoint> {
    let endpoints = vec![
        route(
            hospital,
            "dlq_list",
            subj::RPC_LIST,
            |h, _, req: RpcRequest<NoBody>| async move {
                let filter = domain::parse_filter(&req.query)?;
                let limit = domain::parse_limit(&req.query)?;
                let cursor = domain::parse_cursor(&req.query)?;
                h.list(&filter, cursor, limit).await
            },
        ),
        route(
            hospital,
            "dlq_get",
            subj::RPC_GET,
            |h, _, req: RpcRequest<NoBody>| async move {
                let id = domain::parse_id(req.params.get("id"))?;
                h.get(id).await
            },
        ),
        route(
            hospital,
            "dlq_groups",
            subj::RPC_GROUPS,
            |h, _, req: RpcRequest<NoBody>| async move {
                let q = domain::parse_group_query(&req.query)?;
                h.groups(&q).await
            },
        ),
        route(
            hospital,
            "dlq_replay",
            subj::RPC_REPLAY,
            |h, actor, req: RpcRequest<ReplayRequest>| async move {
                let b = req.body;
                h.bulk(
                    actor,
                    JobKind::Replay,
                    &b.selection,
                    b.dry_run,
                    &b.reason,
                    b.rate_per_sec,
                )
                .await
            },
        ),
        bulk_kind(hospital, "dlq_discard", subj::RPC_DISCARD, JobKind::Discard),
        bulk_kind(hospital, "dlq_purge", subj::RPC_PURGE, JobKind::Purge),
        route(
            hospital,
            "dlq_edit_replay",
            subj::RPC_EDIT_REPLAY,
            |h, actor, req: RpcRequest<EditReplayRequest>| async move {
                let id = domain::parse_id(req.params.get("id"))?;
                let b = req.body;
                h.edit_replay(actor, id, b.body, &b.reason).await
            },
        ),
        route(
            hospital,
            "jobs_list",
            subj::RPC_JOBS,
            |h, _, req: RpcRequest<NoBody>| async move {
                let limit = match req.query.get("limit") {
                    None => domain::DEFAULT_LIMIT,
                    Some(_) => domain::parse_limit(&req.query)?,
                };
                h.jobs(limit).await
            },
        ),
        route(
            hospital,
            "jobs_get",
            subj::RPC_JOB,
            |h, _, req: RpcRequest<NoBody>| async move {
                let id = domain::parse_id(req.params.get("id"))?;
                h.job(id).await
            },
        ),
        route(
            hospital,
            "dlq_stats",
            subj::RPC_STATS,
            |h, _, _req: RpcRequest<NoBody>| async move { h.stats().await },
        ),
        route(
            hospital,
            "services",
            subj::RPC_SERVICES,
            |h, _, _req: RpcRequest<NoBody>| async move { h.services().await },
        ),
        route(
            hospital,
            "dlq_where",
            subj::RPC_WHERE,
            |h, _, req: RpcRequest<NoBody>| async move {
                let q = domain::parse_where(&req.query)?;
                h.where_is(&q).await
            },
        ),
        route(
            hospital,
            "audit_list",
            subj::RPC_AUDIT,
            |h, _, req: RpcRequest<NoBody>| async move {
                let limit = domain::parse_limit(&req.query)?;
                let cursor = domain::parse_cursor(&req.query)?;
                h.audit(cursor, limit).await
            },
        ),
        route(
            hospital,
            "consumers_pause",
            subj::RPC_PAUSE,
            |h, actor, req: RpcRequest<PauseRequest>| async move {
                let durable = domain::parse_durable(req.params.get("durable"))?;
                h.pause(actor, &durable, req.body.seconds, &req.body.reason)
                    .await
            },
        ),
        route(
            hospital,
            "consumers_resume",
            subj::RPC_RESUME,
            |h, actor, req: RpcRequest<ResumeRequest>| async move {
                let durable = domain::parse_durable(req.params.get("durable"))?;
                h.resume(actor, &durable, &req.body.reason).await
            },
        ),
    ];
    with_routes(endpoints, routes())
}
