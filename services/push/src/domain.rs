//! The rules, pure: who a domain event tells what, how a notification reads, when an
//! event is too old to notify about, and the parameters of the history queries.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contracts::api::NotificationKind;
use contracts::events::{EventSnapshot, EventStatus, RsvpCounts, RsvpStatus};
use contracts::{ErrorCode, Problem};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use uuid::Uuid;

/// Shown in place of a user push has not heard of yet (the AUTH and CALENDAR consumers
/// run independently, so a name may arrive after the RSVP).
pub const UNKNOWN_NAME: &str = "Someone";

/// A fact about an event that its attendees are told about, kept on the event's read
/// model so an RSVP handled after it can still tell its attendee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Milestone {
    /// The domain event's message id: the source of every notification it causes.
    pub message_id: Uuid,
    pub version: u64,
    pub occurred_at: Timestamp,
}

/// The read model of one calendar event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    pub id: Uuid,
    pub organizer_id: Uuid,
    pub title: String,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub time_zone: String,
    pub location: String,
    pub status: EventStatus,
    pub version: u64,
    pub cancel: Option<Milestone>,
    pub time_change: Option<Milestone>,
}

impl EventView {
    pub fn from_snapshot(s: &EventSnapshot, version: u64) -> Self {
        EventView {
            id: s.event_id,
            organizer_id: s.organizer_id,
            title: s.title.clone(),
            starts_at: s.starts_at,
            ends_at: s.ends_at,
            time_zone: s.time_zone.clone(),
            location: s.location.clone(),
            status: s.status,
            version,
            cancel: None,
            time_change: None,
        }
    }
}

/// A notification to store (and, if new, send live).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub user_id: Uuid,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub event_id: Option<Uuid>,
    pub source_message_id: Uuid,
}

/// True when an event that happened at `occurred_at` is recent enough to notify about.
/// A clock a little ahead of ours counts as fresh.
pub fn is_fresh(occurred_at: Timestamp, now: Timestamp, max_age: Duration) -> bool {
    let age_us = now
        .as_microsecond()
        .saturating_sub(occurred_at.as_microsecond());
    let max_us = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
    age_us < max_us
}

/// Whether an answer counts as attending (and so hears about changes).
pub fn attends(status: RsvpStatus) -> bool {
    matches!(status, RsvpStatus::Going | RsvpStatus::Maybe)
}

/// `Sat 1 Jun 2030, 18:00 CEST`, in the event's own zone (UTC if it is unknown).
pub fn when(at: Timestamp, zone: &str) -> String {
    let tz = TimeZone::get(zone).unwrap_or(TimeZone::UTC);
    at.to_zoned(tz)
        .strftime("%a %-d %b %Y, %H:%M %Z")
        .to_string()
}

fn with_location(text: String, location: &str) -> String {
    if location.trim().is_empty() {
        text
    } else {
        format!("{text} · {location}")
    }
}

/// Title and body of the organizer's `rsvp_received`.
pub fn rsvp_received(
    name: Option<&str>,
    status: RsvpStatus,
    event: &EventView,
    counts: RsvpCounts,
) -> (String, String) {
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(UNKNOWN_NAME);
    let title = match status {
        RsvpStatus::Going => format!("{name} is going to {}", event.title),
        RsvpStatus::Maybe => format!("{name} might go to {}", event.title),
        RsvpStatus::Declined => format!("{name} can't go to {}", event.title),
    };
    let body = format!(
        "{} going, {} maybe · {}",
        counts.going,
        counts.maybe,
        when(event.starts_at, &event.time_zone)
    );
    (title, body)
}

/// Title and body of the attendee's `rsvp_confirmation`.
pub fn rsvp_confirmation(status: RsvpStatus, event: &EventView) -> (String, String) {
    let title = match status {
        RsvpStatus::Going => format!("You're going to {}", event.title),
        RsvpStatus::Maybe => format!("You might go to {}", event.title),
        RsvpStatus::Declined => format!("You declined {}", event.title),
    };
    let body = with_location(when(event.starts_at, &event.time_zone), &event.location);
    (title, body)
}

