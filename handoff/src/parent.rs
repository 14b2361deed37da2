//! The parent side: the Handoff actor, which places every accepted socket on a worker process.
//!
//! # The life of a socket in the parent
//!
//! 1. A listener (or an application actor that read a handshake first) sends a [`Dispatch`]:
//!    the socket, its addresses, a tag, an optional routing key and the prelude bytes already
//!    read. It gets an id and becomes *pending*.
//! 2. The [`Policy`] picks a worker among those that can take it now. The id joins that
//!    worker's outbox; a `Flush` the actor sends itself (which runs after the messages already
//!    queued) sends the outbox as HANDOFF records of up to [`ParentBuilder::batch`] sockets.
//! 3. The parent **keeps its copy** of the socket until the worker answers. ADOPTED closes the
//!    copy (close, never shutdown: the connection is the worker's now). REJECTED, the worker's
//!    death, or no answer within [`ParentBuilder::adopt_timeout`] put the socket on another
//!    worker; after [`ParentBuilder::max_tries`] placements it is closed and counted.
//! 4. When nothing can take a socket (every worker at its in-flight bound, backed up, starting,
//!    or gone) it waits in the parent and the listeners pause, so the kernel's backlog holds
//!    new clients; they resume when load drops.
//!
//! A worker that misses the adoption deadline is presumed hung. A worker this parent spawned
//! is killed first (`SIGKILL`), so it cannot adopt a socket that has meanwhile gone elsewhere;
//! a worker that connected by name is cut off (its channel closed).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{Actor, Addr, AskError, Context, Intensity, Mailbox, Recipient, ReplyTo, Runtime, SpawnError};
use baton_transport::{
    Accepted, Address, Interest, ListenOptions, Listener, Reactor, Readiness, Stream, Watch, WatchId,
};

use crate::bootstrap::{ChannelListener, Endpoint, PeerCheck};
use crate::channel::{Channel, RecvBuf, RecvError};
use crate::policy::{Candidate, LeastLoaded, Policy};
use crate::process::WorkerCommand;
use crate::record::{self, Item, Kind, Load, Reason, Record, MAX_RECORD};

/// Adoptions the latency percentiles in [`Stats`] are computed over.
pub const LATENCY_WINDOW: usize = 4096;

/// How long a successor may take between connecting and confirming SERVING.
const SUCCESSOR_PATIENCE: Duration = Duration::from_secs(60);

/// How often the parent checks deadlines, reaps and restarts workers.
const TICK: Duration = Duration::from_millis(20);

/// A socket for the parent to place on a worker.
#[derive(Debug)]
pub struct Dispatch {
    /// The connected socket.
    pub stream: Stream,
    /// The client's address.
    pub peer: Address,
    /// The address it arrived on.
    pub local: Address,
    /// An application label the worker receives (for accepted sockets: the listener's index).
    pub tag: u32,
    /// A routing key for [`Sticky`](crate::Sticky) placement.
    pub key: Option<Vec<u8>>,
    /// Bytes already read from the socket; the worker's application receives them first.
    pub prelude: Vec<u8>,
}

impl Dispatch {
    /// The record item describing this socket, as handoff `id`.
    pub(crate) fn item(&self, id: u64) -> Item {
        Item {
            id,
            kind: Kind::Connection,
            tag: self.tag,
            peer: self.peer.clone(),
            local: self.local.clone(),
            key: self.key.clone(),
            prelude: self.prelude.clone(),
        }
    }

    /// A connection item received with its descriptor (a migration or a takeover), or `None`
    /// when the descriptor is not a connected stream socket.
    pub(crate) fn from_item(item: Item, fd: std::os::fd::OwnedFd) -> Option<Dispatch> {
        let stream = crate::worker::stream_from(fd)?;
        Some(Dispatch {
            stream,
            peer: item.peer,
            local: item.local,
            tag: item.tag,
            key: item.key,
            prelude: item.prelude,
        })
    }
}

impl From<Accepted> for Dispatch {
    fn from(a: Accepted) -> Dispatch {
        Dispatch {
            stream: a.stream,
            peer: a.peer,
            local: a.local,
            tag: a.listener.index() as u32,
            key: None,
            prelude: Vec::new(),
        }
    }
}

/// Why [`Parent::dispatch`] refused a socket (handed back inside).
#[derive(Debug)]
pub enum DispatchError {
    /// The routing key is longer than [`record::MAX_KEY`].
    KeyTooLong(Box<Dispatch>),
    /// The prelude is longer than [`record::MAX_PRELUDE`].
    PreludeTooLong(Box<Dispatch>),
    /// The parent has stopped.
    Stopped(Box<Dispatch>),
}

impl std::fmt::Display for DispatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DispatchError::KeyTooLong(_) => "routing key longer than MAX_KEY",
            DispatchError::PreludeTooLong(_) => "prelude longer than MAX_PRELUDE",
            DispatchError::Stopped(_) => "the parent has stopped",
        })
    }
}

impl std::error::Error for DispatchError {}

/// The Handoff actor's messages.
#[derive(Debug)]
pub enum HandoffMsg {
    /// A socket to place.
    Dispatch(Dispatch),
    /// A worker channel (or the named channel listener) is ready.
    Ready(Readiness),
    /// Send what the outboxes hold.
    Flush,
    /// Deadlines, reaping, restarts.
    Tick,
    /// Requests from the [`Parent`] handle.
    Control(Control),
}

impl From<Accepted> for HandoffMsg {
    fn from(a: Accepted) -> HandoffMsg {
        HandoffMsg::Dispatch(a.into())
    }
}

impl From<Dispatch> for HandoffMsg {
    fn from(d: Dispatch) -> HandoffMsg {
        HandoffMsg::Dispatch(d)
    }
}

impl From<Readiness> for HandoffMsg {
    fn from(r: Readiness) -> HandoffMsg {
        HandoffMsg::Ready(r)
    }
}

/// Requests the [`Parent`] handle makes of its actor.
#[derive(Debug)]
pub enum Control {
    /// Spawn the configured workers.
    Start(ReplyTo<io::Result<()>>),
    /// Pause this listener while nothing can take sockets; give it to a successor by this name.
    Attach(Listener, String),
    /// Accept workers that connect to this named channel.
    AcceptWorkers(ChannelListener),
    /// Let a successor take over through this control socket.
    OfferTakeover(ChannelListener),
    /// A snapshot of the counters.
    Stats(ReplyTo<Stats>),
    /// Stop accepting, place what was accepted, let workers finish, stop them.
    Drain(Duration, ReplyTo<DrainReport>),
    /// Send this listening socket to every worker, now and whenever one (re)starts.
    Share(SharedListener),
    /// Drain one worker (it may hand its connections back); it is restarted once it exits.
    Retire(usize, Duration),
}

/// A listening socket the parent shares with its workers (see [`Parent::share_listener`]).
#[derive(Debug)]
pub struct SharedListener {
    fd: std::os::fd::OwnedFd,
    local: Address,
    tag: u32,
}

/// Counters and per-worker state, for tests and dashboards.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Sockets received for placement.
    pub dispatched: u64,
    /// Sockets adopted by a worker.
    pub adopted: u64,
    /// Rejections received.
    pub rejected: u64,
    /// Sockets placed again after a rejection, a worker's death or a missed deadline.
    pub replaced: u64,
    /// Sockets closed after too many tries.
    pub closed_after_retries: u64,
    /// Live connections workers handed back to be placed elsewhere.
    pub migrated: u64,
    /// Sockets accepted and not yet adopted.
    pub in_flight: usize,
    /// Sockets waiting for any worker to be able to take them.
    pub waiting: usize,
    /// Worker restarts.
    pub restarts: u64,
    /// Median time from accept (or dispatch) to the worker's ADOPTED, over the last
    /// [`LATENCY_WINDOW`] adoptions.
    pub latency_p50: Option<Duration>,
    /// 99th percentile of the same.
    pub latency_p99: Option<Duration>,
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
}

