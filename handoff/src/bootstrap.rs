//! How a worker reaches its channel: inherited at spawn, or by connecting to a named socket.
//!
//! Three ways, for the three kinds of worker: one the parent spawns, one started apart that knows
//! a path (a container sharing a volume), and one in the same network namespace that knows a name:
//!
//! - **Inherited**: the parent creates a socket pair, the child inherits one end (close-on-exec
//!   cleared for that one descriptor only, in the child, between fork and exec) and finds its
//!   number in [`ENV_FD`]. Nothing to authenticate: only the parent could have given it.
//! - **Path**: the parent listens on a filesystem socket ([`ChannelListener::bind`] with
//!   [`Endpoint::Path`]). The file is created with mode 0600 from the start (the permission is
//!   set on the descriptor before `bind` creates the file), a stale file left by a dead parent is
//!   replaced, a live one is not, a non-socket file is never touched, and the file is removed
//!   when the listener is dropped.
//! - **Abstract**: a Linux abstract name. It has no permissions at all, so the peer's
//!   credentials (`SO_PEERCRED`) are the only protection.
//!
//! For both connect() ways, each side checks the other's credentials ([`PeerCheck`]: the same
//! uid by default) and refuses a mismatch with `PermissionDenied`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::channel::Channel;

/// Environment variable naming an inherited channel descriptor (a decimal number).
pub const ENV_FD: &str = "BATON_CHANNEL_FD";
/// Environment variable naming a channel socket path to connect to.
pub const ENV_PATH: &str = "BATON_CHANNEL_PATH";
/// Environment variable naming a Linux abstract socket name to connect to (without the
/// leading NUL).
pub const ENV_ABSTRACT: &str = "BATON_CHANNEL_ABSTRACT";

/// Whose connections to accept on a named channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PeerCheck {
    /// The peer runs under the same user id as this process (the default).
    #[default]
    SameUid,
    /// The peer runs under this user id.
    Uid(u32),
    /// Anyone who can reach the socket. Only sensible for a path whose directory is guarded.
    Any,
}

impl PeerCheck {
    /// Checks the credentials of the process at the other end of `socket`.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` naming the peer's uid and pid when it does not pass; the system error
    /// when the credentials cannot be read.
    pub fn verify(self, socket: BorrowedFd<'_>) -> io::Result<()> {
        let expected = match self {
            PeerCheck::Any => return Ok(()),
            PeerCheck::SameUid => rustix::process::geteuid().as_raw(),
            PeerCheck::Uid(uid) => uid,
        };
        let cred = rustix::net::sockopt::socket_peercred(socket)?;
        if cred.uid.as_raw() == expected {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "channel peer (pid {}) runs as uid {}, expected uid {expected}",
                    cred.pid.as_raw_nonzero(),
                    cred.uid.as_raw()
                ),
            ))
        }
    }
}

/// A named place for a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract name (no file; no permissions).
    Abstract(Vec<u8>),
}

impl Endpoint {
    fn address(&self) -> io::Result<SocketAddrUnix> {
        Ok(match self {
            Endpoint::Path(p) => SocketAddrUnix::new(p.as_path())?,
            Endpoint::Abstract(name) => SocketAddrUnix::new_abstract_name(name)?,
        })
    }
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// Connects to a parent's named channel and checks that the parent passes `check`.
///
/// # Errors
///
/// The system error (`ConnectionRefused`, `NotFound`, ...) or `PermissionDenied` from the
/// credential check.
pub fn connect(endpoint: &Endpoint, check: PeerCheck) -> io::Result<Channel> {
    let fd = seqpacket_socket()?;
    let addr = endpoint.address()?;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    check.verify(fd.as_fd())?;
    Channel::from_fd(fd)
}

/// A named socket on which a parent accepts worker channels.
#[derive(Debug)]
pub struct ChannelListener {
    fd: OwnedFd,
    /// The socket file to remove on drop.
    path: Option<PathBuf>,
    check: PeerCheck,
}

impl AsFd for ChannelListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl ChannelListener {
    /// Binds and listens (non-blocking, close-on-exec).
    ///
    /// # Errors
    ///
    /// `AddrInUse` when a live socket is already there; `AlreadyExists` when the path is a file
    /// that is not a socket (it is left alone); other system errors.
    pub fn bind(endpoint: &Endpoint, check: PeerCheck) -> io::Result<ChannelListener> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        let path = match endpoint {
            Endpoint::Path(p) => {
                remove_if_stale(p)?;
                // Permissions apply from the moment the file exists: set them on the socket
                // first, so there is no window in which another user could connect.
                rustix::fs::fchmod(&fd, rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR)?;
                Some(p.clone())
            }
            Endpoint::Abstract(_) => None,
        };
        rustix::net::bind(&fd, &endpoint.address()?)?;
        rustix::net::listen(&fd, 128)?;
        Ok(ChannelListener { fd, path, check })
    }

