//! The worker side: receive sockets from the parent, give them to the application, report back.
//!
//! A worker process runs its own [`Runtime`] and [`Reactor`]. [`Worker::serve`] starts a link
//! actor that watches the channel on that reactor. For every socket in a HANDOFF record the
//! application's actor receives an [`Incoming`]: the socket's addresses, tag and routing key,
//! and [`Incoming::adopt`], which registers it with the worker's reactor as a transport
//! [`Connection`] whose first `Data` event carries the prelude bytes the parent read. Adopting
//! (or refusing, or dropping the `Incoming`) is reported to the parent, as is every adopted
//! connection's close, and the worker's load.
//!
//! Adoption happens in the owner's own turn (a handler, or the `started` of the actor spawned
//! for the connection), so the connection's events queue behind the turn that stores the
//! [`Connection`] handle, and an application may adopt into whichever actor it likes (one per
//! connection, or one for all).
//!
//! A worker stops taking sockets when the parent says DRAIN, or when the parent is gone (its
//! channel reads end-of-file): it finishes its open connections up to a deadline and then
//! [`Worker::wait`] returns, for the program to shut down and exit. No worker outlives its
//! parent by more than that deadline.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use baton_runtime::{Actor, Addr, Context, Mailbox, Recipient, Runtime, TrySendError};
use baton_transport::{
    Accepted, Address, CloseReason, ConnEvent, ConnOptions, Connection, Interest, ListenOptions, Listener, Reactor,
    Readiness, Stream, Watch,
};
use parking_lot::Mutex;
use rustix::net::AddressFamily;

use crate::channel::{BadRecord, Channel, RecvBuf, RecvError};
use crate::record::{self, Item, Kind, Load, Reason, Record, MAX_IDS};

/// How often the link checks its drain deadline and refreshes the load report.
const TICK: Duration = Duration::from_millis(50);

/// A socket the parent handed over, for the application to adopt.
///
/// Dropping it without [`Incoming::adopt`] refuses it: the parent places it elsewhere.
pub struct Incoming {
    /// The parent's id for this handoff.
    pub id: u64,
    /// The application label the parent gave it (by default the accepting listener's index).
    pub tag: u32,
    /// The client's address.
    pub peer: Address,
    /// The address the client connected to.
    pub local: Address,
    /// The routing key the parent placed it by, if any.
    pub key: Option<Vec<u8>>,
    stream: Option<Stream>,
    prelude: Vec<u8>,
    refusal: Reason,
    shared: Arc<Shared>,
    /// Handed over by the parent (so adoption, refusal and close are reported to it), rather
    /// than accepted here from a listener the parent shared.
    reported: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("prelude", &self.prelude.len())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// Bytes the parent read before handing the socket over; [`Incoming::adopt`] delivers them
    /// as the first `Data` event.
    pub fn prelude(&self) -> &[u8] {
        &self.prelude
    }

    /// Makes the socket a [`Connection`] on the worker's reactor, owned by `owner`, and tells
    /// the parent it may close its copy. The prelude arrives first, as
    /// `ConnEvent::Data`. Call it from the owner's own turn, a handler or its `started` (see
    /// [`Reactor::adopt`](baton_transport::Reactor::adopt)).
    ///
    /// A handed-over socket's first bytes are nearly always waiting by now: with
    /// [`ConnOptions::read_first`] (the default), no prelude, and `owner` the actor calling
    /// this on the reactor's event loop, the socket is read at once and registered with the
    /// poller only if it is still open after the owner's turns.
    ///
    /// # Errors
    ///
    /// When the socket cannot be registered (the parent is told and places it elsewhere), or
    /// the parent is gone (`NotConnected`: it may have placed the socket elsewhere already).
    pub fn adopt(mut self, owner: Recipient<ConnEvent>, options: ConnOptions) -> io::Result<Connection> {
        if self.shared.parent_gone.load(SeqCst) {
            // Dropping `self` closes our copy; the parent's placed it elsewhere or closed it.
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the parent is gone; not adopting"));
        }
        let stream = self.stream.take().expect("present until adopted or dropped");
        let prelude = std::mem::take(&mut self.prelude);
        let id = self.id;
        let shared = self.shared.clone();
        let reported = self.reported;
        // ADOPTED must reach the parent before CLOSED. The connection can close (a peer reset,
        // on the reactor thread) between its registration and our report: then the hook leaves
        // CLOSED to us. Both sides decide under the reports lock, so a flush can never take
        // the CLOSED without the ADOPTED before it.
        // 0: ADOPTED not reported yet; 1: reported; 2: closed before it was reported.
        let order = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let hook_order = order.clone();
        let hook = Box::new(move |_: &CloseReason| {
            shared.open.fetch_sub(1, SeqCst);
            if reported {
                shared.report(|r| {
                    if hook_order.compare_exchange(0, 2, SeqCst, SeqCst).is_err() {
                        r.closed.push(id);
                    }
                });
            }
        });
        self.shared.open.fetch_add(1, SeqCst);
        self.shared.unanswered.fetch_sub(1, SeqCst);
        match self.shared.reactor.adopt_with(stream, prelude, Some(hook), options, owner) {
            Ok(conn) => {
                if self.reported {
                    // Batched with the others adopted in this round: the parent closes its
                    // copy when it hears, and the connection's own close does not wait for
                    // that (the transport shuts a socket down before closing it).
                    self.shared.report(|r| {
                        r.adopted.push(id);
                        if order.compare_exchange(0, 1, SeqCst, SeqCst).is_err() {
                            r.closed.push(id);
                        }
                    });
                }
                Ok(conn)
            }
            Err(e) => {
                self.shared.open.fetch_sub(1, SeqCst);
                log::warn!("handoff worker: adopting {id} failed: {e}");
                if self.reported {
                    self.shared.report(|r| r.rejected.push((id, Reason::Failed)));
                }
                Err(e)
            }
        }
    }