/// One worker's view in [`Stats`].
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    /// Slot number.
    pub slot: usize,
    /// Process id, when known.
    pub pid: Option<u32>,
    /// Ready for handoffs.
    pub ready: bool,
    /// Connections open in the worker.
    pub open: u32,
    /// Handoffs not yet answered.
    pub in_flight: u32,
    /// Sockets this slot adopted, over all its incarnations.
    pub adopted: u64,
}

/// What [`Parent::drain`] achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Accepted sockets that were never adopted (closed at the deadline).
    pub unplaced: usize,
    /// Workers that exited by themselves.
    pub exited: usize,
    /// Workers still running at the deadline, killed.
    pub killed: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Channel open, HELLO sent, READY not yet received.
    Starting,
    Ready,
    /// Told to drain; takes nothing new.
    Draining,
    /// No channel. A spawned slot may be restarted.
    Down,
}

struct Link {
    channel: Arc<Channel>,
    watch: Watch,
}

struct Slot {
    phase: Phase,
    link: Option<Link>,
    child: Option<Child>,
    pid: Option<u32>,
    /// Spawned by us (and so restarted by us); false for workers that connected by name.
    spawned: bool,
    outbox: VecDeque<u64>,
    /// The last send said EAGAIN: the worker is not reading. Nothing more goes to it until
    /// its channel is writable again.
    backed_up: bool,
    /// Records without descriptors (HELLO, DRAIN, STOP) the full channel did not take, sent
    /// first when it is writable again.
    control: VecDeque<Vec<u8>>,
    /// Backed up because the kernel refused descriptors in flight; retried on the tick.
    limited: bool,
    in_flight: u32,
    open: u32,
    queued: u32,
    busy: u32,
    adopted: u64,
    restarts: VecDeque<Instant>,
    restart_at: Option<Instant>,
    gave_up: bool,
    /// When HELLO was sent: a worker that does not answer READY in time is presumed hung.
    linked_at: Instant,
    /// When the worker last sent anything (it sends LOAD at least every 50 ms while alive).
    last_heard: Instant,
}

impl Slot {
    fn new(spawned: bool) -> Slot {
        Slot {
            phase: Phase::Down,
            link: None,
            child: None,
            pid: None,
            spawned,
            outbox: VecDeque::new(),
            backed_up: false,
            control: VecDeque::new(),
            limited: false,
            in_flight: 0,
            open: 0,
            queued: 0,
            busy: 0,
            adopted: 0,
            restarts: VecDeque::new(),
            restart_at: None,
            gave_up: false,
            linked_at: Instant::now(),
            last_heard: Instant::now(),
        }
    }
}

struct Pending {
    socket: Dispatch,
    worker: Option<usize>,
    sent: Option<Instant>,
    accepted_at: Instant,
    tries: u32,
    /// Slots that already refused or lost this socket (bit per slot, slots < 64).
    tried: u64,
}

struct DrainState {
    deadline: Instant,
    reply: Option<ReplyTo<DrainReport>>,
    also: Vec<ReplyTo<DrainReport>>,
    /// Finished: the report is final.
    done: bool,
    told_workers: bool,
    report: DrainReport,
}

/// Limits and choices for the parent.
pub struct ParentBuilder {
    workers: usize,
    command: Option<WorkerCommand>,
    policy: Box<dyn Policy>,
    max_in_flight: usize,
    max_per_worker: u32,
    adopt_timeout: Duration,
    startup_timeout: Duration,
    max_tries: u32,
    batch: usize,
    intensity: Intensity,
}

impl std::fmt::Debug for ParentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentBuilder")
            .field("workers", &self.workers)
            .field("command", &self.command)
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
            workers: 0,
            command: None,
            policy: Box::new(LeastLoaded::default()),
            max_in_flight: 1024,
            max_per_worker: 256,
            adopt_timeout: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(10),
            max_tries: 3,
            batch: 64,
            intensity: Intensity { max_restarts: 5, period: Duration::from_secs(10) },
        }
    }
}

impl ParentBuilder {
    /// Spawns `n` workers running `command`, and restarts them when they die.
    pub fn spawn(mut self, n: usize, command: WorkerCommand) -> Self {
        self.workers = n;
        self.command = Some(command);
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
    /// In-flight descriptors count against the parent's descriptor limit. Default 1024.
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
        let actor = Handoff {
            adopted: adopted.clone(),
            reactor: reactor.clone(),
            slots: (0..self.workers).map(|_| Slot::new(true)).collect(),
            command: self.command,
            policy: self.policy,
            max_in_flight: clamp_in_flight(self.max_in_flight),
            max_per_worker: self.max_per_worker,
            adopt_timeout: self.adopt_timeout,
            startup_timeout: self.startup_timeout,
            max_tries: self.max_tries,
            batch: self.batch,
            intensity: self.intensity,
            pending: HashMap::default(),
            waiting: VecDeque::new(),
            next_id: 1,
            watches: HashMap::new(),
            channel_listener: None,
            listeners: Vec::new(),
            listeners_paused: false,
            takeover_listener: None,
            successor: None,
            successor_since: Instant::now(),
            successor_has_listeners: false,
            taken_over: taken_tx,
            shared_listeners: Vec::new(),
            listener_sends: HashMap::new(),
            listener_retry: Vec::new(),
            flush_scheduled: false,
            recv_buf: RecvBuf::default(),
            send_buf: Vec::with_capacity(MAX_RECORD),
            stats: Stats::default(),
            latencies: VecDeque::with_capacity(LATENCY_WINDOW),
            drain: None,
            me: None,
        };
        let addr = runtime
            .spawn_on(reactor.event_loop(), actor, Mailbox::Bounded(1024))
            .map_err(|e: SpawnError| io::Error::other(e.to_string()))?;
        let parent = Parent { addr, reactor: reactor.clone(), adopted, taken_over: taken_rx };
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
}

impl Parent {
    /// Limits and choices; then [`ParentBuilder::start`].
    pub fn builder() -> ParentBuilder {
        ParentBuilder::default()
    }

    /// Where to send sockets: give it to a listener as its owner, or send [`Dispatch`]es.
    pub fn recipient(&self) -> Recipient<HandoffMsg> {
        self.addr.recipient()
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
        self.attach(listener.clone(), "main");
        Ok(listener)
    }

    /// Hands a socket to the parent for placement (an application that read a handshake uses
    /// this; listeners send [`Accepted`] straight to [`Parent::recipient`]). Waits while the
    /// parent's mailbox is full.
    ///
    /// # Errors
    ///
    /// [`DispatchError`], with the socket back, when a routing key or prelude exceeds
    /// [`record::MAX_KEY`] / [`record::MAX_PRELUDE`] or the parent has stopped.
    pub fn dispatch(&self, socket: Dispatch) -> Result<(), DispatchError> {
        if socket.key.as_ref().is_some_and(|k| k.len() > record::MAX_KEY) {
            return Err(DispatchError::KeyTooLong(Box::new(socket)));
        }
        if socket.prelude.len() > record::MAX_PRELUDE {
            return Err(DispatchError::PreludeTooLong(Box::new(socket)));
        }
        self.addr.send(HandoffMsg::Dispatch(socket)).map_err(|e| match e.0 {
            HandoffMsg::Dispatch(d) => DispatchError::Stopped(Box::new(d)),
            _ => unreachable!("sent a Dispatch"),
        })
    }

