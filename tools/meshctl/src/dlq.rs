//! `meshctl dlq …`: browse the dead-letter index, replay, discard, purge and edit dead
//! letters, follow bulk jobs, and see consumer stats and a message's whereabouts.

use std::path::Path;
use std::time::{Duration, Instant};

use contracts::hospital::{
    BulkRequest, BulkResult, DeadLetter, DeadLetterDetail, DeadLetterFilter, DeadLetterPage,
    EditReplayRequest, EditReplayResult, FailureGroupList, GroupKey, HospitalStats, Job, JobKind,
    JobList, JobStatus, ReplayRequest, Selection, WhereaboutsList,
};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;
use serde_json::Value;
use uuid::Uuid;

use crate::cli::{BulkArgs, DlqCommand, EditArgs, GroupsArgs, ListArgs, SelectionArgs, WhereArgs};
use crate::client::{Client, Reply};
use crate::error::{Error, Result};
use crate::{Io, print_json, reason, render};

/// How often a running job is polled.
const POLL_EVERY: Duration = Duration::from_millis(250);

const MESSAGES: &[&str] = &["v1", "admin", "dlq", "messages"];

pub async fn run(client: &mut Client, cmd: DlqCommand, json: bool, io: &mut Io<'_>) -> Result<()> {
    match cmd {
        DlqCommand::List(args) => list(client, args, json, io).await,
        DlqCommand::Show { id } => show(client, id, json, io).await,
        DlqCommand::Groups(args) => groups(client, args, json, io).await,
        DlqCommand::Replay(args) => {
            let request = ReplayRequest {
                selection: selection(&args.selection)?,
                dry_run: args.dry_run,
                rate_per_sec: args.rate,
                reason: reason(&args.reason)?,
            };
            let bulk = Bulk {
                kind: JobKind::Replay,
                action: "replay",
                wait: !args.no_wait,
            };
            bulk.run(client, &request, json, io).await
        }
        DlqCommand::Discard(args) => {
            let bulk = Bulk {
                kind: JobKind::Discard,
                action: "discard",
                wait: !args.no_wait,
            };
            bulk.run(client, &bulk_request(&args)?, json, io).await
        }
        DlqCommand::Purge(args) => {
            let bulk = Bulk {
                kind: JobKind::Purge,
                action: "purge",
                wait: !args.no_wait,
            };
            bulk.run(client, &bulk_request(&args)?, json, io).await
        }
        DlqCommand::Edit(args) => edit(client, args, json, io).await,
        DlqCommand::Jobs => jobs(client, json, io).await,
        DlqCommand::Job { id } => job(client, id, json, io).await,
        DlqCommand::Stats => stats(client, json, io).await,
        DlqCommand::Where(args) => whereabouts(client, args, json, io).await,
    }
}

