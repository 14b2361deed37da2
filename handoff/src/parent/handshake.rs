//! Dispatch after a handshake: the parent reads a client's first bytes, decides where the
//! connection goes, and hands it over with those bytes.
//!
//! The dispatcher pattern exists for servers that route on what the client says first: a PROXY
//! protocol header from a load balancer, a TLS ClientHello's server name, an HTTP request's
//! host. A listener attached with a [`Handshake`] ([`Parent::listen_tcp_with`](crate::Parent::listen_tcp_with),
//! [`Parent::attach_with`](crate::Parent::attach_with)) gives every connection it accepts a
//! fresh handshake, which the parent feeds the bytes read so far, on its reactor thread, each
//! time more arrive, until it decides:
//!
//! - [`Step::More`]: read more (the parent waits for the client without a thread: a silent
//!   client costs one registration with the poller);
//! - [`Step::Route`]: hand the socket over, with a routing key, a tag, the client's address as
//!   the handshake learned it (a PROXY header's), and how many of the bytes read it consumed on
//!   purpose (the PROXY header itself). The rest travels with the socket as its prelude, so the
//!   worker's application reads the stream exactly as the client sent it, minus what was
//!   consumed;
//! - [`Step::Reject`]: close the connection, after writing an answer if there is one (best
//!   effort, never waiting for the client).
//!
//! Bounded: at most [`HandshakeOptions::max_bytes`] are read (then the connection is rejected),
//! within [`HandshakeOptions::timeout`] of its accept (then it is closed). Both are counted
//! (`baton_handoff_handshake_timeouts_total`, `baton_handoff_handshake_rejected_total{reason}`,
//! [`Stats::handshake_timeouts`](crate::Stats::handshake_timeouts),
//! [`Stats::handshake_rejected`](crate::Stats::handshake_rejected)). Connections in a handshake
//! hold descriptors like pending ones: they count against the descriptor budget, and the
//! listeners pause at it. Everything a plain listener does still holds: pause when no worker can
//! take more, deferred accept (`ListenOptions::defer_accept`: the first read usually finds the
//! whole handshake, and the parent never wakes for a silent client), takeover by name, drain.
//!
//! A handshake runs on the reactor thread: [`Handshake::step`] must not block, and should cost
//! what parsing a few hundred bytes costs.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_transport::{Address, Interest, Stream, Watch, WatchId};

use super::dispatch::Dispatch;
use super::handoff::{later, Handoff, Watched};
use super::probe::Baseline;
use crate::log_limit::limited;
use crate::record;

/// What a [`Handshake`] decided about the bytes read so far.
#[derive(Debug)]
pub enum Step {
    /// Not enough yet: read more.
    More,
    /// Hand the connection over.
    Route(Route),
    /// Close the connection.
    Reject(Reject),
}

/// Where a connection goes, and what it carries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Route {
    /// Bytes at the start of what was read that the handshake consumed on purpose (a PROXY
    /// header): the worker never sees them. The rest is the prelude. At most what was read.
    pub consume: usize,
    /// A routing key for [`Sticky`](crate::Sticky) placement.
    pub key: Option<Vec<u8>>,
    /// The [`Tag`](crate::Tag) the worker receives; `None`: the listener's index, as for a
    /// plain listener.
    pub tag: Option<crate::Tag>,
    /// The client's address as the worker should see it (from a PROXY header); `None`: the
    /// address the connection came from.
    pub peer: Option<Address>,
    /// Extensions the worker receives with it when it speaks protocol version 2 (a PROXY
    /// header's balancer address, destination and TLVs: see [`crate::proxy`]).
    pub extensions: Vec<record::Ext>,
    /// The worker group that serves it ([`ParentBuilder::spawn_group`](crate::ParentBuilder::spawn_group));
    /// `None`: any worker. A group the parent does not have refuses the connection.
    pub group: Option<String>,
}

/// Why a handshake refused a connection, and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// A short label for the metric and the log (`"bad header"`, `"unknown host"`).
    pub reason: &'static str,
    /// Bytes written to the client before the close (an HTTP 400, a TLS alert), best effort.
    pub answer: Vec<u8>,
}

impl Reject {
    /// A refusal with nothing to say to the client.
    pub fn silently(reason: &'static str) -> Reject {
        Reject { reason, answer: Vec::new() }
    }
}

