//! The NATS request/reply endpoints of the admin API: each checks that the caller is an
//! admin, turns the request into a use case call and its outcome into an
//! [`RpcReply`]. Only translation lives here.

use std::future::Future;

use contracts::hospital::{
    BulkRequest, EditReplayRequest, JobKind, PauseRequest, ReplayRequest, ResumeRequest,
};
use contracts::rpc::{NoBody, RpcReply, RpcRequest};
use contracts::subjects::hospital as subj;
use contracts::{ErrorCode, Problem, Role};
use runtime::rpc::{Endpoint, endpoint};
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
    http: &'static str,
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
    endpoint(name, subject, Some(http), move |req: RpcRequest<B>| {
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
    http: &'static str,
    kind: JobKind,
) -> Endpoint {
    route(
        hospital,
        name,
        subject,
        http,
        move |h, actor, req: RpcRequest<BulkRequest>| async move {
            let b = req.body;
            h.bulk(actor, kind, &b.selection, b.dry_run, &b.reason, None)
                .await
        },
    )
}

/// Every hospital endpoint, with the public route it backs (discovery metadata).
pub fn endpoints(hospital: &Hospital) -> Vec<Endpoint> {
    vec![
        route(
            hospital,
            "dlq_list",
            subj::RPC_LIST,
            "GET /v1/admin/dlq/messages",
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
            "GET /v1/admin/dlq/messages/{id}",
            |h, _, req: RpcRequest<NoBody>| async move {
                let id = domain::parse_id(req.params.get("id"))?;
                h.get(id).await
            },
        ),
        route(
            hospital,
            "dlq_groups",
            subj::RPC_GROUPS,
            "GET /v1/admin/dlq/groups",
            |h, _, req: RpcRequest<NoBody>| async move {
                let q = domain::parse_group_query(&req.query)?;
                h.groups(&q).await
            },
        ),
        route(
            hospital,
            "dlq_replay",
            subj::RPC_REPLAY,
            "POST /v1/admin/dlq/replay",
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
        bulk_kind(
            hospital,
            "dlq_discard",
            subj::RPC_DISCARD,
            "POST /v1/admin/dlq/discard",
            JobKind::Discard,
        ),
        bulk_kind(
            hospital,
            "dlq_purge",
            subj::RPC_PURGE,
            "POST /v1/admin/dlq/purge",
            JobKind::Purge,
        ),
        route(
            hospital,
            "dlq_edit_replay",
            subj::RPC_EDIT_REPLAY,
            "POST /v1/admin/dlq/messages/{id}/edit-replay",
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
            "GET /v1/admin/dlq/jobs",
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
            "GET /v1/admin/dlq/jobs/{id}",
            |h, _, req: RpcRequest<NoBody>| async move {
                let id = domain::parse_id(req.params.get("id"))?;
                h.job(id).await
            },
        ),
        route(
            hospital,
            "dlq_stats",
            subj::RPC_STATS,
            "GET /v1/admin/dlq/stats",
            |h, _, _req: RpcRequest<NoBody>| async move { h.stats().await },
        ),
        route(
            hospital,
            "dlq_where",
            subj::RPC_WHERE,
            "GET /v1/admin/dlq/where",
            |h, _, req: RpcRequest<NoBody>| async move {
                let q = domain::parse_where(&req.query)?;
                h.where_is(&q).await
            },
        ),
        route(
            hospital,
            "audit_list",
            subj::RPC_AUDIT,
            "GET /v1/admin/audit",
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
            "POST /v1/admin/consumers/{durable}/pause",
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
            "POST /v1/admin/consumers/{durable}/resume",
            |h, actor, req: RpcRequest<ResumeRequest>| async move {
                let durable = domain::parse_durable(req.params.get("durable"))?;
                h.resume(actor, &durable, &req.body.reason).await
            },
        ),
    ]
}