    /// The nginx shape: instead of accepting, the parent sends the listening socket `fd` to
    /// every worker (now, and whenever one starts or restarts), and the workers accept from it
    /// themselves; their application receives those connections as
    /// [`WorkerEvent::Incoming`](crate::WorkerEvent::Incoming) too. Workers still report their
    /// load. `tag` reaches the application with each connection.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `fd` is not a listening stream socket; `NotConnected` when the
    /// parent has stopped.
    pub fn share_listener(&self, fd: std::os::fd::OwnedFd, tag: u32) -> io::Result<Address> {
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
            .send(HandoffMsg::Control(Control::Share(SharedListener { fd, local: local.clone(), tag })))
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "the parent has stopped"))?;
        Ok(local)
    }

    /// Lets the parent pause `listener` (whose owner should be [`Parent::recipient`]) while no
    /// worker can take more, close it on drain, and hand it to a successor as `name`.
    pub fn attach(&self, listener: Listener, name: &str) {
        if self.addr.send(HandoffMsg::Control(Control::Attach(listener, name.to_string()))).is_err() {
            log::warn!("handoff: attach after the parent stopped");
        }
    }

    /// Accepts workers that connect to `endpoint` (a socket path or an abstract name) and pass
    /// `check`. They are served like spawned ones but not restarted (they were not started here).
    ///
    /// # Errors
    ///
    /// From [`ChannelListener::bind`].
    pub fn accept_workers(&self, endpoint: &Endpoint, check: PeerCheck) -> io::Result<()> {
        let listener = ChannelListener::bind(endpoint, check)?;
        self.addr
            .send(HandoffMsg::Control(Control::AcceptWorkers(listener)))
            .map_err(|_| io::Error::other("the parent has stopped"))
    }

    /// Sockets adopted by workers so far: a shared counter, read without asking the actor
    /// (cheap enough to poll).
    pub fn adopted(&self) -> u64 {
        self.adopted.load(Relaxed)
    }

    /// Lets a successor take over through the control socket at `endpoint` (peers must pass
    /// `check`): it receives this parent's listening sockets by name, and once it confirms it
    /// is serving, this parent stops accepting, hands over what it accepted and never placed,
    /// and [`Parent::taken_over`] fires (then drain and exit). See [`crate::takeover`].
    ///
    /// # Errors
    ///
    /// From [`ChannelListener::bind`].
    pub fn offer_takeover(&self, endpoint: &Endpoint, check: PeerCheck) -> io::Result<()> {
        let listener = ChannelListener::bind(endpoint, check)?;
        self.addr
            .send(HandoffMsg::Control(Control::OfferTakeover(listener)))
            .map_err(|_| io::Error::other("the parent has stopped"))
    }

    /// Waits until every worker slot has a worker that answered READY (polling [`Stats`]);
    /// false when `timeout` passed first. Until then sockets wait in the parent, and a sticky
    /// key placed meanwhile goes to a worker that is ready rather than to its own.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stats().is_ok_and(|s| s.workers.iter().all(|w| w.ready)) {
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

    /// Drains worker `slot` alone: it takes no new sockets, finishes (or, if its application
    /// uses a [`Migrator`](crate::Migrator), hands back) its connections within `deadline`, and
    /// exits; a spawned worker is then restarted. A rolling restart is this, slot by slot.
    pub fn retire_worker(&self, slot: usize, deadline: Duration) {
        if self.addr.send(HandoffMsg::Control(Control::Retire(slot, deadline))).is_err() {
            log::warn!("handoff: retire after the parent stopped");
        }
    }

    /// A snapshot of the counters.
    ///
    /// # Errors
    ///
    /// When the actor does not answer within a second, or has stopped.
    pub fn stats(&self) -> Result<Stats, AskError> {
        self.addr.ask(|r| HandoffMsg::Control(Control::Stats(r)), Duration::from_secs(1))
    }

    /// Graceful stop: close the listeners, place every socket already accepted, tell the workers
    /// to finish their connections, wait for them to exit, and kill what still runs at the
    /// deadline. Returns when all that is done.
    ///
    /// # Errors
    ///
    /// When the actor has stopped.
    pub fn drain(&self, deadline: Duration) -> Result<DrainReport, AskError> {
        self.addr.ask(|r| HandoffMsg::Control(Control::Drain(deadline, r)), deadline + Duration::from_secs(5))
    }

    /// Stops the actor; its `stopped` hook stops and reaps every worker it spawned.
    pub fn stop(&self) {
        self.addr.stop();
    }
}

/// What a watch of the actor's belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    /// A worker's channel.
    Worker(usize),
    /// The socket named workers connect to.
    WorkerListener,
    /// The control socket a successor connects to.
    TakeoverListener,
    /// A successor's control connection.
    Successor,
}

/// Why a worker's slot went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Down {
    /// Its end of the channel closed (it exited, or dropped the channel).
    EndOfFile,
    /// Sending or receiving failed otherwise.
    ChannelError,
    /// It did not answer in time.
    Deadline,
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Down::EndOfFile => "its channel closed",
            Down::ChannelError => "its channel failed",
            Down::Deadline => "it stopped answering",
        })
    }
}

/// The Handoff actor (build it with [`Parent::builder`]).
pub struct Handoff {
    /// Sockets adopted so far, readable without a message ([`Parent::adopted`]).
    adopted: Arc<AtomicU64>,
    reactor: Reactor,
    slots: Vec<Slot>,
    command: Option<WorkerCommand>,
    policy: Box<dyn Policy>,
    max_in_flight: usize,
    max_per_worker: u32,
    adopt_timeout: Duration,
    startup_timeout: Duration,
    max_tries: u32,
    batch: usize,
    intensity: Intensity,
    pending: HashMap<u64, Pending, BuildIdHasher>,
    waiting: VecDeque<u64>,
    next_id: u64,
    /// Which slot each channel watch belongs to (`None`: the named channel listener).
    watches: HashMap<WatchId, Watched>,
    channel_listener: Option<(Arc<ChannelListener>, Watch)>,
    /// The listeners this parent accepts on, each with its name (what a successor asks for).
    listeners: Vec<(Listener, String)>,
    listeners_paused: bool,
    takeover_listener: Option<(Arc<ChannelListener>, Watch)>,
    successor: Option<(Arc<Channel>, Watch)>,
    /// When the successor connected: one that never confirms is dropped after
    /// [`SUCCESSOR_PATIENCE`], so it cannot hold the only takeover slot.
    successor_since: Instant,
    /// The connected successor received every listening socket (only then may it confirm).
    successor_has_listeners: bool,
    /// Told once a successor has taken over.
    taken_over: crossbeam_channel::Sender<()>,
    /// Listening sockets every worker accepts on (the nginx shape), kept for later workers.
    shared_listeners: Vec<SharedListener>,
    /// Listener shares sent and not yet answered: record id → index in `shared_listeners`.
    listener_sends: HashMap<u64, usize>,
    /// Listener shares a full channel did not take: (slot, index), retried on the tick.
    listener_retry: Vec<(usize, usize)>,
    flush_scheduled: bool,
    recv_buf: RecvBuf,
    send_buf: Vec<u8>,
    stats: Stats,
    /// The last [`LATENCY_WINDOW`] accept-to-adopted times.
    latencies: VecDeque<Duration>,
    drain: Option<DrainState>,
    me: Option<Addr<Handoff>>,
}

impl Actor for Handoff {
    type Message = HandoffMsg;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
        ctx.send_after(TICK, HandoffMsg::Tick);
    }

    fn handle(&mut self, ctx: &mut Context<Self>, msg: HandoffMsg) {
        match msg {
            HandoffMsg::Dispatch(d) => self.dispatch(d),
            HandoffMsg::Ready(r) => self.on_ready(r),
            HandoffMsg::Flush => {
                self.flush_scheduled = false;
                for slot in 0..self.slots.len() {
                    self.flush(slot);
                }
            }
            HandoffMsg::Tick => {
                self.tick();
                ctx.send_after(TICK, HandoffMsg::Tick);
            }
            HandoffMsg::Control(c) => self.control(c),
        }
        self.update_listeners();
    }

    fn stopped(&mut self, _reason: &baton_runtime::ExitReason) {
        // No worker outlives the parent's actor: ask them to stop, then make sure.
        for slot in 0..self.slots.len() {
            self.send_record(slot, &Record::Stop);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for s in &mut self.slots {
            if let Some(child) = s.child.as_mut() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
            if let Some(link) = s.link.take() {
                link.watch.close();
            }
        }
        if let Some((_, watch)) = self.channel_listener.take() {
            watch.close();
        }
    }
}