    /// Takes the socket out of the worker's hands, for an application that serves it
    /// without the reactor (a thread of its own, blocking I/O). The parent is told it was
    /// adopted; the worker counts it open until the returned [`Taken`] is dropped, which also
    /// closes the socket (unless it was moved out of `stream` first).
    ///
    /// # Errors
    ///
    /// `NotConnected` when the parent is gone (it may have placed the socket elsewhere).
    pub fn take(mut self) -> io::Result<Taken> {
        if self.shared.parent_gone.load(SeqCst) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the parent is gone; not taking"));
        }
        let stream = self.stream.take().expect("present until adopted or dropped");
        let prelude = std::mem::take(&mut self.prelude);
        self.shared.open.fetch_add(1, SeqCst);
        self.shared.unanswered.fetch_sub(1, SeqCst);
        let id = self.id;
        if self.reported {
            self.shared.report(|r| r.adopted.push(id));
        }
        Ok(Taken { stream, prelude, closer: Closer { id, shared: self.shared.clone(), reported: self.reported } })
    }

    /// Refuses the socket: the parent places it on another worker.
    pub fn refuse(self) {}

    /// A handle for telling the parent about this worker's state (see [`Status`]).
    pub fn status(&self) -> Status {
        Status { shared: self.shared.clone() }
    }

    /// A handle for handing live connections back to the parent later (see [`Migrator`]).
    pub fn migrator(&self) -> Migrator {
        Migrator { shared: self.shared.clone() }
    }
}

/// Tells the parent what the load figures cannot: that a handler is about to be busy for a
/// while (a heavy request), so new connections should go elsewhere until it is done. The parent
/// hears it at once, not at the next 50 ms LOAD.
#[derive(Clone, Debug)]
pub struct Status {
    shared: Arc<Shared>,
}

/// Marks a handler busy while it lives ([`Status::busy`]).
#[derive(Debug)]
pub struct Busy {
    shared: Arc<Shared>,
}

impl Status {
    /// This handler is busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy {
        self.shared.busy.fetch_add(1, SeqCst);
        self.shared.load_changed();
        Busy { shared: self.shared.clone() }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.shared.busy.fetch_sub(1, SeqCst);
        self.shared.load_changed();
    }
}

/// Hands live connections back to the parent, which places them on another worker: used to
/// drain one worker without dropping its keep-alive clients.
#[derive(Clone, Debug)]
pub struct Migrator {
    shared: Arc<Shared>,
}

/// Why [`Migrator::migrate`] did not hand a connection back.
#[derive(Debug)]
pub enum MigrateError {
    /// The parent is gone; the connection was left as it was.
    ParentGone,
    /// The connection is already closed.
    Closed,
    /// Bytes written are still buffered here (the peer reads slowly): they would be lost.
    /// Try again when the connection reports `LowWater`, or a little later.
    Unflushed,
    /// More bytes were read and not delivered than a prelude carries
    /// ([`record::MAX_PRELUDE`]): the socket is handed back to the caller to adopt again
    /// (`Reactor::adopt_with` with the unread bytes). The worker has counted it closed (the
    /// parent was told), so it no longer shows in this worker's load.
    TooMuchUnread(baton_transport::Detached),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MigrateError::ParentGone => "the parent is gone",
            MigrateError::Closed => "the connection is closed",
            MigrateError::Unflushed => "written bytes are still buffered",
            MigrateError::TooMuchUnread(_) => "more unread bytes than a prelude carries",
        })
    }
}

