//! Reads the `.ics` invitations the mails carry with a real RFC 5545 parser (the
//! `icalendar` crate), so tests check what a calendar client would see, not lines of
//! text: the method, the event's UID, SEQUENCE and STATUS, and DTSTART/DTEND resolved
//! from their TZID to UTC instants.
//!
//! ```ignore
//! let invite = mail.attachment("text/calendar").context("no ics")?.invitation()?;
//! assert_eq!(invite.method.as_deref(), Some("REQUEST"));
//! assert_eq!(invite.starts_at, event_starts_at);
//! ```

use anyhow::{Context, Result, bail};
use icalendar::{Calendar, CalendarComponent, CalendarDateTime, Component, DatePerhapsTime};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The one VEVENT of an invitation, as a calendar client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The calendar's `METHOD`, e.g. `REQUEST` or `CANCEL`.
    pub method: Option<String>,
    pub uid: String,
    pub sequence: Option<u32>,
    /// `STATUS`, e.g. `CONFIRMED` or `CANCELLED`.
    pub status: Option<String>,
    pub summary: Option<String>,
    /// The `TZID` DTSTART is written in (`None`: UTC).
    pub start_tzid: Option<String>,
    /// DTSTART as an instant.
    pub starts_at: Timestamp,
    pub end_tzid: Option<String>,
    pub ends_at: Timestamp,
    /// The `TZID`s of the calendar's VTIMEZONE components.
    pub time_zones: Vec<String>,
}

/// Parses an iCalendar text holding exactly one VEVENT.
pub fn parse(text: &str) -> Result<Invitation> {
    let calendar: Calendar = text
        .parse()
        .map_err(|e: String| anyhow::anyhow!("not an RFC 5545 calendar: {e}\n{text}"))?;
    let events: Vec<_> = calendar
        .components
        .iter()
        .filter_map(CalendarComponent::as_event)
        .collect();
    let [event] = events.as_slice() else {
        bail!("{} VEVENTs, expected one:\n{text}", events.len());
    };
    let time_zones = calendar
        .components
        .iter()
        .filter_map(|c| match c {
            CalendarComponent::Other(other) if other.component_kind() == "VTIMEZONE" => {
                other.property_value("TZID").map(str::to_owned)
            }
            _ => None,
        })
        .collect();
    let (start_tzid, starts_at) = instant(event.get_start(), "DTSTART")?;
    let (end_tzid, ends_at) = instant(event.get_end(), "DTEND")?;
    Ok(Invitation {
        method: calendar.property_value("METHOD").map(str::to_owned),
        uid: event.get_uid().context("VEVENT without UID")?.to_owned(),
        sequence: event.get_sequence(),
        status: event.property_value("STATUS").map(str::to_owned),
        summary: event.get_summary().map(str::to_owned),
        start_tzid,
        starts_at,
        end_tzid,
        ends_at,
        time_zones,
    })
}

/// A DATE-TIME property as (its TZID, the instant it names).
fn instant(value: Option<DatePerhapsTime>, name: &str) -> Result<(Option<String>, Timestamp)> {
    match value.with_context(|| format!("VEVENT without {name}"))? {
        DatePerhapsTime::DateTime(CalendarDateTime::WithTimezone { date_time, tzid }) => {
            let local: jiff::civil::DateTime = date_time
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string()
                .parse()
                .with_context(|| format!("{name} {date_time}"))?;
            let zone = TimeZone::get(&tzid).with_context(|| format!("{name}: TZID {tzid}"))?;
            let at = local
                .to_zoned(zone)
                .with_context(|| format!("{name} {local} in {tzid}"))?;
            Ok((Some(tzid), at.timestamp()))
        }
        DatePerhapsTime::DateTime(CalendarDateTime::Utc(utc)) => {
            let at: Timestamp = utc.to_rfc3339().parse().context(name.to_owned())?;
            Ok((None, at))
        }
        other => bail!("{name} is neither in a TZID nor UTC: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_in_their_zone_as_instants() -> Result<()> {
        let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nMETHOD:REQUEST\r\n\
                    BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nBEGIN:DAYLIGHT\r\n\
                    DTSTART:19700329T020000\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\n\
                    END:DAYLIGHT\r\nEND:VTIMEZONE\r\n\
                    BEGIN:VEVENT\r\nUID:abc@mesh\r\nSEQUENCE:3\r\nSTATUS:CONFIRMED\r\n\
                    SUMMARY:Rust\r\n  meetup\r\n\
                    DTSTART;TZID=Europe/Berlin:20300601T180000\r\nDTEND:20300601T190000Z\r\n\
                    END:VEVENT\r\nEND:VCALENDAR\r\n";
        let invite = parse(text)?;
        assert_eq!(invite.method.as_deref(), Some("REQUEST"));
        assert_eq!(invite.uid, "abc@mesh");
        assert_eq!(invite.sequence, Some(3));
        assert_eq!(invite.status.as_deref(), Some("CONFIRMED"));
        assert_eq!(invite.summary.as_deref(), Some("Rust meetup"), "unfolded");
        assert_eq!(invite.start_tzid.as_deref(), Some("Europe/Berlin"));
        assert_eq!(
            invite.starts_at,
            "2030-06-01T16:00:00Z".parse::<Timestamp>()?
        );
        assert_eq!(invite.end_tzid, None);
        assert_eq!(invite.ends_at, "2030-06-01T19:00:00Z".parse::<Timestamp>()?);
        assert_eq!(invite.time_zones, vec!["Europe/Berlin".to_owned()]);
        assert!(parse("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n").is_err());
        Ok(())
    }
}
