//! A stub of the gateway's auth and admin API, serving the contract types: three parked
//! dead letters, jobs that complete over three polls, problem+json errors, and tokens
//! that expire on purpose. It records what it was asked so tests can check it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contracts::api::{Accepted, LoginRequest, LogoutRequest, RefreshRequest, TokenResponse};
use contracts::error::{ErrorCode, Problem};
use contracts::hospital::{
    AuditEntry, AuditPage, BulkRequest, BulkResult, ConsumerOutcome, ConsumerState, DeadLetter,
    DeadLetterDetail, DeadLetterPage, DeadLetterStatus, Diagnosis, EditReplayRequest,
    EditReplayResult, ErrorKind, FailureGroup, FailureGroupList, Header, HospitalStats, Job,
    JobKind, JobList, JobStatus, MessageWhereabouts, OutboxState, Outcome, ParkedMessage,
    PauseRequest, ReplayRequest, ResumeRequest, Selection, ServiceInstance, ServiceList,
    WhereaboutsList,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use uuid::Uuid;

pub const EMAIL: &str = "ops@example.com";
pub const PASSWORD: &str = "s3cret pass";
pub const ACTOR: Uuid = Uuid::from_u128(0xad);

pub const SMTP_550: Uuid = Uuid::from_u128(0xa1);
pub const SMTP_TIMEOUT: Uuid = Uuid::from_u128(0xa2);
pub const PUSH_SCHEMA: Uuid = Uuid::from_u128(0xa3);

/// Refresh tokens the stub knows: a good one, and one whose new access token is
/// rejected again (to prove the client refreshes only once).
pub const REFRESH_GOOD: &str = "refresh-good";
pub const REFRESH_TO_EXPIRED: &str = "refresh-to-expired";
/// An access token the stub always answers 401 `unauthorized`.
pub const EXPIRED: &str = "expired-token";
/// An access token of a user without the admin role: 403.
pub const FORBIDDEN: &str = "forbidden";

#[derive(Default)]
pub struct StubState {
    /// `(path, raw query)` of every admin GET.
    pub queries: Mutex<Vec<(String, String)>>,
    pub admin_requests: AtomicUsize,
    pub refreshes: AtomicUsize,
    pub job_polls: AtomicUsize,
    pub bulk_requests: Mutex<Vec<(String, Value)>>,
    pub edits: Mutex<Vec<(Uuid, EditReplayRequest)>>,
    pub pauses: Mutex<Vec<(String, Value)>>,
    pub logouts: Mutex<Vec<String>>,
    access_tokens: Mutex<HashSet<String>>,
    refresh_tokens: Mutex<HashSet<String>>,
    jobs: Mutex<HashMap<Uuid, Job>>,
    issued: AtomicUsize,
}

impl StubState {
    pub fn queries_for(&self, path: &str) -> Vec<String> {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, q)| q.clone())
            .collect()
    }

    /// Registers a refresh token, as if issued by an earlier login.
    pub fn add_refresh_token(&self, token: &str) {
        self.refresh_tokens.lock().unwrap().insert(token.to_owned());
    }

    fn issue(&self, role: &str) -> TokenResponse {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let access = jwt(role, n);
        let refresh = format!("refresh-{n}");
        self.access_tokens.lock().unwrap().insert(access.clone());
        self.refresh_tokens.lock().unwrap().insert(refresh.clone());
        TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_token: refresh,
            refresh_expires_in: 86_400,
        }
    }
}

pub struct Stub {
    pub url: String,
    pub state: Arc<StubState>,
}

pub async fn start() -> Stub {
    let state = Arc::new(StubState::default());
    let app = Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/admin/dlq/messages", get(list))
        .route("/v1/admin/dlq/messages/{id}", get(show))
        .route("/v1/admin/dlq/messages/{id}/edit-replay", post(edit_replay))
        .route("/v1/admin/dlq/groups", get(groups))
        .route("/v1/admin/dlq/replay", post(replay))
        .route("/v1/admin/dlq/discard", post(discard))
        .route("/v1/admin/dlq/purge", post(purge))
        .route("/v1/admin/dlq/jobs", get(jobs))
        .route("/v1/admin/dlq/jobs/{id}", get(job))
        .route("/v1/admin/dlq/stats", get(stats))
        .route("/v1/admin/services", get(services))
        .route("/v1/admin/dlq/where", get(whereabouts))
        .route("/v1/admin/audit", get(audit))
        .route("/v1/admin/consumers/{durable}/pause", post(pause))
        .route("/v1/admin/consumers/{durable}/resume", post(resume))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Stub {
        url: format!("http://{addr}"),
        state,
    }
}