impl std::error::Error for MigrateError {}

impl Migrator {
    /// Takes `conn` out of this worker, with the bytes read and not yet delivered, and hands
    /// it back to the parent to place on another worker with `tag` and `key` (the new worker's
    /// application sees the unread bytes first). The connection's owner gets
    /// `Closed(Detached)`, and the parent hears it closed here.
    ///
    /// Call it where the application holds no partial state for the connection. Bytes already
    /// delivered as `Data` are the application's: pause reading first
    /// ([`Connection::pause_reading`]) and migrate in a later turn (send yourself a message),
    /// so every `Data` queued before the pause has been handled.
    ///
    /// # Errors
    ///
    /// See [`MigrateError`].
    pub fn migrate(&self, conn: &Connection, tag: u32, key: Option<Vec<u8>>) -> Result<(), MigrateError> {
        if self.shared.parent_gone.load(SeqCst) {
            return Err(MigrateError::ParentGone);
        }
        if conn.buffered() > 0 {
            return Err(MigrateError::Unflushed);
        }
        let (Ok(peer), Ok(local)) = (conn.peer_addr(), conn.local_addr()) else { return Err(MigrateError::Closed) };
        // Counted as unanswered from before the detach (whose close hook wakes the link) until
        // it is queued for sending, so a draining link cannot finish in between and lose it.
        self.shared.unanswered.fetch_add(1, SeqCst);
        let result = match conn.detach() {
            Err(_) => Err(MigrateError::Closed),
            Ok(detached) if detached.unread.len() > record::MAX_PRELUDE => Err(MigrateError::TooMuchUnread(detached)),
            Ok(detached) => {
                let item = Item { id: 0, kind: Kind::Connection, tag, peer, local, key, prelude: detached.unread };
                self.shared.reports.lock().migrations.push((item, detached.stream));
                Ok(())
            }
        };
        self.shared.unanswered.fetch_sub(1, SeqCst);
        self.shared.report(|_| {});
        result
    }
}

/// A socket the application took with [`Incoming::take`]. Dropping it reports the connection
/// closed to the parent.
#[derive(Debug)]
pub struct Taken {
    /// The connected socket (non-blocking).
    pub stream: Stream,
    /// Bytes the parent read before handing the socket over; they come before anything read
    /// from `stream`.
    pub prelude: Vec<u8>,
    closer: Closer,
}

impl Taken {
    /// The parent's id for this handoff.
    pub fn id(&self) -> u64 {
        self.closer.id
    }
}

#[derive(Debug)]
struct Closer {
    id: u64,
    shared: Arc<Shared>,
    reported: bool,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, SeqCst);
        if self.reported {
            let id = self.id;
            self.shared.report(|r| r.closed.push(id));
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.stream.take().is_some() {
            self.shared.unanswered.fetch_sub(1, SeqCst);
            if self.reported {
                let reason = self.refusal;
                let id = self.id;
                self.shared.report(|r| r.rejected.push((id, reason)));
            }
        }
    }
}

/// What the worker tells the application actor.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A socket from the parent: adopt it, take it, or drop it to refuse it.
    Incoming(Incoming),
    /// The worker is draining (told by the parent, or orphaned): no more sockets will come.
    /// Close idle connections, finish busy ones (HTTP: answer with `Connection: close`); the
    /// worker exits when none is left open, or at `deadline`.
    Drain {
        /// When the worker stops waiting for open connections.
        deadline: Instant,
    },
}

fn app_gone(event: WorkerEvent) {
    log::error!("handoff worker: the application actor has stopped; refusing handoffs");
    if let WorkerEvent::Incoming(mut incoming) = event {
        incoming.refusal = Reason::Failed;
    }
}

/// Why [`Worker::wait`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Told to drain, and every connection finished.
    Drained,
    /// The drain deadline passed with connections still open.
    DeadlineExpired {
        /// Connections still open.
        open: u32,
    },
    /// Told to stop.
    Stopped,
    /// The parent is gone (its end of the channel closed); open connections finished or the
    /// deadline passed.
    ParentGone,
}

