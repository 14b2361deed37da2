//! Connections: a connected socket bound to an owner actor.
//!
//! Bytes read arrive as [`ConnEvent::Data`]; reading pauses while the owner's mailbox is full
//! (so backpressure reaches the peer's TCP window) or on request. Writes go straight to the
//! socket from the calling thread when possible; what the kernel does not take is buffered and
//! flushed by the reactor when the socket is writable. Crossing the high-water mark sends
//! [`ConnEvent::HighWater`], draining below the low-water mark sends [`ConnEvent::LowWater`]
//! (Twisted's push-producer contract). Exactly one [`ConnEvent::Closed`] ends every connection.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::poller::{Event, Registration};
use baton_runtime::{IntoRecipient, Recipient, TrySendError};
use parking_lot::Mutex;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};

use crate::listener::Stream;
use crate::reactor::{offer, Command, Reactor, Shared, Source};

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Identifies a connection within its reactor: [`Connection::id`] gives it, and every
/// [`ConnEvent`] carries it, so one actor that owns many connections keeps them in a map by
/// `ConnId` and finds the right [`Connection`] for each event (see `examples/echo.rs`). Ids
/// are not reused while the reactor runs. Displayed as `conn#N`, for log lines.
///
/// ```
/// # use baton_transport::ConnId;
/// fn log_closed(id: ConnId) -> String {
///     format!("{id} closed")
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub(crate) u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Why a connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The application closed it (after flushing).
    Closed,
    /// The application aborted it (RST, buffered bytes discarded).
    Aborted,
    /// Taken out of the reactor with [`Connection::detach`].
    Detached,
    /// The peer reset it, or the socket failed.
    Error(io::ErrorKind),
    /// Nothing was read or written for [`ConnOptions::idle_timeout`].
    IdleTimeout,
    /// Nothing was read for [`ConnOptions::read_timeout`] (writes do not count).
    ReadTimeout,
}

/// What a connection tells its owner.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Bytes read, in order.
    Data(ConnId, Vec<u8>),
    /// The peer will send no more (it shut down its write side or closed).
    ReadClosed(ConnId),
    /// The write buffer grew past the high-water mark: stop producing.
    HighWater(ConnId),
    /// The write buffer drained below the low-water mark: produce again.
    LowWater(ConnId),
    /// The connection is gone; always the last event, exactly once.
    Closed(ConnId, CloseReason),
}

/// Per-connection settings.
#[derive(Clone, Copy, Debug)]
pub struct ConnOptions {
    /// Largest single read (and `Data` message). Default 64 KiB.
    pub read_size: usize,
    /// Buffered bytes above which `HighWater` is sent. Default 256 KiB.
    pub high_water: usize,
    /// Buffered bytes below which `LowWater` is sent after a `HighWater`. Default 64 KiB.
    pub low_water: usize,
    /// Close with [`CloseReason::IdleTimeout`] after this long without a byte read or
    /// written. Default: none.
    pub idle_timeout: Option<std::time::Duration>,
    /// Close with [`CloseReason::ReadTimeout`] after this long without a byte read, however
    /// much is written (a peer that stopped sending). Time spent with reading paused, by the
    /// application or by a full mailbox, does not count. Default: none.
    pub read_timeout: Option<std::time::Duration>,
    /// When the owner adopts the socket in its own handler on the reactor thread (an actor on
    /// the reactor's event loop), read it once at once, and register it with the poller only
    /// after the event loop's turns of that pass (the owner handles what was read in its
    /// current turn), if it is still open then. For a protocol where the client speaks first
    /// (HTTP, Redis, TLS...) the first bytes are usually waiting by the time a socket is
    /// accepted and adopted, and more so when another process handed it over: a request
    /// answered and closed at once then costs no `epoll_ctl` at all and no wait. When nothing is waiting it costs
    /// one `recv` that finds nothing, and the socket is registered as usual: turn it off for
    /// protocols where the server speaks first. Default: on. (Adopted for another actor, off
    /// the reactor thread, with `unread` bytes, or for a client connection still connecting,
    /// a socket is registered at once.)
    pub read_first: bool,
}

