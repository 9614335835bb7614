//! The calendar's rules, free of SQL and NATS: what a valid event is, how a time is
//! checked against its zone, who may do what, and how an RSVP moves the counts.
//!
//! Every function here is pure (the current time is passed in), so the rules are unit
//! tested without a database; the service layer runs them inside its transactions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contracts::api::{self, CreateEventRequest, UpdateEventRequest};
use contracts::events::{EventSnapshot, EventStatus, RsvpCounts, RsvpStatus};
use contracts::{ErrorCode, FieldError, Problem};
use jiff::Timestamp;
use jiff::fmt::temporal::Pieces;
use jiff::tz::TimeZone;
use uuid::Uuid;

pub const TITLE_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 5000;
pub const LOCATION_MAX: usize = 500;
pub const CAPACITY_MAX: u32 = 100_000;

/// Why a request breaks a rule. Each variant is one public error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("time zone mismatch")]
    TimeZoneMismatch(Vec<FieldError>),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("only the organizer may do this")]
    Forbidden,
    #[error("no such event")]
    NotFound,
    #[error("the event is cancelled")]
    EventCancelled,
    #[error("the event has already started")]
    EventPast,
    #[error("the event is full")]
    EventFull,
    #[error("capacity {capacity} is below the {going} attendees going")]
    CapacityBelowGoing { capacity: u32, going: u32 },
}

impl From<DomainError> for Problem {
    fn from(e: DomainError) -> Problem {
        let with_fields = |code, fields: Vec<FieldError>| {
            let mut p = Problem::new(code);
            p.errors = fields;
            p
        };
        match e {
            DomainError::Validation(f) => with_fields(ErrorCode::ValidationFailed, f),
            DomainError::TimeZoneMismatch(f) => with_fields(ErrorCode::TimeZoneMismatch, f),
            DomainError::BadRequest(d) => Problem::new(ErrorCode::BadRequest).with_detail(d),
            DomainError::Forbidden => Problem::new(ErrorCode::Forbidden)
                .with_detail("only the organizer may change this event"),
            DomainError::NotFound => Problem::new(ErrorCode::NotFound),
            DomainError::EventCancelled => Problem::new(ErrorCode::EventCancelled),
            DomainError::EventPast => Problem::new(ErrorCode::EventPast),
            DomainError::EventFull => Problem::new(ErrorCode::EventFull),
            e @ DomainError::CapacityBelowGoing { .. } => {
                Problem::new(ErrorCode::CapacityBelowGoing).with_detail(e.to_string())
            }
        }
    }
}

fn field(name: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message: message.into(),
    }
}

// ---- time ----

/// An instant written with an explicit UTC offset, as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetInstant {
    pub at: Timestamp,
    pub offset: jiff::tz::Offset,
}

/// Parses an RFC 3339 timestamp that carries its offset (`Z` or `±hh:mm`). A local
/// time without offset is refused: it would be ambiguous around DST changes, which is
/// exactly what the offset check against the zone guards against.
pub fn parse_offset_instant(s: &str) -> Result<OffsetInstant, String> {
    let pieces = Pieces::parse(s.trim()).map_err(|e| format!("not an RFC 3339 timestamp: {e}"))?;
    let time = pieces
        .time()
        .ok_or_else(|| "a time of day is required".to_owned())?;
    let offset = pieces
        .to_numeric_offset()
        .ok_or_else(|| "an explicit UTC offset (Z or ±hh:mm) is required".to_owned())?;
    if pieces.time_zone_annotation().is_some() {
        return Err("time zone annotations are not accepted; use the time_zone field".into());
    }
    let at = offset
        .to_timestamp(pieces.date().to_datetime(time))
        .map_err(|e| format!("out of range: {e}"))?;
    // Instants are stored in microseconds; dropping finer digits here keeps a reply
    // equal to what a later read returns.
    let at = Timestamp::from_microsecond(at.as_microsecond())
        .map_err(|e| format!("out of range: {e}"))?;
    Ok(OffsetInstant { at, offset })
}

/// Looks up an IANA zone in the bundled database; returns the zone and its name.
pub fn lookup_zone(name: &str) -> Option<(TimeZone, String)> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let tz = TimeZone::get(name).ok()?;
    let canonical = tz.iana_name().unwrap_or(name).to_owned();
    Some((tz, canonical))
}

