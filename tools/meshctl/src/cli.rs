//! The command line: every command, flag and environment variable of `meshctl`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use contracts::hospital::{DeadLetterFilter, DeadLetterStatus, ErrorKind};
use jiff::Timestamp;
use uuid::Uuid;

use crate::render;

/// Where `--url` points when neither it, `MESH_URL` nor a login names a gateway.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Operate the mesh: dead letters, replays, consumers and services, through the gateway's admin API",
    long_about = "Operate the mesh: dead letters, replays, consumers and services, through the gateway's \
                  admin API (/v1/admin/…, role admin).\n\nStart with `meshctl login`. Exit codes: \
                  0 ok, 1 other failure, 2 usage, 3 not logged in or not allowed, 4 not found."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Gateway base URL [default: the URL logged in to, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "MESH_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Print the API's JSON answer instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Credentials file [default: $XDG_CONFIG_HOME/meshctl/credentials.json or
    /// ~/.config/meshctl/credentials.json].
    #[arg(long, global = true, env = "MESHCTL_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Access token to use instead of the credentials file (never refreshed). Meant for
    /// the environment; a flag would show in the process list.
    #[arg(
        long,
        global = true,
        env = "MESHCTL_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in and store the tokens in the credentials file (mode 0600).
    Login(LoginArgs),
    /// Revoke the refresh token and delete the credentials file.
    Logout,
    /// The message hospital: dead letters, replays, jobs, consumer stats.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Ops actions taken so far (replays, discards, pauses, …).
    Audit(AuditArgs),
    /// Pause or resume a durable consumer.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// Running service instances: versions, event contracts produced and consumed;
    /// consumer lag.
    Services,
    /// The mesh at a glance: services and instances with versions, consumer lag and
    /// dead letters, outbox backlogs, the DLQ stream, and what needs attention.
    Status,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Account email (prompted for on a terminal when absent).
    #[arg(long, env = "MESHCTL_EMAIL")]
    pub email: Option<String>,
    /// Read the password from the first line of stdin (the default when stdin is not a
    /// terminal). There is deliberately no flag that takes the password itself.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List(ListArgs),
    /// One dead letter: diagnosis, headers, body, history, audit.
    Show { id: Uuid },
    /// Failures grouped by consumer and cause.
    Groups(GroupsArgs),
    /// Re-send parked messages to the consumer that failed them.
    Replay(ReplayArgs),
    /// Mark parked messages discarded (the stored copy stays).
    Discard(BulkArgs),
    /// Discard parked messages and delete their stored copies.
    Purge(BulkArgs),
    /// Replace a dead letter's body and replay the edited copy.
    Edit(EditArgs),
    /// Bulk jobs (replay, discard, purge), newest first.
    Jobs,
    /// One bulk job.
    Job { id: Uuid },
    /// Consumer lag, redeliveries and parked counts; DLQ stream usage.
    Stats,
    /// Where a message went: each consumer's outcome.
    Where(WhereArgs),
}

/// Filters of the dead-letter index, combined with AND.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "filter", multiple = true)]
pub struct FilterArgs {
    /// Durable consumer that failed, e.g. email-calendar.
    #[arg(long)]
    pub durable: Option<String>,
    /// Original subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Message type, e.g. calendar.event_created.
    #[arg(long = "type", value_name = "TYPE")]
    pub message_type: Option<String>,
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Substring of the error text.
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Failure fingerprint (see `dlq groups`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Parked at or after: RFC 3339, or a duration back from now (2h, 30m, 7d).
    #[arg(long, value_name = "TIME", value_parser = render::parse_instant)]
    pub since: Option<Timestamp>,
    /// Parked before: RFC 3339, or a duration back from now.
    #[arg(long, value_name = "TIME", value_parser = render::parse_instant)]
    pub until: Option<Timestamp>,
}

impl FilterArgs {
    pub fn to_filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            durable: self.durable.clone(),
            subject: self.subject.clone(),
            message_type: self.message_type.clone(),
            error_kind: self.kind.map(KindArg::into_kind),
            error: self.error.clone(),
            status: self.status.map(StatusArg::into_status),
            fingerprint: self.fingerprint.clone(),
            from: self.since,
            to: self.until,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Transient,
    Permanent,
}

impl KindArg {
    pub fn into_kind(self) -> ErrorKind {
        match self {
            KindArg::Transient => ErrorKind::Transient,
            KindArg::Permanent => ErrorKind::Permanent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Parked,
    Replayed,
    Discarded,
}

impl StatusArg {
    pub fn into_status(self) -> DeadLetterStatus {
        match self {
            StatusArg::Parked => DeadLetterStatus::Parked,
            StatusArg::Replayed => DeadLetterStatus::Replayed,
            StatusArg::Discarded => DeadLetterStatus::Discarded,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Page size.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start after this cursor (from a previous page).
    #[arg(long, conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Follow `next_cursor` to the last page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GroupsArgs {
    #[arg(long)]
    pub durable: Option<String>,
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
}

/// Which dead letters a bulk action applies to: ids, a group, or filter flags.
#[derive(Debug, Clone, Args)]
pub struct SelectionArgs {
    /// Dead letter ids (repeat the flag or list several).
    #[arg(long = "id", value_name = "ID", num_args = 1.., conflicts_with_all = ["group", "filter"])]
    pub ids: Vec<Uuid>,
    /// A failure group, as DURABLE:FINGERPRINT (see `dlq groups`).
    #[arg(long, value_name = "DURABLE:FINGERPRINT", conflicts_with = "filter")]
    pub group: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Why (recorded in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Count what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replays per second (0 = unlimited) [default: the hospital's].
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,
    /// Start the job and return without waiting for it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BulkArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Why (recorded in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Count what would be affected; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Start the job and return without waiting for it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Clone, Args)]
#[group(id = "source", required = true, multiple = false)]
pub struct EditSource {
    /// The new body as JSON (`-` for stdin).
    #[arg(long, value_name = "BODY.json")]
    pub file: Option<PathBuf>,
    /// Edit the current body in $VISUAL / $EDITOR.
    #[arg(long)]
    pub editor: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    pub id: Uuid,
    #[command(flatten)]
    pub source: EditSource,
    /// Why (recorded in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct WhereArgs {
    /// The message's Mesh-Message-Id.
    pub message_id: Option<String>,
    /// Every message of this trace instead.
    #[arg(long = "trace", value_name = "TRACE_ID")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start after this cursor (from a previous page).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// Stop deliveries to a durable consumer for a while.
    Pause {
        durable: String,
        /// Why (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// How long (30m, 2h, 1d) [default: the hospital's, one hour].
        #[arg(long = "for", value_name = "DURATION", value_parser = render::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Resume deliveries to a paused durable consumer.
    Resume {
        durable: String,
        /// Why (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}