impl Default for ConnOptions {
    fn default() -> Self {
        ConnOptions {
            read_size: 64 * 1024,
            high_water: 256 * 1024,
            low_water: 64 * 1024,
            idle_timeout: None,
            read_timeout: None,
            read_first: true,
        }
    }
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The connection is closed or closing, or its write side was shut down.
    Closed,
    /// The buffer is already above the high-water mark and `high_water * 4` would be exceeded:
    /// the producer ignored `HighWater`. Memory stays bounded.
    BufferFull,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteError::Closed => "the connection is closed for writing",
            WriteError::BufferFull => "write buffer full (the producer ignored HighWater)",
        })
    }
}

impl std::error::Error for WriteError {}

/// A socket taken out of the reactor with the bytes it had read but not delivered.
#[derive(Debug)]
pub struct Detached {
    /// The socket, still connected, non-blocking.
    pub stream: Stream,
    /// Bytes read from the socket that the owner has not been given, in order.
    pub unread: Vec<u8>,
}

struct State {
    stream: Option<Stream>,
    wbuf: VecDeque<u8>,
    /// Events the owner's full mailbox handed back, in order; reading pauses while non-empty.
    pending: Pending,
    waiting_for_room: bool,
    user_paused: bool,
    read_eof: bool,
    above_high: bool,
    shutdown_write_requested: bool,
    write_shut: bool,
    close_requested: bool,
    /// The socket is gone; the source stays registered until `Closed` is delivered.
    finished: bool,
    last_activity: std::time::Instant,
    last_read: std::time::Instant,
    /// The socket's registration, changed only when `interest` changes.
    registration: Registration,
    /// Runs once, when the socket leaves this process's hands (closed or detached).
    on_close: Option<CloseHook>,
}

/// Events a full mailbox handed back, in order: a queue made when the first is refused and
/// dropped once all are delivered, so a connection whose owner keeps up (nearly every one)
/// carries a null pointer, not an empty queue's 32 bytes.
// The box is the point: `Option<VecDeque>` is 32 bytes even when empty, `Option<Box<_>>` is 8.
#[allow(clippy::box_collection)]
#[derive(Default)]
struct Pending(Option<Box<VecDeque<ConnEvent>>>);

impl Pending {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    fn push_back(&mut self, ev: ConnEvent) {
        self.0.get_or_insert_with(Box::default).push_back(ev);
    }

    fn push_front(&mut self, ev: ConnEvent) {
        self.0.get_or_insert_with(Box::default).push_front(ev);
    }

    fn pop_front(&mut self) -> Option<ConnEvent> {
        self.0.as_mut()?.pop_front()
    }

    /// Drops the queue and what is in it.
    fn clear(&mut self) {
        self.0 = None;
    }

    /// Takes every event out, in order.
    fn take(&mut self) -> VecDeque<ConnEvent> {
        self.0.take().map(|q| *q).unwrap_or_default()
    }
}

/// A function run once when a connection's socket is closed or detached, with the reason
/// (see [`Reactor::adopt_with`]). It runs on whichever thread closed the connection, with the
/// connection's lock held: keep it short (count, queue a message), and never call back into the
/// same connection.
pub type CloseHook = Box<dyn FnOnce(&CloseReason) + Send>;

pub(crate) struct ConnSource {
    id: ConnId,
    /// The reactor's key for this source (reused after close, unlike `id`).
    key: usize,
    options: ConnOptions,
    owner: Recipient<ConnEvent>,
    state: Mutex<State>,
}

/// The flags of every send: with `ending` (a close or half-close follows these bytes),
/// `MSG_MORE` holds a short last segment back, even with `TCP_NODELAY`, until the shutdown that
/// follows tacks its FIN onto it and pushes it out (see [`Connection::write_and_close`]).
///
/// Every send and receive says `MSG_DONTWAIT`, so an adopted socket never blocks the reactor
/// whatever its file status flags, and adopting costs no `ioctl(FIONBIO)` (a sixth of a served
/// connection's system calls when it is accepted, read, answered and closed). A socket leaves
/// non-blocking ([`Connection::detach`]).
fn send_flags(ending: bool) -> SendFlags {
    if ending {
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT | SendFlags::MORE
    } else {
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT
    }
}

impl ConnSource {
    pub(crate) fn key(&self) -> usize {
        self.key
    }