/// Renders an instant as RFC 3339 in the zone's offset at that instant
/// (`2030-06-01T18:00:00+02:00` for Europe/Berlin in summer).
pub fn render_in_zone(at: Timestamp, zone: &str) -> String {
    let offset = TimeZone::get(zone)
        .map(|tz| tz.to_offset(at))
        .unwrap_or(jiff::tz::Offset::UTC);
    at.display_with_offset(offset).to_string()
}

/// The offset the client wrote must be the zone's offset at that instant: a mismatch
/// usually means the client computed the time in another zone or ignored DST.
fn check_offset(
    name: &'static str,
    instant: &OffsetInstant,
    tz: &TimeZone,
    zone: &str,
) -> Option<FieldError> {
    let expected = tz.to_offset(instant.at);
    (expected != instant.offset).then(|| {
        field(
            name,
            format!(
                "offset {} does not match {zone}, which is at {} at that instant",
                instant.offset, expected
            ),
        )
    })
}

// ---- events ----

/// The organizer-editable fields of an event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFields {
    pub title: String,
    pub description: String,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// Canonical IANA name.
    pub time_zone: String,
    pub location: String,
    pub capacity: u32,
}

fn check_text(errors: &mut Vec<FieldError>, name: &str, value: &str, min: usize, max: usize) {
    let n = value.chars().count();
    if n < min {
        errors.push(field(name, "must not be empty"));
    } else if n > max {
        errors.push(field(name, format!("at most {max} characters (got {n})")));
    }
}

fn check_capacity(errors: &mut Vec<FieldError>, capacity: u32) {
    if !(1..=CAPACITY_MAX).contains(&capacity) {
        errors.push(field("capacity", format!("must be 1 to {CAPACITY_MAX}")));
    }
}

/// The time part of an event before the checks that need all three values.
struct TimeInput<'a> {
    starts_at: TimeValue,
    ends_at: TimeValue,
    time_zone: &'a str,
}

/// A time that was sent in this request (its offset is checked) or kept from storage.
enum TimeValue {
    Sent(OffsetInstant),
    Kept(Timestamp),
}

impl TimeValue {
    fn at(&self) -> Timestamp {
        match self {
            TimeValue::Sent(i) => i.at,
            TimeValue::Kept(t) => *t,
        }
    }
}

/// Checks zone, offsets and order; returns (starts_at, ends_at, canonical zone).
fn check_times(t: TimeInput<'_>) -> Result<(Timestamp, Timestamp, String), DomainError> {
    let Some((tz, zone)) = lookup_zone(t.time_zone) else {
        return Err(DomainError::TimeZoneMismatch(vec![field(
            "time_zone",
            format!("{:?} is not an IANA time zone", t.time_zone),
        )]));
    };
    let mut mismatches = Vec::new();
    for (name, value) in [("starts_at", &t.starts_at), ("ends_at", &t.ends_at)] {
        if let TimeValue::Sent(instant) = value
            && let Some(e) = check_offset(name, instant, &tz, &zone)
        {
            mismatches.push(e);
        }
    }
    if !mismatches.is_empty() {
        return Err(DomainError::TimeZoneMismatch(mismatches));
    }
    let (starts_at, ends_at) = (t.starts_at.at(), t.ends_at.at());
    if ends_at <= starts_at {
        return Err(DomainError::Validation(vec![field(
            "ends_at",
            "must be after starts_at",
        )]));
    }
    Ok((starts_at, ends_at, zone))
}

fn parse_time(errors: &mut Vec<FieldError>, name: &str, s: &str) -> Option<OffsetInstant> {
    match parse_offset_instant(s) {
        Ok(i) => Some(i),
        Err(e) => {
            errors.push(field(name, e));
            None
        }
    }
}

