//! The parent side: the Handoff actor, which places every accepted socket on a worker process.
//!
//! # The life of a socket in the parent
//!
//! 1. A listener (or an application actor that read a handshake first) sends the socket: its
//!    addresses, a tag, an optional routing key and the prelude bytes already read. The
//!    [ledger](ledger) gives it an id and holds it until it ends.
//! 2. The [`Policy`] picks a worker among those that can take it now. The id joins that
//!    worker's outbox; a `Flush` the actor sends itself (which runs after the messages already
//!    queued) sends the outbox as HANDOFF records of up to [`ParentBuilder::batch`] sockets.
//! 3. The parent **keeps its copy** of the socket until the worker answers. ADOPTED closes the
//!    copy (close, never shutdown: the connection is the worker's now). REJECTED puts it on
//!    another worker; after [`ParentBuilder::max_tries`] placements it is closed and counted.
//! 4. A worker lost with sockets it was sent and never answered for: those sockets are judged
//!    once nobody but the parent can touch them (its process exited, or was killed). The
//!    kernel's counters say whether anyone read or wrote (see `probe.rs`); an untouched one
//!    goes to another worker, a touched one is ended so its client sees the connection close
//!    instead of waiting for an answer that will never come.
//! 5. When nothing can take a socket (every worker at its in-flight bound, backed up, starting,
//!    or gone), or the parent holds as many as its [descriptor budget](Stats::budget) allows,
//!    it waits and the listeners pause, so the kernel's backlog holds new clients.
//!
//! # Where each concept lives
//!
//! - `ledger.rs`: every socket held and what becomes of it (placement, tries, verdicts); no
//!   I/O, with property tests of its invariants.
//! - `slot.rs`: a worker slot's life (starting, ready, draining, down), deadlines, restart
//!   intensity; no I/O.
//! - `probe.rs`: asking the kernel whether a socket was touched. `budget.rs`: the descriptor
//!   budget.
//! - `handoff.rs`: the actor, which carries channel records and listeners in and the ledger's
//!   and slots' decisions out. `workers.rs`: worker processes (starting, losing, waiting for
//!   one to exit, restarting). `successor.rs`: the old parent's side of a takeover.
//! - `steering.rs`: steered listening (a `SO_REUSEPORT` socket per worker, a classic BPF
//!   program that weights them by load, the parent serving a busy or absent worker's queue);
//!   its rules (weights, who accepts) have no I/O and are unit-tested, beside the program.
//! - `dispatch.rs`, `stats.rs`: what goes in and what comes out.

mod budget;
mod dispatch;
mod error;
mod handoff;
pub mod handshake;
pub(crate) mod ledger;
mod probe;
pub mod proxy;
mod slot;
pub mod sni;
mod stats;
mod steering;
mod successor;
mod workers;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{Addr, Intensity, IntoRecipient, Mailbox, Recipient, Runtime, SendError, SpawnError};
use baton_transport::{Address, ListenOptions, Listener, Reactor};

pub use self::dispatch::{Dispatch, DispatchError, ToParent};
pub use self::error::ParentError;
pub use self::handoff::UNATTACHED_TAG;

use self::handoff::{Control, Handoff, HandoffMsg, SharedListener};
pub use self::stats::{DrainReport, Stats, WorkerStats, LATENCY_WINDOW};

use self::handoff::Config;
use self::ledger::{Ledger, Limits};
use crate::bootstrap::{ChannelListener, Endpoint, PeerCheck};
use crate::policy::{LeastLoaded, Policy};
use crate::process::WorkerCommand;
use crate::record;

/// Limits and choices for the parent.
pub struct ParentBuilder {
    /// Worker groups: a name, how many workers, what they run. The unnamed group (`""`) is
    /// [`ParentBuilder::spawn`]'s.
    groups: Vec<(String, usize, WorkerCommand)>,
    policy: Box<dyn Policy>,
    max_in_flight: usize,
    max_per_worker: u32,
    adopt_timeout: Duration,
    startup_timeout: Duration,
    max_tries: u32,
    batch: usize,
    intensity: Intensity,
    exit_timeout: Duration,
    probation: Duration,
}