    /// Offers an event to the owner (after any still pending); false once the mailbox is full.
    fn emit(&self, reactor: &Arc<Shared>, state: &mut State, ev: ConnEvent) -> bool {
        if state.pending.is_empty() {
            // Straight to the owner: the queue (and its allocation) is only for events the
            // owner's full mailbox refused.
            if !self.offer_one(reactor, state, ev) {
                return false;
            }
        } else {
            state.pending.push_back(ev);
        }
        self.flush_pending(reactor, state)
    }

    fn flush_pending(&self, reactor: &Arc<Shared>, state: &mut State) -> bool {
        while let Some(ev) = state.pending.pop_front() {
            if !self.offer_one(reactor, state, ev) {
                return false;
            }
        }
        state.pending.clear();
        if state.finished {
            reactor.remove(self.key);
        }
        true
    }

    /// Offers one event to the owner; false when it had to be queued (full mailbox: it goes
    /// first in `pending`) or the owner is gone (the connection is closed).
    fn offer_one(&self, reactor: &Arc<Shared>, state: &mut State, ev: ConnEvent) -> bool {
        match offer(reactor, self.key, &self.owner, &mut state.waiting_for_room, ev) {
            Ok(()) => true,
            Err(TrySendError::Full(ev)) => {
                state.pending.push_front(ev);
                false
            }
            Err(TrySendError::Closed(_)) => {
                // The owner is gone: nobody will ever read this connection.
                log::debug!("connection {:?}: owner gone, closing", self.id);
                state.pending.clear();
                if state.stream.is_some() {
                    self.finish(reactor, state, CloseReason::Closed, false);
                } else {
                    reactor.remove(self.key);
                }
                false
            }
        }
    }

    /// Reads what is waiting and delivers it.
    fn read_some(&self, reactor: &Arc<Shared>, state: &mut State) {
        // Bounded: at most 16 reads per event so one busy connection cannot hog the reactor.
        self.read_some_bounded(reactor, state, 16);
    }

