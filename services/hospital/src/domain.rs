//! The hospital's rules, pure: failure fingerprints, the admin API's query parameters
//! and bulk requests, parsed into types that cannot be wrong.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contracts::hospital::{
    DeadLetterFilter, DeadLetterStatus, ErrorKind, GroupKey, JobKind, Selection,
};
use contracts::{ErrorCode, Problem};
use jiff::Timestamp;
use regex::Regex;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("no caller")]
    Unauthorized,
    #[error("admins only")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("validation failed: {0}")]
    Invalid(String),
}

impl From<RequestError> for Problem {
    fn from(e: RequestError) -> Problem {
        match e {
            RequestError::Unauthorized => Problem::new(ErrorCode::Unauthorized),
            RequestError::Forbidden => Problem::new(ErrorCode::Forbidden)
                .with_detail("the message hospital is for admins only"),
            RequestError::NotFound => Problem::new(ErrorCode::NotFound),
            RequestError::BadRequest(d) => Problem::new(ErrorCode::BadRequest).with_detail(d),
            RequestError::Invalid(d) => Problem::new(ErrorCode::ValidationFailed).with_detail(d),
        }
    }
}

// ---- fingerprints ----

/// A regex compiled once; `None` only if the pattern were invalid (it is a constant, so
/// the step is then skipped rather than panicking).
fn re(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

static QUOTED: LazyLock<Option<Regex>> = LazyLock::new(|| re(r#""[^"]*"|'[^']*'|`[^`]*`"#));
static UUID_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"));
static EMAIL: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"));
static HEX: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"\b(?:0[xX])?[0-9a-fA-F]{8,}\b"));
static DIGITS: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"[0-9]+"));
static SPACE: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"\s+"));

fn replace(re: &LazyLock<Option<Regex>>, text: String, with: &str) -> String {
    match re.as_ref() {
        Some(re) => re.replace_all(&text, with).into_owned(),
        None => text,
    }
}

/// The error text with what varies between messages of one cause blanked: quoted
/// strings, UUIDs, email addresses, hex ids, digit runs; whitespace collapsed.
pub fn normalize_error(error: &str) -> String {
    let text = replace(&QUOTED, error.to_owned(), "<str>");
    let text = replace(&UUID_RE, text, "<uuid>");
    let text = replace(&EMAIL, text, "<email>");
    let text = match HEX.as_ref() {
        // A long run of digits only is a number, not an id.
        Some(re) => re
            .replace_all(&text, |c: &regex::Captures<'_>| {
                let m = c.get(0).map(|m| m.as_str()).unwrap_or_default();
                if m.bytes().all(|b| b.is_ascii_digit()) {
                    "<n>".to_owned()
                } else {
                    "<hex>".to_owned()
                }
            })
            .into_owned(),
        None => text,
    };
    let text = replace(&DIGITS, text, "<n>");
    replace(&SPACE, text, " ").trim().to_owned()
}

/// Groups failures of one cause: the first 16 hex digits of SHA-256 over the error kind
/// and the normalized error text.
pub fn fingerprint(kind: ErrorKind, error: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(normalize_error(error).as_bytes());
    let digest = hex::encode(hasher.finalize());
    digest.chars().take(16).collect()
}

// ---- query parameters ----

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

fn bad(name: &str, why: &str) -> RequestError {
    RequestError::BadRequest(format!("query parameter {name}: {why}"))
}

fn text_param(q: &BTreeMap<String, String>, name: &str) -> Option<String> {
    q.get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn time_param(q: &BTreeMap<String, String>, name: &str) -> Result<Option<Timestamp>, RequestError> {
    text_param(q, name)
        .map(|v| {
            v.parse::<Timestamp>()
                .map_err(|_| bad(name, "expected an RFC 3339 instant"))
        })
        .transpose()
}

/// `limit`: 1..=500, default 50.
pub fn parse_limit(q: &BTreeMap<String, String>) -> Result<u32, RequestError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(bad("limit", "expected an integer from 1 to 500")),
        },
    }
}

