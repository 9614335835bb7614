//! The error-text filter of the dead-letter page, at the store: whichever way a page is
//! found (the newest rows probed, the trigram index on SQLite or PostgreSQL, or a row by
//! row test for texts under 3 characters), it holds exactly the rows a plain
//! case-insensitive substring test selects, in page order, across pages; and the index
//! follows inserts and deletes.

use anyhow::Result;
use contracts::hospital::{DeadLetterFilter, DeadLetterStatus, Diagnosis, ErrorKind};
use hospital::domain::Cursor;
use hospital::store::{self, DeadLetterRow, NewDeadLetter};
use jiff::{SignedDuration, Timestamp};
use runtime::db::{Database, to_micros};
use uuid::Uuid;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    error_filter_pages_match_a_substring_scan,
    error_index_follows_inserts_and_deletes,
);

/// Error texts with what a search must take literally: LIKE wildcards, the escape
/// character, FTS5 syntax, quotes, mixed case and non-ASCII (same case on both sides:
/// SQLite's LIKE folds ASCII only).
const TEXTS: [&str; 8] = [
    "upstream Timeout after {i} ms",
    "rate 50% exceeded for a_b (try {i})",
    r"path C:\temp\{i} not found",
    "she said \"quoted\" {i} times",
    "café au lait #{i} failed",
    "ABC*DEF (x) OR AND NOT NEAR {i}",
    "plain failure {i}",
    "upstream timeout: 5_0 after {i} ms",
];

const NEEDLES: [&str; 27] = [
    "timeout",
    "TIMEOUT",
    "upstream timeout after 7 ms",
    "after 1",
    "50%",
    "%",
    "5_0",
    "_",
    "a_b",
    "a%b",
    r"\",
    r"c:\temp\1",
    "\"quoted\"",
    "\"",
    "café",
    "é",
    "*def",
    "(x) or",
    "near",
    "x",
    "ou",
    "Ti",
    "t",
    "no such text",
    "  ",
    "meout aft",
    "1",
];

async fn connect(db: &TestDb) -> Result<Database> {
    Ok(Database::connect(db.url(), &hospital::MIGRATIONS).await?)
}

fn dead_letter(i: usize, durable: &str, error: String, parked_at: Timestamp) -> NewDeadLetter {
    NewDeadLetter {
        id: Uuid::now_v7(),
        park_id: format!("park:{durable}:CALENDAR:{i}"),
        dlq_sequence: i as u64 + 1,
        fingerprint: format!("fp{}", i % 3),
        diagnosis: Diagnosis {
            service: "email".into(),
            durable: durable.into(),
            stream: "CALENDAR".into(),
            subject: "calendar.v1.event.created".into(),
            stream_sequence: i as u64 + 1,
            message_id: Some(Uuid::now_v7().to_string()),
            message_type: Some("calendar.event_created".into()),
            schema_version: Some(1),
            error_kind: ErrorKind::Transient,
            error,
            deliveries: 3,
            first_failure_at: parked_at,
            last_failure_at: parked_at,
            trace_id: None,
            replay_of: None,
        },
        headers: vec![],
        payload: vec![0x80],
        parked_at,
    }
}

/// 240 dead letters over two durables; groups of four share a park instant (so pages
/// also order by id).
async fn fill(db: &Database) -> Result<Vec<NewDeadLetter>> {
    let base = Timestamp::now() - SignedDuration::from_hours(1);
    let mut all = Vec::new();
    for i in 0..240 {
        let durable = if i % 5 == 0 { PUSH } else { EMAIL };
        let error = TEXTS[i % TEXTS.len()].replace("{i}", &i.to_string());
        let at = base + SignedDuration::from_millis((i / 4) as i64);
        let d = dead_letter(i, durable, error, at);
        assert!(store::insert_dead_letter(db, &d).await?);
        all.push(d);
    }
    Ok(all)
}

