//! Listeners: accept in bounded batches and post each socket to the owner actor.
//!
//! When the owner's mailbox is full the listener stops accepting (the kernel's backlog holds
//! the rest) until the runtime says there is room again ([`baton_runtime::Recipient::try_send_notify`]).
//! When the process runs out of descriptors, the listener spends a reserved descriptor to accept
//! and close one waiting client at a time (so clients see a closed connection instead of hanging),
//! logs once per episode, counts it, and retries after a short back-off instead of spinning.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::poller::{Event, Registration};
use baton_runtime::{IntoRecipient, Recipient, TrySendError};
use parking_lot::Mutex;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::reactor::{offer, Command, Reactor, Shared, Source};

/// Identifies a listener within its reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u64);

impl ListenerId {
    /// A number unique among this reactor's listeners, connections and watches, never reused.
    pub fn index(self) -> u64 {
        self.0
    }
}

/// An accepted (or adopted) connected socket, not yet bound to a reactor.
#[derive(Debug)]
pub enum Stream {
    /// TCP, IPv4 or IPv6.
    Tcp(TcpStream),
    /// A Unix stream socket.
    Unix(UnixStream),
}

impl AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl From<Stream> for OwnedFd {
    fn from(s: Stream) -> OwnedFd {
        match s {
            Stream::Tcp(s) => s.into(),
            Stream::Unix(s) => s.into(),
        }
    }
}

/// A socket address of either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// IPv4 or IPv6.
    Inet(SocketAddr),
    /// A Unix socket; `None` when unnamed (the usual case for a connecting client).
    Unix(Option<PathBuf>),
}

/// `127.0.0.1:8080`, `[::1]:8080`, `unix:/run/app.sock`, or `unix:(unnamed)`.
impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Unix(Some(p)) => write!(f, "unix:{}", p.display()),
            Address::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

/// The message a listener posts to its owner for every connection it accepts.
#[derive(Debug)]
pub struct Accepted {
    /// The connected socket: non-blocking and close-on-exec.
    pub stream: Stream,
    /// The client's address.
    pub peer: Address,
    /// The address the connection arrived on.
    pub local: Address,
    /// The listener that accepted it.
    pub listener: ListenerId,
}

/// How to bind a listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenOptions {
    /// The kernel's accept queue length (`listen(2)` backlog). Default 1024.
    pub backlog: i32,
    /// `SO_REUSEADDR` (default on, for TCP).
    pub reuse_address: bool,
    /// `SO_REUSEPORT` (default off).
    pub reuse_port: bool,
    /// Most connections accepted per readiness event before yielding to other sources.
    /// Default 64.
    pub batch: usize,
    /// TCP only: hand a connection to `accept` only once its client has sent something, or
    /// after about this long without ([`set_defer_accept`](crate::set_defer_accept),
    /// `TCP_DEFER_ACCEPT`; nginx's `listen ... deferred`). For protocols where the client
    /// speaks first (HTTP): the listener wakes only for connections that have a request to
    /// read, and the first read of each finds it. Never for protocols where the server speaks
    /// first (SMTP, most databases): their clients would wait the whole timeout. Default
    /// `None`, which leaves the socket as it is (an adopted listener keeps what it was given;
    /// `Some` replaces that, and on an adopted socket that refuses the option it is logged and
    /// skipped). Ignored for Unix sockets.
    pub defer_accept: Option<Duration>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { backlog: 1024, reuse_address: true, reuse_port: false, batch: 64, defer_accept: None }
    }
}

enum Socket {
    Tcp(TcpListener),
    /// The path is removed when the listener closes.
    Unix(UnixListener, Option<PathBuf>),
}

impl Socket {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l, _) => l.as_fd(),
        }
    }
}

struct State<M> {
    socket: Option<Socket>,
    /// A connection the owner's full mailbox handed back; delivered first on resume.
    pending: Option<M>,
    paused: bool,
    /// Set while a room notification is outstanding, so at most one is registered.
    waiting_for_room: bool,
    reserve: Option<OwnedFd>,
    in_fd_episode: bool,
    /// Another process listens on the same socket now: closing ours must leave the file.
    keep_path: bool,
    /// Readable while accepting (no `epoll_ctl` per batch); nothing while paused, while the
    /// owner is full and during back-offs, or the kernel would keep reporting waiting clients.
    registration: Registration,
}

