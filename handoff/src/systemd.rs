//! systemd socket activation: listening sockets passed in by the service manager.
//!
//! systemd (or `systemd-socket-activate`, or any manager speaking the protocol) opens the
//! listening sockets itself, starts the service with them at descriptors 3, 4, ... and says so
//! in three variables: `LISTEN_PID` (the process they are meant for: a child that inherited the
//! environment must not take them), `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (optional,
//! colon-separated names from the socket units' `FileDescriptorName=`).
//!
//! [`listen_fds`] takes them: close-on-exec is set on each at once (they must not leak into
//! worker processes or anything else this process starts), and the three variables are removed
//! so no child mistakes them for its own. [`WorkerCommand`](crate::WorkerCommand) removes them
//! from workers' environments as well. Hand each descriptor to
//! [`Reactor::adopt_listener`](baton_transport::Reactor::adopt_listener) (the parent accepts) or
//! [`Parent::share_listener`](crate::Parent::share_listener) (the workers accept).

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

fn bad_fd(raw: RawFd) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("LISTEN_FDS descriptor {raw} is not open"))
}

/// One socket passed by the service manager.
#[derive(Debug)]
pub struct Activated {
    /// The socket (close-on-exec from the moment it was taken).
    pub fd: OwnedFd,
    /// Its name from `LISTEN_FDNAMES`, when given.
    pub name: Option<String>,
}

static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The sockets systemd passed to this process; empty when there are none for us (no
/// variables, or `LISTEN_PID` names another process). Takes them at most once per process.
///
/// Call it first thing in `main`, before starting threads: it changes the environment.
///
/// # Errors
///
/// `InvalidInput` for malformed variables (the variables are still removed), a second call,
/// or a descriptor that is not open.
pub fn listen_fds() -> io::Result<Vec<Activated>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(count)) = (pid, count) else { return Ok(Vec::new()) };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let pid: u32 = pid.parse().map_err(|_| bad("LISTEN_PID is not a process id"))?;
    if pid != std::process::id() {
        // Meant for another process (we inherited our parent's environment).
        return Ok(Vec::new());
    }
    let count: RawFd = count.parse().map_err(|_| bad("LISTEN_FDS is not a count"))?;
    if !(0..=1024).contains(&count) {
        return Err(bad("LISTEN_FDS out of range"));
    }
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(bad("the activated sockets were already taken"));
    }
    let names: Vec<Option<String>> = match names {
        Some(n) => n.split(':').map(|s| Some(s.to_string())).collect(),
        None => Vec::new(),
    };
    // First pass: every descriptor must be open, and gets close-on-exec at once — all of them,
    // even if one is bad, so none leaks into a process started later.
    let mut bad = None;
    for raw in LISTEN_FDS_START..LISTEN_FDS_START + count {
        if !crate::bootstrap::is_open(raw) {
            bad.get_or_insert(raw);
            continue;
        }
        // SAFETY: open (just checked) and ours for the duration of this call: the service
        // manager passed it to this very process and nothing else here knows the number yet.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        if rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).is_err() {
            bad.get_or_insert(raw);
        }
    }
    if let Some(raw) = bad {
        return Err(bad_fd(raw));
    }
    // Second pass: take ownership.
    Ok((0..count)
        .map(|i| {
            // SAFETY: open (checked above); the service manager passed it to this very process
            // (LISTEN_PID checked) and the `TAKEN` flag makes this the only owner.
            let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START + i) };
            Activated { fd, name: names.get(i as usize).cloned().flatten() }
        })
        .collect())
}
