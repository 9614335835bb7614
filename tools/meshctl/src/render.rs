//! Tables, times, durations and sizes as ops read them, and the parsing of times and
//! durations typed on the command line.

use std::time::Duration;

use comfy_table::{Table, presets};
use jiff::{SignedDuration, Timestamp, tz::TimeZone};

/// A table in the plain column style of `kubectl`: easy to read, `grep` and `awk`.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(header);
    table
}

/// The table as text, without the padding comfy-table leaves at line ends and edges.
pub fn table_text(table: &Table) -> String {
    let mut text = String::new();
    for line in table.lines() {
        let line = line.strip_prefix(' ').unwrap_or(&line).trim_end();
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// An instant in UTC to the second, e.g. `2030-06-01 18:00:05Z`.
pub fn time(ts: Timestamp) -> String {
    ts.to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%SZ")
        .to_string()
}

/// `time` plus how long ago (or ahead) it is, for detail views.
pub fn time_ago(ts: Timestamp, now: Timestamp) -> String {
    format!("{} ({})", time(ts), ago(ts, now))
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`, or `in 10m` for the future.
pub fn ago(ts: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(ts.as_second());
    let (future, secs) = if secs < 0 {
        (true, secs.unsigned_abs())
    } else {
        (false, secs.unsigned_abs())
    };
    let short = short_duration(secs);
    if future {
        format!("in {short}")
    } else {
        format!("{short} ago")
    }
}

/// A duration in its largest whole unit: `45s`, `12m`, `3h`, `9d`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// At most `max` characters on one line, with `…` where it was cut.
pub fn truncate(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Aligned `key  value` lines, indented, for detail views.
pub fn fields(indent: &str, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in rows {
        text.push_str(&format!("{indent}{key:<width$}  {value}\n"));
    }
    text
}

pub fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// Parses a duration typed by a person: one or more `<number><unit>` with units
/// `s`, `m`, `h`, `d` (24 h) and `w`, e.g. `90s`, `30m`, `1h30m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration `{text}`: expected e.g. 90s, 30m, 1h30m, 7d");
    let text_trimmed = text.trim();
    if text_trimmed.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text_trimmed.chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or_else(invalid)?,
            );
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        let n = number.take().ok_or_else(invalid)?;
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(invalid)?;
    }
    // A trailing number without a unit is ambiguous (seconds? minutes?): refuse it.
    if number.is_some() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// Parses `--since`/`--until`: an RFC 3339 instant, or a duration back from now.
pub fn parse_instant(text: &str) -> Result<Timestamp, String> {
    if let Ok(ts) = text.trim().parse::<Timestamp>() {
        return Ok(ts);
    }
    let back = parse_duration(text).map_err(|_| {
        format!(
            "invalid time `{text}`: expected RFC 3339 (2030-06-01T18:00:00Z) \
             or a duration back from now (2h, 30m, 7d)"
        )
    })?;
    let back = SignedDuration::try_from(back).map_err(|e| format!("invalid time `{text}`: {e}"))?;
    Timestamp::now()
        .checked_sub(back)
        .map_err(|e| format!("invalid time `{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "h", "10", "1x", "-1h", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instants() {
        let ts = parse_instant("2030-06-01T18:00:00+02:00").unwrap();
        assert_eq!(ts.to_string(), "2030-06-01T16:00:00Z");
        let two_hours_ago = parse_instant("2h").unwrap();
        let expected = Timestamp::now().as_second() - 7_200;
        assert!((two_hours_ago.as_second() - expected).abs() < 5);
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("99999999w").is_err());
    }

    #[test]
    fn truncation_and_times() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("abcdefghijkl", 5), "abcd…");
        let now: Timestamp = "2030-06-01T18:00:00Z".parse().unwrap();
        let then: Timestamp = "2030-06-01T16:00:00Z".parse().unwrap();
        assert_eq!(ago(then, now), "2h ago");
        assert_eq!(ago(now, then), "in 2h");
        assert_eq!(time(then), "2030-06-01 16:00:00Z");
    }
}