/// The dead-letter filter from a query string (unknown parameters are ignored).
pub fn parse_filter(q: &BTreeMap<String, String>) -> Result<DeadLetterFilter, RequestError> {
    let error_kind = text_param(q, "error_kind")
        .map(|v| ErrorKind::parse(&v).ok_or_else(|| bad("error_kind", "transient or permanent")))
        .transpose()?;
    let status = text_param(q, "status")
        .map(|v| {
            DeadLetterStatus::parse(&v)
                .ok_or_else(|| bad("status", "parked, replayed or discarded"))
        })
        .transpose()?;
    let filter = DeadLetterFilter {
        durable: text_param(q, "durable"),
        subject: text_param(q, "subject"),
        message_type: text_param(q, "message_type"),
        error_kind,
        error: text_param(q, "error"),
        status,
        fingerprint: text_param(q, "fingerprint"),
        from: time_param(q, "from")?,
        to: time_param(q, "to")?,
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && to < from
    {
        return Err(bad("to", "before from"));
    }
    Ok(filter)
}

/// Position after the last item of a page: newest first by (instant, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: i64,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: base64url of `h1:<micros>:<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("h1:{}:{}", self.at, self.id))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s.trim()).ok()?).ok()?;
        let rest = raw.strip_prefix("h1:")?;
        let (at, id) = rest.split_once(':')?;
        Some(Cursor {
            at: at.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

pub fn parse_cursor(q: &BTreeMap<String, String>) -> Result<Option<Cursor>, RequestError> {
    q.get("cursor")
        .map(|c| Cursor::decode(c).ok_or_else(|| bad("cursor", "not a cursor of this list")))
        .transpose()
}

/// `GET /v1/admin/dlq/groups`: which members decide that a group is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupQuery {
    pub durable: Option<String>,
    /// Groups with at least one member in this status; `None` (`status=all`): every group.
    pub status: Option<DeadLetterStatus>,
}

pub fn parse_group_query(q: &BTreeMap<String, String>) -> Result<GroupQuery, RequestError> {
    let status = match text_param(q, "status").as_deref() {
        None => Some(DeadLetterStatus::Parked),
        Some("all") => None,
        Some(v) => Some(
            DeadLetterStatus::parse(v)
                .ok_or_else(|| bad("status", "parked, replayed, discarded or all"))?,
        ),
    };
    Ok(GroupQuery {
        durable: text_param(q, "durable"),
        status,
    })
}

/// `GET /v1/admin/dlq/where`: by message id or by trace id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhereQuery {
    MessageId(String),
    TraceId(String),
}

pub fn parse_where(q: &BTreeMap<String, String>) -> Result<WhereQuery, RequestError> {
    match (text_param(q, "message_id"), text_param(q, "trace_id")) {
        (Some(m), None) => Ok(WhereQuery::MessageId(m)),
        (None, Some(t)) if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(WhereQuery::TraceId(t.to_ascii_lowercase()))
        }
        (None, Some(_)) => Err(bad("trace_id", "expected 32 hex digits")),
        _ => Err(RequestError::BadRequest(
            "give exactly one of the query parameters message_id and trace_id".into(),
        )),
    }
}

pub fn parse_id(s: Option<&String>) -> Result<Uuid, RequestError> {
    s.and_then(|s| Uuid::parse_str(s.trim()).ok())
        .ok_or(RequestError::NotFound)
}

/// A durable name as NATS allows it (no dots, wildcards or whitespace).
pub fn parse_durable(s: Option<&String>) -> Result<String, RequestError> {
    let s = s.map(|s| s.trim()).unwrap_or_default();
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '.' | '*' | '>' | '/' | '\\'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(RequestError::NotFound)
    }
}

pub fn require_reason(reason: &str) -> Result<String, RequestError> {
    let r = reason.trim();
    if r.is_empty() {
        Err(RequestError::Invalid("reason: must not be empty".into()))
    } else if r.chars().count() > 2000 {
        Err(RequestError::Invalid(
            "reason: at most 2000 characters".into(),
        ))
    } else {
        Ok(r.to_owned())
    }
}

/// A selection with exactly one of its three ways set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Ids(Vec<Uuid>),
    Group(GroupKey),
    Filter(DeadLetterFilter),
}

pub const MAX_IDS: usize = 10_000;

impl Selector {
    pub fn parse(s: &Selection) -> Result<Self, RequestError> {
        let set = usize::from(!s.ids.is_empty())
            + usize::from(s.group.is_some())
            + usize::from(s.filter.is_some());
        if set != 1 {
            return Err(RequestError::Invalid(
                "selection: give exactly one of ids, group and filter".into(),
            ));
        }
        if !s.ids.is_empty() {
            if s.ids.len() > MAX_IDS {
                return Err(RequestError::Invalid(format!(
                    "selection.ids: at most {MAX_IDS} ids"
                )));
            }
            let mut ids = s.ids.clone();
            ids.sort();
            ids.dedup();
            return Ok(Selector::Ids(ids));
        }
        if let Some(g) = &s.group {
            if g.durable.trim().is_empty() || g.fingerprint.trim().is_empty() {
                return Err(RequestError::Invalid(
                    "selection.group: durable and fingerprint are required".into(),
                ));
            }
            return Ok(Selector::Group(g.clone()));
        }
        match &s.filter {
            Some(f) => Ok(Selector::Filter(f.clone())),
            None => Err(RequestError::Invalid("selection: empty".into())),
        }
    }

