//! `meshctl`, the ops command line of the mesh. It owns nothing but a credentials file:
//! every command is an HTTP call to the gateway's admin API (`/v1/admin/…`, role
//! admin), so it needs no access to NATS or any database, and it can do nothing the API
//! does not allow and audit.
//!
//! Map: [`cli`] declares commands and flags; [`client`] holds the base URL and
//! credentials and refreshes an expired session once; [`auth`], [`dlq`], [`audit`],
//! [`consumer`], [`services`] and [`status`] are the command groups; [`render`] turns answers into tables and times.
//! [`run_with`] is the testable entry: input, output, error stream and terminal-ness
//! are passed in, and it returns the exit code (see [`error::exit`]).

pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod consumer;
pub mod credentials;
pub mod dlq;
pub mod error;
pub mod render;
pub mod services;
pub mod status;

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};

use clap::Parser;
use serde_json::Value;

pub use cli::{Cli, Command};
pub use client::Client;
pub use error::{Error, Result, exit};

/// The streams and terminal facts a command runs with.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// Where `login` reads the password (and `edit --file -` the body).
    pub input: &'a mut dyn BufRead,
    /// Stdin is a terminal: prompt for email and password (without echo).
    pub interactive: bool,
    /// Stderr is a terminal: draw progress bars.
    pub progress: bool,
}

/// Parses the process arguments and runs the command on the real stdin/stdout/stderr.
pub async fn main_entry() -> u8 {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    run_args(std::env::args_os(), &mut stdout.lock(), &mut stderr.lock()).await
}

/// Like [`main_entry`], with the arguments and output streams given.
pub async fn run_args<I, T>(args: I, out: &mut impl Write, err: &mut impl Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => run(cli, out, err).await,
        Err(e) => report_clap_error(&e, out, err),
    }
}

/// Prints help or version to `out` (exit 0), a usage error to `err` (exit 2).
pub fn report_clap_error(e: &clap::Error, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let text = e.render().to_string();
    let code = u8::try_from(e.exit_code()).unwrap_or(exit::USAGE);
    let target: &mut dyn Write = if e.use_stderr() { err } else { out };
    let _ = write!(target, "{text}");
    code
}

/// Runs a parsed command on the process's stdin, with terminal detection.
pub async fn run(cli: Cli, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let progress = std::io::stderr().is_terminal();
    let mut input = stdin.lock();
    let mut io = Io {
        out,
        err,
        input: &mut input,
        interactive,
        progress,
    };
    run_with(cli, &mut io).await
}

/// The testable entry: runs the command and returns its exit code. Errors are printed
/// as `error: …` (plus hints) on `io.err`.
pub async fn run_with(cli: Cli, io: &mut Io<'_>) -> u8 {
    match dispatch(cli, io).await {
        Ok(()) => exit::OK,
        // The reader went away (`meshctl dlq list | head`): nothing left to tell.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OTHER,
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            for hint in e.hints() {
                let _ = writeln!(io.err, "{hint}");
            }
            e.exit_code()
        }
    }
}

async fn dispatch(cli: Cli, io: &mut Io<'_>) -> Result<()> {
    let mut client = Client::open(&cli.global)?;
    let json = cli.global.json;
    match cli.command {
        Command::Login(args) => auth::login(&mut client, args, json, io).await,
        Command::Logout => auth::logout(&mut client, json, io).await,
        Command::Dlq(cmd) => dlq::run(&mut client, cmd, json, io).await,
        Command::Audit(args) => audit::run(&mut client, args, json, io).await,
        Command::Consumer(cmd) => consumer::run(&mut client, cmd, json, io).await,
        Command::Services => services::run(&mut client, json, io).await,
        Command::Status => status::run(&mut client, json, io).await,
    }
}

/// Writes a JSON value pretty-printed, for `--json`.
pub(crate) fn print_json(io: &mut Io<'_>, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Other(format!("cannot print JSON: {e}")))?;
    writeln!(io.out, "{text}")?;
    Ok(())
}

/// `--reason` must say something: it is what the audit log is for.
pub(crate) fn reason(text: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::Usage("--reason must not be empty".to_owned()));
    }
    Ok(text.to_owned())
}