#[derive(Default)]
struct Reports {
    adopted: Vec<u64>,
    rejected: Vec<(u64, Reason)>,
    closed: Vec<u64>,
    /// Connections the application hands back, with their description.
    migrations: Vec<(Item, Stream)>,
}

impl Reports {
    fn is_empty(&self) -> bool {
        self.adopted.is_empty() && self.rejected.is_empty() && self.closed.is_empty() && self.migrations.is_empty()
    }

    /// Empties every list (dropping migrations not taken out), keeping room for an ordinary
    /// round but not a burst's.
    fn clear(&mut self) {
        self.adopted.clear();
        self.adopted.shrink_to(1024);
        self.rejected.clear();
        self.rejected.shrink_to(1024);
        self.closed.clear();
        self.closed.shrink_to(1024);
        self.migrations.clear();
        self.migrations.shrink_to(64);
    }
}

/// What the link actor shares with [`Incoming`]s and the close hooks of adopted connections.
struct Shared {
    reactor: Reactor,
    reports: Mutex<Reports>,
    open: AtomicU32,
    /// `Incoming`s given to the application and not yet adopted or refused.
    unanswered: AtomicU32,
    /// The channel is gone: the parent may have placed unreported sockets elsewhere, so
    /// nothing more is adopted.
    parent_gone: AtomicBool,
    /// Handlers that said they are busy ([`Status::busy`]).
    busy: AtomicU32,
    /// Send LOAD at the next flush, not the next tick (busy changed).
    load_now: AtomicBool,
    flush_requested: AtomicBool,
    link: OnceLock<Addr<Link>>,
}

impl Shared {
    /// Asks the link to send LOAD now.
    fn load_changed(&self) {
        self.load_now.store(true, SeqCst);
        self.report(|_| {});
    }

    /// Queues a report for the parent and wakes the link to send it (once per batch).
    fn report(&self, f: impl FnOnce(&mut Reports)) {
        f(&mut self.reports.lock());
        if !self.flush_requested.swap(true, SeqCst) {
            if let Some(link) = self.link.get() {
                // The link's mailbox is unbounded: a report is never refused for room.
                let _ = link.try_send(LinkMsg::Flush);
            }
        }
    }
}

/// Settings for [`Worker::serve`].
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// How long open connections may run on once the parent is gone. Default 30 s.
    pub orphan_deadline: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { orphan_deadline: Duration::from_secs(30) }
    }
}

/// A running worker link. [`Worker::wait`] blocks until the worker should exit.
#[derive(Debug)]
pub struct Worker {
    exit: crossbeam_channel::Receiver<WorkerExit>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Worker {
    /// Serves `channel`: every socket the parent sends reaches `app` as
    /// [`WorkerEvent::Incoming`], and the start of a drain as [`WorkerEvent::Drain`].
    ///
    /// # Errors
    ///
    /// When the link actor cannot be spawned or the channel cannot be watched.
    pub fn serve(
        channel: Channel,
        runtime: &Runtime,
        reactor: &Reactor,
        app: Recipient<WorkerEvent>,
        options: WorkerOptions,
    ) -> io::Result<Worker> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let channel = Arc::new(channel);
        let shared = Arc::new(Shared {
            reactor: reactor.clone(),
            reports: Mutex::new(Reports::default()),
            open: AtomicU32::new(0),
            unanswered: AtomicU32::new(0),
            parent_gone: AtomicBool::new(false),
            busy: AtomicU32::new(0),
            load_now: AtomicBool::new(false),
            flush_requested: AtomicBool::new(false),
            link: OnceLock::new(),
        });
        let link = Link {
            channel: channel.clone(),
            watch: None,
            app,
            shared: shared.clone(),
            recv_buf: RecvBuf::default(),
            send_buf: Vec::new(),
            spare_reports: Reports::default(),
            outbox: VecDeque::new(),
            deadline: None,
            parent_gone: false,
            exit: Some(tx),
            options,
            held: VecDeque::new(),
            returning: VecDeque::new(),
            returns_limited: false,
            listeners: Vec::new(),
            listeners_paused: false,
            next_local_id: 0,
            me: None,
        };
        let addr = runtime
            .spawn_on(reactor.event_loop(), link, Mailbox::Unbounded)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ = shared.link.set(addr.clone());
        let ready = addr.recipient_map(LinkMsg::Ready, |m| match m {
            LinkMsg::Ready(r) => Some(r),
            _ => None,
        });
        let watch = reactor.watch(channel, Interest::READ, ready)?;
        if addr.send(LinkMsg::Watch(watch)).is_err() {
            return Err(io::Error::other("worker link stopped at once"));
        }
        Ok(Worker { exit: rx, shared })
    }