impl std::fmt::Debug for ParentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentBuilder")
            .field("groups", &self.groups)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_per_worker", &self.max_per_worker)
            .field("adopt_timeout", &self.adopt_timeout)
            .field("max_tries", &self.max_tries)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Default for ParentBuilder {
    fn default() -> Self {
        ParentBuilder {
            groups: Vec::new(),
            policy: Box::new(LeastLoaded::default()),
            max_in_flight: 1024,
            max_per_worker: 256,
            adopt_timeout: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(10),
            max_tries: 3,
            batch: 64,
            intensity: Intensity { max_restarts: 5, period: Duration::from_secs(10) },
            exit_timeout: Duration::from_secs(10),
            probation: Duration::from_secs(5),
        }
    }
}

impl ParentBuilder {
    /// Spawns `n` workers running `command`, and restarts them when they die.
    pub fn spawn(self, n: usize, command: WorkerCommand) -> Self {
        self.spawn_group("", n, command)
    }

    /// Spawns `n` workers running `command` as the group `name`, restarted when they die. A
    /// socket routed to a group ([`handshake::Route::group`]) goes only to that group's
    /// workers (and waits while none can take it); other sockets go to any worker. Groups let
    /// one parent serve tenants, names or services from separate processes: a TLS name's
    /// workers hold its certificate, say. Calling it again with the same name replaces that
    /// group.
    pub fn spawn_group(mut self, name: &str, n: usize, command: WorkerCommand) -> Self {
        self.groups.retain(|(g, _, _)| g != name);
        self.groups.push((name.to_string(), n, command));
        self
    }

    /// The placement policy. Default: [`LeastLoaded`].
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Box::new(policy);
        self
    }

    /// [`ParentBuilder::policy`] for a boxed policy (as [`crate::policy::by_name`] returns).
    pub fn boxed_policy(mut self, policy: Box<dyn Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// Sockets accepted and not yet adopted, over all workers; at the bound the listeners pause.
    /// Each is a descriptor of the parent's, so the bound is also lowered, while the parent
    /// runs, to what its descriptor limit (`RLIMIT_NOFILE`) leaves: see [`Stats::budget`].
    /// Default 1024.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Handoffs one worker may have unanswered. Default 256.
    pub fn max_per_worker(mut self, n: u32) -> Self {
        self.max_per_worker = n.max(1);
        self
    }

    /// How long a worker has to answer a handoff. Default 2 s.
    pub fn adopt_timeout(mut self, t: Duration) -> Self {
        self.adopt_timeout = t;
        self
    }

    /// How long a new worker has to answer HELLO with READY. Default 10 s.
    pub fn startup_timeout(mut self, t: Duration) -> Self {
        self.startup_timeout = t;
        self
    }

    /// Placements before a socket is given up and closed. Default 3.
    pub fn max_tries(mut self, n: u32) -> Self {
        self.max_tries = n.max(1);
        self
    }

    /// Most sockets per HANDOFF record (1..=253). Default 64.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.clamp(1, record::MAX_FDS);
        self
    }

    /// How long a worker whose channel has closed (it is exiting: cleaning up after
    /// [`Worker::wait`](crate::Worker::wait) returned, say), or that said it is draining, may
    /// run before it is killed (a named worker: cut off). During [`Parent::drain`] the drain's
    /// deadline applies instead, when it is sooner. Default 10 s.
    pub fn exit_timeout(mut self, t: Duration) -> Self {
        self.exit_timeout = t;
        self
    }

    /// How long a successor that took over must live before this parent lets go of its
    /// listening sockets and its workers (see [`Parent::offer_takeover`]): an upgrade's new
    /// binary most often fails right after it starts. Zero lets go at once (no rollback after
    /// SERVING). Default 5 s.
    pub fn takeover_probation(mut self, t: Duration) -> Self {
        self.probation = t;
        self
    }

    /// Restarts allowed per slot within a period before the slot is given up. Default 5 in 10 s.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Starts the Handoff actor and spawns the workers. The actor belongs to `runtime` and runs
    /// on `reactor`'s event loop ([`Reactor::event_loop`]): accepting, placing and sending a
    /// socket happen on the reactor thread, with no hop to a pool thread (that hop cost the
    /// parent about a third of its CPU per connection).
    ///
    /// Two things block that thread briefly, and with it every other socket of `reactor`:
    /// starting a worker process (fork and exec: 0.4–0.75 ms measured for the `prefork`
    /// example, at start and on each restart) and stopping (up to a second while workers exit). Give the parent a reactor of
    /// its own if other traffic on it cannot wait that long. Call [`Parent`]'s methods from
    /// application threads or pool actors: on the reactor thread itself its asks (`stats`,
    /// `drain`) are refused and [`Parent::wait_ready`] cannot succeed.
    ///
    /// # Errors
    ///
    /// When the actor cannot be spawned, or the first worker cannot be started (a bad command,
    /// no descriptors).
    pub fn start(self, runtime: &Runtime, reactor: &Reactor) -> io::Result<Parent> {
        let adopted = Arc::new(AtomicU64::new(0));
        let (taken_tx, taken_rx) = crossbeam_channel::bounded(1);
        let (rolled_tx, rolled_rx) = crossbeam_channel::bounded(1);
        let limits = Limits {
            max_in_flight: self.max_in_flight,
            max_per_worker: self.max_per_worker,
            max_tries: self.max_tries,
            hold: self.adopt_timeout,
        };
        let slots = self.groups.iter().map(|(_, n, _)| n).sum();
        let config = Config {
            groups: self.groups,
            adopt_timeout: self.adopt_timeout,
            startup_timeout: self.startup_timeout,
            exit_timeout: self.exit_timeout,
            batch: self.batch,
            intensity: self.intensity,
            max_in_flight: self.max_in_flight,
            probation: self.probation,
        };
        let actor = Handoff::new(
            config,
            Ledger::new(self.policy, limits),
            reactor.clone(),
            adopted.clone(),
            taken_tx,
            rolled_tx,
        );
        let addr = runtime
            .spawn_on(reactor.event_loop(), actor, Mailbox::Bounded(1024))
            .map_err(|e: SpawnError| io::Error::other(e.to_string()))?;
        let parent =
            Parent { addr, reactor: reactor.clone(), adopted, taken_over: taken_rx, rolled_back: rolled_rx, slots };
        parent
            .addr
            .ask(|r| HandoffMsg::Control(Control::Start(r)), Duration::from_secs(10))
            .map_err(|e| io::Error::other(e.to_string()))??;
        Ok(parent)
    }
}