/// Validates a create request. Field-level problems are reported together
/// (`validation_failed`); zone problems next (`time_zone_mismatch`); order last.
pub fn validate_create(req: &CreateEventRequest) -> Result<EventFields, DomainError> {
    let mut errors = Vec::new();
    let title = req.title.trim();
    check_text(&mut errors, "title", title, 1, TITLE_MAX);
    check_text(
        &mut errors,
        "description",
        &req.description,
        0,
        DESCRIPTION_MAX,
    );
    check_text(&mut errors, "location", &req.location, 0, LOCATION_MAX);
    check_capacity(&mut errors, req.capacity);
    let starts = parse_time(&mut errors, "starts_at", &req.starts_at);
    let ends = parse_time(&mut errors, "ends_at", &req.ends_at);
    let (Some(starts), Some(ends)) = (starts, ends) else {
        return Err(DomainError::Validation(errors));
    };
    if !errors.is_empty() {
        return Err(DomainError::Validation(errors));
    }
    let (starts_at, ends_at, time_zone) = check_times(TimeInput {
        starts_at: TimeValue::Sent(starts),
        ends_at: TimeValue::Sent(ends),
        time_zone: &req.time_zone,
    })?;
    Ok(EventFields {
        title: title.to_owned(),
        description: req.description.clone(),
        starts_at,
        ends_at,
        time_zone,
        location: req.location.clone(),
        capacity: req.capacity,
    })
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: Uuid,
    pub organizer_id: Uuid,
    pub fields: EventFields,
    pub status: EventStatus,
    pub counts: RsvpCounts,
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl EventRecord {
    /// A new event: version 1, no RSVPs.
    pub fn new(id: Uuid, organizer_id: Uuid, fields: EventFields, now: Timestamp) -> Self {
        EventRecord {
            id,
            organizer_id,
            fields,
            status: EventStatus::Scheduled,
            counts: RsvpCounts::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.status == EventStatus::Cancelled
    }

    /// Organizer-only actions.
    pub fn authorize_organizer(&self, user: Uuid) -> Result<(), DomainError> {
        if self.organizer_id == user {
            Ok(())
        } else {
            Err(DomainError::Forbidden)
        }
    }

    /// The API view, for a caller whose own RSVP is `my_rsvp`.
    pub fn to_api(&self, my_rsvp: Option<RsvpStatus>) -> api::Event {
        let f = &self.fields;
        api::Event {
            id: self.id,
            organizer_id: self.organizer_id,
            title: f.title.clone(),
            description: f.description.clone(),
            starts_at: render_in_zone(f.starts_at, &f.time_zone),
            ends_at: render_in_zone(f.ends_at, &f.time_zone),
            time_zone: f.time_zone.clone(),
            location: f.location.clone(),
            capacity: f.capacity,
            status: self.status,
            counts: self.counts,
            my_rsvp,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// The state carried by domain events.
    pub fn snapshot(&self) -> EventSnapshot {
        let f = &self.fields;
        EventSnapshot {
            event_id: self.id,
            organizer_id: self.organizer_id,
            title: f.title.clone(),
            description: f.description.clone(),
            starts_at: f.starts_at,
            ends_at: f.ends_at,
            time_zone: f.time_zone.clone(),
            location: f.location.clone(),
            capacity: f.capacity,
            status: self.status,
            counts: self.counts,
        }
    }
}

/// The outcome of a PATCH that changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventChange {
    pub fields: EventFields,
    /// In a fixed order: title, description, starts_at, ends_at, time_zone, location, capacity.
    pub changed_fields: Vec<String>,
    pub time_changed: bool,
}

/// Applies a PATCH to `current` on behalf of `caller`. `Ok(None)`: nothing would change.
pub fn plan_update(
    current: &EventRecord,
    caller: Uuid,
    req: &UpdateEventRequest,
) -> Result<Option<EventChange>, DomainError> {
    current.authorize_organizer(caller)?;
    if current.is_cancelled() {
        return Err(DomainError::EventCancelled);
    }
    let old = &current.fields;
    let mut errors = Vec::new();
    let title = req.title.as_deref().map(str::trim);
    if let Some(t) = title {
        check_text(&mut errors, "title", t, 1, TITLE_MAX);
    }
    if let Some(d) = &req.description {
        check_text(&mut errors, "description", d, 0, DESCRIPTION_MAX);
    }
    if let Some(l) = &req.location {
        check_text(&mut errors, "location", l, 0, LOCATION_MAX);
    }
    if let Some(c) = req.capacity {
        check_capacity(&mut errors, c);
    }
    let starts = req
        .starts_at
        .as_deref()
        .map(|s| parse_time(&mut errors, "starts_at", s));
    let ends = req
        .ends_at
        .as_deref()
        .map(|s| parse_time(&mut errors, "ends_at", s));
    if !errors.is_empty() {
        return Err(DomainError::Validation(errors));
    }
    let to_value = |sent: Option<Option<OffsetInstant>>, kept| match sent.flatten() {
        Some(i) => TimeValue::Sent(i),
        None => TimeValue::Kept(kept),
    };
    let (starts_at, ends_at, time_zone) = check_times(TimeInput {
        starts_at: to_value(starts, old.starts_at),
        ends_at: to_value(ends, old.ends_at),
        time_zone: req.time_zone.as_deref().unwrap_or(&old.time_zone),
    })?;
    let new = EventFields {
        title: title
            .map(str::to_owned)
            .unwrap_or_else(|| old.title.clone()),
        description: req
            .description
            .clone()
            .unwrap_or_else(|| old.description.clone()),
        starts_at,
        ends_at,
        time_zone,
        location: req.location.clone().unwrap_or_else(|| old.location.clone()),
        capacity: req.capacity.unwrap_or(old.capacity),
    };
    if new.capacity < current.counts.going {
        return Err(DomainError::CapacityBelowGoing {
            capacity: new.capacity,
            going: current.counts.going,
        });
    }
    let mut changed = Vec::new();
    let mut note = |differs: bool, name: &str| {
        if differs {
            changed.push(name.to_owned());
        }
    };
    note(new.title != old.title, "title");
    note(new.description != old.description, "description");
    note(new.starts_at != old.starts_at, "starts_at");
    note(new.ends_at != old.ends_at, "ends_at");
    note(new.time_zone != old.time_zone, "time_zone");
    note(new.location != old.location, "location");
    note(new.capacity != old.capacity, "capacity");
    if changed.is_empty() {
        return Ok(None);
    }
    Ok(Some(EventChange {
        time_changed: new.starts_at != old.starts_at || new.ends_at != old.ends_at,
        changed_fields: changed,
        fields: new,
    }))
}

/// Cancelling: organizer only; `Ok(false)` when already cancelled (idempotent).
pub fn plan_cancel(current: &EventRecord, caller: Uuid) -> Result<bool, DomainError> {
    current.authorize_organizer(caller)?;
    Ok(!current.is_cancelled())
}

// ---- RSVPs ----

/// How one RSVP change moves the event's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountDelta {
    pub going: i64,
    pub maybe: i64,
    pub declined: i64,
}

impl CountDelta {
    fn add(&mut self, status: RsvpStatus, by: i64) {
        match status {
            RsvpStatus::Going => self.going += by,
            RsvpStatus::Maybe => self.maybe += by,
            RsvpStatus::Declined => self.declined += by,
        }
    }

    /// The delta of moving from `previous` to `next`.
    pub fn between(previous: Option<RsvpStatus>, next: RsvpStatus) -> Self {
        let mut d = CountDelta::default();
        if let Some(p) = previous {
            d.add(p, -1);
        }
        d.add(next, 1);
        d
    }

    /// True when this change takes a seat.
    pub fn takes_seat(&self) -> bool {
        self.going > 0
    }
}

/// What an RSVP request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsvpPlan {
    /// The caller repeated their current answer: no write, no event.
    Unchanged,
    Change(CountDelta),
}

/// Decides an RSVP against the event as locked in the transaction. The seat check here
/// is a fast path; the store's conditional UPDATE is what makes it atomic.
pub fn plan_rsvp(
    event: &EventRecord,
    previous: Option<RsvpStatus>,
    next: RsvpStatus,
    now: Timestamp,
) -> Result<RsvpPlan, DomainError> {
    if event.is_cancelled() {
        return Err(DomainError::EventCancelled);
    }
    if event.fields.starts_at <= now {
        return Err(DomainError::EventPast);
    }
    if previous == Some(next) {
        return Ok(RsvpPlan::Unchanged);
    }
    let delta = CountDelta::between(previous, next);
    if delta.takes_seat() && event.counts.going >= event.fields.capacity {
        return Err(DomainError::EventFull);
    }
    Ok(RsvpPlan::Change(delta))
}

/// Applies a delta to counts (saturating: counts never go negative).
pub fn apply_delta(counts: RsvpCounts, d: CountDelta) -> RsvpCounts {
    let apply = |n: u32, by: i64| u32::try_from((i64::from(n) + by).max(0)).unwrap_or(u32::MAX);
    RsvpCounts {
        going: apply(counts.going, d.going),
        maybe: apply(counts.maybe, d.maybe),
        declined: apply(counts.declined, d.declined),
    }
}

// ---- listing ----

/// Which events a list shows besides the time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mine {
    Organizing,
    /// The caller answered `going` or `maybe`.
    Attending,
}