    /// Blocks until the worker should exit (drained, stopped, or orphaned), and says why.
    pub fn wait(&self) -> WorkerExit {
        self.exit.recv().unwrap_or(WorkerExit::Stopped)
    }

    /// [`Worker::wait`] with a limit; `None` when it passed.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<WorkerExit> {
        self.exit.recv_timeout(timeout).ok()
    }

    /// Connections adopted and not yet closed.
    pub fn open(&self) -> u32 {
        self.shared.open.load(SeqCst)
    }
}

enum LinkMsg {
    Watch(Watch),
    Ready(Readiness),
    Flush,
    Tick,
    /// The application's mailbox has room again for held sockets.
    Room,
    /// A connection accepted from a listener the parent shared.
    Accepted(Accepted),
}

impl From<Accepted> for LinkMsg {
    fn from(a: Accepted) -> LinkMsg {
        LinkMsg::Accepted(a)
    }
}

/// Held events beyond which the listeners the parent shared stop accepting (the kernel's
/// backlog holds new clients, or another worker takes them).
const HELD_LISTENER_PAUSE: usize = 64;

struct Link {
    channel: Arc<Channel>,
    watch: Option<Watch>,
    app: Recipient<WorkerEvent>,
    shared: Arc<Shared>,
    recv_buf: RecvBuf,
    send_buf: Vec<u8>,
    /// Swapped with the shared reports at each flush and kept, emptied, with its capacity:
    /// gathering reports allocates nothing at steady state.
    spare_reports: Reports,
    /// Encoded records the parent's full queue refused, sent when writable, in order.
    outbox: VecDeque<Vec<u8>>,
    /// Set when draining (told, or orphaned): exit when nothing is open, or at this instant.
    deadline: Option<Instant>,
    parent_gone: bool,
    exit: Option<crossbeam_channel::Sender<WorkerExit>>,
    options: WorkerOptions,
    /// Events the application's full mailbox could not take yet, in order. While any are
    /// held the link stops reading its channel, so the backlog stays in the parent's hands
    /// (which places new sockets elsewhere) instead of growing here.
    held: VecDeque<WorkerEvent>,
    /// Connections being handed back to the parent, waiting for room in the channel.
    returning: VecDeque<(Item, Stream)>,
    /// The kernel refused descriptors in flight: returns wait for the tick, not writability.
    returns_limited: bool,
    /// Listeners the parent shared, accepting here; with the tag the parent gave each.
    listeners: Vec<(Listener, u32)>,
    listeners_paused: bool,
    /// Ids for connections accepted here (never reported to the parent; counted in LOAD).
    next_local_id: u64,
    me: Option<Addr<Link>>,
}

impl Actor for Link {
    type Message = LinkMsg;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
        ctx.send_after(TICK, LinkMsg::Tick);
    }

    fn handle(&mut self, ctx: &mut Context<Self>, msg: LinkMsg) {
        match msg {
            LinkMsg::Watch(w) => self.watch = Some(w),
            LinkMsg::Ready(r) => {
                if r.writable {
                    self.send_outbox();
                }
                if r.readable || !r.writable {
                    self.receive(ctx);
                }
            }
            LinkMsg::Flush => {}
            LinkMsg::Accepted(a) => self.accepted(a),
            LinkMsg::Room => {
                self.deliver_held();
                if self.held.is_empty() {
                    self.receive(ctx);
                }
            }
            LinkMsg::Tick => {
                ctx.send_after(TICK, LinkMsg::Tick);
                // Reports first, so the LOAD that follows never counts a connection the parent
                // has not heard of.
                self.returns_limited = false;
                self.flush_reports();
                self.report_load();
                if let Some(deadline) = self.deadline {
                    if Instant::now() >= deadline {
                        let open = self.shared.open.load(SeqCst);
                        let why = if self.parent_gone {
                            WorkerExit::ParentGone
                        } else {
                            WorkerExit::DeadlineExpired { open }
                        };
                        self.finish(ctx, why);
                    }
                }
            }
        }
        if self.exit.is_some() {
            self.pace_listeners();
            self.flush_reports();
            self.check_drained(ctx);
            self.arm();
        }
    }
}

impl Link {
    fn arm(&self) {
        if let Some(w) = &self.watch {
            if !self.parent_gone {
                let writable = !self.outbox.is_empty() || (!self.returning.is_empty() && !self.returns_limited);
                w.arm(Interest { readable: self.held.is_empty(), writable });
            }
        }
    }