/// The parent's handle on its Handoff actor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Parent {
    addr: Addr<Handoff>,
    reactor: Reactor,
    adopted: Arc<AtomicU64>,
    taken_over: crossbeam_channel::Receiver<()>,
    rolled_back: crossbeam_channel::Receiver<()>,
    /// Worker slots (spawned ones): a steered listener has a socket for each.
    slots: usize,
}

impl Parent {
    /// Limits and choices; then [`ParentBuilder::start`].
    pub fn builder() -> ParentBuilder {
        ParentBuilder::default()
    }

    /// The parent's address for sockets: give it to a listener as its owner (it takes
    /// [`Accepted`](baton_transport::Accepted)), or send it [`Dispatch`]es (see [`ToParent`];
    /// [`Parent::dispatch`] checks them first and hands a refused one back).
    ///
    /// # Examples
    ///
    /// A listener bound by hand, then attached so the parent can pause it and hand it to a
    /// successor ([`Parent::listen_tcp`] does both):
    ///
    /// ```no_run
    /// # fn f(parent: &baton_handoff::Parent, reactor: &baton_transport::Reactor) -> std::io::Result<()> {
    /// let options = baton_transport::ListenOptions::default();
    /// let listener = reactor.listen_tcp("127.0.0.1:8080".parse().unwrap(), options, parent.recipient())?;
    /// parent.attach(listener, "main")?;
    /// # Ok(()) }
    /// ```
    pub fn recipient(&self) -> Recipient<ToParent> {
        self.addr.clone().into_recipient()
    }