/// Position after the last item of a page, ordered by (starts_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCursor {
    pub starts_at_us: i64,
    pub id: Uuid,
}

/// Position after the last RSVP of a page, ordered by user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsvpCursor {
    pub user_id: Uuid,
}

impl EventCursor {
    /// Opaque to clients: base64url of `e1:<µs>:<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("e1:{}:{}", self.starts_at_us, self.id))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s.trim()).ok()?).ok()?;
        let mut parts = raw.splitn(3, ':');
        (parts.next()? == "e1").then_some(())?;
        let starts_at_us = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        Some(EventCursor { starts_at_us, id })
    }
}

impl RsvpCursor {
    /// Opaque to clients: base64url of `r1:<user id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("r1:{}", self.user_id))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s.trim()).ok()?).ok()?;
        let id = raw.strip_prefix("r1:")?.parse().ok()?;
        Some(RsvpCursor { user_id: id })
    }
}

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// `GET /v1/events` parameters, parsed. `from` is inclusive, `to` exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub mine: Option<Mine>,
    pub limit: u32,
    pub after: Option<EventCursor>,
}

/// `GET /v1/events/{id}/rsvps` parameters, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsvpQuery {
    pub status: Option<RsvpStatus>,
    pub limit: u32,
    pub after: Option<RsvpCursor>,
}