/// A token shaped like the auth service's: the claims are real, the signature is not.
pub fn jwt(role: &str, n: usize) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let exp = Timestamp::now().as_second() + 900;
    let claims = json!({
        "sub": ACTOR, "role": role, "iss": "mesh-auth", "aud": "mesh",
        "iat": exp - 900, "exp": exp, "jti": Uuid::from_u128(n as u128),
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.sig{n}")
}

fn problem(code: ErrorCode, detail: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap();
    let body = serde_json::to_vec(&Problem::new(code).with_detail(detail)).unwrap();
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body,
    )
        .into_response()
}

/// Admin endpoints: a known access token with the admin role, else problem+json.
fn authorize(state: &StubState, headers: &HeaderMap) -> Result<(), Response> {
    state.admin_requests.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(FORBIDDEN) => Err(problem(ErrorCode::Forbidden, "admin role required")),
        Some(t) if state.access_tokens.lock().unwrap().contains(t) => Ok(()),
        Some(_) => Err(problem(ErrorCode::Unauthorized, "access token expired")),
        None => Err(problem(ErrorCode::Unauthorized, "no bearer token")),
    }
}

async fn login(State(state): State<Arc<StubState>>, Json(req): Json<LoginRequest>) -> Response {
    if req.email != EMAIL || req.password != PASSWORD {
        return problem(ErrorCode::InvalidCredentials, "email or password is wrong");
    }
    Json(state.issue("admin")).into_response()
}

async fn refresh(State(state): State<Arc<StubState>>, Json(req): Json<RefreshRequest>) -> Response {
    state.refreshes.fetch_add(1, Ordering::SeqCst);
    // Single use, like the real one.
    if !state
        .refresh_tokens
        .lock()
        .unwrap()
        .remove(&req.refresh_token)
    {
        return problem(ErrorCode::InvalidRefreshToken, "refresh token revoked");
    }
    let mut tokens = state.issue("admin");
    if req.refresh_token == REFRESH_TO_EXPIRED {
        tokens.access_token = EXPIRED.to_owned();
    }
    Json(tokens).into_response()
}

async fn logout(State(state): State<Arc<StubState>>, Json(req): Json<LogoutRequest>) -> Response {
    let known = state
        .refresh_tokens
        .lock()
        .unwrap()
        .remove(&req.refresh_token);
    state.logouts.lock().unwrap().push(req.refresh_token);
    if !known {
        return problem(ErrorCode::InvalidRefreshToken, "refresh token revoked");
    }
    Json(Accepted {
        status: "logged_out".into(),
    })
    .into_response()
}

fn at() -> Timestamp {
    "2030-01-01T10:00:00Z".parse().unwrap()
}

fn dead_letter(id: Uuid, durable: &str, kind: ErrorKind, error: &str, seq: u64) -> DeadLetter {
    let (service, message_type) = if durable.starts_with("email") {
        ("email", "calendar.event_created")
    } else {
        ("push", "calendar.event_updated")
    };
    DeadLetter {
        id,
        park_id: ParkedMessage::park_id(durable, "CALENDAR", seq),
        status: DeadLetterStatus::Parked,
        fingerprint: format!("fp-{durable}-{}", kind.as_str()),
        diagnosis: Diagnosis {
            service: service.into(),
            durable: durable.into(),
            stream: "CALENDAR".into(),
            subject: format!("calendar.v1.{message_type}"),
            stream_sequence: seq,
            message_id: Some(format!("msg-{seq}")),
            message_type: Some(message_type.into()),
            schema_version: Some(1),
            error_kind: kind,
            error: error.into(),
            deliveries: if kind == ErrorKind::Transient { 5 } else { 1 },
            first_failure_at: at(),
            last_failure_at: at(),
            trace_id: Some(format!("trace-{seq}")),
            replay_of: None,
        },
        parked_at: at(),
        replays: 0,
    }
}