    /// Binds a TCP listener whose connections go straight to this parent, and lets the parent
    /// pause it while no worker can take more.
    ///
    /// # Errors
    ///
    /// Socket, bind and listen errors.
    ///
    /// The listener is named `main` (the name a successor asks for in a takeover); use
    /// [`Parent::attach`] for others.
    pub fn listen_tcp(&self, addr: std::net::SocketAddr, options: ListenOptions) -> io::Result<Listener> {
        let listener = self.reactor.listen_tcp(addr, options, self.recipient())?;
        self.attach(listener.clone(), "main")?;
        Ok(listener)
    }

    /// [`Parent::listen_tcp`], with a handshake: each connection gets a fresh one from
    /// `handshake`, which reads the client's first bytes and decides where it goes (see
    /// [`handshake`](crate::handshake)).
    ///
    /// # Errors
    ///
    /// Socket, bind and listen errors.
    ///
    /// # Examples
    ///
    /// A first line names the routing key; the worker sees the rest of the stream.
    ///
    /// ```no_run
    /// # fn example(parent: &baton_handoff::Parent) -> std::io::Result<()> {
    /// use baton_handoff::handshake::{HandshakeOptions, Reject, Route, Step};
    /// let handshake = || {
    ///     |read: &[u8], _peer: baton_handoff::handshake::Peer<'_>| match read.iter().position(|&b| b == b'\n') {
    ///         Some(0) => Step::Reject(Reject { reason: "empty key", answer: b"no key\n".to_vec() }),
    ///         Some(end) => Step::Route(Route { consume: end + 1, key: Some(read[..end].to_vec()), ..Route::default() }),
    ///         None => Step::More,
    ///     }
    /// };
    /// parent.listen_tcp_with("127.0.0.1:7000".parse().unwrap(), Default::default(), handshake, HandshakeOptions::default())?;
    /// # Ok(()) }
    /// ```
    pub fn listen_tcp_with<H: handshake::Handshake>(
        &self,
        addr: std::net::SocketAddr,
        options: ListenOptions,
        handshake: impl Fn() -> H + Send + Sync + 'static,
        limits: handshake::HandshakeOptions,
    ) -> io::Result<Listener> {
        let listener = self.reactor.listen_tcp(addr, options, self.recipient())?;
        self.attach_with(listener.clone(), "main", handshake, limits)?;
        Ok(listener)
    }

    /// Hands a socket to the parent for placement (an application that read a handshake uses
    /// this; listeners send [`Accepted`](baton_transport::Accepted) straight to [`Parent::recipient`]). Waits while the
    /// parent's mailbox is full, on threads that may wait (see [`baton_runtime::Addr::send`]);
    /// on a pool thread or an event loop it hands the socket back at once instead.
    ///
    /// The parent asks the kernel what the socket has read and written so far (a `getsockopt`
    /// and an `ioctl`), so that if the worker it is sent to is lost it can tell whether that
    /// worker touched it. [`Parent::dispatch_read`] skips that for a socket whose history the
    /// application knows.
    ///
    /// # Errors
    ///
    /// [`DispatchError`], with the socket back, when a routing key or prelude exceeds
    /// [`record::MAX_KEY`] / [`record::MAX_PRELUDE`], the parent has stopped, or its mailbox
    /// is full on a thread that does not wait.
    pub fn dispatch(&self, socket: Dispatch) -> Result<(), DispatchError> {
        self.dispatch_with(socket, None)
    }

    /// As [`Parent::dispatch`], for a socket whose whole history the application knows: it
    /// accepted the socket itself (from a listener of its own, say, on baton's reactor), read
    /// exactly `read` bytes from it (usually what it passes on as [`Dispatch::prelude`]), and
    /// wrote nothing. The parent takes that instead of asking the kernel: two system calls
    /// less per socket on the parent's thread, which places every socket in turn.
    ///
    /// Say it only when it is exactly true. If the application wrote to the socket, or got it
    /// from elsewhere, use [`Parent::dispatch`]: with a wrong history, the parent could place
    /// again a socket that a lost worker had already read from. (A Unix socket has no
    /// counters to compare with: it is treated as [`Parent::dispatch`] treats it.)
    ///
    /// # Errors
    ///
    /// As [`Parent::dispatch`].
    pub fn dispatch_read(&self, socket: Dispatch, read: usize) -> Result<(), DispatchError> {
        let baseline = match socket.stream {
            baton_transport::Stream::Tcp(_) => Some(probe::Baseline::read_by_parent(read)),
            baton_transport::Stream::Unix(_) => None,
        };
        self.dispatch_with(socket, baseline)
    }