struct ListenerSource<M: Send + 'static> {
    id: ListenerId,
    local: Address,
    batch: usize,
    owner: Recipient<M>,
    state: Mutex<State<M>>,
}

const FD_BACKOFF: Duration = Duration::from_millis(50);

fn reserve_fd() -> Option<OwnedFd> {
    rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
        .ok()
}

impl<M: From<Accepted> + Send + 'static> ListenerSource<M> {
    /// Offers `msg` to the owner; false when the listener must stop (mailbox full or closed).
    fn deliver(&self, reactor: &Arc<Shared>, key: usize, state: &mut State<M>, msg: M) -> bool {
        match offer(reactor, key, &self.owner, &mut state.waiting_for_room, msg) {
            Ok(()) => true,
            Err(TrySendError::Full(msg)) => {
                state.pending = Some(msg);
                metrics::counter!("baton_listener_paused_total").increment(1);
                false
            }
            Err(TrySendError::Closed(msg)) => {
                // Nobody will serve it: closing the socket tells the client at once.
                drop(msg);
                log::warn!("listener {:?}: owner actor is gone; closing the listener", self.id);
                reactor.command(Command::Close(key));
                false
            }
        }
    }

    fn accept_batch(&self, reactor: &Arc<Shared>, key: usize, state: &mut State<M>) {
        for _ in 0..self.batch {
            let accepted = {
                let Some(socket) = state.socket.as_ref() else { return };
                // accept4 reports the peer's address itself: one system call less per client.
                rustix::net::acceptfrom_with(socket.fd(), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                    .map(|(fd, peer)| (fd, peer, matches!(socket, Socket::Unix(..))))
            };
            match accepted {
                Ok((fd, peer, is_unix)) => {
                    if state.in_fd_episode {
                        state.in_fd_episode = false;
                        log::info!("listener {:?}: descriptors available again", self.id);
                    }
                    let accepted = self.describe(fd, peer, is_unix);
                    if !self.deliver(reactor, key, state, M::from(accepted)) {
                        self.disarm(reactor, key, state);
                        return;
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
                Err(Errno::MFILE) | Err(Errno::NFILE) | Err(Errno::NOBUFS) | Err(Errno::NOMEM) => {
                    self.disarm(reactor, key, state);
                    self.out_of_descriptors(reactor, key, state);
                    return;
                }
                Err(e) => {
                    log::error!("listener {:?}: accept failed: {e}; backing off", self.id);
                    self.disarm(reactor, key, state);
                    reactor.command(Command::RearmAt(key, Instant::now() + FD_BACKOFF));
                    return;
                }
            }
        }
        self.rearm_now(reactor, key, state);
    }

    fn out_of_descriptors(&self, reactor: &Arc<Shared>, key: usize, state: &mut State<M>) {
        if !state.in_fd_episode {
            state.in_fd_episode = true;
            log::warn!("listener {:?}: out of file descriptors; closing new clients until some free up", self.id);
        }
        metrics::counter!("baton_listener_fd_exhausted_total").increment(1);
        // Spend the reserve to accept and close waiting clients, so they are not left hanging.
        while let Some(reserve) = state.reserve.take() {
            drop(reserve);
            let closed = match state.socket.as_ref() {
                Some(s) => rustix::net::accept_with(s.fd(), SocketFlags::CLOEXEC).is_ok(),
                None => false,
            };
            state.reserve = reserve_fd();
            if !closed {
                break;
            }
            metrics::counter!("baton_listener_refused_total").increment(1);
        }
        reactor.command(Command::RearmAt(key, Instant::now() + FD_BACKOFF));
    }

    fn describe(&self, fd: OwnedFd, peer: Option<rustix::net::SocketAddrAny>, is_unix: bool) -> Accepted {
        if is_unix {
            let stream = UnixStream::from(fd);
            let peer = stream.peer_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
            Accepted {
                stream: Stream::Unix(stream),
                peer: Address::Unix(peer),
                local: self.local.clone(),
                listener: self.id,
            }
        } else {
            let stream = TcpStream::from(fd);
            let peer = match peer.and_then(|a| std::net::SocketAddr::try_from(a).ok()) {
                Some(a) => Address::Inet(a),
                None => stream.peer_addr().map(Address::Inet).unwrap_or(Address::Unix(None)),
            };
            // Bound to one address, the listener's is every connection's: no getsockname.
            let local = match &self.local {
                Address::Inet(a) if !a.ip().is_unspecified() => self.local.clone(),
                _ => stream.local_addr().map(Address::Inet).unwrap_or_else(|_| self.local.clone()),
            };
            Accepted { stream: Stream::Tcp(stream), peer, local, listener: self.id }
        }
    }

    fn rearm_now(&self, reactor: &Arc<Shared>, key: usize, state: &mut State<M>) {
        if !state.paused && state.pending.is_none() {
            self.register(reactor, state, Event::readable(key));
        }
    }

    /// Stops readiness reports until [`Self::rearm_now`].
    fn disarm(&self, reactor: &Arc<Shared>, key: usize, state: &mut State<M>) {
        self.register(reactor, state, Event::none(key));
    }

    fn register(&self, reactor: &Arc<Shared>, state: &mut State<M>, want: Event) {
        let State { socket: Some(socket), registration, .. } = state else { return };
        if let Err(e) = registration.set(&reactor.poller, socket.fd(), want) {
            log::error!("listener {:?}: registration change failed: {e}", self.id);
        }
    }
}

impl<M: From<Accepted> + Send + 'static> Source for ListenerSource<M> {
    fn ready(&self, reactor: &Arc<Shared>, key: usize, _event: Event) {
        let mut state = self.state.lock();
        state.registration.fired();
        if state.paused || state.pending.is_some() {
            self.disarm(reactor, key, &mut state);
            return;
        }
        self.accept_batch(reactor, key, &mut state);
    }

    fn rearm(&self, reactor: &Arc<Shared>, key: usize) {
        let mut state = self.state.lock();
        state.waiting_for_room = false;
        if let Some(msg) = state.pending.take() {
            if !self.deliver(reactor, key, &mut state, msg) {
                return;
            }
        }
        if state.paused || state.socket.is_none() {
            return;
        }
        // Accept what queued while we were paused or backing off, then re-arm.
        self.accept_batch(reactor, key, &mut state);
    }

    fn close(&self, reactor: &Arc<Shared>, key: usize) {
        let mut state = self.state.lock();
        if let Some(socket) = state.socket.take() {
            // Deregister before closing: the poller tracks the open file, not the number.
            if let Err(e) = reactor.poller.delete(socket.fd()) {
                log::error!("listener {:?}: deregister failed: {e}", self.id);
            }
            if let Socket::Unix(_, Some(path)) = &socket {
                if !state.keep_path {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        // A connection the owner's full mailbox handed back is still the owner's: deliver it
        // once there is room. The reactor cannot wait, so a short-lived thread does (this is
        // rare: a close while the owner is flooded).
        if let Some(msg) = state.pending.take() {
            if let Err(baton_runtime::TrySendError::Full(msg)) = self.owner.try_send(msg) {
                let owner = self.owner.clone();
                let id = self.id;
                let spawned = std::thread::Builder::new().name("baton-listener-close".into()).spawn(move || {
                    if owner.send(msg).is_err() {
                        log::error!("listener {id:?}: its owner stopped before taking the last connection");
                    }
                });
                if spawned.is_err() {
                    log::error!("listener {:?}: closed with an accepted connection it could not deliver", self.id);
                }
            }
        }
        state.reserve = None;
        drop(state);
        reactor.remove(key);
    }
}

/// Controls a registered listener. Dropping the handle leaves the listener running.
#[derive(Clone)]
pub struct Listener {
    id: ListenerId,
    key: usize,
    local: Address,
    reactor: Arc<Shared>,
    control: Arc<dyn ListenerControl>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listener({:?}, {:?})", self.id, self.local)
    }
}

trait ListenerControl: Send + Sync {
    fn set_paused(&self, paused: bool);
    fn keep_path(&self);
    fn duplicate(&self) -> io::Result<OwnedFd>;
}

impl<M: Send + 'static> ListenerControl for ListenerSource<M> {
    fn set_paused(&self, paused: bool) {
        self.state.lock().paused = paused;
    }
    fn keep_path(&self) {
        self.state.lock().keep_path = true;
    }
    fn duplicate(&self) -> io::Result<OwnedFd> {
        match self.state.lock().socket.as_ref() {
            Some(socket) => Ok(rustix::io::fcntl_dupfd_cloexec(socket.fd(), 0)?),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "the listener is closed")),
        }
    }
}