type Query = std::collections::BTreeMap<String, String>;

fn bad(name: &str, why: &str) -> DomainError {
    DomainError::BadRequest(format!("query parameter {name}: {why}"))
}

fn parse_limit(q: &Query) -> Result<u32, DomainError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(bad("limit", "expected an integer from 1 to 200")),
        },
    }
}

fn parse_bound(q: &Query, name: &str) -> Result<Option<Timestamp>, DomainError> {
    q.get(name)
        .map(|s| {
            parse_offset_instant(s)
                .map(|i| i.at)
                .map_err(|e| bad(name, &e))
        })
        .transpose()
}

impl EventQuery {
    pub fn parse(q: &Query) -> Result<Self, DomainError> {
        let from = parse_bound(q, "from")?;
        let to = parse_bound(q, "to")?;
        if let (Some(f), Some(t)) = (from, to)
            && t < f
        {
            return Err(bad("to", "must not be before from"));
        }
        let mine = match q.get("mine").map(|s| s.trim()) {
            None => None,
            Some("organizing") => Some(Mine::Organizing),
            Some("attending") => Some(Mine::Attending),
            Some(_) => return Err(bad("mine", "expected organizing or attending")),
        };
        let after = match q.get("cursor") {
            None => None,
            Some(c) => Some(
                EventCursor::decode(c).ok_or_else(|| bad("cursor", "not a cursor of this list"))?,
            ),
        };
        Ok(EventQuery {
            from,
            to,
            mine,
            limit: parse_limit(q)?,
            after,
        })
    }
}

impl RsvpQuery {
    pub fn parse(q: &Query) -> Result<Self, DomainError> {
        let status = match q.get("status") {
            None => None,
            Some(s) => Some(
                RsvpStatus::parse(s.trim())
                    .ok_or_else(|| bad("status", "expected going, maybe or declined"))?,
            ),
        };
        let after = match q.get("cursor") {
            None => None,
            Some(c) => Some(
                RsvpCursor::decode(c).ok_or_else(|| bad("cursor", "not a cursor of this list"))?,
            ),
        };
        Ok(RsvpQuery {
            status,
            limit: parse_limit(q)?,
            after,
        })
    }
}

