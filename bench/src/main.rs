//! `cargo run --release -p bench -- [all|baselines|write|read|e2e|connections|hospital] [--quick]`
//!
//! With `BENCH_SERVE=<role>` in its environment the binary is one of the baseline
//! servers instead (the bench starts those itself).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    quiet_harness_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Ok(role) = std::env::var(bench::serve::ROLE_ENV) {
        return runtime.block_on(bench::serve::run(&role));
    }
    let cli = bench::cli::Cli::parse();
    let code = runtime.block_on(bench::run(cli))?;
    drop(runtime);
    std::process::exit(code);
}

/// The integration harness prints every service's log tail when its handle drops, which
/// suits failing tests, not a benchmark that starts dozens of processes: off unless
/// `TEST_LOG` is set (the bench prints the tails itself when a scenario fails).
#[allow(unsafe_code)]
fn quiet_harness_logs() {
    if std::env::var_os("TEST_LOG").is_none() {
        // SAFETY: called first thing in `main`, before the runtime or any other thread
        // exists, so nothing can read the environment concurrently.
        unsafe { std::env::set_var("TEST_LOG", "0") };
    }
}
