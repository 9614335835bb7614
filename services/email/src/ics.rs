//! iCalendar (RFC 5545) invitations attached to event mails.
//!
//! One `VEVENT` per calendar event, identified by the stable UID `<event_id>@mesh`, so a
//! mail client updates (or removes) the same entry on every mail about that event. The
//! `SEQUENCE` is the event's aggregate version, which grows with every change (every
//! RSVP too), so a later mail always wins over an earlier one. Times are written in the
//! event's own zone (`DTSTART;TZID=…`) with a `VTIMEZONE` that lists the offset
//! transitions that matter for the event, so the entry stays right when the zone's
//! rules differ from the reader's.
//!
//! Output follows the format rules: CRLF line ends, lines folded at 75 octets (never
//! inside a UTF-8 character), TEXT values escaped.

use contracts::events::{EventSnapshot, EventStatus, RsvpStatus};
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

/// The iTIP method of an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Add or update the entry.
    Request,
    /// Remove the entry (a cancelled event, or a declined invitation).
    Cancel,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Request => "REQUEST",
            Method::Cancel => "CANCEL",
        }
    }

    /// The MIME type of the attachment, with the method parameter clients look for.
    pub fn content_type(self) -> String {
        format!("text/calendar; method={}; charset=UTF-8", self.as_str())
    }
}

/// An attendee's participation status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartStat {
    Accepted,
    Tentative,
    Declined,
}

impl PartStat {
    pub fn as_str(self) -> &'static str {
        match self {
            PartStat::Accepted => "ACCEPTED",
            PartStat::Tentative => "TENTATIVE",
            PartStat::Declined => "DECLINED",
        }
    }
}

impl From<RsvpStatus> for PartStat {
    fn from(s: RsvpStatus) -> Self {
        match s {
            RsvpStatus::Going => PartStat::Accepted,
            RsvpStatus::Maybe => PartStat::Tentative,
            RsvpStatus::Declined => PartStat::Declined,
        }
    }
}

/// A person with a display name and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    pub name: String,
    pub email: String,
}

/// Everything one invitation needs.
#[derive(Debug, Clone)]
pub struct Invitation<'a> {
    pub method: Method,
    pub event: &'a EventSnapshot,
    /// Grows with every change of the event (its aggregate version).
    pub sequence: u64,
    /// When the change happened (`DTSTAMP`); the source event's time, so a resent mail
    /// carries the same bytes.
    pub stamp: Timestamp,
    pub organizer: Party,
    pub attendee: Party,
    pub partstat: PartStat,
}

/// The UID of an event's entry: the same for every mail about it.
pub fn uid(event_id: Uuid) -> String {
    format!("{event_id}@mesh")
}

/// Renders a complete `VCALENDAR` object, CRLF-terminated and folded.
pub fn render(inv: &Invitation<'_>) -> String {
    let ev = inv.event;
    let mut lines: Vec<String> = vec![
        "BEGIN:VCALENDAR".into(),
        "VERSION:2.0".into(),
        "PRODID:-//Mesh//Email//EN".into(),
        "CALSCALE:GREGORIAN".into(),
        format!("METHOD:{}", inv.method.as_str()),
    ];
    // An unknown zone name cannot come from calendar (it validates zones); should one
    // arrive anyway, UTC times are still correct, only less friendly.
    let zone = TimeZone::get(&ev.time_zone).ok();
    if let Some(tz) = &zone {
        vtimezone(tz, &ev.time_zone, ev.starts_at, ev.ends_at, &mut lines);
    }
    lines.push("BEGIN:VEVENT".into());
    lines.push(format!("UID:{}", uid(ev.event_id)));
    lines.push(format!("SEQUENCE:{}", inv.sequence));
    lines.push(format!("DTSTAMP:{}", utc_stamp(inv.stamp)));
    match &zone {
        Some(tz) => {
            let tzid = param_value(&ev.time_zone);
            lines.push(format!(
                "DTSTART;TZID={tzid}:{}",
                local_stamp(tz, ev.starts_at)
            ));
            lines.push(format!("DTEND;TZID={tzid}:{}", local_stamp(tz, ev.ends_at)));
        }
        None => {
            lines.push(format!("DTSTART:{}", utc_stamp(ev.starts_at)));
            lines.push(format!("DTEND:{}", utc_stamp(ev.ends_at)));
        }
    }
    lines.push(format!("SUMMARY:{}", escape_text(&ev.title)));
    if !ev.description.is_empty() {
        lines.push(format!("DESCRIPTION:{}", escape_text(&ev.description)));
    }
    if !ev.location.is_empty() {
        lines.push(format!("LOCATION:{}", escape_text(&ev.location)));
    }
    lines.push(format!(
        "ORGANIZER;CN={}:mailto:{}",
        param_value(&inv.organizer.name),
        inv.organizer.email
    ));
    lines.push(format!(
        "ATTENDEE;CN={};ROLE=REQ-PARTICIPANT;PARTSTAT={};RSVP=FALSE:mailto:{}",
        param_value(&inv.attendee.name),
        inv.partstat.as_str(),
        inv.attendee.email
    ));
    let cancelled = inv.method == Method::Cancel || ev.status == EventStatus::Cancelled;
    lines.push(format!(
        "STATUS:{}",
        if cancelled { "CANCELLED" } else { "CONFIRMED" }
    ));
    lines.push("TRANSP:OPAQUE".into());
    lines.push("END:VEVENT".into());
    lines.push("END:VCALENDAR".into());

    let mut out = String::new();
    for line in &lines {
        out.push_str(&fold(line));
        out.push_str("\r\n");
    }
    out
}