    /// At most `reads` reads; returns whether anything happened (bytes, end of input or an
    /// error), as opposed to nothing waiting.
    fn read_some_bounded(&self, reactor: &Arc<Shared>, state: &mut State, reads: usize) -> bool {
        let mut happened = false;
        for _ in 0..reads {
            if state.user_paused || state.read_eof || !state.pending.is_empty() {
                return happened;
            }
            let Some(stream) = state.stream.as_ref() else { return true };
            let size = self.options.read_size.max(1);
            // Read into one reused scratch buffer (reads only happen on the reactor thread) and
            // copy out exactly what arrived: a fresh zeroed 64 KiB per read, kept alive by every
            // small `Data` message, cost more than the read itself.
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                if scratch.len() < size {
                    scratch.resize(size, 0);
                }
                rustix::net::recv(stream.as_fd(), &mut scratch[..size], RecvFlags::DONTWAIT)
                    .map(|(n, _)| scratch[..n].to_vec())
            });
            match read.map(|bytes| (bytes.len(), bytes)) {
                Ok((0, _)) => {
                    state.read_eof = true;
                    self.emit(reactor, state, ConnEvent::ReadClosed(self.id));
                    if state.write_shut && state.stream.is_some() {
                        self.finish(reactor, state, CloseReason::Closed, true);
                    }
                    return true;
                }
                Ok((n, bytes)) => {
                    happened = true;
                    state.last_activity = std::time::Instant::now();
                    state.last_read = state.last_activity;
                    if !self.emit(reactor, state, ConnEvent::Data(self.id, bytes)) {
                        return true;
                    }
                    if n < size {
                        // A short read drained the socket; the registration reports new data,
                        // so skip the extra recv that would only say EAGAIN.
                        return true;
                    }
                }
                Err(Errno::AGAIN) => return happened,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    let kind = io::Error::from(e).kind();
                    self.finish(reactor, state, CloseReason::Error(kind), true);
                    return true;
                }
            }
        }
        happened
    }

    /// Writes buffered bytes; true while the socket is healthy.
    fn flush(&self, reactor: &Arc<Shared>, state: &mut State) -> bool {
        // The end of stream follows these bytes: the shutdown below carries the FIN with them.
        let flags = send_flags(state.close_requested || state.shutdown_write_requested);
        while !state.wbuf.is_empty() {
            let Some(stream) = state.stream.as_ref() else {
                return false;
            };
            let (a, b) = state.wbuf.as_slices();
            let slices = [io::IoSlice::new(a), io::IoSlice::new(b)];
            let written = match rustix::net::sendmsg(stream.as_fd(), &slices, &mut Default::default(), flags) {
                Ok(n) => n,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    let kind = io::Error::from(e).kind();
                    self.finish(reactor, state, CloseReason::Error(kind), true);
                    return false;
                }
            };
            state.wbuf.drain(..written);
            state.last_activity = std::time::Instant::now();
        }
        if state.above_high && state.wbuf.len() <= self.options.low_water {
            state.above_high = false;
            self.emit(reactor, state, ConnEvent::LowWater(self.id));
        }
        if state.wbuf.is_empty() {
            if state.close_requested {
                self.finish(reactor, state, CloseReason::Closed, true);
                return false;
            }
            if state.shutdown_write_requested && !state.write_shut {
                if let Some(stream) = state.stream.as_ref() {
                    let _ = rustix::net::shutdown(stream.as_fd(), Shutdown::Write);
                }
                state.write_shut = true;
                if state.read_eof {
                    self.finish(reactor, state, CloseReason::Closed, true);
                    return false;
                }
            }
        }
        true
    }

    fn interest(&self, state: &State) -> Event {
        let key = self.key;
        let read = !state.user_paused && !state.read_eof && state.pending.is_empty();
        let write = !state.wbuf.is_empty();
        match (read, write) {
            (true, true) => Event::all(key),
            (true, false) => Event::readable(key),
            (false, true) => Event::writable(key),
            (false, false) => Event::none(key),
        }
    }

    /// Brings the registration in line with what the connection wants now; no system call
    /// when nothing changed (the common case: reading, nothing buffered).
    fn arm(&self, reactor: &Arc<Shared>, state: &mut State) {
        if let Err(e) = self.register(reactor, state) {
            if state.registration.is_added() {
                log::error!("connection {:?}: re-arm failed: {e}", self.id);
            } else {
                // A deferred registration the poller refused (ENOSPC, ENOMEM): unregistered,
                // the connection would never hear from its socket again.
                log::error!("connection {:?}: cannot register with the poller: {e}; closing", self.id);
                self.finish(reactor, state, CloseReason::Error(e.kind()), true);
            }
        }
    }

    /// Brings the registration in line with what the connection wants now.
    fn register(&self, reactor: &Arc<Shared>, state: &mut State) -> io::Result<()> {
        let want = self.interest(state);
        let State { stream: Some(stream), registration, .. } = state else { return Ok(()) };
        registration.set(&reactor.poller, stream.as_fd(), want)
    }

    /// The one read at adoption of `ConnOptions::read_first`: a single `recv` (however much
    /// is waiting), so an owner that pauses or detaches right after adopting finds at most one
    /// `Data` delivered. Returns whether anything happened (bytes, end of input, an error).
    fn read_first(&self, reactor: &Arc<Shared>, state: &mut State) -> bool {
        self.read_some_bounded(reactor, state, 1)
    }

    /// Deregisters, closes (or hands back) the socket, and sends the one `Closed` event. The
    /// source leaves the reactor's table once the owner has taken every pending event, so a
    /// full mailbox delays `Closed` (through the usual room notification) but never loses it.
    fn finish(&self, reactor: &Arc<Shared>, state: &mut State, reason: CloseReason, notify: bool) -> Option<Stream> {
        let stream = state.stream.take()?;
        // Deregister before closing: the poller tracks the open file, not the number.
        if state.registration.is_added() {
            let _ = reactor.poller.delete(stream.as_fd());
        }
        state.wbuf = VecDeque::new();
        state.finished = true;
        let on_close = state.on_close.take();
        let closed = notify.then(|| ConnEvent::Closed(self.id, reason.clone()));
        let kept = match reason {
            CloseReason::Detached => Some(stream),
            CloseReason::Aborted => {
                let _ = rustix::net::sockopt::set_socket_linger(stream.as_fd(), Some(std::time::Duration::ZERO));
                None
            }
            CloseReason::Closed | CloseReason::IdleTimeout | CloseReason::ReadTimeout => {
                // The peer's end of file must not wait for other holders of this socket (a
                // handoff parent that has not yet heard we adopted it, a forked child): only
                // the last close of a descriptor sends FIN, but shutdown acts on the socket.
                if !state.write_shut {
                    let _ = rustix::net::shutdown(stream.as_fd(), Shutdown::Write);
                }
                None
            }
            CloseReason::Error(_) => None,
        };
        if let Some(hook) = on_close {
            hook(&reason);
        }
        // After what is pending; straight to the owner when nothing is (no queue allocated).
        match closed {
            Some(ev) => self.emit(reactor, state, ev),
            None => self.flush_pending(reactor, state),
        };
        kept
    }
}