/// The filter as query parameters named like [`DeadLetterFilter`]'s fields (serialized
/// through serde so the names cannot drift from the contract).
pub fn filter_query(filter: &DeadLetterFilter) -> Result<Vec<(String, String)>> {
    let value = serde_json::to_value(filter)
        .map_err(|e| Error::Other(format!("cannot encode the filter: {e}")))?;
    let Value::Object(fields) = value else {
        return Ok(Vec::new());
    };
    Ok(fields
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

async fn list(client: &mut Client, args: ListArgs, json: bool, io: &mut Io<'_>) -> Result<()> {
    let mut query = filter_query(&args.filter.to_filter())?;
    if let Some(limit) = args.limit {
        query.push(("limit".to_owned(), limit.to_string()));
    }
    let mut cursor = args.cursor.clone();
    let mut items: Vec<DeadLetter> = Vec::new();
    let next = loop {
        let mut page_query = query.clone();
        if let Some(c) = &cursor {
            page_query.push(("cursor".to_owned(), c.clone()));
        }
        let reply: Reply<DeadLetterPage> = client.get(MESSAGES, &page_query).await?;
        if !args.all {
            if json {
                return print_json(io, &reply.raw);
            }
            items = reply.value.items;
            break reply.value.next_cursor;
        }
        items.extend(reply.value.items);
        match reply.value.next_cursor {
            None => break None,
            // A server that hands back the cursor it was given would loop forever.
            Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                return Err(Error::Other(format!(
                    "the server repeated cursor `{next}`; stopping after {} dead letters",
                    items.len()
                )));
            }
            Some(next) => cursor = Some(next),
        }
    };
    if json {
        let page = DeadLetterPage {
            items,
            next_cursor: None,
        };
        let value = serde_json::to_value(&page)
            .map_err(|e| Error::Other(format!("cannot print JSON: {e}")))?;
        return print_json(io, &value);
    }
    if items.is_empty() {
        writeln!(io.out, "no dead letters match")?;
    } else {
        write!(io.out, "{}", dead_letter_table(&items))?;
    }
    if let Some(next) = next {
        writeln!(
            io.err,
            "{} shown; more with --cursor {next} (or --all)",
            items.len()
        )?;
    }
    Ok(())
}

fn dead_letter_table(items: &[DeadLetter]) -> String {
    let mut table = render::table([
        "ID",
        "PARKED",
        "DURABLE",
        "TYPE",
        "KIND",
        "DELIVERIES",
        "STATUS",
        "ERROR",
    ]);
    for dl in items {
        let d = &dl.diagnosis;
        table.add_row(vec![
            dl.id.to_string(),
            render::time(dl.parked_at),
            d.durable.clone(),
            render::or_dash(d.message_type.as_deref()),
            d.error_kind.as_str().to_owned(),
            d.deliveries.to_string(),
            dl.status.as_str().to_owned(),
            render::truncate(&d.error, 60),
        ]);
    }
    render::table_text(&table)
}

async fn show(client: &mut Client, id: Uuid, json: bool, io: &mut Io<'_>) -> Result<()> {
    let id = id.to_string();
    let reply: Reply<DeadLetterDetail> = client
        .get(&["v1", "admin", "dlq", "messages", &id], &[])
        .await?;
    if json {
        return print_json(io, &reply.raw);
    }
    let detail = reply.value;
    let dl = &detail.dead_letter;
    let d = &dl.diagnosis;
    let now = Timestamp::now();
    let out = &mut *io.out;

    write!(
        out,
        "{}",
        render::fields(
            "",
            &[
                ("dead letter", dl.id.to_string()),
                (
                    "status",
                    format!("{} (replayed {} times)", dl.status.as_str(), dl.replays)
                ),
                ("park id", dl.park_id.clone()),
                ("fingerprint", dl.fingerprint.clone()),
                ("parked at", render::time_ago(dl.parked_at, now)),
            ]
        )
    )?;
    writeln!(out, "\ndiagnosis")?;
    let message_type = match (&d.message_type, d.schema_version) {
        (Some(t), Some(v)) => format!("{t} v{v}"),
        (Some(t), None) => t.clone(),
        (None, _) => "-".to_owned(),
    };
    write!(
        out,
        "{}",
        render::fields(
            "  ",
            &[
                ("service", d.service.clone()),
                ("durable", d.durable.clone()),
                ("stream", format!("{} #{}", d.stream, d.stream_sequence)),
                ("subject", d.subject.clone()),
                ("message id", render::or_dash(d.message_id.as_deref())),
                ("type", message_type),
                ("error kind", d.error_kind.as_str().to_owned()),
                ("deliveries", d.deliveries.to_string()),
                ("first failure", render::time_ago(d.first_failure_at, now)),
                ("last failure", render::time_ago(d.last_failure_at, now)),
                ("trace id", render::or_dash(d.trace_id.as_deref())),
                ("replay of", render::or_dash(d.replay_of.as_deref())),
                ("error", d.error.clone()),
            ]
        )
    )?;

    writeln!(out, "\nheaders")?;
    if detail.headers.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for h in &detail.headers {
        writeln!(out, "  {}: {}", h.name, h.value)?;
    }

    writeln!(out, "\nbody")?;
    match &detail.body_error {
        Some(why) => {
            writeln!(out, "  (does not decode: {why})")?;
            writeln!(
                out,
                "  payload, base64: {}",
                render::truncate(&detail.payload_base64, 400)
            )?;
        }
        None => {
            let pretty = serde_json::to_string_pretty(&detail.body)
                .unwrap_or_else(|_| detail.body.to_string());
            for line in pretty.lines() {
                writeln!(out, "  {line}")?;
            }
        }
    }

    writeln!(out, "\nhistory")?;
    if detail.history.is_empty() {
        writeln!(out, "  (no earlier parks)")?;
    } else {
        write!(out, "{}", dead_letter_table(&detail.history))?;
    }
    writeln!(out, "\naudit")?;
    if detail.audit.is_empty() {
        writeln!(out, "  (no ops actions)")?;
    } else {
        write!(out, "{}", crate::audit::table(&detail.audit))?;
    }
    Ok(())
}

async fn groups(client: &mut Client, args: GroupsArgs, json: bool, io: &mut Io<'_>) -> Result<()> {
    let mut query = Vec::new();
    if let Some(durable) = args.durable {
        query.push(("durable".to_owned(), durable));
    }
    if let Some(status) = args.status {
        query.push((
            "status".to_owned(),
            status.into_status().as_str().to_owned(),
        ));
    }
    let reply: Reply<FailureGroupList> = client
        .get(&["v1", "admin", "dlq", "groups"], &query)
        .await?;
    if json {
        return print_json(io, &reply.raw);
    }
    if reply.value.items.is_empty() {
        writeln!(io.out, "no failure groups")?;
        return Ok(());
    }
    let mut table = render::table([
        "DURABLE",
        "FINGERPRINT",
        "KIND",
        "PARKED/TOTAL",
        "FIRST SEEN",
        "LAST SEEN",
        "SAMPLE ERROR",
    ]);
    for g in &reply.value.items {
        table.add_row(vec![
            g.durable.clone(),
            g.fingerprint.clone(),
            g.error_kind.as_str().to_owned(),
            format!("{}/{}", g.parked, g.total),
            render::time(g.first_seen),
            render::time(g.last_seen),
            render::truncate(&g.sample_error, 60),
        ]);
    }
    write!(io.out, "{}", render::table_text(&table))?;
    Ok(())
}

/// Exactly one of ids, group, or a non-empty filter: an empty filter would select every
/// dead letter, which is never what a typo meant.
pub fn selection(args: &SelectionArgs) -> Result<Selection> {
    if !args.ids.is_empty() {
        return Ok(Selection {
            ids: args.ids.clone(),
            ..Selection::default()
        });
    }
    if let Some(group) = &args.group {
        let parsed = group
            .rsplit_once(':')
            .filter(|(d, f)| !d.trim().is_empty() && !f.trim().is_empty());
        let Some((durable, fingerprint)) = parsed else {
            return Err(Error::Usage(format!(
                "--group `{group}`: expected DURABLE:FINGERPRINT (see `meshctl dlq groups`)"
            )));
        };
        return Ok(Selection {
            group: Some(GroupKey {
                durable: durable.trim().to_owned(),
                fingerprint: fingerprint.trim().to_owned(),
            }),
            ..Selection::default()
        });
    }
    let filter = args.filter.to_filter();
    if filter == DeadLetterFilter::default() {
        return Err(Error::Usage(
            "select dead letters with --id, --group, or filter flags such as --durable \
             (an empty selection would match everything)"
                .to_owned(),
        ));
    }
    Ok(Selection {
        filter: Some(filter),
        ..Selection::default()
    })
}

fn bulk_request(args: &BulkArgs) -> Result<BulkRequest> {
    Ok(BulkRequest {
        selection: selection(&args.selection)?,
        dry_run: args.dry_run,
        reason: reason(&args.reason)?,
    })
}

/// A replay, discard or purge: start it, then (unless told not to) follow its job.
struct Bulk {
    kind: JobKind,
    /// `replay`, `discard`, `purge`: the endpoint and the verb.
    action: &'static str,
    wait: bool,
}

impl Bulk {
    async fn run<B: serde::Serialize>(
        &self,
        client: &mut Client,
        request: &B,
        json: bool,
        io: &mut Io<'_>,
    ) -> Result<()> {
        let reply: Reply<BulkResult> = client
            .post(&["v1", "admin", "dlq", self.action], request)
            .await?;
        let result = reply.value;
        if result.dry_run {
            if json {
                return print_json(io, &reply.raw);
            }
            writeln!(
                io.out,
                "dry run: {} dead letters match (only parked ones would be {}); nothing changed",
                result.matched,
                past(self.kind)
            )?;
            return Ok(());
        }
        let Some(job) = result.job.clone() else {
            if json {
                return print_json(io, &reply.raw);
            }
            writeln!(
                io.out,
                "nothing to {}: {} dead letters match",
                self.action, result.matched
            )?;
            return Ok(());
        };
        if !self.wait {
            if json {
                return print_json(io, &reply.raw);
            }
            writeln!(
                io.out,
                "started {} job {} for {} dead letters; follow it with `meshctl dlq job {}`",
                self.action, job.id, job.total, job.id
            )?;
            return Ok(());
        }
        let (job, elapsed) = wait_for(client, job, io).await?;
        if json {
            let value = serde_json::to_value(BulkResult {
                job: Some(job.clone()),
                ..result
            })
            .map_err(|e| Error::Other(format!("cannot print JSON: {e}")))?;
            print_json(io, &value)?;
        } else {
            writeln!(io.out, "{}", summary(&job, elapsed))?;
        }
        outcome(&job)
    }
}

fn past(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Replay => "replayed",
        JobKind::Discard => "discarded",
        JobKind::Purge => "purged",
    }
}

fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Replay => "replay",
        JobKind::Discard => "discard",
        JobKind::Purge => "purge",
    }
}

fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Running => "running",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
    }
}

/// `replayed N, skipped M, failed K in X s`.
pub fn summary(job: &Job, elapsed: Duration) -> String {
    // The server's own clock is the better measure when it has finished.
    let secs = job
        .finished_at
        .map(|f| f.duration_since(job.created_at).as_secs_f64())
        .filter(|s| *s >= 0.0)
        .unwrap_or(elapsed.as_secs_f64());
    format!(
        "{} {}, skipped {}, failed {} in {secs:.1} s",
        past(job.kind),
        job.done,
        job.skipped,
        job.failed
    )
}

/// A failed job, or one that failed members, is a failed command.
fn outcome(job: &Job) -> Result<()> {
    if job.status == JobStatus::Failed {
        return Err(Error::Other(format!(
            "{} job {} failed: {}",
            kind_name(job.kind),
            job.id,
            job.error.as_deref().unwrap_or("no reason given")
        )));
    }
    if job.failed > 0 {
        return Err(Error::Other(format!(
            "{} of {} dead letters could not be {}; see `meshctl dlq job {}`",
            job.failed,
            job.total,
            past(job.kind),
            job.id
        )));
    }
    Ok(())
}

