//! Worker processes: how the parent starts one, with its channel end inherited.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::bootstrap::{ENV_ABSTRACT, ENV_FD, ENV_PATH};
use crate::channel::Channel;

/// Environment variable a spawned worker finds its slot number in (for its logs).
pub const ENV_SLOT: &str = "BATON_WORKER_SLOT";

/// Variables a worker must not inherit from its parent: systemd's socket-activation variables
/// describe the parent's descriptors, not the worker's, and `NOTIFY_SOCKET` is for the service's
/// own processes to report on the service (see [`crate::systemd`]), which a worker is not.
const NOT_INHERITED: [&str; 5] =
    ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", crate::systemd::NOTIFY_SOCKET, ENV_PATH];

/// The program the parent runs as a worker.
///
/// The usual choice is [`WorkerCommand::current_exe`]: the same binary, which sees
/// [`ENV_FD`](crate::bootstrap::ENV_FD) in its environment and takes the worker role
/// ([`crate::channel_from_env`] returns its channel).
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl WorkerCommand {
    /// Runs `program` (looked up in `PATH` when it has no slash).
    pub fn new(program: impl Into<PathBuf>) -> WorkerCommand {
        WorkerCommand { program: program.into(), args: Vec::new(), env: Vec::new() }
    }

    /// Re-executes the current binary with the current arguments.
    ///
    /// # Errors
    ///
    /// When the path of the running executable cannot be read.
    pub fn current_exe() -> io::Result<WorkerCommand> {
        let mut cmd = WorkerCommand::new(std::env::current_exe()?);
        cmd.args = std::env::args_os().skip(1).collect();
        Ok(cmd)
    }

    /// Replaces the arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> WorkerCommand {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an environment variable for the worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> WorkerCommand {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts a worker for `slot`: a new channel pair, the worker's end inherited as
    /// [`ENV_FD`], the parent's end returned with the child.
    pub(crate) fn spawn(&self, slot: usize) -> io::Result<(Channel, Child)> {
        let (ours, theirs) = Channel::pair()?;
        let raw = theirs.as_fd().as_raw_fd();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .env(ENV_FD, raw.to_string())
            .env(ENV_SLOT, slot.to_string())
            .env_remove(ENV_ABSTRACT);
        for var in NOT_INHERITED {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; it makes one `fcntl` on a descriptor number that
        // is open in the child (inherited from the parent's table) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // The pair is created close-on-exec so no other child ever inherits it; clear
                // the flag on this one descriptor, in this one child only.
                let fd = BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // The worker's end now lives in the worker; our copy must go, or the parent would never
        // see end-of-file when the worker dies.
        drop(theirs);
        Ok((ours, child))
    }
}

/// The process at the other end of a connected Unix socket (`SO_PEERCRED`: for a socket pair,
/// the process that created it), as a pidfd, which stays that process's however its pid is
/// reused; `None` when either step fails (an old kernel, a peer already gone).
pub(crate) fn peer_pidfd(socket: BorrowedFd<'_>) -> Option<std::os::fd::OwnedFd> {
    let cred = rustix::net::sockopt::socket_peercred(socket).ok()?;
    rustix::process::pidfd_open(cred.pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable), waiting up to `wait`.
pub(crate) fn exited(pidfd: &std::os::fd::OwnedFd, wait: std::time::Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let wait = Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
    rustix::event::poll(&mut fds, Some(&wait)).is_ok_and(|n| n > 0)
}