pub fn dead_letters() -> Vec<DeadLetter> {
    vec![
        dead_letter(
            SMTP_550,
            "email-calendar",
            ErrorKind::Permanent,
            "smtp: 550 mailbox unavailable",
            11,
        ),
        dead_letter(
            SMTP_TIMEOUT,
            "email-calendar",
            ErrorKind::Transient,
            "smtp: timed out after 30s",
            12,
        ),
        dead_letter(
            PUSH_SCHEMA,
            "push-calendar",
            ErrorKind::Permanent,
            "decode: unknown schema version 3",
            13,
        ),
    ]
}

fn matches(dl: &DeadLetter, q: &HashMap<String, String>) -> bool {
    let d = &dl.diagnosis;
    let is = |key: &str, value: &str| q.get(key).is_none_or(|v| v == value);
    is("durable", &d.durable)
        && is("subject", &d.subject)
        && is("message_type", d.message_type.as_deref().unwrap_or(""))
        && is("error_kind", d.error_kind.as_str())
        && is("status", dl.status.as_str())
        && is("fingerprint", &dl.fingerprint)
        && q.get("error").is_none_or(|e| d.error.contains(e.as_str()))
}

fn record(state: &StubState, path: &str, raw: Option<String>) {
    state
        .queries
        .lock()
        .unwrap()
        .push((path.to_owned(), raw.unwrap_or_default()));
}

async fn list(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    record(&state, "messages", raw);
    for key in ["from", "to"] {
        if q.get(key).is_some_and(|v| v.parse::<Timestamp>().is_err()) {
            return problem(ErrorCode::BadRequest, &format!("{key}: not RFC 3339"));
        }
    }
    let all: Vec<DeadLetter> = dead_letters()
        .into_iter()
        .filter(|d| matches(d, &q))
        .collect();
    let offset: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    let items: Vec<DeadLetter> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = offset + items.len();
    Json(DeadLetterPage {
        items,
        next_cursor: (next < all.len()).then(|| next.to_string()),
    })
    .into_response()
}

async fn show(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let Some(dl) = dead_letters().into_iter().find(|d| d.id == id) else {
        return problem(ErrorCode::NotFound, "no such dead letter");
    };
    Json(DeadLetterDetail {
        headers: vec![Header {
            name: "Mesh-Message-Id".into(),
            value: dl.diagnosis.message_id.clone().unwrap_or_default(),
        }],
        body: json!({"event_id": "e-1", "email": "bad@@example"}),
        body_error: None,
        payload_base64: "gqhldmVudF9pZA==".into(),
        history: Vec::new(),
        audit: vec![AuditEntry {
            id: Uuid::from_u128(0xa0d1),
            at: at(),
            actor: ACTOR,
            action: "replay".into(),
            target: id.to_string(),
            count: 1,
            reason: "first try".into(),
            detail: json!({}),
        }],
        dead_letter: dl,
    })
    .into_response()
}

async fn edit_replay(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Json(req): Json<EditReplayRequest>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    state.edits.lock().unwrap().push((id, req));
    Json(EditReplayResult {
        message_id: "edited-msg-1".into(),
        diff: "-  \"email\": \"bad@@example\"\n+  \"email\": \"good@example.com\"\n".into(),
    })
    .into_response()
}

async fn groups(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    record(&state, "groups", raw);
    Json(FailureGroupList {
        items: vec![FailureGroup {
            durable: "email-calendar".into(),
            fingerprint: "fp-email-calendar-permanent".into(),
            error_kind: ErrorKind::Permanent,
            sample_error: "smtp: 550 mailbox unavailable".into(),
            total: 4,
            parked: 1,
            first_seen: at(),
            last_seen: at(),
        }],
    })
    .into_response()
}

/// Dead letters a selection matches.
fn matched(selection: &Selection) -> u64 {
    let all = dead_letters();
    let n = if !selection.ids.is_empty() {
        all.iter().filter(|d| selection.ids.contains(&d.id)).count()
    } else if let Some(g) = &selection.group {
        all.iter()
            .filter(|d| d.diagnosis.durable == g.durable && d.fingerprint == g.fingerprint)
            .count()
    } else if let Some(f) = &selection.filter {
        let q: HashMap<String, String> =
            serde_json::from_value::<HashMap<String, Value>>(serde_json::to_value(f).unwrap())
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or(v.to_string())))
                .collect();
        all.iter().filter(|d| matches(d, &q)).count()
    } else {
        0
    };
    n as u64
}

