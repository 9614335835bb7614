//! The message hospital: what a parked message carries, and the admin API over the
//! dead-letter index (`/v1/admin/dlq…`, served by the hospital service).
//!
//! A worker whose handler fails permanently, or transiently on its last allowed
//! delivery, publishes a [`ParkedMessage`] (the original bytes and headers plus the
//! [`Diagnosis`]) on `dlq.<durable>` in the `DLQ` stream, waits for the ack, and only
//! then terminates the original. The park id `(durable, stream, sequence)` is the
//! `Nats-Msg-Id`, so parking twice after a crash is stored once.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Might work later (SMTP timeout, database busy); parked after max deliveries.
    Transient,
    /// Never works as is (undecodable, unknown version, invalid, SMTP 5xx); parked at once.
    Permanent,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transient" => Some(ErrorKind::Transient),
            "permanent" => Some(ErrorKind::Permanent),
            _ => None,
        }
    }
}

/// Why, where and how often a message failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Diagnosis {
    /// Service that failed, e.g. `email`.
    pub service: String,
    /// Its durable consumer, e.g. `email-calendar`.
    pub durable: String,
    pub stream: String,
    /// The original subject (for a replayed message, the subject it was first published on).
    pub subject: String,
    pub stream_sequence: u64,
    /// `Mesh-Message-Id` of the failed message, if it had one.
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub schema_version: Option<u32>,
    pub error_kind: ErrorKind,
    /// The error with its cause chain, `: `-separated.
    pub error: String,
    /// Deliveries so far (1 for a permanent failure on the first attempt).
    pub deliveries: i64,
    #[schema(value_type = String, format = DateTime)]
    pub first_failure_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_failure_at: Timestamp,
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The dead letter this message is a replay of, if any (its earlier history).
    #[serde(default)]
    pub replay_of: Option<String>,
}

/// The body of a message in the `DLQ` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedMessage {
    /// `park:<durable>:<stream>:<sequence>`, also the `Nats-Msg-Id`.
    pub park_id: String,
    pub diagnosis: Diagnosis,
    /// The original headers, in order.
    pub headers: Vec<(String, String)>,
    /// The original body, byte for byte.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    #[serde(default = "Timestamp::now")]
    pub parked_at: Timestamp,
}

impl ParkedMessage {
    pub fn park_id(durable: &str, stream: &str, sequence: u64) -> String {
        format!("park:{durable}:{stream}:{sequence}")
    }
}

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Waiting for ops.
    Parked,
    /// Re-sent to its consumer (as is, or edited).
    Replayed,
    /// Dropped on purpose, with a reason.
    Discarded,
}

impl DeadLetterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Parked => "parked",
            DeadLetterStatus::Replayed => "replayed",
            DeadLetterStatus::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "parked" => Some(DeadLetterStatus::Parked),
            "replayed" => Some(DeadLetterStatus::Replayed),
            "discarded" => Some(DeadLetterStatus::Discarded),
            _ => None,
        }
    }
}

/// One dead letter in lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    pub park_id: String,
    pub status: DeadLetterStatus,
    /// Error kind + normalized error text (numbers, ids, addresses blanked), hashed.
    pub fingerprint: String,
    pub diagnosis: Diagnosis,
    #[schema(value_type = String, format = DateTime)]
    pub parked_at: Timestamp,
    /// How often it was replayed.
    pub replays: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/admin/dlq/messages/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterDetail {
    pub dead_letter: DeadLetter,
    pub headers: Vec<Header>,
    /// The body decoded from MessagePack, as JSON (`null` if it does not decode).
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
    /// Why the body could not be decoded, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_error: Option<String>,
    /// The original body, base64.
    pub payload_base64: String,
    /// Earlier parks of the same message by the same consumer (oldest first).
    pub history: Vec<DeadLetter>,
    /// Ops actions on this dead letter.
    pub audit: Vec<AuditEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Filters of the dead-letter index (all optional, combined with AND). In a query
/// string: `durable`, `subject`, `message_type`, `error_kind`, `error` (substring of the
/// error text), `status`, `from`, `to` (RFC 3339 on `parked_at`), `fingerprint`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeadLetterStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub from: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub to: Option<Timestamp>,
}

/// Failures of one consumer with one cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailureGroup {
    pub durable: String,
    pub fingerprint: String,
    pub error_kind: ErrorKind,
    /// The error text of the newest member.
    pub sample_error: String,
    pub total: u64,
    /// Members still parked.
    pub parked: u64,
    #[schema(value_type = String, format = DateTime)]
    pub first_seen: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailureGroupList {
    pub items: Vec<FailureGroup>,
}

/// Which dead letters a bulk action applies to: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<DeadLetterFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupKey {
    pub durable: String,
    pub fingerprint: String,
}

/// `POST /v1/admin/dlq/replay`: re-send parked messages to the consumer that failed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub selection: Selection,
    /// Count what would be replayed, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Replays per second; 0 = no limit. Default from the hospital's config.
    #[serde(default)]
    pub rate_per_sec: Option<u32>,
    pub reason: String,
}