    fn receive(&mut self, ctx: &mut Context<Self>) {
        for _ in 0..256 {
            if self.exit.is_none() || self.parent_gone || !self.held.is_empty() {
                return;
            }
            match self.channel.recv(&mut self.recv_buf) {
                Ok((record, fds)) => self.on_record(ctx, record, fds),
                Err(RecvError::WouldBlock) => return,
                Err(RecvError::Closed) => return self.orphaned(),
                Err(RecvError::Io(e)) => {
                    log::error!("handoff worker: channel failed: {e}");
                    return self.orphaned();
                }
                Err(RecvError::Bad { error, ids }) => {
                    log::error!("handoff worker: refused a record from the parent: {error}");
                    metrics::counter!("baton_worker_bad_records_total").increment(1);
                    let reason = match error {
                        BadRecord::DescriptorsTruncated { .. } => Reason::Truncated,
                        _ => Reason::Malformed,
                    };
                    let mut reports = self.shared.reports.lock();
                    reports.rejected.extend(ids.into_iter().map(|id| (id, reason)));
                }
            }
        }
    }

    fn orphaned(&mut self) {
        if self.parent_gone {
            return;
        }
        log::warn!(
            "handoff worker: the parent is gone; finishing open connections (up to {:?})",
            self.options.orphan_deadline
        );
        self.parent_gone = true;
        self.shared.parent_gone.store(true, SeqCst);
        self.start_drain(Instant::now() + self.options.orphan_deadline);
        if let Some(w) = self.watch.take() {
            w.close();
        }
        // Let a parent that is still there see end of file: it places elsewhere what we did
        // not report, so we must not adopt it (see `Incoming::adopt`).
        let _ = rustix::net::shutdown(&*self.channel, rustix::net::Shutdown::Both);
        if !self.returning.is_empty() {
            log::error!("handoff worker: {} migrating connection(s) closed: the parent is gone", self.returning.len());
            self.returning.clear();
        }
        self.outbox.clear();
    }

    fn on_record(&mut self, ctx: &mut Context<Self>, record: Record, fds: Vec<OwnedFd>) {
        match record {
            Record::Hello { worker } => {
                log::debug!("handoff worker: hello, I am worker {worker}");
                self.send(&Record::Ready { pid: std::process::id() });
            }
            Record::Handoff(items) => {
                for (item, fd) in items.into_iter().zip(fds) {
                    self.offer(item, fd);
                }
            }
            Record::Drain { deadline_ms } => {
                log::info!("handoff worker: draining (deadline {deadline_ms} ms)");
                self.start_drain(Instant::now() + Duration::from_millis(u64::from(deadline_ms)));
            }
            Record::Stop => self.finish(ctx, WorkerExit::Stopped),
            other => log::error!("handoff worker: the parent sent a worker's record: {other:?}"),
        }
    }

    /// Gives one handed-off socket to the application, or refuses it.
    fn offer(&mut self, item: Item, fd: OwnedFd) {
        let refuse = |shared: &Shared, reason| shared.reports.lock().rejected.push((item.id, reason));
        if self.deadline.is_some() {
            return refuse(&self.shared, Reason::Draining);
        }
        if item.kind == Kind::Listener {
            return self.share_listener(item, fd);
        }
        // The record names the socket's family (its local address), which saves a system call
        // per connection; only an unnamed one is asked. A parent that lies gets a connection
        // whose first read fails, closed by the transport like any broken socket.
        let stream = match &item.local {
            Address::Inet(_) => Some(Stream::Tcp(std::net::TcpStream::from(fd))),
            Address::Unix(Some(_)) => Some(Stream::Unix(std::os::unix::net::UnixStream::from(fd))),
            Address::Unix(None) => stream_from(fd),
        };
        let Some(stream) = stream else {
            log::warn!("handoff worker: handoff {} is not a connected stream socket", item.id);
            return refuse(&self.shared, Reason::Malformed);
        };
        self.shared.unanswered.fetch_add(1, SeqCst);
        let incoming = Incoming {
            id: item.id,
            tag: item.tag,
            peer: item.peer,
            local: item.local,
            key: item.key,
            stream: Some(stream),
            prelude: item.prelude,
            refusal: Reason::Refused,
            shared: self.shared.clone(),
            reported: true,
        };
        self.held.push_back(WorkerEvent::Incoming(incoming));
        self.deliver_held();
    }