/// What the filter selects, by a plain scan in Rust: newest first, then by id.
fn expected(all: &[NewDeadLetter], durable: Option<&str>, needle: &str) -> Vec<Uuid> {
    let needle = needle.to_lowercase();
    let mut rows: Vec<&NewDeadLetter> = all
        .iter()
        .filter(|d| durable.is_none_or(|x| d.diagnosis.durable == x))
        .filter(|d| d.diagnosis.error.to_lowercase().contains(&needle))
        .collect();
    rows.sort_by_key(|d| std::cmp::Reverse((to_micros(d.parked_at), d.id.to_string())));
    rows.iter().map(|d| d.id).collect()
}

/// Every page of the filter, `limit` at a time, through `list_probed`.
async fn all_pages(
    db: &Database,
    filter: &DeadLetterFilter,
    limit: u32,
    probe: u32,
) -> Result<Vec<Uuid>> {
    let mut after = None;
    let mut ids = Vec::new();
    for _ in 0..1_000 {
        let mut rows: Vec<DeadLetterRow> =
            store::list_probed(db, filter, after, limit, probe).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        ids.extend(rows.iter().map(|r| r.id));
        match rows.last() {
            Some(last) if more => {
                after = Some(Cursor {
                    at: to_micros(last.parked_at),
                    id: last.id,
                })
            }
            _ => return Ok(ids),
        }
    }
    anyhow::bail!("pages never ended")
}

async fn check_all(db: &Database, all: &[NewDeadLetter]) -> Result<()> {
    for durable in [None, Some(EMAIL)] {
        for needle in NEEDLES {
            let filter = DeadLetterFilter {
                durable: durable.map(str::to_owned),
                error: Some(needle.to_owned()),
                ..Default::default()
            };
            let want = expected(all, durable, needle);
            // A probe of 3 rows sends nearly every search to the trigram index, a
            // large one answers from the probe; pages of 7 and of everything.
            for (limit, probe) in [(7, 3), (7, 2_000), (500, 3)] {
                let got = all_pages(db, &filter, limit, probe).await?;
                assert_eq!(
                    got, want,
                    "error={needle:?} durable={durable:?} limit={limit} probe={probe}"
                );
            }
        }
    }
    Ok(())
}

async fn error_filter_pages_match_a_substring_scan(backend: Backend) -> Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = connect(&tdb).await?;
    let all = fill(&db).await?;
    // Sanity: the needles cover hits and misses.
    assert_eq!(expected(&all, None, "TIMEOUT").len(), 60);
    assert!(expected(&all, None, "no such text").is_empty());
    check_all(&db, &all).await?;

    // Other conditions combine with the text, on every path.
    let filter = DeadLetterFilter {
        durable: Some(EMAIL.into()),
        error: Some("timeout".into()),
        status: Some(DeadLetterStatus::Parked),
        fingerprint: Some("fp1".into()),
        ..Default::default()
    };
    let want: Vec<Uuid> = expected(&all, Some(EMAIL), "timeout")
        .into_iter()
        .filter(|id| all.iter().any(|d| d.id == *id && d.fingerprint == "fp1"))
        .collect();
    assert!(!want.is_empty());
    for probe in [3, 2_000] {
        assert_eq!(all_pages(&db, &filter, 5, probe).await?, want);
    }
    Ok(())
}

async fn error_index_follows_inserts_and_deletes(backend: Backend) -> Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = connect(&tdb).await?;
    let mut all = fill(&db).await?;

    // Purged rows leave the index.
    let gone: Vec<Uuid> = all.iter().step_by(3).map(|d| d.id).collect();
    let deleted = store::delete(&db, &gone, DeadLetterStatus::Parked).await?;
    assert_eq!(deleted, gone.len() as u64);
    all.retain(|d| !gone.contains(&d.id));
    // A re-indexed park id adds nothing; a new one is found at once.
    assert!(!store::insert_dead_letter(&db, &all[0]).await?);
    let fresh = dead_letter(
        10_000,
        EMAIL,
        "brand new Zebra failure".into(),
        Timestamp::now(),
    );
    assert!(store::insert_dead_letter(&db, &fresh).await?);
    all.push(fresh.clone());
    check_all(&db, &all).await?;
    let filter = DeadLetterFilter {
        error: Some("zebra".into()),
        ..Default::default()
    };
    assert_eq!(all_pages(&db, &filter, 10, 1).await?, vec![fresh.id]);

    Ok(())
}
