//! The few POSIX calls the runner needs: signals to children, a Ctrl-C/SIGTERM flag and
//! the effective user id. The only `unsafe` in xtask lives here, each call a plain libc
//! wrapper with no pointers handed over.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use libc::{SIGKILL, SIGTERM};

/// How many SIGINT/SIGTERM this process received since `install_stop_handler`.
static STOP_REQUESTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_REQUESTS.fetch_add(1, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to a counter instead of the default "die now", so the runner
/// can stop its children in order.
pub fn install_stop_handler() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Number of stop signals received so far (0 = keep running; 2+ = the user insists).
pub fn stop_requests() -> usize {
    STOP_REQUESTS.load(Ordering::SeqCst)
}

/// Send `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when running as root (apt-get may be used then).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and takes no arguments.
    unsafe { libc::geteuid() == 0 }
}