/// Parses a path id; anything that is not a UUID names no event.
pub fn parse_id(s: Option<&String>) -> Result<Uuid, DomainError> {
    s.and_then(|s| Uuid::parse_str(s.trim()).ok())
        .ok_or(DomainError::NotFound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The documented bounds (the contract's schema) are the ones enforced here.
    #[test]
    fn the_documented_bounds_are_the_enforced_ones() {
        use utoipa::PartialSchema;
        for schema in [
            CreateEventRequest::schema(),
            contracts::api::UpdateEventRequest::schema(),
        ] {
            let json = serde_json::to_value(&schema).unwrap();
            let props = &json["properties"];
            assert_eq!(props["title"]["maxLength"], TITLE_MAX, "{json}");
            assert_eq!(props["title"]["minLength"], 1);
            assert_eq!(props["description"]["maxLength"], DESCRIPTION_MAX);
            assert_eq!(props["location"]["maxLength"], LOCATION_MAX);
            assert_eq!(props["capacity"]["minimum"], 1);
            assert_eq!(props["capacity"]["maximum"], CAPACITY_MAX);
        }
    }

    fn create(starts: &str, ends: &str, tz: &str) -> CreateEventRequest {
        CreateEventRequest {
            title: "Rust meetup".into(),
            description: String::new(),
            starts_at: starts.into(),
            ends_at: ends.into(),
            time_zone: tz.into(),
            location: String::new(),
            capacity: 10,
        }
    }

    fn record(capacity: u32, going: u32) -> EventRecord {
        let fields = validate_create(&CreateEventRequest {
            capacity,
            ..create(
                "2030-06-01T18:00:00+02:00",
                "2030-06-01T21:00:00+02:00",
                "Europe/Berlin",
            )
        })
        .unwrap();
        let mut r = EventRecord::new(Uuid::now_v7(), Uuid::now_v7(), fields, Timestamp::now());
        r.counts.going = going;
        r
    }

    fn codes(e: &DomainError) -> Vec<String> {
        match e {
            DomainError::Validation(f) | DomainError::TimeZoneMismatch(f) => {
                f.iter().map(|f| f.field.clone()).collect()
            }
            _ => vec![],
        }
    }

    #[test]
    fn offset_matching_the_zone_is_accepted_and_rendered_back() {
        let f = validate_create(&create(
            "2030-06-01T18:00:00+02:00",
            "2030-06-01T21:00:00+02:00",
            "Europe/Berlin",
        ))
        .unwrap();
        assert_eq!(
            f.starts_at,
            "2030-06-01T16:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            render_in_zone(f.starts_at, &f.time_zone),
            "2030-06-01T18:00:00+02:00"
        );
        // Winter time renders with the winter offset.
        let winter = "2030-01-10T12:00:00Z".parse::<Timestamp>().unwrap();
        assert_eq!(
            render_in_zone(winter, "Europe/Berlin"),
            "2030-01-10T13:00:00+01:00"
        );
    }

    #[test]
    fn offset_disagreeing_with_the_zone_is_a_mismatch() {
        // +01:00 is Berlin's winter offset, wrong in June.
        let e = validate_create(&create(
            "2030-06-01T18:00:00+01:00",
            "2030-06-01T21:00:00+02:00",
            "Europe/Berlin",
        ))
        .unwrap_err();
        assert!(matches!(e, DomainError::TimeZoneMismatch(_)));
        assert_eq!(codes(&e), vec!["starts_at"]);
        // Z is an explicit offset, but not Berlin's.
        let e = validate_create(&create(
            "2030-06-01T16:00:00Z",
            "2030-06-01T19:00:00Z",
            "Europe/Berlin",
        ))
        .unwrap_err();
        assert_eq!(codes(&e), vec!["starts_at", "ends_at"]);
        // …and right for UTC.
        assert!(
            validate_create(&create(
                "2030-06-01T16:00:00Z",
                "2030-06-01T19:00:00Z",
                "UTC"
            ))
            .is_ok()
        );
    }

    #[test]
    fn unknown_zone_is_a_mismatch_on_time_zone() {
        let e = validate_create(&create(
            "2030-06-01T18:00:00+02:00",
            "2030-06-01T21:00:00+02:00",
            "Europe/Atlantis",
        ))
        .unwrap_err();
        assert!(matches!(e, DomainError::TimeZoneMismatch(_)));
        assert_eq!(codes(&e), vec!["time_zone"]);
        // Fixed offsets are not IANA zones.
        assert!(lookup_zone("+02:00").is_none());
        assert!(lookup_zone("").is_none());
    }

    #[test]
    fn local_times_without_offset_are_refused() {
        let e = validate_create(&create(
            "2030-06-01T18:00:00",
            "2030-06-01T21:00:00+02:00",
            "Europe/Berlin",
        ))
        .unwrap_err();
        assert!(matches!(e, DomainError::Validation(_)));
        assert_eq!(codes(&e), vec!["starts_at"]);
        assert!(parse_offset_instant("2030-06-01").is_err());
        assert!(parse_offset_instant("2030-06-01T18:00:00+02:00[Europe/Berlin]").is_err());
        assert!(parse_offset_instant("tomorrow").is_err());
    }

    #[test]
    fn end_must_follow_start() {
        for ends in ["2030-06-01T17:00:00+02:00", "2030-06-01T18:00:00+02:00"] {
            let e = validate_create(&create("2030-06-01T18:00:00+02:00", ends, "Europe/Berlin"))
                .unwrap_err();
            assert!(matches!(e, DomainError::Validation(_)));
            assert_eq!(codes(&e), vec!["ends_at"]);
        }
    }

    #[test]
    fn lengths_and_capacity_are_bounded() {
        let mut r = create("2030-06-01T18:00:00Z", "2030-06-01T19:00:00Z", "UTC");
        r.title = "  ".into();
        r.description = "d".repeat(5001);
        r.location = "l".repeat(501);
        r.capacity = 0;
        let e = validate_create(&r).unwrap_err();
        assert_eq!(
            codes(&e),
            vec!["title", "description", "location", "capacity"]
        );
        r.title = "t".repeat(200);
        r.description = "é".repeat(5000); // characters, not bytes
        r.location = "l".repeat(500);
        r.capacity = 100_000;
        assert!(validate_create(&r).is_ok());
        r.capacity = 100_001;
        assert!(validate_create(&r).is_err());
    }

    #[test]
    fn update_by_someone_else_is_forbidden() {
        let ev = record(10, 0);
        let req = UpdateEventRequest {
            title: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            plan_update(&ev, Uuid::now_v7(), &req),
            Err(DomainError::Forbidden)
        );
    }

    #[test]
    fn update_that_changes_nothing_is_none() {
        let ev = record(10, 0);
        let req = UpdateEventRequest {
            title: Some(ev.fields.title.clone()),
            capacity: Some(10),
            // The same instant, written as it was sent at creation: nothing changes.
            starts_at: Some("2030-06-01T18:00:00+02:00".into()),
            ..Default::default()
        };
        assert_eq!(plan_update(&ev, ev.organizer_id, &req), Ok(None));
        assert_eq!(
            plan_update(&ev, ev.organizer_id, &UpdateEventRequest::default()),
            Ok(None)
        );
    }

    #[test]
    fn update_reports_changed_fields_and_time_change() {
        let ev = record(10, 0);
        let req = UpdateEventRequest {
            title: Some("New".into()),
            ends_at: Some("2030-06-01T22:00:00+02:00".into()),
            ..Default::default()
        };
        let c = plan_update(&ev, ev.organizer_id, &req).unwrap().unwrap();
        assert_eq!(c.changed_fields, vec!["title", "ends_at"]);
        assert!(c.time_changed);
        assert_eq!(c.fields.starts_at, ev.fields.starts_at);

        let req = UpdateEventRequest {
            location: Some("Room 2".into()),
            ..Default::default()
        };
        let c = plan_update(&ev, ev.organizer_id, &req).unwrap().unwrap();
        assert_eq!(c.changed_fields, vec!["location"]);
        assert!(!c.time_changed);
    }

    #[test]
    fn update_checks_times_against_the_stored_values() {
        let ev = record(10, 0);
        // A new start after the stored end.
        let req = UpdateEventRequest {
            starts_at: Some("2030-06-01T23:00:00+02:00".into()),
            ..Default::default()
        };
        let e = plan_update(&ev, ev.organizer_id, &req).unwrap_err();
        assert_eq!(codes(&e), vec!["ends_at"]);
        // A new zone that disagrees with the sent offset.
        let req = UpdateEventRequest {
            time_zone: Some("America/New_York".into()),
            starts_at: Some("2030-06-01T18:00:00+02:00".into()),
            ..Default::default()
        };
        assert!(matches!(
            plan_update(&ev, ev.organizer_id, &req),
            Err(DomainError::TimeZoneMismatch(_))
        ));
        // A new zone alone keeps the instants and renders them differently.
        let req = UpdateEventRequest {
            time_zone: Some("America/New_York".into()),
            ..Default::default()
        };
        let c = plan_update(&ev, ev.organizer_id, &req).unwrap().unwrap();
        assert_eq!(c.changed_fields, vec!["time_zone"]);
        assert!(!c.time_changed);
    }

    #[test]
    fn capacity_cannot_drop_below_going() {
        let ev = record(10, 5);
        let req = UpdateEventRequest {
            capacity: Some(4),
            ..Default::default()
        };
        assert!(matches!(
            plan_update(&ev, ev.organizer_id, &req),
            Err(DomainError::CapacityBelowGoing {
                capacity: 4,
                going: 5
            })
        ));
        let req = UpdateEventRequest {
            capacity: Some(5),
            ..Default::default()
        };
        assert!(plan_update(&ev, ev.organizer_id, &req).unwrap().is_some());
    }

    #[test]
    fn cancelled_events_cannot_be_edited_but_cancel_is_idempotent() {
        let mut ev = record(10, 0);
        assert_eq!(plan_cancel(&ev, ev.organizer_id), Ok(true));
        assert_eq!(
            plan_cancel(&ev, Uuid::now_v7()),
            Err(DomainError::Forbidden)
        );
        ev.status = EventStatus::Cancelled;
        assert_eq!(plan_cancel(&ev, ev.organizer_id), Ok(false));
        let req = UpdateEventRequest {
            title: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            plan_update(&ev, ev.organizer_id, &req),
            Err(DomainError::EventCancelled)
        );
    }

    #[test]
    fn rsvp_transitions_move_the_counts() {
        use RsvpStatus::*;
        let now = "2029-01-01T00:00:00Z".parse().unwrap();
        let ev = record(2, 1);
        assert_eq!(
            plan_rsvp(&ev, None, Going, now),
            Ok(RsvpPlan::Change(CountDelta {
                going: 1,
                maybe: 0,
                declined: 0
            }))
        );
        assert_eq!(
            plan_rsvp(&ev, Some(Maybe), Maybe, now),
            Ok(RsvpPlan::Unchanged)
        );
        // Leaving going frees a seat.
        let d = CountDelta::between(Some(Going), Declined);
        assert_eq!(
            d,
            CountDelta {
                going: -1,
                maybe: 0,
                declined: 1
            }
        );
        assert!(!d.takes_seat());
        assert_eq!(
            apply_delta(
                RsvpCounts {
                    going: 1,
                    maybe: 0,
                    declined: 0
                },
                d
            ),
            RsvpCounts {
                going: 0,
                maybe: 0,
                declined: 1
            }
        );
        // Full: only going is refused; repeating going while going is not.
        let full = record(1, 1);
        assert_eq!(
            plan_rsvp(&full, Some(Maybe), Going, now),
            Err(DomainError::EventFull)
        );
        assert_eq!(
            plan_rsvp(&full, Some(Going), Going, now),
            Ok(RsvpPlan::Unchanged)
        );
        assert!(plan_rsvp(&full, None, Maybe, now).is_ok());
    }

    #[test]
    fn rsvp_to_cancelled_or_started_events_is_refused() {
        let mut ev = record(2, 0);
        let before = "2029-01-01T00:00:00Z".parse().unwrap();
        let at_start = ev.fields.starts_at;
        assert_eq!(
            plan_rsvp(&ev, None, RsvpStatus::Going, at_start),
            Err(DomainError::EventPast)
        );
        ev.status = EventStatus::Cancelled;
        assert_eq!(
            plan_rsvp(&ev, None, RsvpStatus::Going, before),
            Err(DomainError::EventCancelled)
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = EventCursor {
            starts_at_us: 1_900_000_000_000_000,
            id: Uuid::now_v7(),
        };
        assert_eq!(EventCursor::decode(&c.encode()), Some(c));
        assert_eq!(EventCursor::decode("nope"), None);
        let r = RsvpCursor {
            user_id: Uuid::now_v7(),
        };
        assert_eq!(RsvpCursor::decode(&r.encode()), Some(r));
        assert_eq!(EventCursor::decode(&r.encode()), None);
    }

    #[test]
    fn list_query_parses_and_rejects_bad_values() {
        let q = |pairs: &[(&str, &str)]| {
            EventQuery::parse(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let ok = q(&[
            ("from", "2030-01-01T00:00:00Z"),
            ("mine", "attending"),
            ("limit", "5"),
        ])
        .unwrap();
        assert_eq!(ok.limit, 5);
        assert_eq!(ok.mine, Some(Mine::Attending));
        assert_eq!(q(&[]).unwrap().limit, DEFAULT_LIMIT);
        for bad in [
            &[("limit", "0")][..],
            &[("limit", "201")],
            &[("limit", "x")],
            &[("mine", "everything")],
            &[("from", "yesterday")],
            &[("from", "2030-01-01T00:00:00")],
            &[("cursor", "%%%")],
            &[
                ("from", "2030-01-02T00:00:00Z"),
                ("to", "2030-01-01T00:00:00Z"),
            ],
        ] {
            assert!(matches!(q(bad), Err(DomainError::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn problems_carry_the_right_codes() {
        let p: Problem = DomainError::EventFull.into();
        assert_eq!((p.code, p.status), (ErrorCode::EventFull, 409));
        let p: Problem = DomainError::NotFound.into();
        assert_eq!(p.status, 404);
        let p: Problem = DomainError::Validation(vec![field("ends_at", "x")]).into();
        assert_eq!((p.status, p.errors[0].field.as_str()), (422, "ends_at"));
    }
}
