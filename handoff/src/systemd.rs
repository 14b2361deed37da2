//! systemd integration: socket activation (listening sockets passed in by the service
//! manager) and readiness notification (`sd_notify`).
//!
//! # Socket activation
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
//!
//! # Notification
//!
//! A `Type=notify` service tells the manager how it is doing by sending datagrams of
//! newline-separated `KEY=VALUE` assignments to the `AF_UNIX` socket named in `NOTIFY_SOCKET`
//! (a path, or an abstract name written `@name`): `READY=1` once it serves, `RELOADING=1`
//! (with `MONOTONIC_USEC=`) while it reloads, `STOPPING=1` when it begins to stop, `STATUS=` a
//! line for `systemctl status`, `MAINPID=` when another process becomes the service's main
//! process. [`Notifier`] sends them ([`notify`] through one read from the environment, kept
//! for the life of the process); with no `NOTIFY_SOCKET` it does nothing, at the cost of a
//! branch.
//!
//! Each message is one datagram on a fresh `SOCK_DGRAM | SOCK_CLOEXEC` socket (what libsystemd
//! does: no descriptor stays open, none can leak into a child), sent with a one-second timeout
//! so a wedged manager cannot stall the caller for longer.
//!
//! Written here in a few dozen lines over rustix, rather than with the `sd-notify` crate: rustix
//! is already a dependency and covers all of it (sockets, abstract addresses, `CLOCK_MONOTONIC`),
//! the protocol is one `sendto`, and owning it let [`Notifier::new`] take an explicit address
//! (tests point it at a socket they bind, with no change to the process environment) and
//! strip newlines from a status line, which would otherwise end the assignment and start
//! another.
//!
//! `NOTIFY_SOCKET` stays in this process's environment (a successor started for a takeover
//! must inherit it: it becomes the service's main process and speaks for the service), but
//! [`WorkerCommand`](crate::WorkerCommand) removes it from workers' environments: a worker is
//! not the service and must not talk to the manager as if it were.
//!
//! Under systemd, a parent that hands over to a successor (see [`crate::takeover`]) makes the
//! upgrade visible to the manager with `NotifyAccess=all` in the unit (any process of the unit
//! may notify, not only the main one): the old parent sends `RELOADING=1` before starting the
//! successor; the successor, once it serves, sends `MAINPID=<its pid>` and `READY=1`; if the
//! successor dies on probation, the old parent, back to serving
//! ([`Parent::rolled_back`](crate::Parent::rolled_back)), sends `MAINPID=<its own pid>` and
//! `READY=1`. The main process then always is the one serving, so `KillMode=process` is not
//! needed. A parent that was taken over sends nothing more: the manager applies every message
//! to the whole unit, whoever sends it, so a `STOPPING=1` from a predecessor going away would
//! stop its successor too.
//!
//! One limit: the successor becomes the main process when it serves, which is when its
//! probation begins. A manager that watches its main process's exit directly (not only through
//! the cgroup emptying) may take a successor's death on probation for the service's and stop
//! the unit before the old parent's `MAINPID=` arrives. The tests here use a fake manager and
//! cannot tell; a real systemd was not available to check.

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

/// The variable the service manager names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// One assignment in a notification message (see `sd_notify(3)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State<'a> {
    /// `READY=1`: start-up (or a reload) is finished; the service serves.
    Ready,
    /// `RELOADING=1`: the service reloads (here: an upgrade by takeover); send
    /// [`State::MonotonicUsec`] with it, and [`State::Ready`] when done.
    Reloading,
    /// `STOPPING=1`: the service begins to stop.
    Stopping,
    /// `MONOTONIC_USEC=`: `CLOCK_MONOTONIC` in microseconds, when the reload began
    /// ([`State::monotonic_now`]); `Type=notify-reload` requires it with `RELOADING=1`.
    MonotonicUsec(u64),
    /// `MAINPID=`: this process id is the service's main process from now on.
    MainPid(u32),
    /// `STATUS=`: one human-readable line for `systemctl status` (newlines become spaces).
    Status(&'a str),
    /// Any other assignment, `KEY=VALUE`, sent as given (newlines become spaces).
    Other(&'a str),
}

impl State<'_> {
    /// `MONOTONIC_USEC=` with the current time.
    pub fn monotonic_now() -> State<'static> {
        State::MonotonicUsec(monotonic_usec())
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock `MONOTONIC_USEC=` is read on.
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000).saturating_add(t.tv_nsec as u64 / 1_000)
}

/// The text of one message: one assignment per line.
fn message(states: &[State<'_>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let one_line = |s: &str| s.replace(['\n', '\r'], " ");
    for state in states {
        let _ = match state {
            State::Ready => writeln!(out, "READY=1"),
            State::Reloading => writeln!(out, "RELOADING=1"),
            State::Stopping => writeln!(out, "STOPPING=1"),
            State::MonotonicUsec(t) => writeln!(out, "MONOTONIC_USEC={t}"),
            State::MainPid(pid) => writeln!(out, "MAINPID={pid}"),
            State::Status(s) => writeln!(out, "STATUS={}", one_line(s)),
            State::Other(s) => writeln!(out, "{}", one_line(s)),
        };
    }
    out
}

/// Where `address` (a `NOTIFY_SOCKET` value) points: an absolute path, or `@name` for an
/// abstract name.
fn parse_address(address: &str) -> io::Result<rustix::net::SocketAddrUnix> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("NOTIFY_SOCKET {address:?}: {why}"));
    if let Some(name) = address.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad("an empty abstract name"));
        }
        rustix::net::SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(|_| bad("name too long"))
    } else if address.starts_with('/') {
        rustix::net::SocketAddrUnix::new(address).map_err(|_| bad("path too long"))
    } else {
        // (systemd also knows `vsock:`, for a manager outside a virtual machine.)
        Err(bad("neither an absolute path nor an @abstract name"))
    }
}