    fn dispatch_with(&self, socket: Dispatch, baseline: Option<probe::Baseline>) -> Result<(), DispatchError> {
        if let Err(refuse) = socket.check() {
            return Err(refuse(Box::new(socket)));
        }
        self.addr.send(HandoffMsg::Dispatch(socket, baseline)).map_err(|e| {
            let why = match e {
                SendError::Closed(_) => ParentError::Stopped,
                SendError::Full(_) => ParentError::Full,
            };
            match e.into_inner() {
                HandoffMsg::Dispatch(d, _) => DispatchError::Parent(why, Box::new(d)),
                _ => unreachable!("sent a Dispatch"),
            }
        })
    }

    /// The nginx shape: instead of accepting, the parent sends the listening socket `fd` to
    /// every worker (now, and once to each new worker process when it answers READY), and the workers accept from it
    /// themselves; their application receives those connections as
    /// [`WorkerEvent::Incoming`](crate::WorkerEvent::Incoming) too. Workers still report their
    /// load. `tag` reaches the application with each connection (see [`Tag`](crate::Tag)).
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `fd` is not a listening stream socket; a [`ParentError`] (inside
    /// the `io::Error`) when the parent did not take it.
    pub fn share_listener(&self, fd: std::os::fd::OwnedFd, tag: crate::Tag) -> io::Result<Address> {
        use rustix::net::{sockopt, AddressFamily, SocketType};
        let listening = sockopt::socket_type(&fd).ok() == Some(SocketType::STREAM)
            && sockopt::socket_acceptconn(&fd).unwrap_or(false);
        if !listening {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a listening stream socket"));
        }
        let local = match rustix::net::getsockname(&fd)? {
            a if a.address_family() == AddressFamily::UNIX => Address::Unix(None),
            a => Address::Inet(std::net::SocketAddr::try_from(a).map_err(io::Error::other)?),
        };
        self.addr
            .send(HandoffMsg::Control(Control::Share(SharedListener { fd, local: local.clone(), tag, slot: None })))
            .map_err(ParentError::from)?;
        Ok(local)
    }

    /// **Steered listening**: connections are placed by the kernel, by the workers' load,
    /// at the cost of plain `SO_REUSEPORT` (no handoff per connection). Binds one
    /// `SO_REUSEPORT` listening socket per worker slot on `addr` (port 0: one port chosen for
    /// all), gives socket *i* to the workers of slot *i*, which accept from it as from a
    /// [shared listener](Parent::share_listener), and steers each new connection to a socket by
    /// weights the parent computes from the workers' reports: a busy or absent worker gets
    /// none, and the parent itself accepts what waits in its socket and hands it to another
    /// worker, so a dead worker's queue is served, not reset. See `steering.rs` in this crate
    /// for the mechanism, its reaction time and its limits.
    ///
    /// Only `options.backlog` and `options.defer_accept` apply. A successor takes the group
    /// over with [`Takeover::steered`](crate::takeover::Takeover::steered) and
    /// [`Parent::steer`]; `tag` reaches the application with each connection.
    ///
    /// # Errors
    ///
    /// What `bind` or `listen` say (`AddrInUse` for an address held outside the group);
    /// a [`ParentError`] (inside the `io::Error`) when the parent did not take the group.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(parent: &baton_handoff::Parent) -> std::io::Result<()> {
    /// let options = baton_transport::ListenOptions::default();
    /// let local = parent.listen_steered("127.0.0.1:8080".parse().unwrap(), &options, 0)?;
    /// # let _ = local; Ok(()) }
    /// ```
    pub fn listen_steered(
        &self,
        addr: std::net::SocketAddr,
        options: &ListenOptions,
        tag: crate::Tag,
    ) -> io::Result<Address> {
        self.steer_group(Vec::new(), addr, options, tag)
    }

    /// [`Parent::listen_steered`] on sockets given: a predecessor's group
    /// ([`Takeover::steered`](crate::takeover::Takeover::steered), in group order), or a
    /// socket systemd passed (its unit needs `ReusePort=yes`). The parent adds members bound
    /// to the same address until there is one per worker slot; members past the last slot
    /// (a predecessor had more workers) get no connection, and the parent serves what waits
    /// in them.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when a socket is not a listening TCP socket with `SO_REUSEPORT`, or
    /// `sockets` is empty; what `bind` and `listen` say for new members; a [`ParentError`]
    /// (inside the `io::Error`) when the parent did not take them.
    pub fn steer(
        &self,
        sockets: Vec<std::os::fd::OwnedFd>,
        options: &ListenOptions,
        tag: crate::Tag,
    ) -> io::Result<Address> {
        if sockets.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no socket to steer"));
        }
        let unspecified = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        self.steer_group(sockets, unspecified, options, tag)
    }