/// What the parent knows of a connection in a handshake.
#[derive(Debug, Clone)]
pub struct Peer<'a> {
    /// The address the connection came from.
    pub addr: &'a Address,
    /// The address it arrived on.
    pub local: &'a Address,
}

/// Reads a client's first bytes and decides where the connection goes (see the module docs).
/// One value per connection: it may keep state between calls.
pub trait Handshake: Send + 'static {
    /// Called with **every** byte read so far (from the first), each time more arrived. Must
    /// not block.
    fn step(&mut self, read: &[u8], peer: Peer<'_>) -> Step;
}

impl<F: FnMut(&[u8], Peer<'_>) -> Step + Send + 'static> Handshake for F {
    fn step(&mut self, read: &[u8], peer: Peer<'_>) -> Step {
        self(read, peer)
    }
}

/// Makes a fresh [`Handshake`] for each connection a listener accepts.
pub type HandshakeFactory = Arc<dyn Fn() -> Box<dyn Handshake> + Send + Sync>;

/// Bounds on one connection's handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeOptions {
    /// Most bytes read before the handshake must decide (then: rejected). At most
    /// [`record::MAX_PRELUDE`] plus what it consumes; default 16 KiB.
    pub max_bytes: usize,
    /// How long after its accept a connection may take to complete its handshake (then:
    /// closed). Default 5 s.
    pub timeout: Duration,
    /// Most connections in their handshake at once (and never more than half the descriptor
    /// budget): a new one past it evicts the oldest, so clients that trickle bytes (or send
    /// none) cannot keep the listener from accepting. Default 256.
    pub max_pending: usize,
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        HandshakeOptions { max_bytes: record::MAX_PRELUDE, timeout: Duration::from_secs(5), max_pending: 256 }
    }
}

/// A listener's handshake: the factory and its bounds (what
/// [`Parent::attach_with`](crate::Parent::attach_with) sends the parent's actor).
#[derive(Clone)]
pub struct HandshakeSpec {
    pub(crate) make: HandshakeFactory,
    pub(crate) options: HandshakeOptions,
}

impl std::fmt::Debug for HandshakeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeSpec").field("options", &self.options).finish_non_exhaustive()
    }
}

/// A connection in its handshake.
pub(crate) struct Shaking {
    /// The socket, shared with the watch while one is registered.
    stream: Arc<Stream>,
    watch: Option<Watch>,
    peer: Address,
    local: Address,
    tag: u32,
    read: Vec<u8>,
    handshake: Box<dyn Handshake>,
    deadline: Instant,
    max_bytes: usize,
}

/// The connections in a handshake, by the watch that waits for their bytes.
#[derive(Default)]
pub(crate) struct Shakes {
    waiting: HashMap<WatchId, Shaking>,
}

impl Shakes {
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// The most connections a listener accepts per readiness event (`ListenOptions::batch`'s default).
const ACCEPT_BATCH: usize = 64;

/// How many connections may be in their handshake at once before the oldest is evicted: at
/// most `max_pending`, and at most half the descriptor budget (`max_in_flight`), but never fewer
/// than one readiness event of a listener can bring before the listener pauses (its accept
/// batch). With room only for half a budget of one, a second client accepted in the same
/// wake-up as the first evicted the first, which saw its connection closed before it had said
/// anything wrong.
fn handshake_room(max_pending: usize, max_in_flight: usize) -> usize {
    max_pending.min((max_in_flight / 2).max(ACCEPT_BATCH)).max(1)
}

/// What reading a connection's bytes came to.
enum Outcome {
    Wait(Shaking),
    Done,
}

impl Handoff {
    /// A connection accepted on a listener with a handshake: read what is there already (with
    /// deferred accept, usually everything), and wait for the rest if need be.
    pub(crate) fn shake(&mut self, spec: &HandshakeSpec, stream: Stream, peer: Address, local: Address, tag: u32) {
        let now = Instant::now();
        let room = handshake_room(spec.options.max_pending, self.ledger_mut().limits().max_in_flight);
        while self.shakes.len() >= room {
            self.evict_oldest_handshake();
        }
        let s = Shaking {
            stream: Arc::new(stream),
            watch: None,
            peer,
            local,
            tag,
            read: Vec::new(),
            handshake: (spec.make)(),
            deadline: later(now, spec.options.timeout),
            max_bytes: spec.options.max_bytes.min(record::MAX_PRELUDE + 4096),
        };
        if let Outcome::Wait(s) = self.advance(s) {
            self.wait_for_bytes(s);
        }
    }