/// Sends notification messages to the service manager; does nothing when there is none.
///
/// ```no_run
/// use baton_handoff::systemd::{Notifier, State};
/// let notifier = Notifier::from_env();
/// let _ = notifier.notify(&[State::Ready, State::Status("serving")]);
/// ```
#[derive(Clone, Debug)]
pub struct Notifier {
    target: Option<rustix::net::SocketAddrUnix>,
}

impl Notifier {
    /// The manager named in `NOTIFY_SOCKET`; a notifier that does nothing when it is unset or
    /// empty, or (with a warning logged) names no address this can reach.
    pub fn from_env() -> Notifier {
        match std::env::var_os(NOTIFY_SOCKET) {
            None => Notifier::disabled(),
            Some(v) if v.is_empty() => Notifier::disabled(),
            Some(v) => match v.to_str().map_or_else(
                || Err(io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")),
                Notifier::new,
            ) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("systemd: not notifying: {e}");
                    Notifier::disabled()
                }
            },
        }
    }

    /// A notifier for the socket at `address`: an absolute path, or `@name` for an abstract
    /// name (the forms `NOTIFY_SOCKET` takes).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for anything else, or a name too long for a socket address.
    pub fn new(address: &str) -> io::Result<Notifier> {
        Ok(Notifier { target: Some(parse_address(address)?) })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// There is a manager to notify.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `states` as one message (one datagram); nothing when disabled or `states` is
    /// empty.
    ///
    /// # Errors
    ///
    /// From `socket` and `sendto`: the socket is gone (`ENOENT`, `ECONNREFUSED`), the manager
    /// did not make room within a second (`EAGAIN`), and the like.
    pub fn notify(&self, states: &[State<'_>]) -> io::Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        if states.is_empty() {
            return Ok(());
        }
        use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
        let text = message(states);
        let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Send,
            Some(std::time::Duration::from_secs(1)),
        )?;
        let sent = rustix::net::sendto(&fd, text.as_bytes(), SendFlags::NOSIGNAL, target)?;
        if sent != text.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "notification message cut short"));
        }
        Ok(())
    }
}

/// Sends `states` to the manager named in `NOTIFY_SOCKET` when this process first called
/// [`notify`] (read once: [`Notifier::from_env`]); does nothing when there is none.
///
/// # Errors
///
/// As [`Notifier::notify`].
pub fn notify(states: &[State<'_>]) -> io::Result<()> {
    static NOTIFIER: std::sync::OnceLock<Notifier> = std::sync::OnceLock::new();
    NOTIFIER.get_or_init(Notifier::from_env).notify(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn messages_are_one_assignment_a_line() {
        assert_eq!(message(&[State::Ready]), "READY=1\n");
        assert_eq!(
            message(&[State::Reloading, State::MonotonicUsec(12_345_678)]),
            "RELOADING=1\nMONOTONIC_USEC=12345678\n"
        );
        assert_eq!(message(&[State::MainPid(4711), State::Ready]), "MAINPID=4711\nREADY=1\n");
        assert_eq!(message(&[State::Stopping]), "STOPPING=1\n");
        assert_eq!(message(&[State::Other("WATCHDOG=1")]), "WATCHDOG=1\n");
        assert_eq!(message(&[]), "");
    }

    #[test]
    fn a_status_stays_one_line() {
        // A newline would end STATUS= and let the rest pass for another assignment.
        assert_eq!(message(&[State::Status("ok\nSTOPPING=1\r")]), "STATUS=ok STOPPING=1 \n");
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let path = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(path.path().unwrap().to_bytes(), b"/run/systemd/notify");
        let name = parse_address("@baton/notify").unwrap();
        assert_eq!(name.abstract_name(), Some(&b"baton/notify"[..]));
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            let err = parse_address(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(parse_address(&format!("/{}", "x".repeat(200))).is_err());
    }

    #[test]
    fn monotonic_usec_follows_the_monotonic_clock() {
        let a = monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_usec();
        assert!(b >= a + 5_000 && b < a + 5_000_000, "{a} then {b}");
    }

    fn recv(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn one_datagram_reaches_a_path() {
        let dir = std::env::temp_dir().join(format!("baton-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        assert!(notifier.is_enabled());
        notifier.notify(&[State::Ready, State::Status("3 workers")]).unwrap();
        assert_eq!(recv(&socket), "READY=1\nSTATUS=3 workers\n");
        // Nothing to say: nothing sent.
        notifier.notify(&[]).unwrap();
        notifier.notify(&[State::Stopping]).unwrap();
        assert_eq!(recv(&socket), "STOPPING=1\n");
        drop(socket);
        std::fs::remove_dir_all(&dir).unwrap();
        // The manager gone: an error, not a hang.
        assert!(notifier.notify(&[State::Ready]).is_err());
    }

    #[test]
    fn one_datagram_reaches_an_abstract_name() {
        let name = format!("baton-notify-unit-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::new(&format!("@{name}")).unwrap();
        notifier.notify(&[State::Reloading, State::MonotonicUsec(7)]).unwrap();
        assert_eq!(recv(&socket), "RELOADING=1\nMONOTONIC_USEC=7\n");
    }

    #[test]
    fn a_disabled_notifier_does_nothing() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.notify(&[State::Ready]).unwrap();
    }
}