    fn steer_group(
        &self,
        sockets: Vec<std::os::fd::OwnedFd>,
        addr: std::net::SocketAddr,
        options: &ListenOptions,
        tag: crate::Tag,
    ) -> io::Result<Address> {
        let group = steering::GroupOptions { backlog: options.backlog, defer_accept: options.defer_accept };
        let (members, local) = steering::complete_group(sockets, addr, self.slots.max(1), group)?;
        let local = Address::Inet(local);
        self.addr.send(HandoffMsg::Control(Control::Steer(members, local.clone(), tag))).map_err(ParentError::from)?;
        Ok(local)
    }

    /// Lets the parent pause `listener` (whose owner should be [`Parent::recipient`]) while no
    /// worker can take more, close it on drain, and hand it to a successor as `name`.
    ///
    /// # Errors
    ///
    /// [`ParentError`] when the parent did not take the listener (it is closed then, when
    /// the message carrying it is dropped).
    pub fn attach(&self, listener: Listener, name: &str) -> Result<(), ParentError> {
        Ok(self.addr.send(HandoffMsg::Control(Control::Attach(listener, name.to_string(), None)))?)
    }

    /// [`Parent::attach`], with a handshake for each connection `listener` accepts (see
    /// [`Parent::listen_tcp_with`]). A successor taking the listener over attaches it with its
    /// own handshake.
    ///
    /// # Errors
    ///
    /// As [`Parent::attach`].
    pub fn attach_with<H: handshake::Handshake>(
        &self,
        listener: Listener,
        name: &str,
        handshake: impl Fn() -> H + Send + Sync + 'static,
        limits: handshake::HandshakeOptions,
    ) -> Result<(), ParentError> {
        let make: handshake::HandshakeFactory = Arc::new(move || Box::new(handshake()));
        let spec = handshake::HandshakeSpec { make, options: limits };
        Ok(self.addr.send(HandoffMsg::Control(Control::Attach(listener, name.to_string(), Some(spec))))?)
    }

    /// Accepts workers that connect to `endpoint` (a socket path or an abstract name) and pass
    /// `check`. They are served like spawned ones but not restarted (they were not started here).
    ///
    /// # Errors
    ///
    /// From [`ChannelListener::bind`]; a [`ParentError`] (inside the `io::Error`) when the
    /// parent did not take the request.
    pub fn accept_workers(&self, endpoint: &Endpoint, check: PeerCheck) -> io::Result<()> {
        let listener = ChannelListener::bind(endpoint, check)?;
        self.addr.send(HandoffMsg::Control(Control::AcceptWorkers(listener))).map_err(|e| ParentError::from(e).into())
    }

    /// Sockets adopted by workers so far: a shared counter, read without asking the actor
    /// (cheap enough to poll).
    pub fn adopted(&self) -> u64 {
        self.adopted.load(Relaxed)
    }