fn start_job(
    state: &StubState,
    kind: JobKind,
    selection: &Selection,
    dry_run: bool,
    reason: &str,
    rate: Option<u32>,
) -> BulkResult {
    let matched = matched(selection);
    if dry_run || matched == 0 {
        return BulkResult {
            dry_run,
            matched,
            job: None,
        };
    }
    let job = Job {
        id: Uuid::now_v7(),
        kind,
        status: JobStatus::Running,
        total: matched,
        done: 0,
        skipped: 0,
        failed: 0,
        rate_per_sec: rate,
        actor: ACTOR,
        reason: reason.to_owned(),
        error: None,
        created_at: Timestamp::now(),
        finished_at: None,
    };
    state.jobs.lock().unwrap().insert(job.id, job.clone());
    BulkResult {
        dry_run,
        matched,
        job: Some(job),
    }
}

async fn replay(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Json(req): Json<ReplayRequest>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    state
        .bulk_requests
        .lock()
        .unwrap()
        .push(("replay".into(), serde_json::to_value(&req).unwrap()));
    let result = start_job(
        &state,
        JobKind::Replay,
        &req.selection,
        req.dry_run,
        &req.reason,
        req.rate_per_sec,
    );
    Json(result).into_response()
}

async fn bulk(state: &StubState, headers: &HeaderMap, kind: JobKind, req: BulkRequest) -> Response {
    if let Err(r) = authorize(state, headers) {
        return r;
    }
    let name = if kind == JobKind::Discard {
        "discard"
    } else {
        "purge"
    };
    state
        .bulk_requests
        .lock()
        .unwrap()
        .push((name.into(), serde_json::to_value(&req).unwrap()));
    Json(start_job(
        state,
        kind,
        &req.selection,
        req.dry_run,
        &req.reason,
        None,
    ))
    .into_response()
}

async fn discard(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Json(req): Json<BulkRequest>,
) -> Response {
    bulk(&state, &headers, JobKind::Discard, req).await
}

async fn purge(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Json(req): Json<BulkRequest>,
) -> Response {
    bulk(&state, &headers, JobKind::Purge, req).await
}

/// Each poll moves the job on by one; a reason mentioning "fail" makes it fail.
async fn job(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    state.job_polls.fetch_add(1, Ordering::SeqCst);
    let mut jobs = state.jobs.lock().unwrap();
    let Some(job) = jobs.get_mut(&id) else {
        return problem(ErrorCode::NotFound, "no such job");
    };
    if job.status == JobStatus::Running {
        if job.reason.contains("fail") {
            job.status = JobStatus::Failed;
            job.error = Some("NATS unavailable".into());
            job.finished_at = Some(Timestamp::now());
        } else {
            job.done += 1;
            if job.done >= job.total {
                job.status = JobStatus::Completed;
                job.finished_at = Some(job.created_at + SignedDuration::from_millis(800));
            }
        }
    }
    Json(job.clone()).into_response()
}

async fn jobs(State(state): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let items = state.jobs.lock().unwrap().values().cloned().collect();
    Json(JobList { items }).into_response()
}