impl Source for ConnSource {
    fn ready(&self, reactor: &Arc<Shared>, _key: usize, event: Event) {
        let mut state = self.state.lock();
        if state.stream.is_none() {
            return;
        }
        state.registration.fired();
        if event.writable && !self.flush(reactor, &mut state) {
            return;
        }
        if event.readable {
            self.read_some(reactor, &mut state);
        }
        self.arm(reactor, &mut state);
    }

    fn rearm(&self, reactor: &Arc<Shared>, _key: usize) {
        let mut state = self.state.lock();
        state.waiting_for_room = false;
        if !self.flush_pending(reactor, &mut state) || state.stream.is_none() {
            return;
        }
        self.arm(reactor, &mut state);
    }

    fn timeout(&self, reactor: &Arc<Shared>, key: usize) {
        let mut state = self.state.lock();
        if state.stream.is_none() {
            return;
        }
        let now = std::time::Instant::now();
        if state.user_paused || !state.pending.is_empty() {
            // Not reading on purpose: the read clock starts again when reading resumes.
            state.last_read = now;
        }
        let idle_at = self.options.idle_timeout.map(|t| state.last_activity + t);
        let read_at = self.options.read_timeout.map(|t| state.last_read + t);
        if idle_at.is_some_and(|at| now >= at) {
            log::debug!("connection {:?}: idle timeout, closing", self.id);
            self.finish(reactor, &mut state, CloseReason::IdleTimeout, true);
        } else if read_at.is_some_and(|at| now >= at) {
            log::debug!("connection {:?}: read timeout, closing", self.id);
            self.finish(reactor, &mut state, CloseReason::ReadTimeout, true);
        } else if let Some(at) = [idle_at, read_at].into_iter().flatten().min() {
            reactor.command(Command::TimeoutAt(key, at));
        }
    }

    fn close(&self, reactor: &Arc<Shared>, key: usize) {
        let mut state = self.state.lock();
        if self.finish(reactor, &mut state, CloseReason::Closed, true).is_none() && state.stream.is_none() {
            // Reactor shutdown: forget the source even if its owner never took `Closed`.
            reactor.remove(key);
        }
    }
}

/// A connection bound to an owner actor. Cheap to clone; any thread may write.
#[derive(Clone)]
pub struct Connection {
    source: Arc<ConnSource>,
    reactor: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({:?})", self.source.id)
    }
}

impl Connection {
    /// The id carried by this connection's events.
    pub fn id(&self) -> ConnId {
        self.source.id
    }

    /// Writes `data`: straight to the socket when nothing is buffered, else into the buffer.
    ///
    /// # Errors
    ///
    /// [`WriteError::Closed`] after close, abort or shutdown of the write side;
    /// [`WriteError::BufferFull`] when the buffer would exceed four times the high-water mark.
    pub fn write(&self, data: &[u8]) -> Result<(), WriteError> {
        self.write_vectored(&[io::IoSlice::new(data)])
    }

    /// Writes several buffers in order, with one system call when the socket takes them.
    ///
    /// # Errors
    ///
    /// As [`Connection::write`].
    pub fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> Result<(), WriteError> {
        self.send(bufs, false)
    }