/// Title and body of an `event_changed` for a cancellation.
pub fn cancelled(event: &EventView) -> (String, String) {
    (
        format!("{} was cancelled", event.title),
        format!(
            "It was planned for {}.",
            when(event.starts_at, &event.time_zone)
        ),
    )
}

/// Title and body of an `event_changed` for a new time.
pub fn time_changed(event: &EventView) -> (String, String) {
    (
        format!("{} has a new time", event.title),
        with_location(
            format!(
                "Now {} until {}",
                when(event.starts_at, &event.time_zone),
                when(event.ends_at, &event.time_zone)
            ),
            &event.location,
        ),
    )
}

/// An `event_changed` for `user` caused by `milestone` (a cancellation or time change).
pub fn event_changed(user_id: Uuid, event: &EventView, milestone: &Milestone) -> Draft {
    let (title, body) = if event
        .cancel
        .is_some_and(|c| c.message_id == milestone.message_id)
    {
        cancelled(event)
    } else {
        time_changed(event)
    };
    Draft {
        user_id,
        kind: NotificationKind::EventChanged,
        title,
        body,
        event_id: Some(event.id),
        source_message_id: milestone.message_id,
    }
}

// ---- queries ----

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no caller")]
    Unauthorized,
    #[error("no such notification")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl From<RequestError> for Problem {
    fn from(e: RequestError) -> Problem {
        match e {
            RequestError::Unauthorized => Problem::new(ErrorCode::Unauthorized),
            RequestError::NotFound => Problem::new(ErrorCode::NotFound),
            RequestError::BadRequest(d) => Problem::new(ErrorCode::BadRequest).with_detail(d),
        }
    }
}

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;
pub const MAX_SINCE_LIMIT: u32 = 500;

/// Position after the last item of a page (ids descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: base64url of `n1:<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("n1:{}", self.id))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s.trim()).ok()?).ok()?;
        let id = raw.strip_prefix("n1:")?.parse().ok()?;
        Some(Cursor { id })
    }
}

/// `GET /v1/notifications` parameters, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: u32,
    pub after: Option<Cursor>,
    /// `unread=true`: only unread ones; `unread=false`: only read ones; absent: all.
    pub unread: Option<bool>,
}

fn bad(name: &str, why: &str) -> RequestError {
    RequestError::BadRequest(format!("query parameter {name}: {why}"))
}

impl ListQuery {
    pub fn parse(q: &BTreeMap<String, String>) -> Result<Self, RequestError> {
        let limit = match q.get("limit") {
            None => DEFAULT_LIMIT,
            Some(s) => match s.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(bad("limit", "expected an integer from 1 to 200")),
            },
        };
        let after = match q.get("cursor") {
            None => None,
            Some(c) => {
                Some(Cursor::decode(c).ok_or_else(|| bad("cursor", "not a cursor of this list"))?)
            }
        };
        let unread = match q.get("unread").map(|s| s.trim()) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(bad("unread", "expected true or false")),
        };
        Ok(ListQuery {
            limit,
            after,
            unread,
        })
    }
}

/// The `since` limit, clamped to 1..=500.
pub fn since_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_SINCE_LIMIT)
}