    /// A listening socket from the parent: accept from it here (the parent keeps its copy for
    /// other and later workers).
    fn share_listener(&mut self, item: Item, fd: OwnedFd) {
        let Some(me) = self.me.clone() else { return };
        match self.shared.reactor.adopt_listener(fd, ListenOptions::default(), me.recipient()) {
            Ok(listener) => {
                log::info!("handoff worker: accepting on {:?} (shared by the parent)", listener.local_addr());
                if self.listeners_paused {
                    listener.pause();
                }
                self.listeners.push((listener, item.tag));
                self.shared.reports.lock().adopted.push(item.id);
            }
            Err(e) => {
                log::error!("handoff worker: cannot accept on the listener the parent shared: {e}");
                self.shared.reports.lock().rejected.push((item.id, Reason::Malformed));
            }
        }
    }

    /// A connection accepted here: to the application like a handed-over one, but not
    /// reported to the parent by id (it shows in LOAD).
    fn accepted(&mut self, a: Accepted) {
        // Even while draining: it came off the shared accept queue, so nobody else can serve
        // it; the application (draining) answers it and closes.
        if self.exit.is_none() {
            log::warn!("handoff worker: closing a connection accepted as the worker exits");
            return;
        }
        let tag = self.listeners.iter().find(|(l, _)| l.id() == a.listener).map_or(0, |(_, t)| *t);
        self.next_local_id += 1;
        self.shared.unanswered.fetch_add(1, SeqCst);
        let incoming = Incoming {
            id: self.next_local_id,
            tag,
            peer: a.peer,
            local: a.local,
            key: None,
            stream: Some(a.stream),
            prelude: Vec::new(),
            refusal: Reason::Refused,
            shared: self.shared.clone(),
            reported: false,
        };
        self.held.push_back(WorkerEvent::Incoming(incoming));
        self.deliver_held();
    }

    /// Stops accepting while the application is behind, and starts again when it caught up.
    fn pace_listeners(&mut self) {
        let pause = self.held.len() >= HELD_LISTENER_PAUSE;
        if pause != self.listeners_paused {
            self.listeners_paused = pause;
            for (l, _) in &self.listeners {
                if pause {
                    l.pause();
                } else {
                    l.resume();
                }
            }
        }
    }

    fn close_listeners(&mut self) {
        for (l, _) in self.listeners.drain(..) {
            l.close();
        }
    }