/// Polls the job until it is no longer running, with a progress bar on a terminal.
async fn wait_for(client: &mut Client, mut job: Job, io: &mut Io<'_>) -> Result<(Job, Duration)> {
    let started = Instant::now();
    let bar = if io.progress {
        ProgressBar::with_draw_target(Some(job.total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(kind_name(job.kind));
    let id = job.id.to_string();
    // Without a terminal (CI, a pipe, a log file) progress is a plain line per second.
    let mut last_line: Option<(Instant, u64)> = None;
    loop {
        let position = job.done + job.skipped + job.failed;
        bar.set_length(job.total);
        bar.set_position(position);
        bar.set_message(format!("(skipped {}, failed {})", job.skipped, job.failed));
        let due = last_line
            .is_none_or(|(at, pos)| pos != position && at.elapsed() >= Duration::from_secs(1));
        if !io.progress && due && job.status == JobStatus::Running {
            let _ = writeln!(
                io.err,
                "{}: {position}/{} (skipped {}, failed {})",
                kind_name(job.kind),
                job.total,
                job.skipped,
                job.failed
            );
            last_line = Some((Instant::now(), position));
        }
        if job.status != JobStatus::Running {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_EVERY) => {}
            _ = tokio::signal::ctrl_c() => {
                bar.abandon();
                return Err(Error::Interrupted(format!(
                    "stopped waiting; job {id} goes on on the server (`meshctl dlq job {id}`)"
                )));
            }
        }
        job = match client
            .get::<Job>(&["v1", "admin", "dlq", "jobs", &id], &[])
            .await
        {
            Ok(reply) => reply.value,
            Err(e) => {
                bar.abandon();
                let _ = writeln!(
                    io.err,
                    "note: job {id} goes on on the server (`meshctl dlq job {id}`)"
                );
                return Err(e);
            }
        };
    }
    bar.finish_and_clear();
    Ok((job, started.elapsed()))
}

async fn edit(client: &mut Client, args: EditArgs, json: bool, io: &mut Io<'_>) -> Result<()> {
    let why = reason(&args.reason)?;
    let id = args.id.to_string();
    let body = match &args.source.file {
        Some(path) => read_json(path, io)?,
        None => edit_in_editor(client, &id).await?,
    };
    let request = EditReplayRequest { body, reason: why };
    let reply: Reply<EditReplayResult> = client
        .post(
            &["v1", "admin", "dlq", "messages", &id, "edit-replay"],
            &request,
        )
        .await?;
    if json {
        return print_json(io, &reply.raw);
    }
    writeln!(
        io.out,
        "replayed the edited copy as message {}",
        reply.value.message_id
    )?;
    if reply.value.diff.trim().is_empty() {
        writeln!(io.out, "(the bodies are identical)")?;
    } else {
        write!(io.out, "{}", reply.value.diff)?;
        if !reply.value.diff.ends_with('\n') {
            writeln!(io.out)?;
        }
    }
    Ok(())
}

/// The new body from a file, or stdin for `-`.
fn read_json(path: &Path, io: &mut Io<'_>) -> Result<Value> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        io.input
            .read_to_string(&mut text)
            .map_err(|e| Error::Other(format!("cannot read the body from stdin: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::Usage(format!("{} is not valid JSON: {e}", path.display())))
}

/// Opens `$VISUAL`/`$EDITOR` on the current body; the edited JSON, if it changed.
async fn edit_in_editor(client: &mut Client, id: &str) -> Result<Value> {
    let detail: DeadLetterDetail = client
        .get(&["v1", "admin", "dlq", "messages", id], &[])
        .await?
        .value;
    if detail.body.is_null() {
        let why = detail
            .body_error
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(Error::Other(format!(
            "the body of {id} does not decode{why}: write a corrected body and use --file"
        )));
    }
    let original = serde_json::to_string_pretty(&detail.body)
        .map_err(|e| Error::Other(format!("cannot format the body: {e}")))?;
    let file = tempfile::Builder::new()
        .prefix(&format!("meshctl-{id}-"))
        .suffix(".json")
        .tempfile()
        .map_err(|e| Error::Other(format!("cannot create a temporary file: {e}")))?;
    std::fs::write(file.path(), format!("{original}\n"))
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", file.path().display())))?;

    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned());
    // Through the shell, as git does, so `EDITOR="code --wait"` works.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("meshctl-editor")
        .arg(file.path())
        .status()
        .map_err(|e| Error::Other(format!("cannot start the editor `{editor}`: {e}")))?;
    if !status.success() {
        return Err(Error::Other(format!(
            "the editor `{editor}` exited with {status}; nothing replayed"
        )));
    }
    let edited = std::fs::read_to_string(file.path())
        .map_err(|e| Error::Other(format!("cannot read {}: {e}", file.path().display())))?;
    match serde_json::from_str::<Value>(&edited) {
        Ok(body) if body == detail.body => Err(Error::Other(
            "the body is unchanged; nothing replayed".to_owned(),
        )),
        Ok(body) => Ok(body),
        Err(e) => {
            // Keep the operator's work: they can fix it and send it with --file.
            let kept = file
                .keep()
                .map(|(_, path)| path.display().to_string())
                .unwrap_or_else(|_| "(lost)".to_owned());
            Err(Error::Usage(format!(
                "the edited body is not valid JSON ({e}); it is kept at {kept}: \
                 fix it and use --file"
            )))
        }
    }
}

async fn jobs(client: &mut Client, json: bool, io: &mut Io<'_>) -> Result<()> {
    let reply: Reply<JobList> = client.get(&["v1", "admin", "dlq", "jobs"], &[]).await?;
    if json {
        return print_json(io, &reply.raw);
    }
    if reply.value.items.is_empty() {
        writeln!(io.out, "no jobs")?;
        return Ok(());
    }
    let mut table = render::table([
        "ID", "KIND", "STATUS", "PROGRESS", "DONE", "SKIPPED", "FAILED", "CREATED", "FINISHED",
        "REASON",
    ]);
    for job in &reply.value.items {
        table.add_row(vec![
            job.id.to_string(),
            kind_name(job.kind).to_owned(),
            status_name(job.status).to_owned(),
            format!("{}/{}", job.done + job.skipped + job.failed, job.total),
            job.done.to_string(),
            job.skipped.to_string(),
            job.failed.to_string(),
            render::time(job.created_at),
            job.finished_at
                .map(render::time)
                .unwrap_or_else(|| "-".into()),
            render::truncate(&job.reason, 40),
        ]);
    }
    write!(io.out, "{}", render::table_text(&table))?;
    Ok(())
}

async fn job(client: &mut Client, id: Uuid, json: bool, io: &mut Io<'_>) -> Result<()> {
    let id = id.to_string();
    let reply: Reply<Job> = client
        .get(&["v1", "admin", "dlq", "jobs", &id], &[])
        .await?;
    if json {
        return print_json(io, &reply.raw);
    }
    let job = reply.value;
    let now = Timestamp::now();
    let rate = match job.rate_per_sec {
        Some(0) => "unlimited".to_owned(),
        Some(n) => format!("{n}/s"),
        None => "-".to_owned(),
    };
    write!(
        io.out,
        "{}",
        render::fields(
            "",
            &[
                ("job", job.id.to_string()),
                ("kind", kind_name(job.kind).to_owned()),
                ("status", status_name(job.status).to_owned()),
                (
                    "progress",
                    format!(
                        "{}/{} (done {}, skipped {}, failed {})",
                        job.done + job.skipped + job.failed,
                        job.total,
                        job.done,
                        job.skipped,
                        job.failed
                    )
                ),
                ("rate", rate),
                ("actor", job.actor.to_string()),
                ("reason", job.reason.clone()),
                ("created", render::time_ago(job.created_at, now)),
                (
                    "finished",
                    job.finished_at
                        .map(|t| render::time_ago(t, now))
                        .unwrap_or_else(|| "-".into())
                ),
                ("error", render::or_dash(job.error.as_deref())),
            ]
        )
    )?;
    Ok(())
}

/// The `DLQ` stream's fill line, shared by `dlq stats` and `status`.
pub fn write_dlq_usage(stats: &HospitalStats, io: &mut Io<'_>) -> Result<()> {
    let max = u64::try_from(stats.dlq_max_bytes)
        .ok()
        .filter(|m| *m > 0)
        .map(|m| HumanBytes(m).to_string())
        .unwrap_or_else(|| "unlimited".to_owned());
    writeln!(
        io.out,
        "\nDLQ stream: {} messages, {} of {max}",
        stats.dlq_messages,
        HumanBytes(stats.dlq_bytes)
    )?;
    Ok(())
}

async fn stats(client: &mut Client, json: bool, io: &mut Io<'_>) -> Result<()> {
    let reply: Reply<HospitalStats> = client.get(&["v1", "admin", "dlq", "stats"], &[]).await?;
    if json {
        return print_json(io, &reply.raw);
    }
    let stats = reply.value;
    let now = Timestamp::now();
    if stats.consumers.is_empty() {
        writeln!(io.out, "no consumers")?;
    } else {
        let mut table = render::table([
            "DURABLE",
            "STREAM",
            "LAG",
            "ACK PENDING",
            "REDELIVERED",
            "PARKED",
            "PAUSED",
        ]);
        for c in &stats.consumers {
            let paused = match (c.paused, c.paused_until) {
                (false, _) => "no".to_owned(),
                (true, Some(until)) => format!("until {}", render::time_ago(until, now)),
                (true, None) => "yes".to_owned(),
            };
            table.add_row(vec![
                c.durable.clone(),
                c.stream.clone(),
                c.pending.to_string(),
                c.ack_pending.to_string(),
                c.redelivered.to_string(),
                c.parked.to_string(),
                paused,
            ]);
        }
        write!(io.out, "{}", render::table_text(&table))?;
    }
    write_dlq_usage(&stats, io)?;
    Ok(())
}

async fn whereabouts(
    client: &mut Client,
    args: WhereArgs,
    json: bool,
    io: &mut Io<'_>,
) -> Result<()> {
    let (key, value) = match (args.message_id, args.trace_id) {
        (Some(id), _) => ("message_id", id),
        (None, Some(trace)) => ("trace_id", trace),
        (None, None) => {
            return Err(Error::Usage(
                "give a MESSAGE_ID or --trace TRACE_ID".to_owned(),
            ));
        }
    };
    let query = vec![(key.to_owned(), value.clone())];
    let reply: Reply<WhereaboutsList> =
        client.get(&["v1", "admin", "dlq", "where"], &query).await?;
    if json {
        return print_json(io, &reply.raw);
    }
    if reply.value.items.is_empty() {
        return Err(Error::NotFound(format!(
            "no message found for {key} {value}"
        )));
    }
    for (i, item) in reply.value.items.iter().enumerate() {
        if i > 0 {
            writeln!(io.out)?;
        }
        writeln!(
            io.out,
            "message {}  {} #{}  {}",
            item.message_id, item.stream, item.stream_sequence, item.subject
        )?;
        let mut table = render::table(["DURABLE", "OUTCOME", "DETAIL"]);
        for c in &item.consumers {
            let outcome = serde_json::to_value(c.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", c.outcome));
            table.add_row(vec![
                c.durable.clone(),
                outcome,
                render::truncate(c.detail.as_deref().unwrap_or("-"), 80),
            ]);
        }
        write!(io.out, "{}", render::table_text(&table))?;
    }
    Ok(())
}