    fn wait_for_bytes(&mut self, mut s: Shaking) {
        let watch = match s.watch.take() {
            Some(w) => w,
            None => match self.reactor().watch(s.stream.clone(), Interest::READ, self.ready_recipient()) {
                Ok(w) => w,
                Err(e) => {
                    limited!(self.logs.handshakes, log::Level::Warn, "handoff: cannot wait for a handshake: {e}");
                    return self.count_handshake_rejected("cannot watch"); // dropping it closes it
                }
            },
        };
        watch.arm(Interest::READ);
        self.watch_as(&watch, Watched::Handshake);
        s.watch = Some(watch.clone());
        self.shakes.waiting.insert(watch.id(), s);
    }

    /// More bytes (or an end) for a connection in its handshake.
    pub(crate) fn on_shake_ready(&mut self, id: WatchId) {
        let Some(s) = self.shakes.waiting.remove(&id) else { return };
        if let Outcome::Wait(s) = self.advance(s) {
            self.wait_for_bytes(s);
        }
    }

    /// Reads what is there and asks the handshake; routes, rejects, or says to wait.
    fn advance(&mut self, mut s: Shaking) -> Outcome {
        loop {
            let room = s.max_bytes.saturating_sub(s.read.len());
            if room == 0 {
                return self.refuse(s, Reject::silently("too long"));
            }
            let at = s.read.len();
            s.read.resize(at + room.min(4096), 0);
            match rustix::io::read(s.stream.as_fd(), &mut s.read[at..]) {
                Ok(0) => {
                    s.read.truncate(at);
                    return self.refuse(s, Reject::silently("closed by the client"));
                }
                Ok(n) => s.read.truncate(at + n),
                Err(rustix::io::Errno::INTR) => {
                    s.read.truncate(at);
                    continue;
                }
                Err(rustix::io::Errno::AGAIN) => {
                    s.read.truncate(at);
                    return Outcome::Wait(s);
                }
                Err(_) => {
                    s.read.truncate(at);
                    return self.refuse(s, Reject::silently("read failed"));
                }
            }
            let step = s.handshake.step(&s.read, Peer { addr: &s.peer, local: &s.local });
            match step {
                Step::More => continue,
                Step::Reject(r) => return self.refuse(s, r),
                Step::Route(route) => {
                    self.route(s, route);
                    return Outcome::Done;
                }
            }
        }
    }

    /// Hands the connection over, with what was read and not consumed as its prelude.
    fn route(&mut self, s: Shaking, route: Route) {
        let read = s.read;
        let Some(stream) = self.unshake(s.stream, s.watch) else {
            return self.count_handshake_rejected("no descriptor");
        };
        let consume = route.consume.min(read.len());
        if read.len() - consume > record::MAX_PRELUDE {
            self.count_handshake_rejected("prelude too long");
            return;
        }
        let group = match route.group.as_deref().map(|g| self.group_index(g)) {
            None => None,
            Some(Some(g)) => Some(g),
            Some(None) => {
                limited!(
                    self.logs.handshakes,
                    log::Level::Warn,
                    "handoff: a handshake routed to group {:?}, which this parent does not have",
                    route.group
                );
                return self.count_handshake_rejected("unknown group");
            }
        };
        let d = Dispatch {
            stream,
            peer: route.peer.unwrap_or(s.peer),
            local: s.local,
            tag: route.tag.unwrap_or(s.tag),
            key: route.key,
            prelude: read[consume..].to_vec(),
        };
        // Accepted here, read only by the parent (what it read), written by nobody: the verdict
        // on a lost worker compares with that, and measuring it costs no system call. (A Unix
        // socket has no counts to compare: its baseline says so.)
        let baseline = match &d.stream {
            Stream::Tcp(_) => Baseline::read_by_parent(read.len()),
            Stream::Unix(_) => Baseline::measure(d.stream.as_fd()),
        };
        self.admit_to(d, None, baseline, group, route.extensions);
    }