    /// Accepts one waiting worker and checks its credentials. A refused peer is closed (and
    /// not logged: the caller does that, rate-limited).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nobody is waiting; `PermissionDenied` for a peer that fails the check
    /// (its connection is already closed); other system errors.
    pub fn accept(&self) -> io::Result<Channel> {
        let fd = loop {
            match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(fd) => break fd,
                Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // Not logged here: anyone who can reach an abstract name can make this fail at will;
        // the caller logs it rate-limited.
        self.check.verify(fd.as_fd())?;
        Channel::from_fd(fd)
    }

    /// The socket file, for a path endpoint.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl Drop for ChannelListener {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket file nobody listens on any more; refuses to touch anything else.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; not replacing it", path.display()),
        ));
    }
    let probe = seqpacket_socket()?;
    match rustix::net::connect(&probe, &SocketAddrUnix::new(path)?) {
        Ok(()) => {
            Err(io::Error::new(io::ErrorKind::AddrInUse, format!("a live socket is listening at {}", path.display())))
        }
        // Refused: nobody listens. (EPROTOTYPE would mean a live listener of another kind.)
        Err(Errno::CONNREFUSED) => {
            log::info!("handoff: removing stale channel socket {}", path.display());
            std::fs::remove_file(path)
        }
        Err(e) => Err(e.into()),
    }
}

/// How the environment says to reach the channel, if it says anything.
#[derive(Debug, PartialEq, Eq)]
pub enum FromEnv {
    /// An inherited descriptor number.
    Inherited(RawFd),
    /// A named endpoint to connect to.
    Connect(Endpoint),
}

/// Reads [`ENV_FD`], [`ENV_PATH`] or [`ENV_ABSTRACT`] (in that order) without changing
/// anything. `None` means this process was not started as a worker.
pub fn from_env() -> Option<FromEnv> {
    if let Some(v) = std::env::var_os(ENV_FD) {
        return Some(FromEnv::Inherited(parse_fd(&v).unwrap_or(-1)));
    }
    if let Some(p) = std::env::var_os(ENV_PATH) {
        return Some(FromEnv::Connect(Endpoint::Path(PathBuf::from(p))));
    }
    std::env::var_os(ENV_ABSTRACT).map(|n| {
        use std::os::unix::ffi::OsStrExt;
        FromEnv::Connect(Endpoint::Abstract(n.as_bytes().to_vec()))
    })
}

fn parse_fd(v: &OsStr) -> Option<RawFd> {
    v.to_str()?.parse().ok().filter(|fd: &RawFd| *fd >= 0)
}

/// Takes ownership of the inherited channel descriptor `raw`, after checking that it is an
/// open SEQPACKET Unix socket, and sets close-on-exec on it again (so the application's own
/// children do not inherit it).
///
/// # Errors
///
/// `InvalidInput` when the number is not an open SEQPACKET Unix socket; nothing is closed then.
///
/// # Safety
///
/// `raw` must not be owned by anything else in this process. The number in [`ENV_FD`] is
/// meant for exactly this call: call it once, at start-up.
pub unsafe fn inherited(raw: RawFd) -> io::Result<Channel> {
    if raw < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{ENV_FD} is not a descriptor number")));
    }
    if !is_open(raw) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {raw} from {ENV_FD} is not open")));
    }
    // SAFETY: open (just checked), and only borrowed for the checks below.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let valid = rustix::net::sockopt::socket_type(borrowed).ok() == Some(SocketType::SEQPACKET)
        && rustix::net::sockopt::socket_domain(borrowed).ok() == Some(AddressFamily::UNIX);
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} from {ENV_FD} is not an AF_UNIX SOCK_SEQPACKET socket"),
        ));
    }
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)?;
    // SAFETY: checked open above; the caller guarantees nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    debug_assert_eq!(fd.as_raw_fd(), raw);
    Channel::from_fd(fd)
}

/// Whether descriptor number `raw` is open in this process, asked of `/proc` so that no
/// `BorrowedFd` is ever made for a number that is not.
pub(crate) fn is_open(raw: RawFd) -> bool {
    raw >= 0 && std::fs::symlink_metadata(format!("/proc/self/fd/{raw}")).is_ok()
}

static INHERITED_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The channel the environment names, if any: the inherited descriptor ([`ENV_FD`], taken at
/// most once per process), or a connection to [`ENV_PATH`] / [`ENV_ABSTRACT`] whose parent
/// must pass `check`. `None` when this process was not started as a worker.
///
/// The variables are removed from the environment, so the application's own children do not
/// take themselves for workers. Call it first thing in `main`, before starting threads
/// (changing the environment races with threads reading it).
///
/// # Errors
///
/// `InvalidInput` for a bad or already-taken inherited descriptor; connect and credential
/// errors for the named ways.
pub fn channel_from_env(check: PeerCheck) -> Option<io::Result<Channel>> {
    let found = from_env()?;
    for var in [ENV_FD, ENV_PATH, ENV_ABSTRACT] {
        std::env::remove_var(var);
    }
    Some(match found {
        FromEnv::Inherited(raw) => {
            if INHERITED_TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "the inherited channel was already taken"))
            } else {
                // SAFETY: the number comes from the parent through ENV_FD, which exists for this
                // call only, and the flag above makes this the only owner in the process.
                unsafe { inherited(raw) }
            }
        }
        FromEnv::Connect(endpoint) => connect(&endpoint, check),
    })
}