impl Listener {
    /// The listener's id, as carried in [`Accepted::listener`].
    pub fn id(&self) -> ListenerId {
        self.id
    }

    /// A second descriptor for the same listening socket (close-on-exec), to pass to another
    /// process (a worker, or a successor taking over). The socket keeps listening here too.
    ///
    /// # Errors
    ///
    /// `NotConnected` once the listener is closed; the system error when no descriptor is left.
    pub fn duplicate(&self) -> io::Result<OwnedFd> {
        self.control.duplicate()
    }

    /// Closing will not remove a Unix listener's socket file: another process (a successor
    /// that took the socket over) listens there now.
    pub fn keep_path_on_close(&self) {
        self.control.keep_path();
    }

    /// The bound address (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> &Address {
        &self.local
    }

    /// Stops accepting; the kernel's backlog holds new clients until [`Listener::resume`].
    pub fn pause(&self) {
        self.control.set_paused(true);
    }

    /// Resumes accepting after [`Listener::pause`].
    pub fn resume(&self) {
        self.control.set_paused(false);
        self.reactor.command(Command::Rearm(self.key));
    }

    /// Deregisters and closes the listening socket (removing a Unix socket's path).
    pub fn close(&self) {
        self.reactor.command(Command::Close(self.key));
    }

    /// [`Listener::close`], returning once the reactor has closed it: every connection it
    /// accepted has then been offered to the owner, so a message the owner receives after
    /// this returns comes after all of them. Waits at most a second (a stopped reactor).
    pub fn close_and_wait(&self) {
        if self.reactor.on_reactor_thread() {
            // An actor on the reactor's loop: closing now is the same as waiting for it.
            self.reactor.close_on_reactor_thread(self.key);
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.reactor.command(Command::CloseAndTell(self.key, tx));
        if rx.recv_timeout(Duration::from_secs(1)).is_err() {
            log::warn!("listener {:?}: the reactor did not confirm the close", self.id);
        }
    }
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
pub(crate) fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    Ok(rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)?)
}