impl Handoff {
    fn control(&mut self, c: Control) {
        match c {
            Control::Start(reply) => {
                let mut result = Ok(());
                for slot in 0..self.slots.len() {
                    if let Err(e) = self.spawn_worker(slot) {
                        log::error!("handoff: cannot start worker {slot}: {e}");
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
                let _ = reply.send(result);
            }
            Control::Attach(l, name) => {
                if self.listeners_paused {
                    l.pause();
                }
                self.listeners.push((l, name));
            }
            Control::OfferTakeover(listener) => {
                let listener = Arc::new(listener);
                match self.reactor.watch(listener.clone(), Interest::READ, self.ready_recipient()) {
                    Ok(watch) => {
                        self.watches.insert(watch.id(), Watched::TakeoverListener);
                        self.takeover_listener = Some((listener, watch));
                    }
                    Err(e) => log::error!("handoff: cannot watch the takeover socket: {e}"),
                }
            }
            Control::AcceptWorkers(listener) => {
                let listener = Arc::new(listener);
                match self.reactor.watch(listener.clone(), Interest::READ, self.ready_recipient()) {
                    Ok(watch) => {
                        self.watches.insert(watch.id(), Watched::WorkerListener);
                        self.channel_listener = Some((listener, watch));
                    }
                    Err(e) => log::error!("handoff: cannot watch the channel listener: {e}"),
                }
            }
            Control::Retire(slot, deadline) => {
                if slot < self.slots.len() && self.slots[slot].link.is_some() {
                    log::info!("handoff: retiring worker {slot}");
                    self.slots[slot].phase = Phase::Draining;
                    // What was placed there and not yet sent goes elsewhere (it would be refused).
                    self.reroute_outbox(slot);
                    let ms = deadline.as_millis().min(u128::from(u32::MAX)) as u32;
                    self.send_record(slot, &Record::Drain { deadline_ms: ms });
                }
            }
            Control::Share(listener) => {
                self.shared_listeners.push(listener);
                let index = self.shared_listeners.len() - 1;
                for slot in 0..self.slots.len() {
                    if self.slots[slot].phase == Phase::Ready {
                        self.send_listener(slot, index);
                    }
                }
            }
            Control::Stats(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Control::Drain(deadline, reply) => {
                if let Some(d) = self.drain.as_mut() {
                    if d.done {
                        let _ = reply.send(d.report.clone());
                    } else {
                        // Already draining: answer this caller too, when that one ends.
                        d.also.push(reply);
                    }
                    return;
                }
                for (l, _) in self.listeners.drain(..) {
                    l.close_and_wait();
                }
                // Our copies of shared listeners: workers close theirs on DRAIN.
                self.shared_listeners.clear();
                if let Some((_, watch)) = self.channel_listener.take() {
                    // No new workers during a drain.
                    watch.close();
                }
                self.drain = Some(DrainState {
                    deadline: Instant::now() + deadline,
                    reply: Some(reply),
                    also: Vec::new(),
                    done: false,
                    told_workers: false,
                    report: DrainReport::default(),
                });
                // Not now: connections the listeners accepted before closing are still in our
                // mailbox, ahead of the next tick, which moves the drain on once they are placed.
            }
        }
    }

    /// Sends shared listener `index` to `slot` (the parent keeps its copy).
    fn send_listener(&mut self, slot: usize, index: usize) {
        let Some(link) = self.slots[slot].link.as_ref() else { return };
        let l = &self.shared_listeners[index];
        let id = self.next_id;
        self.next_id += 1;
        let item = Item {
            id,
            kind: Kind::Listener,
            tag: l.tag,
            peer: l.local.clone(),
            local: l.local.clone(),
            key: None,
            prelude: Vec::new(),
        };
        match link.channel.send(&Record::Handoff(vec![item]), &[l.fd.as_fd()], &mut self.send_buf) {
            Ok(()) => {
                self.listener_sends.insert(id, index);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || too_many_in_flight(&e) => {
                // The worker's channel is full for now: again on the tick.
                self.listener_retry.push((slot, index));
            }
            Err(e) => log::error!("handoff: could not share listener {index} with worker {slot}: {e}"),
        }
    }

    fn ready_recipient(&self) -> Recipient<Readiness> {
        self.me.as_ref().expect("set in started").recipient_map(HandoffMsg::Ready, |m| match m {
            HandoffMsg::Ready(r) => Some(r),
            _ => None,
        })
    }

    fn snapshot(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.in_flight = self.pending.len();
        stats.waiting = self.waiting.len();
        let mut sorted: Vec<Duration> = self.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied();
        stats.latency_p50 = at(0.5);
        stats.latency_p99 = at(0.99);
        stats.workers = self
            .slots
            .iter()
            .enumerate()
            .map(|(slot, s)| WorkerStats {
                slot,
                pid: s.pid,
                ready: s.phase == Phase::Ready,
                open: s.open,
                in_flight: s.in_flight,
                adopted: s.adopted,
            })
            .collect();
        stats
    }

    // ----- workers -----------------------------------------------------------------------

    fn spawn_worker(&mut self, slot: usize) -> io::Result<()> {
        let command = self.command.as_ref().ok_or_else(|| io::Error::other("no worker command"))?;
        let (channel, child) = command.spawn(slot)?;
        let pid = child.id();
        self.slots[slot].child = Some(child);
        self.slots[slot].pid = Some(pid);
        log::info!("handoff: worker {slot} started (pid {pid})");
        let linked = self.link(slot, channel);
        if linked.is_err() {
            // A worker we cannot talk to is no worker: stop it and try again later.
            if let Some(mut child) = self.slots[slot].child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.slots[slot].restart_at = Some(Instant::now() + Duration::from_millis(200));
        }
        linked
    }

    /// Puts a channel into service for `slot`: watch it and say hello.
    fn link(&mut self, slot: usize, channel: Channel) -> io::Result<()> {
        let channel = Arc::new(channel);
        let watch = self.reactor.watch(channel.clone(), Interest::READ, self.ready_recipient())?;
        self.watches.insert(watch.id(), Watched::Worker(slot));
        let s = &mut self.slots[slot];
        s.link = Some(Link { channel, watch });
        s.phase = Phase::Starting;
        s.linked_at = Instant::now();
        s.last_heard = Instant::now();
        s.backed_up = false;
        s.control.clear();
        s.open = 0;
        s.queued = 0;
        self.send_record(slot, &Record::Hello { worker: slot as u32 });
        Ok(())
    }

    /// Sends a record without descriptors; a failure takes the worker down.
    /// Sends a record without descriptors now, or after what the full channel still holds.
    fn send_record(&mut self, slot: usize, record: &Record) {
        let s = &mut self.slots[slot];
        let Some(link) = s.link.as_ref() else { return };
        if s.control.is_empty() {
            match link.channel.send(record, &[], &mut self.send_buf) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return {
                        log::warn!("handoff: sending to worker {slot} failed: {e}");
                        self.worker_down(slot, Down::ChannelError)
                    }
                }
            }
        }
        let mut bytes = Vec::new();
        record::encode(record, &mut bytes);
        s.control.push_back(bytes);
        s.backed_up = true;
        link.watch.arm(Interest::BOTH);
    }

    /// Sends the held control records; true when none is left.
    fn send_control(&mut self, slot: usize) -> bool {
        let s = &mut self.slots[slot];
        let Some(link) = s.link.as_ref() else { return false };
        let channel = link.channel.clone();
        while let Some(bytes) = s.control.front() {
            match channel.send_bytes(bytes, &[]) {
                Ok(()) => {
                    s.control.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    {
                        log::warn!("handoff: sending to worker {slot} failed: {e}");
                        self.worker_down(slot, Down::ChannelError)
                    };
                    return false;
                }
            }
        }
        true
    }

    /// The worker's channel is gone (end of file, error, or cut off): everything it had not
    /// adopted goes elsewhere, and a spawned worker is restarted (within the intensity).
    fn worker_down(&mut self, slot: usize, why: Down) {
        let s = &mut self.slots[slot];
        let Some(link) = s.link.take() else { return };
        link.watch.close();
        self.watches.remove(&link.watch.id());
        drop(link);
        log::warn!("handoff: worker {slot} (pid {:?}) is down: {why}", s.pid);
        // A socket sent to a worker that might still read it must not also go elsewhere, or two
        // workers would serve it. A spawned worker is killed first (it cannot adopt anything
        // after that); end of file means the worker's end, and the records queued in it, are
        // gone. A named worker cut off for any other reason may still be alive: what it was
        // sent is given up instead of placed twice.
        let mut may_adopt = false;
        if let Some(child) = s.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
        } else {
            may_adopt = why != Down::EndOfFile;
        }
        metrics::counter!("baton_handoff_worker_down_total").increment(1);
        s.phase = Phase::Down;
        s.outbox.clear();
        s.control.clear();
        s.backed_up = false;
        s.in_flight = 0;
        s.open = 0;
        s.queued = 0;
        if s.spawned && self.drain.is_none() {
            s.restart_at = Some(Instant::now());
        }
        let lost: Vec<(u64, bool)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.worker == Some(slot))
            .map(|(&id, p)| (id, p.sent.is_some()))
            .collect();
        for (id, sent) in lost {
            if sent && may_adopt {
                self.give_up(id, "sent to a worker that was cut off and may still adopt it");
            } else {
                self.retry(id, slot);
            }
        }
    }

