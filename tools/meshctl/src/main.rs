//! `meshctl`: parse the command line, run it on a single-threaded runtime, exit with
//! the command's code (0 ok, 1 other, 2 usage, 3 auth, 4 not found).

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(runtime.block_on(meshctl::main_entry()))
}