    fn refuse(&mut self, s: Shaking, r: Reject) -> Outcome {
        let peer = s.peer.clone();
        if let Some(stream) = self.unshake(s.stream, s.watch) {
            Self::answer(&stream, &r.answer);
        }
        limited!(self.logs.handshakes, log::Level::Info, "handoff: a handshake from {peer:?} refused: {}", r.reason);
        self.count_handshake_rejected(r.reason);
        Outcome::Done
    }

    /// Writes a refusal's answer (best effort, never waiting: a client that does not read gets
    /// the close alone) and the end of the stream.
    fn answer(stream: &Stream, answer: &[u8]) {
        if !answer.is_empty() {
            let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
            let _ = rustix::net::send(stream.as_fd(), answer, flags);
        }
        let _ = rustix::net::shutdown(stream.as_fd(), rustix::net::Shutdown::Write);
    }

    /// The socket back from the watch that shared it; `None` (it is closed) only when the
    /// reactor still held the watch's copy and no descriptor was left to duplicate it.
    fn unshake(&mut self, stream: Arc<Stream>, watch: Option<Watch>) -> Option<Stream> {
        if let Some(w) = watch {
            self.unwatch(&w);
        }
        match Arc::try_unwrap(stream) {
            Ok(stream) => Some(stream),
            // The reactor still holds the watch's copy for a moment: work on a duplicate (the
            // copy closes with the watch, which is no close of the connection).
            Err(shared) => rustix::io::fcntl_dupfd_cloexec(shared.as_fd(), 0).ok().map(|fd| same_kind(&shared, fd)),
        }
    }

    /// Makes room for a new handshake: the one that has waited longest is closed.
    fn evict_oldest_handshake(&mut self) {
        let Some(id) = self.shakes.waiting.iter().min_by_key(|(_, s)| s.deadline).map(|(&id, _)| id) else { return };
        if let Some(s) = self.shakes.waiting.remove(&id) {
            if let Some(w) = &s.watch {
                self.unwatch(w);
            }
            limited!(
                self.logs.handshakes,
                log::Level::Warn,
                "handoff: too many handshakes at once; closing the oldest, from {:?}",
                s.peer
            );
            self.count_handshake_rejected("evicted for room");
        }
    }

    /// Connections whose handshake ran out of time: closed.
    pub(crate) fn shake_tick(&mut self, now: Instant) {
        let expired: Vec<WatchId> =
            self.shakes.waiting.iter().filter(|(_, s)| s.deadline <= now).map(|(&id, _)| id).collect();
        for id in expired {
            let Some(s) = self.shakes.waiting.remove(&id) else { continue };
            if let Some(w) = &s.watch {
                self.unwatch(w);
            }
            self.stats.handshake_timeouts += 1;
            metrics::counter!("baton_handoff_handshake_timeouts_total").increment(1);
            limited!(self.logs.handshakes, log::Level::Info, "handoff: a handshake from {:?} timed out", s.peer);
        }
    }

    /// Closes every connection still in its handshake (a drain's deadline).
    pub(crate) fn end_handshakes(&mut self) -> usize {
        let all: Vec<Shaking> = self.shakes.waiting.drain().map(|(_, s)| s).collect();
        for s in &all {
            if let Some(w) = &s.watch {
                self.unwatch(w);
            }
        }
        all.len()
    }

    fn count_handshake_rejected(&mut self, reason: &'static str) {
        self.stats.handshake_rejected += 1;
        metrics::counter!("baton_handoff_handshake_rejected_total", "reason" => reason).increment(1);
    }
}

fn same_kind(like: &Stream, fd: OwnedFd) -> Stream {
    match like {
        Stream::Tcp(_) => Stream::Tcp(std::net::TcpStream::from(fd)),
        Stream::Unix(_) => Stream::Unix(std::os::unix::net::UnixStream::from(fd)),
    }
}

#[cfg(test)]
mod tests {
    use super::{handshake_room, ACCEPT_BATCH};

    #[test]
    fn a_small_descriptor_budget_leaves_room_for_a_whole_accept_batch_of_handshakes() {
        assert_eq!(handshake_room(1024, 1), ACCEPT_BATCH);
        assert_eq!(handshake_room(1024, 10_000), 1024);
        assert_eq!(handshake_room(16, 1), 16, "max_pending still bounds it");
        assert_eq!(handshake_room(0, 0), 1);
    }
}