    /// Restarts, within the intensity, the spawned slots that are down and reaps exited ones.
    fn supervise(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if let Some(child) = s.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        log::info!("handoff: worker {slot} (pid {}) exited: {status}", child.id());
                        s.child = None;
                        if let Some(d) = self.drain.as_mut() {
                            d.report.exited += 1;
                        }
                        if s.link.is_some() {
                            // Its channel may still hold records it sent; read them, then the
                            // end of file takes the slot down.
                            continue;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => log::error!("handoff: waiting for worker {slot}: {e}"),
                }
            }
            let s = &mut self.slots[slot];
            let due = s.restart_at.is_some_and(|at| at <= now);
            if !due || s.child.is_some() || s.link.is_some() || s.gave_up || self.drain.is_some() {
                continue;
            }
            s.restart_at = None;
            while s.restarts.front().is_some_and(|&t| now.duration_since(t) > self.intensity.period) {
                s.restarts.pop_front();
            }
            if s.restarts.len() >= self.intensity.max_restarts as usize {
                s.gave_up = true;
                log::error!(
                    "handoff: worker {slot} died more than {} times in {:?}; not restarting it",
                    self.intensity.max_restarts,
                    self.intensity.period
                );
                continue;
            }
            s.restarts.push_back(now);
            self.stats.restarts += 1;
            metrics::counter!("baton_handoff_worker_restarts_total").increment(1);
            if let Err(e) = self.spawn_worker(slot) {
                log::error!("handoff: restarting worker {slot} failed: {e}; retrying");
                self.slots[slot].restart_at = Some(now + Duration::from_millis(200));
            }
        }
    }

    // ----- placement -----------------------------------------------------------------------

    fn dispatch(&mut self, socket: Dispatch) {
        self.dispatch_avoiding(socket, None);
    }

    /// Places a socket, on another worker than `avoid` when one can take it.
    fn dispatch_avoiding(&mut self, socket: Dispatch, avoid: Option<usize>) {
        if socket.key.as_ref().is_some_and(|k| k.len() > record::MAX_KEY) || socket.prelude.len() > record::MAX_PRELUDE
        {
            // Sent to the recipient directly, past `Parent::dispatch`'s check.
            log::error!("handoff: closing a connection from {:?}: routing key or prelude over the limit", socket.peer);
            metrics::counter!("baton_handoff_invalid_total").increment(1);
            return;
        }
        let mut socket = socket;
        socket.peer = describable(socket.peer);
        socket.local = describable(socket.local);
        let id = self.next_id;
        self.next_id += 1;
        self.stats.dispatched += 1;
        metrics::counter!("baton_handoff_dispatched_total").increment(1);
        self.pending.insert(
            id,
            Pending {
                socket,
                worker: None,
                sent: None,
                accepted_at: Instant::now(),
                tries: 0,
                tried: avoid.filter(|&s| s < 64).map_or(0, |s| 1 << s),
            },
        );
        if self.drain.as_ref().is_some_and(|d| d.told_workers) {
            // Too late for any worker: nobody takes new sockets now.
            self.give_up(id, "arrived after workers were told to drain");
            return;
        }
        self.place(id);
        metrics::gauge!("baton_handoff_in_flight").set(self.pending.len() as f64);
    }

    /// Chooses a worker for pending socket `id`, or parks it in `waiting`.
    fn place(&mut self, id: u64) {
        let Some(p) = self.pending.get(&id) else { return };
        let eligible = |s: &Slot| s.phase == Phase::Ready && !s.backed_up && s.in_flight < self.max_per_worker;
        let mut candidates: Vec<Candidate> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| eligible(s) && (*i >= 64 || p.tried & (1 << i) == 0))
            .map(|(slot, s)| Candidate { slot, in_flight: s.in_flight, open: s.open, queued: s.queued, busy: s.busy })
            .collect();
        if candidates.is_empty() && p.tried != 0 {
            // Every able worker already had a go: try them again rather than wait forever.
            candidates = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| eligible(s))
                .map(|(slot, s)| Candidate {
                    slot,
                    in_flight: s.in_flight,
                    open: s.open,
                    queued: s.queued,
                    busy: s.busy,
                })
                .collect();
        }
        if candidates.is_empty() {
            self.waiting.push_back(id);
            return;
        }
        let key = p.socket.key.as_deref();
        let choice = self.policy.choose(&candidates, key);
        let slot = candidates.get(choice).unwrap_or(&candidates[0]).slot;
        let p = self.pending.get_mut(&id).expect("checked above");
        p.worker = Some(slot);
        p.tries += 1;
        let s = &mut self.slots[slot];
        s.in_flight += 1;
        s.outbox.push_back(id);
        self.schedule_flush();
    }

    fn schedule_flush(&mut self) {
        if self.flush_scheduled {
            return;
        }
        self.flush_scheduled = true;
        // The flush runs after the messages already queued, so a burst of accepts leaves in
        // few records. If our own mailbox is full, flush now instead.
        let me = self.me.as_ref().expect("set in started");
        if me.try_send(HandoffMsg::Flush).is_err() {
            self.flush_scheduled = false;
            for slot in 0..self.slots.len() {
                self.flush(slot);
            }
        }
    }

    /// Places waiting sockets while some worker can take them.
    fn place_waiting(&mut self) {
        let n = self.waiting.len();
        for _ in 0..n {
            let Some(id) = self.waiting.pop_front() else { break };
            self.place(id);
            if self.waiting.back() == Some(&id) {
                // Nobody could take it; the rest will not fare better now.
                break;
            }
        }
    }

    /// Another go for `id`, which `slot` refused or lost; closed after `max_tries`.
    fn retry(&mut self, id: u64, slot: usize) {
        let Some(p) = self.pending.get_mut(&id) else { return };
        p.worker = None;
        p.sent = None;
        self.slots[slot].outbox.retain(|&o| o != id);
        if slot < 64 {
            p.tried |= 1 << slot;
        }
        if p.tries >= self.max_tries {
            self.give_up(id, "too many tries");
            return;
        }
        self.stats.replaced += 1;
        metrics::counter!("baton_handoff_replaced_total").increment(1);
        self.place(id);
    }

    fn give_up(&mut self, id: u64, why: &str) {
        if let Some(p) = self.pending.remove(&id) {
            if let Some(slot) = p.worker {
                let s = &mut self.slots[slot];
                s.in_flight = s.in_flight.saturating_sub(1);
                s.outbox.retain(|&o| o != id);
            }
            log::warn!("handoff: closing a connection from {:?} after {} tries: {why}", p.socket.peer, p.tries);
            self.stats.closed_after_retries += 1;
            metrics::counter!("baton_handoff_closed_after_retries_total").increment(1);
        }
    }

    // ----- channel I/O ---------------------------------------------------------------------

    /// Sends `slot`'s outbox as HANDOFF records until it is empty or the channel is full.
    fn flush(&mut self, slot: usize) {
        while !self.slots[slot].outbox.is_empty() && !self.slots[slot].backed_up {
            let Some(link) = self.slots[slot].link.as_ref() else {
                return;
            };
            let channel = link.channel.clone();
            let mut items = Vec::new();
            let mut ids = Vec::new();
            let mut size = record::HEADER_LEN;
            for &id in &self.slots[slot].outbox {
                let Some(p) = self.pending.get(&id) else { continue };
                let item = p.socket.item(id);
                let len = record::item_len(&item);
                if !items.is_empty() && (items.len() == self.batch || size + len > MAX_RECORD) {
                    break;
                }
                size += len;
                items.push(item);
                ids.push(id);
            }
            // Everything scanned up to the last item taken (ids no longer pending are skipped).
            let taken = match ids.last() {
                Some(last) => self.slots[slot].outbox.iter().position(|id| id == last).map_or(0, |i| i + 1),
                None => self.slots[slot].outbox.len(),
            };
            if items.is_empty() {
                self.slots[slot].outbox.drain(..taken);
                continue;
            }
            let fds: Vec<BorrowedFd<'_>> = ids.iter().map(|id| self.pending[id].socket.stream.as_fd()).collect();
            let record = Record::Handoff(items);
            match channel.send(&record, &fds, &mut self.send_buf) {
                Ok(()) => {
                    drop(fds);
                    let now = Instant::now();
                    self.slots[slot].outbox.drain(..taken);
                    for id in ids {
                        if let Some(p) = self.pending.get_mut(&id) {
                            p.sent = Some(now);
                        }
                    }
                    metrics::counter!("baton_handoff_records_sent_total").increment(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || too_many_in_flight(&e) => {
                    drop(fds);
                    self.slots[slot].backed_up = true;
                    if too_many_in_flight(&e) {
                        // The channel is writable, so waiting for writability would spin: try
                        // again on the tick.
                        log::warn!("handoff: the kernel refuses more descriptors in flight ({e}); holding");
                        self.slots[slot].limited = true;
                    } else if let Some(link) = self.slots[slot].link.as_ref() {
                        log::debug!("handoff: worker {slot}'s channel is full; holding its outbox");
                        link.watch.arm(Interest::BOTH);
                    }
                    // Whatever it holds beyond what it can send soon goes elsewhere.
                    self.reroute_outbox(slot);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    // Not the worker's fault: these sockets cannot be described in a record.
                    drop(fds);
                    log::error!("handoff: cannot encode a record for worker {slot}: {e}");
                    self.slots[slot].outbox.drain(..taken);
                    for id in ids {
                        self.slots[slot].in_flight = self.slots[slot].in_flight.saturating_sub(1);
                        self.give_up(id, "record could not be encoded");
                    }
                }
                Err(e) => {
                    drop(fds);
                    {
                        log::warn!("handoff: sending to worker {slot} failed: {e}");
                        self.worker_down(slot, Down::ChannelError)
                    };
                    return;
                }
            }
        }
    }

    /// A backed-up worker's unsent sockets are placed on other workers.
    fn reroute_outbox(&mut self, slot: usize) {
        let ids: Vec<u64> = self.slots[slot].outbox.drain(..).collect();
        for id in ids {
            self.slots[slot].in_flight = self.slots[slot].in_flight.saturating_sub(1);
            if let Some(p) = self.pending.get_mut(&id) {
                p.worker = None;
                p.tries = p.tries.saturating_sub(1);
                if slot < 64 {
                    p.tried |= 1 << slot;
                }
            }
            self.place(id);
        }
    }

    fn on_ready(&mut self, r: Readiness) {
        let Some(&which) = self.watches.get(&r.watch) else {
            return;
        };
        let slot = match which {
            Watched::Worker(slot) => slot,
            Watched::WorkerListener => return self.accept_workers(),
            Watched::TakeoverListener => return self.accept_successor(),
            Watched::Successor => return self.hear_successor(),
        };
        if r.writable && self.slots[slot].backed_up && self.send_control(slot) {
            self.slots[slot].backed_up = false;
            self.flush(slot);
        }
        if r.readable || !r.writable {
            self.receive(slot);
        }
        if let Some(link) = self.slots[slot].link.as_ref() {
            let interest = if self.slots[slot].backed_up { Interest::BOTH } else { Interest::READ };
            link.watch.arm(interest);
        }
        self.place_waiting();
    }

    /// A successor connects to the takeover socket: one at a time.
    fn accept_successor(&mut self) {
        let Some((listener, watch)) = self.takeover_listener.as_ref() else { return };
        let (listener, watch) = (listener.clone(), watch.clone());
        for channel in accept_waiting(&listener, "a successor") {
            if self.successor.is_some() {
                log::warn!("handoff: a takeover is already in progress; refusing another");
                continue;
            }
            let channel = Arc::new(channel);
            match self.reactor.watch(channel.clone(), Interest::READ, self.ready_recipient()) {
                Ok(w) => {
                    log::info!("handoff: a successor connected for takeover");
                    self.watches.insert(w.id(), Watched::Successor);
                    self.successor = Some((channel, w));
                    self.successor_since = Instant::now();
                    self.successor_has_listeners = false;
                }
                Err(e) => log::error!("handoff: cannot watch the successor: {e}"),
            }
        }
        watch.arm(Interest::READ);
    }

    /// Forgets the successor's control connection (closing our end).
    fn drop_successor(&mut self) {
        if let Some((_, w)) = self.successor.take() {
            w.close();
            self.watches.remove(&w.id());
        }
    }

    /// Records from the successor: TAKE, then SERVING (or nothing, and end of file: rollback).
    fn hear_successor(&mut self) {
        loop {
            let Some((channel, _)) = self.successor.as_ref() else { return };
            let channel = channel.clone();
            match channel.recv(&mut self.recv_buf) {
                Ok((Record::Take, _)) => self.give_listeners(&channel),
                Ok((Record::Serving, _)) if self.successor_has_listeners => self.release(&channel),
                Ok((Record::Serving, _)) => {
                    log::warn!("handoff: SERVING from a successor that has not taken the listeners; ignored");
                }
                Ok((other, _)) => log::warn!("handoff: unexpected {other:?} from the successor"),
                Err(RecvError::WouldBlock) => break,
                Err(e) => {
                    if self.listeners.is_empty() && self.shared_listeners.is_empty() {
                        log::info!("handoff: the successor disconnected after the takeover");
                    } else {
                        log::warn!("handoff: the successor went away before serving ({e}); still serving");
                    }
                    self.drop_successor();
                    return;
                }
            }
        }
        if let Some((_, w)) = self.successor.as_ref() {
            w.arm(Interest::READ);
        }
    }

    fn give_listeners(&mut self, channel: &Channel) {
        let mut items = Vec::new();
        let mut fds = Vec::new();
        let named = self.listeners.iter().map(|(l, name)| (l.duplicate(), l.local_addr().clone(), name.clone())).chain(
            self.shared_listeners.iter().map(|l| {
                (
                    rustix::io::fcntl_dupfd_cloexec(&l.fd, 0).map_err(io::Error::from),
                    l.local.clone(),
                    format!("shared:{}", l.tag),
                )
            }),
        );
        for (fd, local, name) in named {
            match fd {
                Ok(fd) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let key = Some(name.into_bytes());
                    items.push(Item {
                        id,
                        kind: Kind::Listener,
                        tag: 0,
                        peer: local.clone(),
                        local,
                        key,
                        prelude: Vec::new(),
                    });
                    fds.push(fd);
                }
                Err(e) => log::error!("handoff: cannot duplicate listener {name} for the successor: {e}"),
            }
        }
        if items.len() != self.listeners.len() + self.shared_listeners.len() {
            // A partial hand-over would let the successor confirm and us close sockets it never
            // received: refuse the takeover instead (it sees end of file; we keep serving).
            log::error!("handoff: could not duplicate every listener for the successor; refusing the takeover");
            self.drop_successor();
            return;
        }
        if items.is_empty() {
            self.successor_has_listeners = true;
            // Nothing to hand over (an empty HANDOFF is no record): say so with RELEASED.
            log::warn!("handoff: a successor asked for listeners, but this parent has none");
            let _ = channel.send(&Record::Released, &[], &mut self.send_buf);
            return;
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        match channel.send(&Record::Handoff(items), &borrowed, &mut self.send_buf) {
            Ok(()) => {
                self.successor_has_listeners = true;
                log::info!("handoff: gave {} listening socket(s) to the successor", fds.len());
            }
            Err(e) => log::error!("handoff: sending listeners to the successor failed: {e}"),
        }
    }

    /// The successor serves: stop accepting, hand over what was accepted and never placed,
    /// say RELEASED.
    fn release(&mut self, channel: &Channel) {
        for (l, _) in self.listeners.drain(..) {
            // The successor listens on the same socket (and path) now. Waiting for the close
            // puts every connection this listener accepted in our mailbox ahead of the drain
            // our application asks for once it hears it was taken over.
            l.keep_path_on_close();
            l.close_and_wait();
        }
        self.shared_listeners.clear();
        // A successor of the successor will bind the control socket again.
        if let Some((_, w)) = self.takeover_listener.take() {
            w.close();
            self.watches.remove(&w.id());
        }
        let unplaced: Vec<u64> = self.waiting.drain(..).collect();
        for chunk in unplaced.chunks(self.batch) {
            let mut items = Vec::new();
            let mut ids = Vec::new();
            for &id in chunk {
                if let Some(p) = self.pending.get(&id) {
                    items.push(p.socket.item(id));
                    ids.push(id);
                }
            }
            let fds: Vec<BorrowedFd<'_>> = ids.iter().map(|id| self.pending[id].socket.stream.as_fd()).collect();
            let sent = !items.is_empty() && channel.send(&Record::Handoff(items), &fds, &mut self.send_buf).is_ok();
            drop(fds);
            for id in ids {
                if sent {
                    self.pending.remove(&id); // the successor has its own copy now
                } else {
                    self.place(id); // keep serving it ourselves
                }
            }
        }
        if let Err(e) = channel.send(&Record::Released, &[], &mut self.send_buf) {
            log::warn!("handoff: telling the successor we released failed: {e}");
        }
        log::info!("handoff: taken over; no longer accepting");
        let _ = self.taken_over.try_send(());
    }

    fn accept_workers(&mut self) {
        let Some((listener, watch)) = self.channel_listener.as_ref() else {
            return;
        };
        let (listener, watch) = (listener.clone(), watch.clone());
        for channel in accept_waiting(&listener, "a worker channel") {
            let slot = self.slots.iter().position(|s| !s.spawned && s.link.is_none()).unwrap_or_else(|| {
                self.slots.push(Slot::new(false));
                self.slots.len() - 1
            });
            if let Err(e) = self.link(slot, channel) {
                log::error!("handoff: cannot serve a connected worker: {e}");
            } else {
                log::info!("handoff: worker {slot} connected by name");
            }
        }
        watch.arm(Interest::READ);
    }

    /// Reads what the worker sent (bounded per wake-up).
    fn receive(&mut self, slot: usize) {
        for _ in 0..256 {
            let Some(link) = self.slots[slot].link.as_ref() else {
                return;
            };
            let channel = link.channel.clone();
            match channel.recv(&mut self.recv_buf) {
                Ok((Record::Return(items), fds)) => self.returned(slot, items, fds),
                Ok((record, _fds)) => self.on_record(slot, record),
                Err(RecvError::WouldBlock) => return,
                Err(RecvError::Closed) => {
                    self.worker_down(slot, Down::EndOfFile);
                    return;
                }
                Err(RecvError::Bad { error, .. }) => {
                    log::error!("handoff: worker {slot} sent a bad record: {error}");
                    metrics::counter!("baton_handoff_bad_records_total").increment(1);
                }
                Err(RecvError::Io(e)) => {
                    log::warn!("handoff: receiving from worker {slot} failed: {e}");
                    self.worker_down(slot, Down::ChannelError);
                    return;
                }
            }
        }
    }

    /// Live connections a worker hands back (migration): placed on other workers.
    fn returned(&mut self, slot: usize, items: Vec<Item>, fds: Vec<std::os::fd::OwnedFd>) {
        self.slots[slot].last_heard = Instant::now();
        for (item, fd) in items.into_iter().zip(fds) {
            if item.kind != Kind::Connection {
                log::warn!("handoff: worker {slot} handed back a listener; closing it");
                continue;
            }
            let Some(socket) = Dispatch::from_item(item, fd) else {
                log::warn!("handoff: worker {slot} handed back something that is not a connection");
                continue;
            };
            metrics::counter!("baton_handoff_migrated_total").increment(1);
            self.stats.migrated += 1;
            self.dispatch_avoiding(socket, Some(slot));
        }
    }

    fn on_record(&mut self, slot: usize, record: Record) {
        self.slots[slot].last_heard = Instant::now();
        match record {
            Record::Ready { pid } => {
                let s = &mut self.slots[slot];
                if s.phase == Phase::Starting {
                    s.phase = Phase::Ready;
                }
                s.pid = Some(pid);
                log::info!("handoff: worker {slot} (pid {pid}) is ready");
                for index in 0..self.shared_listeners.len() {
                    self.send_listener(slot, index);
                }
                self.place_waiting();
            }
            Record::Adopted(ids) => {
                let now = Instant::now();
                for id in ids {
                    if let Some(index) = self.listener_sends.remove(&id) {
                        log::info!("handoff: worker {slot} accepts on shared listener {index}");
                        continue;
                    }
                    // Only what was sent to this worker and is still pending can be adopted.
                    if !self.pending.get(&id).is_some_and(|p| p.worker == Some(slot) && p.sent.is_some()) {
                        log::warn!("handoff: worker {slot} adopted unknown handoff {id}");
                        continue;
                    }
                    // Closing our copy, never shutting it down: the connection is the worker's.
                    let p = self.pending.remove(&id).expect("checked");
                    let latency = now.duration_since(p.accepted_at);
                    metrics::histogram!("baton_handoff_latency_seconds").record(latency);
                    if self.latencies.len() == LATENCY_WINDOW {
                        self.latencies.pop_front();
                    }
                    self.latencies.push_back(latency);
                    let s = &mut self.slots[slot];
                    s.in_flight = s.in_flight.saturating_sub(1);
                    s.open += 1;
                    s.adopted += 1;
                    self.stats.adopted += 1;
                    self.adopted.store(self.stats.adopted, Relaxed);
                    metrics::counter!("baton_handoff_adopted_total").increment(1);
                }
                metrics::gauge!("baton_handoff_in_flight").set(self.pending.len() as f64);
            }
            Record::Rejected(ids) => {
                for (id, reason) in ids {
                    if let Some(index) = self.listener_sends.remove(&id) {
                        log::error!("handoff: worker {slot} cannot accept on shared listener {index}: {reason}");
                        continue;
                    }
                    if !self.pending.get(&id).is_some_and(|p| p.worker == Some(slot) && p.sent.is_some()) {
                        continue;
                    }
                    log::debug!("handoff: worker {slot} rejected {id}: {reason}");
                    self.stats.rejected += 1;
                    metrics::counter!("baton_handoff_rejected_total").increment(1);
                    let s = &mut self.slots[slot];
                    s.in_flight = s.in_flight.saturating_sub(1);
                    if reason == Reason::Draining && s.phase == Phase::Ready {
                        s.phase = Phase::Draining;
                    }
                    self.retry(id, slot);
                }
            }
            Record::Closed(ids) => {
                let s = &mut self.slots[slot];
                s.open = s.open.saturating_sub(ids.len() as u32);
            }
            Record::Load(Load { open, queued, busy }) => {
                let s = &mut self.slots[slot];
                s.open = open;
                s.queued = queued;
                s.busy = busy;
                metrics::gauge!("baton_handoff_worker_load", "worker" => slot.to_string())
                    .set(f64::from(s.in_flight) + f64::from(open) + f64::from(queued));
            }
            other => log::error!("handoff: worker {slot} sent a parent's record: {other:?}"),
        }
    }

    // ----- time ------------------------------------------------------------------------------

    fn tick(&mut self) {
        let now = Instant::now();
        // A worker that sits on a handoff past the deadline *and* has said nothing for as long
        // is presumed hung (a busy one still reports its load). Read what it may have sent
        // before judging.
        let mut late: Vec<usize> = self
            .pending
            .values()
            .filter(|p| p.sent.is_some_and(|t| now.duration_since(t) > self.adopt_timeout))
            .filter_map(|p| p.worker)
            .collect();
        late.sort_unstable();
        late.dedup();
        let mut hung = Vec::new();
        for slot in late {
            self.receive(slot);
            if self.slots[slot].link.is_some() && now.duration_since(self.slots[slot].last_heard) > self.adopt_timeout {
                hung.push(slot);
            }
        }
        hung.extend(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.phase == Phase::Starting && now.duration_since(s.linked_at) > self.startup_timeout)
                .map(|(slot, _)| slot),
        );
        hung.sort_unstable();
        hung.dedup();
        for slot in hung {
            let s = &mut self.slots[slot];
            log::warn!(
                "handoff: worker {slot} (pid {:?}) did not answer in time (handoffs {:?}, hello {:?})",
                s.pid,
                self.adopt_timeout,
                self.startup_timeout
            );
            if let Some(child) = s.child.as_mut() {
                // Dead for sure before its sockets go elsewhere, so it cannot adopt them later.
                let _ = child.kill();
            }
            self.worker_down(slot, Down::Deadline);
        }
        for (slot, index) in std::mem::take(&mut self.listener_retry) {
            if index < self.shared_listeners.len() && self.slots[slot].phase == Phase::Ready {
                self.send_listener(slot, index);
            }
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].limited && self.slots[slot].control.is_empty() {
                self.slots[slot].limited = false;
                self.slots[slot].backed_up = false;
                self.flush(slot);
            }
        }
        let still_serving = !self.listeners.is_empty() || !self.shared_listeners.is_empty();
        if self.successor.is_some() && still_serving && now.duration_since(self.successor_since) > SUCCESSOR_PATIENCE {
            log::warn!("handoff: the successor did not confirm within {SUCCESSOR_PATIENCE:?}; dropping it");
            self.drop_successor();
        }
        self.supervise(now);
        self.place_waiting();
        self.drain_progress();
    }

    fn drain_progress(&mut self) {
        let Some(d) = self.drain.as_mut() else { return };
        let now = Instant::now();
        if !d.told_workers && (self.pending.is_empty() || now >= d.deadline) {
            d.told_workers = true;
            let remaining = d.deadline.saturating_duration_since(now).as_millis().min(u128::from(u32::MAX)) as u32;
            let unplaced: Vec<u64> = self.pending.keys().copied().collect();
            d.report.unplaced = unplaced.len();
            for id in unplaced {
                self.give_up(id, "drain deadline");
            }
            self.waiting.clear();
            for slot in 0..self.slots.len() {
                if self.slots[slot].link.is_some() {
                    self.slots[slot].phase = Phase::Draining;
                    self.send_record(slot, &Record::Drain { deadline_ms: remaining });
                }
            }
        }
        let Some(d) = self.drain.as_mut() else { return };
        if !d.told_workers || d.done {
            return;
        }
        let running = self.slots.iter().filter(|s| s.child.is_some() || s.link.is_some()).count();
        if running > 0 && now < d.deadline + Duration::from_millis(500) {
            return;
        }
        let mut d = self.drain.take().expect("checked");
        for s in &mut self.slots {
            if let Some(mut child) = s.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                d.report.killed += 1;
            }
            if let Some(link) = s.link.take() {
                link.watch.close();
            }
            s.phase = Phase::Down;
        }
        // Keep `drain` set so nothing restarts; an empty state with no reply.
        let report = d.report.clone();
        for reply in d.reply.take().into_iter().chain(d.also.drain(..)) {
            let _ = reply.send(report.clone());
        }
        d.done = true;
        self.drain = Some(d);
    }

    fn update_listeners(&mut self) {
        let able =
            self.slots.iter().any(|s| s.phase == Phase::Ready && !s.backed_up && s.in_flight < self.max_per_worker);
        let pause = !self.waiting.is_empty() || self.pending.len() >= self.max_in_flight || !able;
        if pause != self.listeners_paused {
            self.listeners_paused = pause;
            for (l, _) in &self.listeners {
                if pause {
                    l.pause();
                } else {
                    l.resume();
                }
            }
            log::debug!("handoff: listeners {}", if pause { "paused" } else { "resumed" });
        }
    }
}

