//! Command line and the sizes each mode runs with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use integration::Backend;

use crate::load::ClosedLoop;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every baseline and scenario.
    All,
    /// Only the same-run baselines.
    Baselines,
    /// Authenticated `PUT /v1/events/{id}/rsvp`, closed loop.
    Write,
    /// `GET /v1/events/{id}` and `GET /v1/events`, hot and cold.
    Read,
    /// RSVP → attendee mail and organizer SSE event, open loop.
    E2e,
    /// Idle SSE streams on one gateway: RSS per stream and fan-out time.
    Connections,
    /// Dead-letter replay and filtered pages at many parked messages.
    Hospital,
    /// Internal: hold SSE streams for the `connections` scenario (a child process).
    #[value(hide = true)]
    SseClients,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Baselines => "baselines",
            Scenario::Write => "write",
            Scenario::Read => "read",
            Scenario::E2e => "e2e",
            Scenario::Connections => "connections",
            Scenario::Hospital => "hospital",
            Scenario::SseClients => "sse-clients",
        }
    }
}

/// `cargo run --release -p bench -- [SCENARIO] [options]`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks the mesh against baselines measured in the same run, and prints one table"
)]
pub struct Cli {
    /// What to run.
    #[arg(value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Smoke run for CI: debug binaries, tiny sizes; checks the harness, not the figures.
    #[arg(long)]
    pub quick: bool,
    /// Run the services on PostgreSQL (`TEST_DATABASE_URL`) instead of SQLite.
    #[arg(long)]
    pub postgres: bool,
    /// With 2: also measure the write path with a second calendar and gateway replica.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub replicas: u8,
    /// Where to write the JSON results (besides bench/results/latest.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory of the mesh-* binaries (default target/release, or target/debug with --quick).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Closed-loop concurrency (default 64; 8 with --quick).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds of each closed-loop measured window (default 10; 3 with --quick).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Offered RSVPs per second of the end-to-end run (default 2000; 50 with --quick).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Idle SSE clients on one gateway (default 19000; 100 with --quick).
    #[arg(long)]
    pub sse_clients: Option<usize>,
    /// Dead letters parked for the hospital scenario (default 100000; 1000 with --quick).
    #[arg(long)]
    pub parked: Option<usize>,

    // ---- sse-clients (internal) ----
    /// sse-clients: `host:port` to connect to.
    #[arg(long, hide = true)]
    pub addr: Option<String>,
    /// sse-clients: request path.
    #[arg(long, hide = true, default_value = "/v1/notifications/stream")]
    pub path: String,
    /// sse-clients: file with one bearer token per line (one stream each).
    #[arg(long, hide = true)]
    pub tokens: Option<PathBuf>,
    /// sse-clients: streams being opened at once.
    #[arg(long, hide = true, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// Every size and duration of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub backend: Backend,
    pub replicas: usize,
    pub bin_dir: PathBuf,
    pub out: Option<PathBuf>,
    /// Closed loops (baselines, write, read).
    pub closed: ClosedLoop,
    /// Users (minted tokens) of the write and read paths.
    pub users: usize,
    /// Events the write path spreads over.
    pub write_events: usize,
    /// Events read once each by the cold read.
    pub cold_events: usize,
    /// End to end: offered rate and length of the main run.
    pub e2e_rate: f64,
    pub e2e_duration: Duration,
    /// End to end: registered attendees and organizers.
    pub e2e_users: usize,
    pub e2e_organizers: usize,
    /// End to end: the rates tried for "highest rate with p99 < 100 ms", and each step's length.
    pub ladder: Vec<f64>,
    pub ladder_step: Duration,
    /// How long mails and stream events may take after the last request.
    pub drain: Duration,
    /// Idle SSE clients, and how many per client process.
    pub sse_clients: usize,
    pub sse_per_process: usize,
    /// Hospital: parked messages and page requests measured.
    pub parked: usize,
    pub page_requests: u64,
    /// JetStream baselines: messages published and consumed.
    pub js_messages: u64,
    /// How long bulk set-up (indexing, catching up) may take.
    pub setup_timeout: Duration,
}

impl Settings {
    pub fn from_cli(cli: &Cli) -> Self {
        let quick = cli.quick;
        let pick = |full: u64, small: u64| if quick { small } else { full };
        let measure = Duration::from_secs(cli.duration.unwrap_or(pick(10, 3)));
        Settings {
            quick,
            backend: if cli.postgres {
                Backend::Postgres
            } else {
                Backend::Sqlite
            },
            replicas: usize::from(cli.replicas),
            bin_dir: cli
                .bin_dir
                .clone()
                .unwrap_or_else(|| crate::mesh::default_bin_dir(quick)),
            out: cli.out.clone(),
            closed: ClosedLoop {
                concurrency: cli.concurrency.unwrap_or(if quick { 8 } else { 64 }),
                warmup: if quick {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(2)
                },
                measure,
                max_requests: quick.then_some(300),
            },
            users: if quick { 50 } else { 2000 },
            write_events: if quick { 20 } else { 2000 },
            cold_events: if quick { 100 } else { 10_000 },
            e2e_rate: cli.rate.unwrap_or(if quick { 50.0 } else { 2000.0 }),
            e2e_duration: Duration::from_secs(pick(10, 3)),
            e2e_users: if quick { 20 } else { 500 },
            e2e_organizers: if quick { 2 } else { 20 },
            ladder: if quick {
                vec![20.0, 50.0]
            } else {
                vec![
                    50.0, 100.0, 250.0, 375.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0,
                ]
            },
            ladder_step: Duration::from_secs(pick(5, 2)),
            drain: Duration::from_secs(pick(30, 20)),
            sse_clients: cli.sse_clients.unwrap_or(if quick { 100 } else { 19_000 }),
            sse_per_process: 4000,
            parked: cli.parked.unwrap_or(if quick { 1000 } else { 100_000 }),
            page_requests: pick(200, 20),
            js_messages: pick(200_000, 5_000),
            setup_timeout: Duration::from_secs(pick(900, 90)),
        }
    }
}