    /// A short description for the audit trail.
    pub fn target(&self) -> String {
        match self {
            Selector::Ids(ids) if ids.len() == 1 => ids[0].to_string(),
            Selector::Ids(ids) => format!("ids:{}", ids.len()),
            Selector::Group(g) => format!("group:{}/{}", g.durable, g.fingerprint),
            Selector::Filter(f) => format!(
                "filter:{}",
                serde_json::to_string(f).unwrap_or_else(|_| "?".into())
            ),
        }
    }

    /// The dead letter named, when the selection names exactly one.
    pub fn single_id(&self) -> Option<Uuid> {
        match self {
            Selector::Ids(ids) if ids.len() == 1 => Some(ids[0]),
            _ => None,
        }
    }

    /// The statuses a bulk action of `kind` acts on. Replay and discard only ever act on
    /// parked dead letters; purge also removes replayed or discarded ones when the
    /// filter asks for that status explicitly (`status=discarded` cleans up).
    pub fn actionable(&self, kind: JobKind) -> DeadLetterStatus {
        match (kind, self) {
            (JobKind::Purge, Selector::Filter(f)) => f.status.unwrap_or(DeadLetterStatus::Parked),
            _ => DeadLetterStatus::Parked,
        }
    }
}

pub fn job_kind_str(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Replay => "replay",
        JobKind::Discard => "discard",
        JobKind::Purge => "purge",
    }
}

pub fn parse_job_kind(s: &str) -> Option<JobKind> {
    match s {
        "replay" => Some(JobKind::Replay),
        "discard" => Some(JobKind::Discard),
        "purge" => Some(JobKind::Purge),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn normalization_blanks_what_varies() {
        let a = normalize_error(
            "permanent: smtp 550: mailbox \"ann@example.com\" unknown for user 0190e0c4-8f8a-7c3b-9d2e-1a2b3c4d5e6f (attempt 3)",
        );
        let b = normalize_error(
            "permanent: smtp 550: mailbox \"bob@example.org\" unknown for user 0190e0c4-0000-7c3b-9d2e-ffffffffffff   (attempt 12)",
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            "permanent: smtp <n>: mailbox <str> unknown for user <uuid> (attempt <n>)"
        );
        assert_eq!(
            normalize_error("write to bob@x.io failed, id deadbeef42cafe00"),
            "write to <email> failed, id <hex>"
        );
        assert_eq!(normalize_error("took 123456789 ms"), "took <n> ms");
    }

    #[test]
    fn fingerprints_differ_by_kind_and_cause() {
        let e1 = fingerprint(ErrorKind::Permanent, "bad title 'x'");
        let e2 = fingerprint(ErrorKind::Permanent, "bad title 'y'");
        let e3 = fingerprint(ErrorKind::Transient, "bad title 'x'");
        let e4 = fingerprint(ErrorKind::Permanent, "bad body 'x'");
        assert_eq!(e1, e2);
        assert_ne!(e1, e3);
        assert_ne!(e1, e4);
        assert_eq!(e1.len(), 16);
    }

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn filters_and_limits_parse() {
        let f = parse_filter(&q(&[
            ("durable", "email-calendar"),
            ("error_kind", "permanent"),
            ("status", "parked"),
            ("from", "2024-01-01T00:00:00Z"),
        ]))
        .unwrap();
        assert_eq!(f.durable.as_deref(), Some("email-calendar"));
        assert_eq!(f.error_kind, Some(ErrorKind::Permanent));
        assert_eq!(f.status, Some(DeadLetterStatus::Parked));
        assert!(f.from.is_some());
        for bad in [
            &[("error_kind", "sometimes")][..],
            &[("status", "lost")],
            &[("from", "yesterday")],
            &[
                ("from", "2024-02-01T00:00:00Z"),
                ("to", "2024-01-01T00:00:00Z"),
            ],
        ] {
            assert!(parse_filter(&q(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(parse_limit(&q(&[])).unwrap(), 50);
        assert_eq!(parse_limit(&q(&[("limit", "500")])).unwrap(), 500);
        assert!(parse_limit(&q(&[("limit", "0")])).is_err());
        assert!(parse_limit(&q(&[("limit", "501")])).is_err());
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            at: 1_700_000_000_000_000,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("%%%"), None);
    }

    #[test]
    fn a_selection_names_exactly_one_way() {
        let none = Selection::default();
        assert!(Selector::parse(&none).is_err());
        let two = Selection {
            ids: vec![Uuid::now_v7()],
            filter: Some(DeadLetterFilter::default()),
            ..Default::default()
        };
        assert!(Selector::parse(&two).is_err());
        let one = Selection {
            filter: Some(DeadLetterFilter::default()),
            ..Default::default()
        };
        assert!(matches!(Selector::parse(&one), Ok(Selector::Filter(_))));
        assert!(require_reason("  ").is_err());
    }
}