    /// Lets a successor take over through the control socket at `endpoint` (peers must pass
    /// `check`): it receives this parent's listening sockets by name, and once it confirms it
    /// is serving, this parent stops accepting and hands over what it accepted and never
    /// placed. It keeps its listening sockets and its workers for the
    /// [probation](ParentBuilder::takeover_probation): if the successor's process dies
    /// meanwhile, this parent accepts again from the same sockets (nothing queued in them is
    /// lost), offers the takeover again, and [`Parent::rolled_back`] fires. Once the successor has lasted the probation,
    /// [`Parent::taken_over`] fires (then drain and exit). See [`crate::takeover`].
    ///
    /// # Errors
    ///
    /// From [`ChannelListener::bind`]; a [`ParentError`] (inside the `io::Error`) when the
    /// parent did not take the request.
    pub fn offer_takeover(&self, endpoint: &Endpoint, check: PeerCheck) -> io::Result<()> {
        let listener = ChannelListener::bind(endpoint, check)?;
        self.addr
            .send(HandoffMsg::Control(Control::OfferTakeover(listener, endpoint.clone(), check)))
            .map_err(|e| ParentError::from(e).into())
    }

    /// Waits until there is at least one worker and every worker slot that has not been given
    /// up has a worker that answered READY (polling [`Stats`]); false when `timeout` passed
    /// first. A parent that only accepts named workers is ready once one has connected and
    /// answered. Until then sockets wait in the parent, and a sticky key placed meanwhile goes
    /// to a worker that is ready rather than to its own.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = handoff::later(Instant::now(), timeout);
        loop {
            let ready = |s: &Stats| s.workers.iter().any(|w| w.ready) && s.workers.iter().all(|w| w.ready || w.gave_up);
            if self.stats().is_ok_and(|s| ready(&s)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Receives `()` once a successor has taken over (see [`Parent::offer_takeover`]).
    pub fn taken_over(&self) -> &crossbeam_channel::Receiver<()> {
        &self.taken_over
    }

    /// Receives `()` when a successor died on probation and this parent accepts again (see
    /// [`Parent::offer_takeover`]): it is the service again, and says so to whoever it told of
    /// the upgrade (under systemd: `MAINPID=` its own pid and `READY=1`, see
    /// [`crate::systemd`]). Rollbacks not yet received count as one.
    pub fn rolled_back(&self) -> &crossbeam_channel::Receiver<()> {
        &self.rolled_back
    }

    /// Drains worker `slot` alone: it takes no new sockets, finishes (or, if its application
    /// uses a [`Migrator`](crate::Migrator), hands back) its connections within `deadline`, and
    /// exits; a spawned worker is then restarted. A rolling restart is this, slot by slot.
    ///
    /// # Errors
    ///
    /// [`ParentError`] when the parent did not take the request.
    pub fn retire_worker(&self, slot: usize, deadline: Duration) -> Result<(), ParentError> {
        Ok(self.addr.send(HandoffMsg::Control(Control::Retire(slot, deadline)))?)
    }

    /// A snapshot of the counters.
    ///
    /// # Errors
    ///
    /// [`ParentError::Stopped`]; [`ParentError::NoAnswer`] when the actor does not answer
    /// within a second, or this is a thread that may not wait (a pool thread, the parent's
    /// reactor thread).
    pub fn stats(&self) -> Result<Stats, ParentError> {
        Ok(self.addr.ask(|r| HandoffMsg::Control(Control::Stats(r)), Duration::from_secs(1))?)
    }

    /// Graceful stop: close the listeners, place every socket already accepted, tell the workers
    /// to finish their connections, wait for them to exit, and kill what still runs at the
    /// deadline. Returns when all that is done.
    ///
    /// # Errors
    ///
    /// [`ParentError::Stopped`] when the actor has stopped; [`ParentError::NoAnswer`] on a
    /// thread that may not wait, or when it did not finish within five seconds past the
    /// deadline.
    pub fn drain(&self, deadline: Duration) -> Result<DrainReport, ParentError> {
        Ok(self.addr.ask(
            |r| HandoffMsg::Control(Control::Drain(deadline, r)),
            deadline.saturating_add(Duration::from_secs(5)),
        )?)
    }

    /// Stops the actor; its `stopped` hook stops and reaps every worker it spawned.
    pub fn stop(&self) {
        self.addr.stop();
    }
}