/// Why a descriptor cannot be adopted as a listener.
#[derive(Debug)]
pub enum AdoptError {
    /// Not an open descriptor.
    BadDescriptor,
    /// Open, but not a socket.
    NotASocket,
    /// A socket, but not a stream socket.
    NotStream,
    /// A stream socket that is not listening.
    NotListening,
    /// A family other than IPv4, IPv6 or Unix.
    UnsupportedFamily,
    /// Any other system error.
    Io(io::Error),
}

impl std::fmt::Display for AdoptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdoptError::BadDescriptor => f.write_str("not an open descriptor"),
            AdoptError::NotASocket => f.write_str("the descriptor is not a socket"),
            AdoptError::NotStream => f.write_str("the socket is not a stream socket"),
            AdoptError::NotListening => f.write_str("the socket is not listening"),
            AdoptError::UnsupportedFamily => f.write_str("the socket's family is not IPv4, IPv6 or Unix"),
            AdoptError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AdoptError {}

impl Reactor {
    /// Binds a TCP listener (IPv4 or IPv6) and posts every accepted connection to `owner`:
    /// any address or recipient whose message converts from [`Accepted`] ([`IntoRecipient`]).
    ///
    /// # Errors
    ///
    /// Socket, bind and listen errors (address in use, permission denied...).
    pub fn listen_tcp(
        &self,
        addr: SocketAddr,
        options: ListenOptions,
        owner: impl IntoRecipient<Accepted>,
    ) -> io::Result<Listener> {
        let fd = tcp_socket(&addr)?;
        if options.reuse_address {
            rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
        }
        if options.reuse_port {
            rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
        }
        rustix::net::bind(&fd, &addr)?;
        if let Some(timeout) = options.defer_accept {
            // Before `listen`, so that no early client escapes it.
            crate::set_defer_accept(&fd, timeout)?;
        }
        rustix::net::listen(&fd, options.backlog)?;
        self.register(Socket::Tcp(TcpListener::from(fd)), options, owner.into_recipient())
    }