    /// Writes `data` as the connection's last bytes and closes it (as [`Connection::write`]
    /// then [`Connection::close`]), with the end of stream (TCP's FIN) in the same segment
    /// as the last bytes: the peer gets the answer and its end of file together, and there is
    /// one segment less to send, deliver and acknowledge. For the answer to a request that
    /// asked to close (HTTP's `Connection: close`). `write` then `close` cannot do this: the
    /// bytes have left by the time the close is asked for. (Bytes that wait in the buffer when
    /// a close is asked for go the same way.)
    ///
    /// # Errors
    ///
    /// As [`Connection::write`]; the connection is then not closed (call
    /// [`Connection::close`] or [`Connection::abort`]).
    pub fn write_and_close(&self, data: &[u8]) -> Result<(), WriteError> {
        self.send(&[io::IoSlice::new(data)], true)
    }

    /// [`Connection::write_and_close`] for several buffers (a head and a body, say), written
    /// in order with one system call when the socket takes them.
    ///
    /// # Errors
    ///
    /// As [`Connection::write_and_close`].
    pub fn write_vectored_and_close(&self, bufs: &[io::IoSlice<'_>]) -> Result<(), WriteError> {
        self.send(bufs, true)
    }

    /// Writes `bufs`; with `last`, closes after them (see [`Connection::write_and_close`]).
    fn send(&self, bufs: &[io::IoSlice<'_>], last: bool) -> Result<(), WriteError> {
        let flags = send_flags(last);
        let src = &self.source;
        let mut state = src.state.lock();
        if state.stream.is_none() || state.close_requested || state.shutdown_write_requested {
            return Err(WriteError::Closed);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if state.wbuf.len() + total > src.options.high_water.saturating_mul(4) {
            return Err(WriteError::BufferFull);
        }
        let mut skip = 0;
        if state.wbuf.is_empty() {
            let stream = state.stream.as_ref().expect("checked");
            match rustix::net::sendmsg(stream.as_fd(), bufs, &mut Default::default(), flags) {
                Ok(n) => {
                    skip = n;
                    state.last_activity = std::time::Instant::now();
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                Err(e) => {
                    let kind = io::Error::from(e).kind();
                    src.finish(&self.reactor, &mut state, CloseReason::Error(kind), true);
                    return Err(WriteError::Closed);
                }
            }
        }
        if last {
            // Under the lock the bytes were written under: no other write, detach or timeout
            // comes between the last bytes and the close.
            state.close_requested = true;
        }
        if skip == total {
            if last {
                src.flush(&self.reactor, &mut state); // nothing buffered: closes now
            }
            return Ok(());
        }
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            state.wbuf.extend(&b[skip..]);
            skip = 0;
        }
        if !state.above_high && state.wbuf.len() > src.options.high_water {
            state.above_high = true;
            src.emit(&self.reactor, &mut state, ConnEvent::HighWater(src.id));
        }
        drop(state);
        self.reactor.command(Command::Rearm(src.key));
        Ok(())
    }

    /// Bytes buffered and not yet taken by the kernel.
    pub fn buffered(&self) -> usize {
        self.source.state.lock().wbuf.len()
    }

    /// Half-close: after the buffer drains, shut down the write side (the peer reads EOF) and
    /// keep reading. The connection closes once both directions are done.
    pub fn shutdown_write(&self) {
        let mut state = self.source.state.lock();
        state.shutdown_write_requested = true;
        drop(state);
        self.reactor.command(Command::Rearm(self.source.key));
        self.kick();
    }

    /// Closes after the buffered bytes are written.
    pub fn close(&self) {
        self.source.state.lock().close_requested = true;
        self.kick();
    }

    /// Closes at once with a reset (RST); buffered bytes are discarded.
    pub fn abort(&self) {
        let mut state = self.source.state.lock();
        self.source.finish(&self.reactor, &mut state, CloseReason::Aborted, true);
    }

    /// Stops reading (the peer's TCP window fills) until [`Connection::resume_reading`].
    pub fn pause_reading(&self) {
        self.source.state.lock().user_paused = true;
        self.reactor.command(Command::Rearm(self.source.key));
    }

    /// Resumes reading.
    pub fn resume_reading(&self) {
        self.source.state.lock().user_paused = false;
        self.reactor.command(Command::Rearm(self.source.key));
    }

    /// Takes the socket out of the reactor, with the bytes read but not yet delivered.
    /// The owner gets `Closed(Detached)`.
    ///
    /// # Errors
    ///
    /// `NotConnected` when the connection is already closed; the system's error when the
    /// socket cannot be made non-blocking (the connection is then left as it was).
    pub fn detach(&self) -> io::Result<Detached> {
        let src = &self.source;
        let mut state = src.state.lock();
        // Adopting did not touch the flags (see `send_flags`): `Detached`'s promise is kept
        // here, before anything changes, so that a failure leaves the connection as it was.
        if let Some(stream) = state.stream.as_ref() {
            rustix::io::ioctl_fionbio(stream.as_fd(), true)?;
        }
        let mut unread = Vec::new();
        for ev in state.pending.take() {
            if let ConnEvent::Data(_, bytes) = ev {
                unread.extend_from_slice(&bytes);
            }
        }
        match src.finish(&self.reactor, &mut state, CloseReason::Detached, true) {
            Some(stream) => Ok(Detached { stream, unread }),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "connection already closed")),
        }
    }

    /// Runs a flush on the reactor (used after close/shutdown requests).
    fn kick(&self) {
        let mut state = self.source.state.lock();
        if state.stream.is_some() {
            self.source.flush(&self.reactor, &mut state);
        }
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// The system error, or `NotConnected` after close.
    pub fn peer_addr(&self) -> io::Result<crate::Address> {
        match self.source.state.lock().stream.as_ref() {
            Some(Stream::Tcp(s)) => s.peer_addr().map(crate::Address::Inet),
            Some(Stream::Unix(s)) => Ok(crate::Address::Unix(s.peer_addr()?.as_pathname().map(Into::into))),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// The system error, or `NotConnected` after close.
    pub fn local_addr(&self) -> io::Result<crate::Address> {
        match self.source.state.lock().stream.as_ref() {
            Some(Stream::Tcp(s)) => s.local_addr().map(crate::Address::Inet),
            Some(Stream::Unix(s)) => Ok(crate::Address::Unix(s.local_addr()?.as_pathname().map(Into::into))),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// `SO_KEEPALIVE` (TCP only; ignored for Unix sockets).
    ///
    /// # Errors
    ///
    /// The system error, or `NotConnected` after close.
    pub fn set_keepalive(&self, on: bool) -> io::Result<()> {
        match self.source.state.lock().stream.as_ref() {
            Some(Stream::Tcp(s)) => Ok(rustix::net::sockopt::set_socket_keepalive(s, on)?),
            Some(Stream::Unix(_)) => Ok(()),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// `TCP_NODELAY` (TCP only; ignored for Unix sockets).
    ///
    /// # Errors
    ///
    /// The system error, or `NotConnected` after close.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self.source.state.lock().stream.as_ref() {
            Some(Stream::Tcp(s)) => s.set_nodelay(on),
            Some(Stream::Unix(_)) => Ok(()),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Reactor {
    /// Registers a connected socket and binds it to `owner`: from now on its bytes arrive as
    /// [`ConnEvent`]s. `owner` is any address or recipient whose message converts from
    /// `ConnEvent` ([`IntoRecipient`]): `ctx.address()` of an actor whose message enum has a
    /// `From<ConnEvent>`, or a `Recipient<ConnEvent>`. Use it for accepted sockets, sockets from another process, and the
    /// `stream` of a [`Detached`] connection (deliver its `unread` bytes yourself first).
    ///
    /// Events can arrive as soon as this returns, or even before it does: an owner adopting in
    /// its own handler on the reactor thread gets the first bytes read at once
    /// ([`ConnOptions::read_first`]), so one `Data` (or the end of input, or a `Closed` for a
    /// peer that already reset, with the close hook run inside this call) may already be in its
    /// mailbox. Call it from the owner's own turn: in its `started` (give the stream to the
    /// actor you spawn for the connection, the cheapest way) or a handler (send it the stream).
    /// Its events then queue in its mailbox until that turn has stored the returned
    /// [`Connection`], so the first `Data` never finds the owner without the handle it needs
    /// to reply.
    ///
    /// # Errors
    ///
    /// When the socket cannot be registered with the poller.
    pub fn adopt(
        &self,
        stream: Stream,
        options: ConnOptions,
        owner: impl IntoRecipient<ConnEvent>,
    ) -> io::Result<Connection> {
        self.adopt_with(stream, Vec::new(), None, options, owner)
    }

    /// [`Reactor::adopt`] for a socket that arrives with bytes already read from it (the
    /// `unread` of a [`Detached`] connection, or a handshake another process read first):
    /// `unread` is delivered as the first [`ConnEvent::Data`], before anything read later.
    /// `on_close`, when given, runs once when the socket is closed or detached (see
    /// [`CloseHook`]); the handoff layer uses it to report closed connections to its parent.
    ///
    /// # Errors
    ///
    /// When the socket cannot be registered with the poller.
    pub fn adopt_with(
        &self,
        stream: Stream,
        unread: Vec<u8>,
        on_close: Option<CloseHook>,
        options: ConnOptions,
        owner: impl IntoRecipient<ConnEvent>,
    ) -> io::Result<Connection> {
        let owner = owner.into_recipient();
        let has_unread = !unread.is_empty();
        // Only for an owner adopting in its own handler on the reactor thread: its events then
        // queue behind the handler that stores the connection, and it handles them before the
        // reactor's next pass (elsewhere, deferring the registration would save nothing).
        let read_first = options.read_first && !has_unread && owner.is_current() && self.shared.on_reactor_thread();
        let now = std::time::Instant::now();
        let mut made: Option<Arc<ConnSource>> = None;
        let id = ConnId(self.shared.serial());
        self.shared.insert(|key| {
            // Bytes already read go first: the socket is armed only after they are delivered.
            // (Registered before the socket moves into its source; an event that comes at once
            // waits for the slab, which `insert` holds locked until the source is in.)
            let interest = if has_unread { Event::none(key) } else { Event::readable(key) };
            let registration = if read_first {
                Registration::deferred()
            } else {
                Registration::add(&self.shared.poller, stream.as_fd(), interest)?
            };
            let mut pending = Pending::default();
            if has_unread {
                pending.push_back(ConnEvent::Data(id, unread));
            }
            let source = Arc::new(ConnSource {
                id,
                key,
                options,
                owner,
                state: Mutex::new(State {
                    stream: Some(stream),
                    wbuf: VecDeque::new(),
                    pending,
                    waiting_for_room: false,
                    user_paused: false,
                    read_eof: false,
                    above_high: false,
                    shutdown_write_requested: false,
                    write_shut: false,
                    close_requested: false,
                    finished: false,
                    last_activity: now,
                    last_read: now,
                    registration,
                    on_close,
                }),
            });
            made = Some(source.clone());
            Ok(source as Arc<dyn Source>)
        })?;
        let source = made.expect("set by insert");
        if has_unread {
            self.shared.command(Command::Rearm(source.key));
        }
        if read_first {
            let mut state = source.state.lock();
            if source.read_first(&self.shared, &mut state) {
                // The owner will see these bytes in the turns that follow this one, on this
                // thread; register after them, if the connection is still open then.
                self.shared.defer_arm(source.clone());
            } else if let Err(e) = source.register(&self.shared, &mut state) {
                // Nothing was waiting and the poller refuses the socket: as before, adoption
                // fails, and the socket is closed.
                drop(state.stream.take());
                drop(state);
                self.shared.remove(source.key);
                return Err(e);
            }
        }
        if let Some(first) = [options.idle_timeout, options.read_timeout].into_iter().flatten().min() {
            self.shared.command(Command::TimeoutAt(source.key, now + first));
        }
        Ok(Connection { source, reactor: self.shared.clone() })
    }
}

impl Reactor {
    /// Connects to `addr` without blocking and returns the connection at once. Writes made
    /// before the handshake completes are buffered and sent when it does; a failed connect
    /// arrives as `Closed(Error(ConnectionRefused))` (or another kind).
    ///
    /// # Errors
    ///
    /// When the socket cannot be created or registered.
    pub fn connect_tcp(
        &self,
        addr: std::net::SocketAddr,
        options: ConnOptions,
        owner: impl IntoRecipient<ConnEvent>,
    ) -> io::Result<Connection> {
        let fd = crate::listener::tcp_socket(&addr)?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        // Still connecting: nothing to read yet, and the outcome comes as writability.
        let options = ConnOptions { read_first: false, ..options };
        self.adopt(Stream::Tcp(std::net::TcpStream::from(fd)), options, owner)
    }
}

impl From<Stream> for Detached {
    fn from(stream: Stream) -> Detached {
        Detached { stream, unread: Vec::new() }
    }
}