async fn services(State(state): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let calendar = |id: &str, v2: bool| {
        let mut produces = vec![
            "calendar.event_created@1".to_owned(),
            "calendar.rsvp_changed@1".to_owned(),
        ];
        if v2 {
            produces.push("calendar.rsvp_changed@2".to_owned());
        }
        ServiceInstance {
            service: "calendar".into(),
            id: id.into(),
            version: "0.1.0".into(),
            description: "Calendar events and RSVPs".into(),
            endpoints: 7,
            produces,
            consumes: Vec::new(),
        }
    };
    Json(ServiceList {
        instances: vec![
            calendar("CALOLD0000000000", false),
            calendar("CALNEW0000000000", true),
            ServiceInstance {
                service: "email".into(),
                id: "EMAIL00000000000".into(),
                version: "0.1.0".into(),
                description: "Mail".into(),
                endpoints: 0,
                produces: Vec::new(),
                consumes: vec!["calendar.rsvp_changed@1".into()],
            },
        ],
        consumers: vec![
            ConsumerState {
                durable: "email-calendar".into(),
                stream: "CALENDAR".into(),
                pending: 42,
                ack_pending: 3,
                redelivered: 0,
                parked: 2,
                paused: false,
                paused_until: None,
            },
            ConsumerState {
                durable: "push-calendar".into(),
                stream: "CALENDAR".into(),
                pending: 0,
                ack_pending: 0,
                redelivered: 0,
                parked: 0,
                paused: true,
                paused_until: None,
            },
        ],
        outboxes: vec![
            OutboxState {
                service: "auth".into(),
                backlog: 0,
                oldest_unpublished_at: None,
                error: None,
            },
            OutboxState {
                service: "calendar".into(),
                backlog: 17,
                oldest_unpublished_at: Some(Timestamp::now() - SignedDuration::from_secs(90)),
                error: None,
            },
        ],
    })
    .into_response()
}

async fn stats(State(state): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    Json(HospitalStats {
        consumers: vec![
            ConsumerState {
                durable: "email-calendar".into(),
                stream: "CALENDAR".into(),
                pending: 42,
                ack_pending: 3,
                redelivered: 7,
                parked: 2,
                paused: true,
                paused_until: Some(Timestamp::now() + SignedDuration::from_mins(30)),
            },
            ConsumerState {
                durable: "push-calendar".into(),
                stream: "CALENDAR".into(),
                pending: 0,
                ack_pending: 0,
                redelivered: 0,
                parked: 1,
                paused: false,
                paused_until: None,
            },
        ],
        dlq_messages: 3,
        dlq_bytes: 4096,
        dlq_max_bytes: 1 << 30,
    })
    .into_response()
}

async fn whereabouts(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    record(&state, "where", raw);
    let known = q.get("message_id").map(String::as_str) == Some("msg-11")
        || q.get("trace_id").map(String::as_str) == Some("trace-11");
    let items = if known {
        vec![MessageWhereabouts {
            message_id: "msg-11".into(),
            stream: "CALENDAR".into(),
            stream_sequence: 11,
            subject: "calendar.v1.calendar.event_created".into(),
            consumers: vec![
                ConsumerOutcome {
                    durable: "email-calendar".into(),
                    outcome: Outcome::Parked,
                    detail: Some("smtp: 550 mailbox unavailable".into()),
                },
                ConsumerOutcome {
                    durable: "push-calendar".into(),
                    outcome: Outcome::Handled,
                    detail: None,
                },
            ],
        }]
    } else {
        Vec::new()
    };
    Json(WhereaboutsList { items }).into_response()
}

async fn audit(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    record(&state, "audit", raw);
    Json(AuditPage {
        items: vec![AuditEntry {
            id: Uuid::from_u128(0xa0d2),
            at: at(),
            actor: ACTOR,
            action: "pause".into(),
            target: "email-calendar".into(),
            count: 1,
            reason: "smtp relay down".into(),
            detail: json!({"seconds": 1800}),
        }],
        next_cursor: Some("audit-2".into()),
    })
    .into_response()
}

async fn pause(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Path(durable): Path<String>,
    Json(req): Json<PauseRequest>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let seconds = req.seconds.unwrap_or(3600);
    state
        .pauses
        .lock()
        .unwrap()
        .push((durable.clone(), serde_json::to_value(&req).unwrap()));
    Json(ConsumerState {
        durable,
        stream: "CALENDAR".into(),
        pending: 0,
        ack_pending: 0,
        redelivered: 0,
        parked: 0,
        paused: true,
        paused_until: Some(
            Timestamp::now() + SignedDuration::from_secs(i64::try_from(seconds).unwrap()),
        ),
    })
    .into_response()
}

async fn resume(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Path(durable): Path<String>,
    Json(req): Json<ResumeRequest>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    state
        .pauses
        .lock()
        .unwrap()
        .push((durable, serde_json::to_value(&req).unwrap()));
    // An empty answer: the client must cope with it.
    StatusCode::NO_CONTENT.into_response()
}