/// The transitions in force during the event: the one before its start, and every
/// one up to its end. Each becomes a single-occurrence observance (no RRULE), which is
/// exact for this event and needs no knowledge of the zone's future rules.
fn vtimezone(tz: &TimeZone, name: &str, start: Timestamp, end: Timestamp, out: &mut Vec<String>) {
    out.push("BEGIN:VTIMEZONE".into());
    out.push(format!("TZID:{}", escape_text(name)));
    let after_start = start
        .checked_add(SignedDuration::from_secs(1))
        .unwrap_or(start);
    let mut transitions: Vec<(Timestamp, Offset, Offset, bool, String)> = Vec::new();
    if let Some(t) = tz.preceding(after_start).next() {
        transitions.push(observance(
            tz,
            t.timestamp(),
            t.offset(),
            t.dst().is_dst(),
            t.abbreviation(),
        ));
    }
    // Bounded: an event spanning years still gets a small VTIMEZONE.
    for t in tz
        .following(start)
        .take_while(|t| t.timestamp() <= end)
        .take(16)
    {
        if transitions.iter().any(|(at, ..)| *at == t.timestamp()) {
            continue;
        }
        transitions.push(observance(
            tz,
            t.timestamp(),
            t.offset(),
            t.dst().is_dst(),
            t.abbreviation(),
        ));
    }
    if transitions.is_empty() {
        // A fixed zone (UTC, Etc/GMT+5): one observance since the epoch.
        let info = tz.to_offset_info(start);
        out.push("BEGIN:STANDARD".into());
        out.push("DTSTART:19700101T000000".into());
        out.push(format!("TZOFFSETFROM:{}", offset_text(info.offset())));
        out.push(format!("TZOFFSETTO:{}", offset_text(info.offset())));
        out.push(format!("TZNAME:{}", escape_text(info.abbreviation())));
        out.push("END:STANDARD".into());
    }
    for (at, from, to, dst, abbreviation) in transitions {
        let kind = if dst { "DAYLIGHT" } else { "STANDARD" };
        out.push(format!("BEGIN:{kind}"));
        // An observance's DTSTART is the local time of the switch under the old offset.
        out.push(format!(
            "DTSTART:{}",
            from.to_datetime(at).strftime("%Y%m%dT%H%M%S")
        ));
        out.push(format!("TZOFFSETFROM:{}", offset_text(from)));
        out.push(format!("TZOFFSETTO:{}", offset_text(to)));
        out.push(format!("TZNAME:{}", escape_text(&abbreviation)));
        out.push(format!("END:{kind}"));
    }
    out.push("END:VTIMEZONE".into());
}

fn observance(
    tz: &TimeZone,
    at: Timestamp,
    to: Offset,
    dst: bool,
    abbreviation: &str,
) -> (Timestamp, Offset, Offset, bool, String) {
    let from = at
        .checked_sub(SignedDuration::from_secs(1))
        .map(|before| tz.to_offset(before))
        .unwrap_or(to);
    (at, from, to, dst, abbreviation.to_owned())
}

/// `20250301T170000Z`.
fn utc_stamp(ts: Timestamp) -> String {
    ts.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Local wall-clock time in `tz`, `20250301T180000`.
fn local_stamp(tz: &TimeZone, ts: Timestamp) -> String {
    tz.to_datetime(ts).strftime("%Y%m%dT%H%M%S").to_string()
}

/// `+0100`, `-0430`, or `+053045` when the offset has seconds.
fn offset_text(offset: Offset) -> String {
    let total = offset.seconds();
    let sign = if total < 0 { '-' } else { '+' };
    let abs = total.unsigned_abs();
    let (h, m, s) = (abs / 3600, (abs / 60) % 60, abs % 60);
    if s == 0 {
        format!("{sign}{h:02}{m:02}")
    } else {
        format!("{sign}{h:02}{m:02}{s:02}")
    }
}

/// Escapes a TEXT value: backslash, semicolon, comma and line breaks; drops other
/// control characters (they are not allowed in content lines).
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\\n");
            }
            '\n' => out.push_str("\\n"),
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A parameter value (e.g. `CN=`): double quotes are not allowed inside one, so they
/// become single quotes; values with `:`, `;` or `,` are quoted.
pub fn param_value(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' { '\'' } else { c })
        .collect();
    if clean.contains([':', ';', ',']) {
        format!("\"{clean}\"")
    } else {
        clean
    }
}