    /// Gives held events to the application, in order, until its mailbox is full (then the
    /// runtime's room notification brings us back).
    fn deliver_held(&mut self) {
        while let Some(event) = self.held.pop_front() {
            // The plain send first: the notifying one allocates, and is only needed when full.
            let event = match self.app.try_send(event) {
                Ok(()) => continue,
                Err(TrySendError::Full(event)) => event,
                Err(TrySendError::Closed(event)) => {
                    app_gone(event);
                    continue;
                }
            };
            let link = self.shared.link.get().cloned();
            let room = move || {
                if let Some(link) = link {
                    let _ = link.try_send(LinkMsg::Room);
                }
            };
            match self.app.try_send_notify(event, room) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.held.push_front(event);
                    return;
                }
                Err(TrySendError::Closed(event)) => app_gone(event),
            }
        }
    }

    /// Stops taking sockets and tells the application (after what it was already given), so
    /// it can close idle connections and finish busy ones.
    fn start_drain(&mut self, deadline: Instant) {
        self.close_listeners();
        let deadline = self.deadline.map_or(deadline, |d| d.min(deadline));
        if self.deadline.is_none() {
            self.held.push_back(WorkerEvent::Drain { deadline });
            self.deliver_held();
        }
        self.deadline = Some(deadline);
    }

    /// Sends a record now, or queues it behind others the parent has not taken yet.
    fn send(&mut self, record: &Record) {
        if self.parent_gone {
            return;
        }
        self.send_buf.clear();
        record::encode(record, &mut self.send_buf);
        if self.outbox.is_empty() {
            match self.channel.send_bytes(&self.send_buf, &[]) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::error!("handoff worker: sending to the parent failed: {e}");
                    return self.orphaned();
                }
            }
        }
        self.outbox.push_back(self.send_buf.clone());
    }

    fn send_outbox(&mut self) {
        self.send_outbox_bytes();
        self.send_returns();
    }

    fn send_outbox_bytes(&mut self) {
        while let Some(bytes) = self.outbox.front() {
            match self.channel.send_bytes(bytes, &[]) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::error!("handoff worker: sending to the parent failed: {e}");
                    return self.orphaned();
                }
            }
        }
    }

    /// Sends the reports gathered since the last flush, and the load when it changed.
    fn flush_reports(&mut self) {
        self.shared.flush_requested.store(false, SeqCst);
        let mut reports = std::mem::take(&mut self.spare_reports);
        std::mem::swap(&mut *self.shared.reports.lock(), &mut reports);
        for ids in reports.adopted.chunks(MAX_IDS) {
            self.send(&Record::Adopted(ids.to_vec()));
        }
        for ids in reports.rejected.chunks(MAX_IDS) {
            self.send(&Record::Rejected(ids.to_vec()));
        }
        for ids in reports.closed.chunks(MAX_IDS) {
            self.send(&Record::Closed(ids.to_vec()));
        }
        // With the parent gone there is nobody to hand migrations to (`orphaned` already let go
        // of what was returning): `clear` drops them, closing our copies, instead of holding
        // them until the orphan deadline.
        if !self.parent_gone {
            self.returning.extend(reports.migrations.drain(..));
        }
        reports.clear();
        self.spare_reports = reports;
        self.send_returns();
        if self.shared.load_now.swap(false, SeqCst) {
            self.report_load();
        }
    }

    /// Hands migrated connections to the parent (RETURN records with their descriptors); our
    /// copies close once sent. What the full channel does not take waits for writability.
    fn send_returns(&mut self) {
        while !self.returning.is_empty() && self.outbox.is_empty() && !self.parent_gone {
            let n = self.returning.len().min(64);
            let mut size = record::HEADER_LEN;
            let mut take = 0;
            for (item, _) in self.returning.iter().take(n) {
                let len = record::item_len(item);
                if take > 0 && size + len > record::MAX_RECORD {
                    break;
                }
                size += len;
                take += 1;
            }
            let items: Vec<Item> = self.returning.iter().take(take).map(|(i, _)| i.clone()).collect();
            let fds: Vec<std::os::fd::BorrowedFd<'_>> =
                self.returning.iter().take(take).map(|(_, s)| s.as_fd()).collect();
            match self.channel.send(&Record::Return(items), &fds, &mut self.send_buf) {
                Ok(()) => {
                    drop(fds);
                    self.returning.drain(..take);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if crate::channel::too_many_in_flight(&e) => {
                    // The channel is writable; waiting for writability would spin: the tick retries.
                    self.returns_limited = true;
                    return;
                }
                Err(e) => {
                    drop(fds);
                    log::error!("handoff worker: handing {take} connection(s) back failed: {e}; closing them");
                    self.returning.drain(..take);
                }
            }
        }
    }

    /// Sends the load, on every tick: it is also the worker's heartbeat (the parent presumes
    /// a worker hung only when it has heard nothing for its adoption deadline).
    fn report_load(&mut self) {
        let load = Load {
            open: self.shared.open.load(SeqCst),
            queued: self.app.mailbox_len() as u32,
            busy: self.shared.busy.load(SeqCst),
        };
        self.send(&Record::Load(load));
    }

    fn check_drained(&mut self, ctx: &mut Context<Self>) {
        let idle = self.shared.open.load(SeqCst) == 0 && self.shared.unanswered.load(SeqCst) == 0;
        // Reports filed since this turn's flush (a migration whose `unanswered` count has just
        // been released, say) are not sent yet: the Flush they queued comes back here.
        let reported = self.shared.reports.lock().is_empty();
        if self.deadline.is_some() && idle && reported && self.outbox.is_empty() && self.returning.is_empty() {
            let why = if self.parent_gone { WorkerExit::ParentGone } else { WorkerExit::Drained };
            self.finish(ctx, why);
        }
    }

    fn finish(&mut self, ctx: &mut Context<Self>, why: WorkerExit) {
        if let Some(tx) = self.exit.take() {
            log::info!("handoff worker: exiting: {why:?}");
            let _ = tx.send(why);
        }
        if let Some(w) = self.watch.take() {
            w.close();
        }
        self.close_listeners();
        ctx.stop();
    }
}

/// A received descriptor as a connected stream socket, or `None` when it is something else.
pub(crate) fn stream_from(fd: OwnedFd) -> Option<Stream> {
    // One system call per socket: the family. A socket of another type is not caught here;
    // its first read fails and the transport closes it.
    let family = rustix::net::sockopt::socket_domain(&fd).ok()?;
    if family == AddressFamily::INET || family == AddressFamily::INET6 {
        Some(Stream::Tcp(std::net::TcpStream::from(fd)))
    } else if family == AddressFamily::UNIX {
        Some(Stream::Unix(std::os::unix::net::UnixStream::from(fd)))
    } else {
        None
    }
}