/// Parses a path id; anything that is not a UUID names no notification.
pub fn parse_id(s: Option<&String>) -> Result<Uuid, RequestError> {
    s.and_then(|s| Uuid::parse_str(s.trim()).ok())
        .ok_or(RequestError::NotFound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn view() -> EventView {
        EventView {
            id: Uuid::now_v7(),
            organizer_id: Uuid::now_v7(),
            title: "Rust meetup".into(),
            starts_at: "2030-06-01T16:00:00Z".parse().unwrap(),
            ends_at: "2030-06-01T19:00:00Z".parse().unwrap(),
            time_zone: "Europe/Berlin".into(),
            location: "Berlin".into(),
            status: EventStatus::Scheduled,
            version: 3,
            cancel: None,
            time_change: None,
        }
    }

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn texts_name_the_attendee_and_the_local_time() {
        let ev = view();
        let counts = RsvpCounts {
            going: 3,
            maybe: 1,
            declined: 0,
        };
        let (title, body) = rsvp_received(Some("Ada"), RsvpStatus::Going, &ev, counts);
        assert_eq!(title, "Ada is going to Rust meetup");
        assert_eq!(body, "3 going, 1 maybe · Sat 1 Jun 2030, 18:00 CEST");
        let (title, _) = rsvp_received(None, RsvpStatus::Maybe, &ev, counts);
        assert_eq!(title, "Someone might go to Rust meetup");
        let (title, _) = rsvp_received(Some("  "), RsvpStatus::Declined, &ev, counts);
        assert_eq!(title, "Someone can't go to Rust meetup");
        let (title, body) = rsvp_confirmation(RsvpStatus::Going, &ev);
        assert_eq!(title, "You're going to Rust meetup");
        assert_eq!(body, "Sat 1 Jun 2030, 18:00 CEST · Berlin");
        assert_eq!(cancelled(&ev).0, "Rust meetup was cancelled");
        assert_eq!(
            time_changed(&ev).1,
            "Now Sat 1 Jun 2030, 18:00 CEST until Sat 1 Jun 2030, 21:00 CEST · Berlin"
        );
    }

    #[test]
    fn an_unknown_zone_renders_in_utc() {
        let at: Timestamp = "2030-06-01T16:00:00Z".parse().unwrap();
        assert_eq!(when(at, "Mars/Olympus"), "Sat 1 Jun 2030, 16:00 UTC");
    }

    #[test]
    fn event_changed_reads_as_the_milestone_it_comes_from() {
        let mut ev = view();
        let cancel = Milestone {
            message_id: Uuid::now_v7(),
            version: 5,
            occurred_at: Timestamp::now(),
        };
        let moved = Milestone {
            message_id: Uuid::now_v7(),
            version: 4,
            occurred_at: Timestamp::now(),
        };
        ev.cancel = Some(cancel);
        ev.time_change = Some(moved);
        let user = Uuid::now_v7();
        let d = event_changed(user, &ev, &cancel);
        assert_eq!(d.title, "Rust meetup was cancelled");
        assert_eq!(d.source_message_id, cancel.message_id);
        let d = event_changed(user, &ev, &moved);
        assert_eq!(d.title, "Rust meetup has a new time");
        assert_eq!(d.kind, NotificationKind::EventChanged);
    }

    #[test]
    fn freshness_is_measured_against_the_max_age() {
        let now = Timestamp::now();
        let day = Duration::from_secs(86_400);
        assert!(is_fresh(now, now, day));
        assert!(is_fresh(
            now - jiff::SignedDuration::from_hours(23),
            now,
            day
        ));
        assert!(!is_fresh(
            now - jiff::SignedDuration::from_hours(25),
            now,
            day
        ));
        assert!(is_fresh(now + jiff::SignedDuration::from_secs(5), now, day));
        assert!(!is_fresh(now, now, Duration::ZERO));
    }

    #[test]
    fn list_query_parses_and_rejects_garbage() {
        let q = ListQuery::parse(&query(&[])).unwrap();
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(q.after, None);
        assert_eq!(q.unread, None);
        let c = Cursor { id: Uuid::now_v7() };
        let q = ListQuery::parse(&query(&[
            ("limit", "200"),
            ("cursor", &c.encode()),
            ("unread", "true"),
        ]))
        .unwrap();
        assert_eq!((q.limit, q.after, q.unread), (200, Some(c), Some(true)));
        for bad in [
            &[("limit", "0")][..],
            &[("limit", "201")],
            &[("limit", "x")],
            &[("cursor", "%%%")],
            &[("cursor", "bjE6bm9wZQ")],
            &[("unread", "yes")],
        ] {
            assert!(
                matches!(
                    ListQuery::parse(&query(bad)),
                    Err(RequestError::BadRequest(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn since_limit_is_clamped() {
        assert_eq!(since_limit(0), 1);
        assert_eq!(since_limit(20), 20);
        assert_eq!(since_limit(10_000), MAX_SINCE_LIMIT);
    }
}