/// An address a record can carry: a Unix path the format cannot hold (empty, longer than 107
/// bytes, or with a NUL) is sent as unnamed rather than making the record malformed.
fn describable(addr: Address) -> Address {
    use std::os::unix::ffi::OsStrExt;
    match addr {
        Address::Unix(Some(p)) => {
            let b = p.as_os_str().as_bytes();
            if b.is_empty() || b.len() > 107 || b.contains(&0) {
                Address::Unix(None)
            } else {
                Address::Unix(Some(p))
            }
        }
        other => other,
    }
}

/// Accepts every connection waiting on a named channel socket; peers that fail the credential
/// check are already refused (and logged) by `accept`, other errors end the round.
fn accept_waiting(listener: &ChannelListener, what: &str) -> Vec<Channel> {
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok(channel) => accepted.push(channel),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e) => {
                log::error!("handoff: accepting {what} failed: {e}");
                break;
            }
        }
    }
    accepted
}

/// Hashes the parent's handoff ids, which are serial numbers: one multiplication (Fibonacci
/// hashing spreads consecutive ids over the table) instead of SipHash, which guards against
/// keys an attacker picks, and these are not.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

/// `ETOOMANYREFS` (more descriptors in flight than the user's limit allows) and `ENOBUFS` say
/// "not now", not "this worker is broken".
pub(crate) fn too_many_in_flight(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(rustix::io::Errno::TOOMANYREFS.raw_os_error()) || raw == Some(rustix::io::Errno::NOBUFS.raw_os_error())
}

/// The in-flight bound, kept under half the descriptor limit: every socket in flight is a
/// descriptor held by the parent, and the kernel counts descriptors in transit against it too.
fn clamp_in_flight(wanted: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(limit) => wanted.min((limit / 2).max(1) as usize),
        None => wanted,
    }
}