/// `POST /v1/admin/dlq/discard` and `/purge` (purge also deletes the stored copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub selection: Selection,
    #[serde(default)]
    pub dry_run: bool,
    pub reason: String,
}

/// The answer to a bulk action: a dry run's count, or the job doing the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    pub dry_run: bool,
    /// Dead letters the selection matched (only `parked` ones are acted on).
    pub matched: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Replay,
    Discard,
    Purge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Completed,
    Failed,
}

/// A bulk action in progress or done; poll it for progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    pub total: u64,
    pub done: u64,
    /// Members skipped because they were no longer parked (e.g. a rerun).
    pub skipped: u64,
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
    pub actor: Uuid,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub items: Vec<Job>,
}

/// `POST /v1/admin/dlq/messages/{id}/edit-replay`: replace the body (as JSON, validated
/// against the message's contract) and replay the edited copy only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditReplayRequest {
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EditReplayResult {
    /// Message id of the edited copy (the original's id is kept in `Mesh-Edited-From`).
    pub message_id: String,
    /// Line diff of the JSON bodies, original → edited.
    pub diff: String,
}

/// `POST /v1/admin/consumers/{durable}/pause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// How long to pause; default one hour.
    #[serde(default)]
    pub seconds: Option<u64>,
    pub reason: String,
}

/// `POST /v1/admin/consumers/{durable}/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    pub reason: String,
}

/// One durable consumer's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsumerState {
    pub durable: String,
    pub stream: String,
    /// Messages not yet delivered (lag).
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Messages delivered more than once, as the server counts them.
    pub redelivered: u64,
    /// Dead letters still parked for this consumer.
    pub parked: u64,
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub paused_until: Option<Timestamp>,
}

/// `GET /v1/admin/dlq/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HospitalStats {
    pub consumers: Vec<ConsumerState>,
    /// Messages in the `DLQ` stream and its limits.
    pub dlq_messages: u64,
    pub dlq_bytes: u64,
    pub dlq_max_bytes: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged by the consumer.
    Handled,
    /// Failed at least once and waiting for its next delivery.
    Retrying,
    /// In the hospital, waiting for ops.
    Parked,
    /// Parked, then replayed.
    Replayed,
    /// Parked, then discarded.
    Discarded,
    /// Not delivered yet (behind the consumer's position).
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsumerOutcome {
    pub durable: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /v1/admin/dlq/where?message_id=…` (or `trace_id=…`): each consumer's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageWhereabouts {
    pub message_id: String,
    pub stream: String,
    pub stream_sequence: u64,
    pub subject: String,
    pub consumers: Vec<ConsumerOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhereaboutsList {
    pub items: Vec<MessageWhereabouts>,
}

/// One ops action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// User id of the operator.
    pub actor: Uuid,
    /// e.g. `replay`, `edit_replay`, `discard`, `purge`, `pause`, `resume`.
    pub action: String,
    /// What it applied to: a dead letter id, a group, a filter, a durable.
    pub target: String,
    pub count: u64,
    pub reason: String,
    /// Action-specific details (for an edit: both bodies and the diff).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One running service instance, as it answered NATS service discovery (`$SRV.INFO`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInstance {
    /// Service name, e.g. `calendar`.
    pub service: String,
    /// The instance's id (one per process).
    pub id: String,
    /// The version the instance reports.
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Request/reply endpoints it serves.
    #[serde(default)]
    pub endpoints: u32,
    /// Event contracts it publishes, `type@version` (e.g. `calendar.rsvp_changed@2`).
    #[serde(default)]
    pub produces: Vec<String>,
    /// Event contracts it reads, `type@version`.
    #[serde(default)]
    pub consumes: Vec<String>,
}

/// `GET /v1/admin/services`: which instances run, which contract versions they speak,
/// which consumers lag, and what waits in each transactional outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    /// Sorted by service, then version, then id.
    pub instances: Vec<ServiceInstance>,
    /// Every durable on the domain streams (the same state as `/v1/admin/dlq/stats`).
    pub consumers: Vec<ConsumerState>,
    /// One per service that serves `outbox.stats` (the services with an outbox), sorted
    /// by service. Empty from a hospital that predates it.
    #[serde(default)]
    pub outboxes: Vec<OutboxState>,
}

/// A service's transactional outbox as its `outbox.stats` endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutboxState {
    /// Service name, e.g. `calendar`.
    pub service: String,
    /// Rows committed but not yet published to the stream.
    pub backlog: u64,
    /// When the oldest unpublished row was committed (none when the backlog is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest_unpublished_at: Option<Timestamp>,
    /// Why the figures are missing (the service did not answer in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply of `svc.<service>.v1.outbox.stats` (served by every service with an outbox;
/// asked by the hospital for `GET /v1/admin/services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutboxStats {
    pub backlog: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest_unpublished_at: Option<Timestamp>,
}