    /// Binds a Unix stream listener at `path`. A stale socket file left by a dead process is
    /// replaced; a live one is an `AddrInUse` error. The file is created with mode 0600 and
    /// removed when the listener closes.
    ///
    /// # Errors
    ///
    /// Socket, bind and listen errors.
    pub fn listen_unix(
        &self,
        path: &Path,
        options: ListenOptions,
        owner: impl IntoRecipient<Accepted>,
    ) -> io::Result<Listener> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; not replacing it", path.display()),
                ));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(io::Error::new(io::ErrorKind::AddrInUse, "a live socket is listening there")),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
                Err(e) => return Err(e),
            }
        }
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        // Permissions apply from the moment the file exists: set them on the descriptor first.
        rustix::fs::fchmod(&fd, rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR)?;
        let addr = rustix::net::SocketAddrUnix::new(path)?;
        rustix::net::bind(&fd, &addr)?;
        rustix::net::listen(&fd, options.backlog)?;
        let listener = UnixListener::from(fd);
        self.register(Socket::Unix(listener, Some(path.to_path_buf())), options, owner.into_recipient())
    }

    /// Adopts a listening socket given as a descriptor (from a parent process, systemd, or a
    /// predecessor). It is validated, made non-blocking, and served like a bound one. The
    /// descriptor is consumed even on error (closed).
    ///
    /// # Errors
    ///
    /// [`AdoptError`] says what is wrong with the descriptor.
    pub fn adopt_listener(
        &self,
        fd: OwnedFd,
        options: ListenOptions,
        owner: impl IntoRecipient<Accepted>,
    ) -> Result<Listener, AdoptError> {
        let kind = rustix::net::sockopt::socket_type(&fd).map_err(|e| match e {
            Errno::BADF => AdoptError::BadDescriptor,
            Errno::NOTSOCK => AdoptError::NotASocket,
            e => AdoptError::Io(e.into()),
        })?;
        if kind != SocketType::STREAM {
            return Err(AdoptError::NotStream);
        }
        if !rustix::net::sockopt::socket_acceptconn(&fd).map_err(|e| AdoptError::Io(e.into()))? {
            return Err(AdoptError::NotListening);
        }
        let family = rustix::net::sockopt::socket_domain(&fd).map_err(|e| AdoptError::Io(e.into()))?;
        rustix::io::ioctl_fionbio(&fd, true).map_err(|e| AdoptError::Io(e.into()))?;
        let socket = if family == AddressFamily::INET || family == AddressFamily::INET6 {
            if let Some(timeout) = options.defer_accept {
                // Best effort: an inherited stream socket of these families may be SCTP, or
                // MPTCP on a kernel without the option, and it serves as well without it.
                if let Err(e) = crate::set_defer_accept(&fd, timeout) {
                    log::warn!("adopted listener: deferred accept not set ({e}); accepting at once");
                }
            }
            Socket::Tcp(TcpListener::from(fd))
        } else if family == AddressFamily::UNIX {
            Socket::Unix(UnixListener::from(fd), None)
        } else {
            return Err(AdoptError::UnsupportedFamily);
        };
        self.register(socket, options, owner.into_recipient()).map_err(AdoptError::Io)
    }

    fn register<M: From<Accepted> + Send + 'static>(
        &self,
        socket: Socket,
        options: ListenOptions,
        owner: Recipient<M>,
    ) -> io::Result<Listener> {
        let local = match &socket {
            Socket::Tcp(l) => Address::Inet(l.local_addr()?),
            Socket::Unix(l, _) => Address::Unix(l.local_addr()?.as_pathname().map(Path::to_path_buf)),
        };
        let mut control: Option<Arc<dyn ListenerControl>> = None;
        let id = ListenerId(self.shared.serial());
        let key = self.shared.insert(|key| {
            // Registered before the socket moves into its source (`close` deletes it from the
            // poller before dropping it); the first event waits for the slab, which `insert`
            // holds locked until the source is in.
            let registration = Registration::add(&self.shared.poller, socket.fd(), Event::readable(key))?;
            let source = Arc::new(ListenerSource {
                id,
                local: local.clone(),
                batch: options.batch.max(1),
                owner,
                state: Mutex::new(State {
                    socket: Some(socket),
                    pending: None,
                    paused: false,
                    waiting_for_room: false,
                    reserve: reserve_fd(),
                    in_fd_episode: false,
                    keep_path: false,
                    registration,
                }),
            });
            control = Some(source.clone());
            Ok(source)
        })?;
        Ok(Listener { id, key, local, reactor: self.shared.clone(), control: control.expect("set by insert") })
    }
}