/// Folds one content line: at most 75 octets per physical line, continuation lines
/// start with a space, and a UTF-8 character is never split.
pub fn fold(line: &str) -> String {
    const LIMIT: usize = 75;
    let mut out = String::with_capacity(line.len() + line.len() / LIMIT * 3);
    let mut used = 0;
    for c in line.chars() {
        let width = c.len_utf8();
        if used + width > LIMIT {
            out.push_str("\r\n ");
            used = 1;
        }
        out.push(c);
        used += width;
    }
    out
}

/// Undoes [`fold`] (and any folding): a CRLF followed by a space or tab joins lines.
pub fn unfold(text: &str) -> String {
    text.replace("\r\n ", "").replace("\r\n\t", "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::events::RsvpCounts;

    fn event(tz: &str, start: &str, end: &str) -> EventSnapshot {
        EventSnapshot {
            event_id: Uuid::parse_str("0190f0c2-7b4e-7c1a-9d7e-1234567890ab").unwrap_or_default(),
            organizer_id: Uuid::nil(),
            title: "Rust meetup; talks, pizza \\ more".into(),
            description: "Line one\nLine two, with a comma".into(),
            starts_at: start.parse().unwrap_or(Timestamp::UNIX_EPOCH),
            ends_at: end.parse().unwrap_or(Timestamp::UNIX_EPOCH),
            time_zone: tz.into(),
            location: "Café Ümlaut, Berlin".into(),
            capacity: 10,
            status: EventStatus::Scheduled,
            counts: RsvpCounts::default(),
        }
    }

    fn invite(ev: &EventSnapshot, method: Method, sequence: u64) -> String {
        render(&Invitation {
            method,
            event: ev,
            sequence,
            stamp: "2025-01-02T03:04:05Z"
                .parse()
                .unwrap_or(Timestamp::UNIX_EPOCH),
            organizer: Party {
                name: "Olga \"The\" Organizer".into(),
                email: "olga@example.com".into(),
            },
            attendee: Party {
                name: "Ann, Attendee".into(),
                email: "ann@example.com".into(),
            },
            partstat: PartStat::Accepted,
        })
    }

    /// Content lines after unfolding, with their `NAME;PARAMS` and value split.
    fn parse(ics: &str) -> Vec<(String, String)> {
        unfold(ics)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                // The value starts after the first colon outside a quoted parameter.
                let mut quoted = false;
                let mut split = l.len();
                for (i, c) in l.char_indices() {
                    match c {
                        '"' => quoted = !quoted,
                        ':' if !quoted => {
                            split = i;
                            break;
                        }
                        _ => {}
                    }
                }
                let (name, value) = l.split_at(split);
                (name.to_owned(), value.trim_start_matches(':').to_owned())
            })
            .collect()
    }

    fn value<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        lines
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn lines_end_in_crlf_and_are_folded_at_75_octets() {
        let mut ev = event(
            "Europe/Berlin",
            "2025-03-01T17:00:00Z",
            "2025-03-01T19:00:00Z",
        );
        ev.description = "ü".repeat(200);
        let ics = invite(&ev, Method::Request, 3);
        assert!(ics.ends_with("\r\n"));
        assert!(
            !ics.replace("\r\n", "").contains('\n'),
            "bare LF in {ics:?}"
        );
        for physical in ics.split("\r\n") {
            assert!(
                physical.len() <= 75,
                "{} octets: {physical:?}",
                physical.len()
            );
        }
        let lines = parse(&ics);
        assert_eq!(value(&lines, "DESCRIPTION"), vec!["ü".repeat(200)]);
    }

    #[test]
    fn times_are_local_in_the_event_zone_with_a_vtimezone() {
        // 17:00 UTC is 18:00 in Berlin in winter (CET, +0100).
        let ev = event(
            "Europe/Berlin",
            "2025-03-01T17:00:00Z",
            "2025-03-01T19:30:00Z",
        );
        let lines = parse(&invite(&ev, Method::Request, 3));
        assert_eq!(
            value(&lines, "DTSTART;TZID=Europe/Berlin"),
            vec!["20250301T180000"]
        );
        assert_eq!(
            value(&lines, "DTEND;TZID=Europe/Berlin"),
            vec!["20250301T203000"]
        );
        assert_eq!(value(&lines, "TZID"), vec!["Europe/Berlin"]);
        assert_eq!(value(&lines, "TZOFFSETTO"), vec!["+0100"]);
        assert_eq!(value(&lines, "DTSTAMP"), vec!["20250102T030405Z"]);
        assert_eq!(value(&lines, "METHOD"), vec!["REQUEST"]);
        assert_eq!(value(&lines, "STATUS"), vec!["CONFIRMED"]);
    }

    #[test]
    fn an_event_across_a_dst_switch_lists_both_offsets() {
        // Berlin switches to summer time on 2025-03-30 at 01:00 UTC.
        let ev = event(
            "Europe/Berlin",
            "2025-03-29T20:00:00Z",
            "2025-03-30T10:00:00Z",
        );
        let ics = invite(&ev, Method::Request, 1);
        let lines = parse(&ics);
        assert_eq!(
            value(&lines, "DTSTART;TZID=Europe/Berlin"),
            vec!["20250329T210000"]
        );
        assert_eq!(
            value(&lines, "DTEND;TZID=Europe/Berlin"),
            vec!["20250330T120000"]
        );
        assert_eq!(value(&lines, "TZOFFSETTO"), vec!["+0100", "+0200"]);
        assert!(
            ics.contains("BEGIN:DAYLIGHT\r\nDTSTART:20250330T020000\r\n"),
            "{ics}"
        );
    }

    #[test]
    fn fixed_zones_get_one_observance() {
        let ev = event("UTC", "2025-03-01T17:00:00Z", "2025-03-01T18:00:00Z");
        let lines = parse(&invite(&ev, Method::Request, 1));
        assert_eq!(value(&lines, "DTSTART;TZID=UTC"), vec!["20250301T170000"]);
        assert_eq!(value(&lines, "TZOFFSETFROM"), vec!["+0000"]);
    }

    #[test]
    fn an_unknown_zone_falls_back_to_utc_times() {
        let ev = event(
            "Mars/Olympus",
            "2025-03-01T17:00:00Z",
            "2025-03-01T18:00:00Z",
        );
        let lines = parse(&invite(&ev, Method::Request, 1));
        assert_eq!(value(&lines, "DTSTART"), vec!["20250301T170000Z"]);
        assert!(value(&lines, "TZID").is_empty());
    }

    #[test]
    fn text_and_parameters_are_escaped() {
        let ev = event(
            "Europe/Berlin",
            "2025-03-01T17:00:00Z",
            "2025-03-01T18:00:00Z",
        );
        let lines = parse(&invite(&ev, Method::Request, 1));
        assert_eq!(
            value(&lines, "SUMMARY"),
            vec!["Rust meetup\\; talks\\, pizza \\\\ more"]
        );
        assert_eq!(
            value(&lines, "DESCRIPTION"),
            vec!["Line one\\nLine two\\, with a comma"]
        );
        assert_eq!(value(&lines, "LOCATION"), vec!["Café Ümlaut\\, Berlin"]);
        assert_eq!(
            value(&lines, "ORGANIZER;CN=Olga 'The' Organizer"),
            vec!["mailto:olga@example.com"]
        );
        assert_eq!(
            value(
                &lines,
                "ATTENDEE;CN=\"Ann, Attendee\";ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;RSVP=FALSE"
            ),
            vec!["mailto:ann@example.com"]
        );
        assert_eq!(escape_text("a\r\nb\u{7}c\td"), "a\\nbc d");
    }

    #[test]
    fn uid_is_stable_and_sequence_follows_the_version() {
        let ev = event(
            "Europe/Berlin",
            "2025-03-01T17:00:00Z",
            "2025-03-01T18:00:00Z",
        );
        let first = parse(&invite(&ev, Method::Request, 2));
        let later = parse(&invite(&ev, Method::Cancel, 5));
        let expected = format!("{}@mesh", ev.event_id);
        assert_eq!(value(&first, "UID"), vec![expected.as_str()]);
        assert_eq!(value(&later, "UID"), vec![expected.as_str()]);
        assert_eq!(value(&first, "SEQUENCE"), vec!["2"]);
        assert_eq!(value(&later, "SEQUENCE"), vec!["5"]);
        assert_eq!(value(&later, "METHOD"), vec!["CANCEL"]);
        assert_eq!(value(&later, "STATUS"), vec!["CANCELLED"]);
    }

    #[test]
    fn folding_never_splits_a_character() {
        let line = format!("SUMMARY:{}", "€".repeat(60));
        let folded = fold(&line);
        for physical in folded.split("\r\n") {
            assert!(physical.len() <= 75);
        }
        assert_eq!(unfold(&folded), line);
        assert_eq!(fold("short"), "short");
    }
}
