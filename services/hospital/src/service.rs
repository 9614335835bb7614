//! The admin use cases behind the request/reply endpoints.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use contracts::hospital::{
    AuditEntry, AuditPage, BulkResult, ConsumerOutcome, ConsumerState, DeadLetter,
    DeadLetterDetail, DeadLetterFilter, DeadLetterPage, DeadLetterStatus, EditReplayResult,
    FailureGroupList, Header, HospitalStats, Job, JobKind, JobList, JobStatus, MessageWhereabouts,
    OutboxState, OutboxStats, Outcome, Selection, ServiceInstance, ServiceList, WhereaboutsList,
};
use contracts::subjects;
use jiff::Timestamp;
use runtime::db::{Database, to_micros};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bus::{self, BusError, Needle};
use crate::config::Config;
use crate::domain::{self, Cursor, GroupQuery, RequestError, Selector, WhereQuery};
use crate::jobs;
use crate::store::{self, NewAudit, StoreError};

/// Why a use case failed: a refused request (answered with its code), the bus
/// (503) or the database (500).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("NATS: {0}")]
    Bus(#[from] BusError),
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        ServiceError::Store(StoreError::Db(e))
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The hospital's state, shared by every endpoint and job.
#[derive(Clone)]
pub struct Hospital {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    js: jetstream::Context,
    config: Config,
    /// Running bulk jobs; waited for on shutdown.
    jobs: TaskTracker,
    /// Stops jobs between messages on shutdown.
    cancel: CancellationToken,
}

/// How long `services` collects discovery replies (nobody knows how many instances
/// there are; every instance on a healthy bus answers within milliseconds).
const DISCOVERY_WINDOW: Duration = Duration::from_millis(500);
/// How long a service may take to report its outbox.
const OUTBOX_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The outbox figures of every service that serves `outbox.stats` (found in discovery),
/// asked once per service (its replicas share one database), sorted by service.
async fn outboxes(
    client: &async_nats::Client,
    found: &[async_nats::service::Info],
) -> Vec<OutboxState> {
    let mut subjects_by_service: std::collections::BTreeMap<String, String> =
        std::collections::BTreeMap::new();
    for info in found {
        for ep in &info.endpoints {
            if ep.name == subjects::ops::OUTBOX_STATS_ENDPOINT {
                subjects_by_service
                    .entry(info.name.clone())
                    .or_insert_with(|| ep.subject.clone());
            }
        }
    }
    let asks = subjects_by_service
        .into_iter()
        .map(|(service, subject)| async move {
            match outbox_stats(client, &subject).await {
                Ok(stats) => OutboxState {
                    service,
                    backlog: stats.backlog,
                    oldest_unpublished_at: stats.oldest_unpublished_at,
                    error: None,
                },
                Err(error) => OutboxState {
                    service,
                    backlog: 0,
                    oldest_unpublished_at: None,
                    error: Some(error),
                },
            }
        });
    futures::future::join_all(asks).await
}

async fn outbox_stats(
    client: &async_nats::Client,
    subject: &str,
) -> std::result::Result<OutboxStats, String> {
    let payload =
        contracts::wire::encode(&contracts::rpc::RpcRequest::new(contracts::rpc::NoBody {}))
            .map_err(|e| e.to_string())?;
    let mut headers = async_nats::HeaderMap::new();
    runtime::trace::inject_current(&mut headers);
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(payload.into())
        .timeout(Some(OUTBOX_STATS_TIMEOUT));
    let reply = client
        .send_request(subject.to_owned(), request)
        .await
        .map_err(|e| format!("{subject}: {e}"))?;
    match contracts::wire::decode::<contracts::rpc::RpcReply<OutboxStats>>(&reply.payload) {
        Ok(contracts::rpc::RpcReply::Ok { body, .. }) => Ok(body),
        Ok(contracts::rpc::RpcReply::Err(problem)) => Err(format!("{subject}: {}", problem.code)),
        Err(e) => Err(format!("{subject}: undecodable reply: {e}")),
    }
}

/// The audit action of an edit-replay.
const EDIT_REPLAY: &str = "edit_replay";

/// Who acts: the caller's user id (admins only, checked by the endpoints).
pub type Actor = Uuid;

impl Hospital {
    pub fn new(
        db: Database,
        js: jetstream::Context,
        config: Config,
        jobs: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Hospital {
            inner: Arc::new(Inner {
                db,
                js,
                config,
                jobs,
                cancel,
            }),
        }
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    pub fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn cancel(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    // ---- reading the index ----

    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<DeadLetterPage> {
        let mut rows = store::list(self.db(), filter, after, limit).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(
                Cursor {
                    at: to_micros(last.parked_at),
                    id: last.id,
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(DeadLetterPage {
            items: rows.iter().map(|r| r.to_api()).collect(),
            next_cursor,
        })
    }

    pub async fn get(&self, id: Uuid) -> Result<DeadLetterDetail> {
        let full = store::get(self.db(), id)
            .await?
            .ok_or(RequestError::NotFound)?;
        let row = &full.row;
        let (body, body_error) = match contracts::wire::decode::<serde_json::Value>(&full.payload) {
            Ok(v) => (v, None),
            Err(e) => (serde_json::Value::Null, Some(e.to_string())),
        };
        let history = self.history(row).await?;
        let audit = store::audit_for(self.db(), row.id, row.action_audit_id.as_deref()).await?;
        Ok(DeadLetterDetail {
            dead_letter: row.to_api(),
            headers: full
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            body,
            body_error,
            payload_base64: STANDARD.encode(&full.payload),
            history,
            audit,
        })
    }

    /// Earlier parks of the same message by the same durable, and the chain of dead
    /// letters this one is a replay of (an edited copy has a new message id).
    async fn history(&self, row: &store::DeadLetterRow) -> Result<Vec<DeadLetter>> {
        let mut seen: HashSet<Uuid> = HashSet::from([row.id]);
        let mut items = Vec::new();
        if let Some(mid) = &row.diagnosis.message_id {
            for r in store::earlier_parks(self.db(), &row.diagnosis.durable, mid, row).await? {
                if seen.insert(r.id) {
                    items.push(r);
                }
            }
        }
        let mut next = row.diagnosis.replay_of.clone();
        for _ in 0..20 {
            let Some(park_id) = next.take() else { break };
            let Some(r) = store::get_by_park_id(self.db(), &park_id).await? else {
                break;
            };
            next = r.diagnosis.replay_of.clone();
            if seen.insert(r.id) {
                items.push(r);
            }
        }
        items.sort_by_key(|r| (r.parked_at, r.id));
        Ok(items.iter().map(|r| r.to_api()).collect())
    }

    pub async fn groups(&self, q: &GroupQuery) -> Result<FailureGroupList> {
        Ok(FailureGroupList {
            items: store::groups(self.db(), q).await?,
        })
    }

    pub async fn jobs(&self, limit: u32) -> Result<JobList> {
        Ok(JobList {
            items: store::list_jobs(self.db(), limit).await?,
        })
    }

    pub async fn job(&self, id: Uuid) -> Result<Job> {
        Ok(store::get_job(self.db(), id)
            .await?
            .ok_or(RequestError::NotFound)?)
    }

    pub async fn audit(&self, after: Option<Cursor>, limit: u32) -> Result<AuditPage> {
        let mut items = store::list_audit(self.db(), after, limit).await?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = match items.last() {
            Some(last) if more => Some(
                Cursor {
                    at: to_micros(last.at),
                    id: last.id,
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(AuditPage { items, next_cursor })
    }

    // ---- bulk actions ----

    /// Replay, discard or purge a selection: a dry run counts; otherwise a job does the
    /// work in the background and the reply carries it.
    pub async fn bulk(
        &self,
        actor: Actor,
        kind: JobKind,
        selection: &Selection,
        dry_run: bool,
        reason: &str,
        rate_per_sec: Option<u32>,
    ) -> Result<BulkResult> {
        let selector = Selector::parse(selection)?;
        let reason = domain::require_reason(reason)?;
        let action = domain::job_kind_str(kind);
        let selection_json = serde_json::to_value(selection).unwrap_or_default();
        if dry_run {
            let matched = store::count_selection(self.db(), &selector).await?;
            store::insert_audit(
                self.db(),
                &NewAudit {
                    id: Uuid::now_v7(),
                    actor,
                    action: format!("{action}_dry_run"),
                    target: selector.target(),
                    target_id: selector.single_id(),
                    count: matched,
                    reason,
                    detail: json!({ "dry_run": true, "selection": selection_json }),
                },
            )
            .await?;
            return Ok(BulkResult {
                dry_run: true,
                matched,
                job: None,
            });
        }
        let ids = store::select_ids(self.db(), &selector).await?;
        let matched = ids.len() as u64;
        let rate = match kind {
            JobKind::Replay => Some(rate_per_sec.unwrap_or(self.config().replay_rate_per_sec)),
            _ => None,
        };
        let job = Job {
            id: Uuid::now_v7(),
            kind,
            status: JobStatus::Running,
            total: matched,
            done: 0,
            skipped: 0,
            failed: 0,
            rate_per_sec: rate,
            actor,
            reason: reason.clone(),
            error: None,
            created_at: store::now(),
            finished_at: None,
        };
        let audit_id = Uuid::now_v7();
        store::insert_audit(
            self.db(),
            &NewAudit {
                id: audit_id,
                actor,
                action: action.to_owned(),
                target: selector.target(),
                target_id: selector.single_id(),
                count: matched,
                reason,
                detail: json!({ "job": job.id, "selection": selection_json, "matched": matched }),
            },
        )
        .await?;
        store::insert_job(self.db(), &job, &selection_json, audit_id).await?;
        let work = jobs::Work {
            hospital: self.clone(),
            job: job.clone(),
            ids,
            actionable: selector.actionable(kind),
            audit_id,
            selection: selection_json,
        };
        self.inner.jobs.spawn(jobs::run(work));
        Ok(BulkResult {
            dry_run: false,
            matched,
            job: Some(job),
        })
    }

    // ---- edit and replay one ----

    pub async fn edit_replay(
        &self,
        actor: Actor,
        id: Uuid,
        mut body: serde_json::Value,
        reason: &str,
    ) -> Result<EditReplayResult> {
        let reason = domain::require_reason(reason)?;
        let full = store::get(self.db(), id)
            .await?
            .ok_or(RequestError::NotFound)?;
        let row = &full.row;
        if row.status != DeadLetterStatus::Parked.as_str() {
            return Err(RequestError::Invalid("not parked".into()).into());
        }
        let (Some(message_type), Some(version)) = (
            row.diagnosis.message_type.clone(),
            row.diagnosis.schema_version,
        ) else {
            return Err(RequestError::Invalid(
                "the dead letter names no message type and schema version; it cannot be edited"
                    .into(),
            )
            .into());
        };
        let new_id = Uuid::now_v7();
        match body.get_mut("meta").and_then(|m| m.as_object_mut()) {
            Some(meta) => {
                meta.insert("message_id".into(), json!(new_id.to_string()));
            }
            None => {
                return Err(RequestError::Invalid(
                    "body: an object with a meta object is required".into(),
                )
                .into());
            }
        }
        let (bytes, _meta) = contracts::events::encode_json(&message_type, version, body.clone())
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        let original = contracts::wire::decode::<serde_json::Value>(&full.payload)
            .unwrap_or(serde_json::Value::Null);
        let diff = line_diff(&original, &body);
        let new_id_text = new_id.to_string();
        let outgoing = bus::edited_replay_of(&full, &new_id_text, bytes)
            .map_err(|e| RequestError::Invalid(e.to_string()))?;

        // Claim before publishing: a group replay running at the same time then finds
        // the row taken and can never also send the unedited copy. The audit entry (with
        // the edited body) is written before the publish and the row marked replayed
        // after the ack, so a process stopping anywhere in between leaves an `editing`
        // row that the sweeper finishes: it re-sends the same copy (the same
        // `Nats-Msg-Id`, dropped by the stream if the first one was stored) or, when no
        // audit entry was written yet (so nothing was sent), gives the row back.
        let audit_id = Uuid::now_v7();
        if !store::claim_for_edit(self.db(), id, audit_id).await? {
            return Err(RequestError::Invalid("not parked".into()).into());
        }
        let detail = json!({
            "park_id": row.park_id,
            "original_message_id": row.diagnosis.message_id,
            "message_id": new_id_text,
            "original": original,
            "edited": body,
            "diff": diff,
        });
        let audited = store::insert_audit(
            self.db(),
            &NewAudit {
                id: audit_id,
                actor,
                action: EDIT_REPLAY.into(),
                target: id.to_string(),
                target_id: Some(id),
                count: 1,
                reason,
                detail: detail.clone(),
            },
        )
        .await;
        if let Err(e) = audited {
            store::unclaim_edit(self.db(), id, audit_id).await?;
            return Err(e.into());
        }
        if let Err(e) = bus::publish(self.js(), outgoing).await {
            store::unclaim_edit(self.db(), id, audit_id).await?;
            let mut failed = detail;
            if let Some(d) = failed.as_object_mut() {
                d.insert("failed".into(), json!(e.to_string()));
            }
            store::update_audit(self.db(), audit_id, 0, &failed).await?;
            return Err(e.into());
        }
        store::finish_edit(self.db(), id, audit_id).await?;
        Ok(EditReplayResult {
            message_id: new_id_text,
            diff,
        })
    }

    /// Finishes edit-replays whose process stopped between claiming the row and
    /// marking it replayed (claimed before `stale_after` ago). Returns how many.
    pub async fn recover_stale_edits(&self, stale_after: Duration) -> Result<u64> {
        let before = Timestamp::now()
            - jiff::SignedDuration::try_from(stale_after).unwrap_or(jiff::SignedDuration::ZERO);
        let mut recovered = 0;
        for (id, audit_id) in store::stale_edits(self.db(), before).await? {
            let audit = store::get_audit(self.db(), audit_id).await?;
            let Some(audit) = audit.filter(|a| a.action == EDIT_REPLAY) else {
                // Stopped before the audit entry, so before the publish: nothing sent.
                store::unclaim_edit(self.db(), id, audit_id).await?;
                tracing::warn!(dead_letter = %id, "an interrupted edit-replay sent nothing; parked again");
                recovered += 1;
                continue;
            };
            let outgoing = match self.edited_copy_of(id, &audit).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(dead_letter = %id, error = %e, "cannot rebuild an interrupted edit-replay; parked again");
                    store::unclaim_edit(self.db(), id, audit_id).await?;
                    let mut failed = audit.detail.clone();
                    if let Some(d) = failed.as_object_mut() {
                        d.insert("failed".into(), json!(e.to_string()));
                    }
                    store::update_audit(self.db(), audit_id, 0, &failed).await?;
                    recovered += 1;
                    continue;
                }
            };
            // The same copy with the same `Nats-Msg-Id`: a duplicate if it was sent
            // (within the stream's duplicate window; after that the consumer's own
            // dedupe on the edited copy's `Mesh-Message-Id` drops it).
            bus::publish(self.js(), outgoing).await?;
            if store::finish_edit(self.db(), id, audit_id).await? {
                tracing::warn!(dead_letter = %id, "an interrupted edit-replay finished");
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// The edited copy an audit entry describes, built again (byte for byte: the body
    /// is encoded through its contract type).
    async fn edited_copy_of(&self, id: Uuid, audit: &AuditEntry) -> Result<bus::Outgoing> {
        let full = store::get(self.db(), id)
            .await?
            .ok_or(RequestError::NotFound)?;
        let (Some(message_type), Some(version)) = (
            full.row.diagnosis.message_type.clone(),
            full.row.diagnosis.schema_version,
        ) else {
            return Err(RequestError::Invalid("no message type and schema version".into()).into());
        };
        let new_id = audit.detail["message_id"]
            .as_str()
            .ok_or_else(|| RequestError::Invalid("the audit entry names no message id".into()))?
            .to_owned();
        let (bytes, _) =
            contracts::events::encode_json(&message_type, version, audit.detail["edited"].clone())
                .map_err(|e| RequestError::Invalid(e.to_string()))?;
        Ok(bus::edited_replay_of(&full, &new_id, bytes)
            .map_err(|e| RequestError::Invalid(e.to_string()))?)
    }

    // ---- consumers ----

    pub async fn stats(&self) -> Result<HospitalStats> {
        let parked: HashMap<String, u64> =
            store::parked_counts(self.db()).await?.into_iter().collect();
        let consumers = bus::source_consumers(self.js())
            .await?
            .iter()
            .map(|info| bus::consumer_state(info, parked.get(&info.name).copied().unwrap_or(0)))
            .collect();
        let mut dlq = self
            .js()
            .get_stream(subjects::DLQ_STREAM.name)
            .await
            .map_err(|e| BusError(e.to_string()))?;
        let info = dlq.info().await.map_err(|e| BusError(e.to_string()))?;
        Ok(HospitalStats {
            consumers,
            dlq_messages: info.state.messages,
            dlq_bytes: info.state.bytes,
            dlq_max_bytes: info.config.max_bytes,
        })
    }

    /// Which service instances run (NATS discovery, `$SRV.INFO` scatter-gather), with
    /// their versions and the event contracts they produce and consume, and every
    /// source durable's lag.
    pub async fn services(&self) -> Result<ServiceList> {
        let found = runtime::discovery::instances(&self.js().client(), DISCOVERY_WINDOW)
            .await
            .map_err(|e| BusError(e.to_string()))?;
        let outboxes = outboxes(&self.js().client(), &found).await;
        let mut instances: Vec<ServiceInstance> = found
            .into_iter()
            .map(|info| {
                let contracts = runtime::rpc::Contracts::from_metadata(&info.metadata);
                ServiceInstance {
                    service: info.name,
                    id: info.id,
                    version: info.version,
                    description: info.description,
                    endpoints: u32::try_from(info.endpoints.len()).unwrap_or(u32::MAX),
                    produces: contracts.produces,
                    consumes: contracts.consumes,
                }
            })
            .collect();
        instances
            .sort_by(|a, b| (&a.service, &a.version, &a.id).cmp(&(&b.service, &b.version, &b.id)));
        let parked: HashMap<String, u64> =
            store::parked_counts(self.db()).await?.into_iter().collect();
        let consumers = bus::source_consumers(self.js())
            .await?
            .iter()
            .map(|info| bus::consumer_state(info, parked.get(&info.name).copied().unwrap_or(0)))
            .collect();
        Ok(ServiceList {
            instances,
            consumers,
            outboxes,
        })
    }

    pub async fn pause(
        &self,
        actor: Actor,
        durable: &str,
        seconds: Option<u64>,
        reason: &str,
    ) -> Result<ConsumerState> {
        let reason = domain::require_reason(reason)?;
        let seconds = seconds.unwrap_or(3600);
        if seconds == 0 || seconds > 366 * 24 * 3600 {
            return Err(RequestError::Invalid("seconds: from 1 to one year".into()).into());
        }
        let stream = bus::find_durable(self.js(), durable)
            .await?
            .ok_or(RequestError::NotFound)?;
        let until = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(seconds as i64))
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        let info = bus::pause(&stream, durable, until).await?;
        self.audit_consumer(
            actor,
            "pause",
            &info,
            reason,
            json!({ "until": until, "seconds": seconds }),
        )
        .await
    }

    pub async fn resume(&self, actor: Actor, durable: &str, reason: &str) -> Result<ConsumerState> {
        let reason = domain::require_reason(reason)?;
        let stream = bus::find_durable(self.js(), durable)
            .await?
            .ok_or(RequestError::NotFound)?;
        let info = bus::resume(&stream, durable).await?;
        self.audit_consumer(actor, "resume", &info, reason, json!({}))
            .await
    }

    async fn audit_consumer(
        &self,
        actor: Actor,
        action: &str,
        info: &async_nats::jetstream::consumer::Info,
        reason: String,
        mut detail: serde_json::Value,
    ) -> Result<ConsumerState> {
        let parked: HashMap<String, u64> =
            store::parked_counts(self.db()).await?.into_iter().collect();
        let state = bus::consumer_state(info, parked.get(&info.name).copied().unwrap_or(0));
        if let Some(d) = detail.as_object_mut() {
            d.insert("stream".into(), json!(info.stream_name));
        }
        store::insert_audit(
            self.db(),
            &NewAudit {
                id: Uuid::now_v7(),
                actor,
                action: action.to_owned(),
                target: format!("consumer:{}", info.name),
                target_id: None,
                count: 1,
                reason,
                detail,
            },
        )
        .await?;
        Ok(state)
    }

    // ---- where is this message? ----

    pub async fn where_is(&self, q: &WhereQuery) -> Result<WhereaboutsList> {
        let rows = match q {
            WhereQuery::MessageId(m) => store::by_message_id(self.db(), m).await?,
            WhereQuery::TraceId(t) => store::by_trace_id(self.db(), t).await?,
        };
        // Each message once, where it was first published: a message parked by several
        // durables, or parked again after a replay, is one (rows are oldest first).
        let mut found: Vec<bus::Found> = Vec::new();
        for r in &rows {
            let d = &r.diagnosis;
            let seen = found.iter().any(|f| match (&f.message_id, &d.message_id) {
                (Some(a), Some(b)) => a == b,
                _ => f.stream == d.stream && f.sequence == d.stream_sequence,
            });
            if !seen {
                found.push(bus::Found {
                    stream: d.stream.clone(),
                    sequence: d.stream_sequence,
                    subject: d.subject.clone(),
                    message_id: d.message_id.clone(),
                    // First seen as a replay (an edited copy): only its durable had it.
                    only_durable: d.replay_of.as_ref().map(|_| d.durable.clone()),
                });
            }
        }
        if found.is_empty() {
            let needle = match q {
                WhereQuery::MessageId(m) => Needle::MessageId(m),
                WhereQuery::TraceId(t) => Needle::TraceId(t),
            };
            found = bus::scan(self.js(), needle, self.config().where_scan_limit).await?;
        }
        if found.is_empty() {
            return Err(RequestError::NotFound.into());
        }
        let consumers = bus::source_consumers(self.js()).await?;
        let kv = self
            .js()
            .get_key_value(subjects::buckets::CONSUMER_FAILURES)
            .await
            .ok();
        let mut items = Vec::new();
        for f in found {
            let mut outcomes = Vec::new();
            for info in consumers
                .iter()
                .filter(|c| c.stream_name == f.stream && bus::consumer_takes(c, &f.subject))
                .filter(|c| f.only_durable.as_ref().is_none_or(|d| *d == c.name))
            {
                // The newest dead letter of this message by this durable decides.
                let parked = rows
                    .iter()
                    .filter(|r| {
                        r.diagnosis.durable == info.name
                            && r.diagnosis.stream == f.stream
                            && (r.diagnosis.stream_sequence == f.sequence
                                || (r.diagnosis.message_id.is_some()
                                    && r.diagnosis.message_id == f.message_id))
                    })
                    .max_by_key(|r| (r.parked_at, r.id));
                let (outcome, detail) = if let Some(r) = parked {
                    let outcome = match r.status() {
                        DeadLetterStatus::Parked => Outcome::Parked,
                        DeadLetterStatus::Replayed => Outcome::Replayed,
                        DeadLetterStatus::Discarded => Outcome::Discarded,
                    };
                    (
                        outcome,
                        Some(format!("dead letter {} ({})", r.id, r.park_id)),
                    )
                } else if bus::is_retrying(kv.as_ref(), &info.name, &f.stream, f.sequence).await {
                    (Outcome::Retrying, None)
                } else if f.sequence <= info.ack_floor.stream_sequence {
                    (Outcome::Handled, None)
                } else if f.sequence <= info.delivered.stream_sequence {
                    (
                        Outcome::Pending,
                        Some(
                            "delivered; not yet acknowledged (or acknowledged out of order)".into(),
                        ),
                    )
                } else {
                    (Outcome::Pending, None)
                };
                outcomes.push(ConsumerOutcome {
                    durable: info.name.clone(),
                    outcome,
                    detail,
                });
            }
            items.push(MessageWhereabouts {
                message_id: f
                    .message_id
                    .clone()
                    .or_else(|| match q {
                        WhereQuery::MessageId(m) => Some(m.clone()),
                        WhereQuery::TraceId(_) => None,
                    })
                    .unwrap_or_default(),
                stream: f.stream,
                stream_sequence: f.sequence,
                subject: f.subject,
                consumers: outcomes,
            });
        }
        Ok(WhereaboutsList { items })
    }

    /// Marks jobs of dead processes failed and frees their claims.
    pub async fn sweep_stale_jobs(&self, stale_after: Duration) -> Result<u64> {
        let stale_before = Timestamp::now()
            - jiff::SignedDuration::try_from(stale_after).unwrap_or(jiff::SignedDuration::ZERO);
        Ok(store::fail_stale_jobs(self.db(), stale_before).await?)
    }
}

/// A unified line diff of the pretty-printed bodies, original → edited.
pub fn line_diff(original: &serde_json::Value, edited: &serde_json::Value) -> String {
    let a = serde_json::to_string_pretty(original).unwrap_or_default() + "\n";
    let b = serde_json::to_string_pretty(edited).unwrap_or_default() + "\n";
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header("original", "edited")
        .to_string()
}
