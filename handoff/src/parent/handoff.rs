//! The Handoff actor: carries events from sockets, channels and processes into the
//! [`Ledger`] and the [`Slot`]s, and carries their decisions out as records and system calls.
//!
//! The actor runs on the reactor's event loop. Its own rules are few: how records are read and
//! written (bounded per wake-up, a full channel backs a worker up, the kernel's refusal of
//! descriptors is retried on the tick), and what a process is (a child it can kill and reap, or
//! a named worker it can only watch). What happens to a socket is the ledger's business, and
//! what happens to a worker the slot's.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{Actor, Addr, Context, Intensity, Recipient, ReplyTo};
use baton_transport::{
    Accepted, Address, Interest, ListenOptions, Listener, ListenerId, Reactor, Readiness, Watch, WatchId,
};

use super::budget::Budget;
use super::dispatch::{describable, Dispatch};
use super::handshake::{HandshakeSpec, Shakes};
pub(crate) use super::ledger::later;
use super::ledger::{End, Ended, Held, Ledger, Touch};
use super::probe::Baseline;
use super::slot::{Phase, Slot, Verdict};
use super::stats::{DrainReport, Latencies, Stats, WorkerStats};
use super::steering::{self, SlotView, Steered};
use super::successor::Successor;
use super::workers::{Down, Exiting, Process};
use crate::bootstrap::{ChannelListener, Endpoint, PeerCheck};
use crate::channel::{too_many_in_flight, BadRecord, Channel, RecvBuf, RecvError};
use crate::log_limit::{limited, LogLimit};
use crate::process::WorkerCommand;
use crate::record::{self, code, Item, Kind, Reason, Record, MAX_RECORD};

/// The group of workers that connected by name: they take only sockets bound to no group.
pub(crate) const NO_GROUP: usize = usize::MAX;

/// How often the parent checks deadlines, reaps and restarts workers.
pub(crate) const TICK: Duration = Duration::from_millis(20);

/// How long after its deadline a draining worker may still run before it is killed.
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// The [`Tag`](crate::Tag) of a connection from a listener never attached to the parent.
pub const UNATTACHED_TAG: crate::Tag = u32::MAX;

/// The Handoff actor's messages.
#[derive(Debug)]
pub(crate) enum HandoffMsg {
    /// A socket to place (an application that read a handshake, a migration, a takeover), with
    /// its history when the application knows it (see `Parent::dispatch_read`); else the
    /// parent measures it (`probe.rs`).
    Dispatch(Dispatch, Option<Baseline>),
    /// A connection one of the parent's listeners accepted.
    Accepted(Accepted),
    /// A worker channel (or a named socket) is ready.
    Ready(Readiness),
    /// Send what the outboxes hold.
    Flush,
    /// Deadlines, reaping, restarts.
    Tick,
    /// Requests from the [`Parent`](crate::Parent) handle.
    Control(Control),
}

baton_runtime::from_variants!(HandoffMsg::Accepted(Accepted), HandoffMsg::Ready(Readiness));

/// Requests the [`Parent`](crate::Parent) handle makes of its actor.
#[derive(Debug)]
pub(crate) enum Control {
    /// Spawn the configured workers.
    Start(ReplyTo<io::Result<()>>),
    /// Pause this listener while nothing can take sockets; give it to a successor by this name;
    /// run this handshake on each connection it accepts, if any.
    Attach(Listener, String, Option<HandshakeSpec>),
    /// Accept workers that connect to this named channel.
    AcceptWorkers(ChannelListener),
    /// Let a successor take over through this control socket (bound at this endpoint, with
    /// this check: bound again if a successor dies on probation).
    OfferTakeover(ChannelListener, Endpoint, PeerCheck),
    /// A snapshot of the counters.
    Stats(ReplyTo<Stats>),
    /// Stop accepting, place what was accepted, let workers finish, stop them.
    Drain(Duration, ReplyTo<DrainReport>),
    /// Send this listening socket to every worker, once per worker incarnation.
    Share(SharedListener),
    /// Drain one worker (it may hand its connections back); it is restarted once it exits.
    Retire(usize, Duration),
    /// Steer connections among this `SO_REUSEPORT` group, one member per worker slot, in
    /// group order (see `steering.rs`).
    Steer(Vec<OwnedFd>, Address, u32),
}

/// A listening socket the parent shares with its workers (see
/// [`Parent::share_listener`](crate::Parent::share_listener)).
#[derive(Debug)]
pub(crate) struct SharedListener {
    pub(crate) fd: OwnedFd,
    pub(crate) local: Address,
    pub(crate) tag: u32,
    /// For the member of a steered group: the one slot whose workers get it (its index in
    /// the group). `None`: every worker.
    pub(crate) slot: Option<usize>,
}

impl SharedListener {
    /// Whether workers of `slot` accept on it.
    pub(crate) fn for_slot(&self, slot: usize) -> bool {
        self.slot.is_none_or(|s| s == slot)
    }

    /// What a successor asks for it by.
    pub(crate) fn name(&self) -> String {
        match self.slot {
            None => format!("shared:{}", self.tag),
            Some(i) => format!("steered:{}:{i}", self.tag),
        }
    }
}

/// A socket in the ledger: the dispatch and what it looked like when admitted.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) socket: Dispatch,
    baseline: Baseline,
    group: Option<usize>,
    /// Extensions for a worker that speaks protocol version 2 (what a PROXY header said).
    ext: Vec<record::Ext>,
}

impl Held for Pending {
    fn key(&self) -> Option<&[u8]> {
        self.socket.key.as_deref()
    }

    fn touched(&self) -> Touch {
        self.baseline.touched(self.socket.stream.as_fd())
    }

    fn group(&self) -> Option<usize> {
        self.group
    }
}

/// A worker's channel in service.
pub(super) struct Link {
    pub(super) channel: Arc<Channel>,
    pub(super) watch: Watch,
    /// Records without descriptors (HELLO, DRAIN, STOP) a full channel did not take, sent
    /// first when it is writable again.
    pub(super) control: VecDeque<Vec<u8>>,
    /// A RETURN waits in the channel until the descriptor budget has room for it.
    pub(super) deferred: bool,
}

/// What a watch of the actor's belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// A worker's channel.
    Worker(usize),
    /// The socket named workers connect to.
    WorkerListener,
    /// The control socket a successor connects to.
    TakeoverListener,
    /// A successor's control connection.
    Successor,
    /// A connection in its handshake.
    Handshake,
}

pub(crate) struct DrainState {
    pub(crate) deadline: Instant,
    pub(super) replies: Vec<ReplyTo<DrainReport>>,
    /// Finished: the report is final.
    pub(super) done: bool,
    pub(super) told_workers: bool,
    pub(crate) report: DrainReport,
}

/// Log lines about peers, each rate-limited.
#[derive(Default)]
pub(super) struct Logs {
    pub(super) unknown_ids: LogLimit,
    pub(super) bad_records: LogLimit,
    pub(super) refused_peers: LogLimit,
    pub(super) returns: LogLimit,
    pub(super) ended: LogLimit,
    pub(super) unattached: LogLimit,
    pub(super) exhaustion: LogLimit,
    pub(super) invalid: LogLimit,
    pub(super) handshakes: LogLimit,
    pub(super) steering: LogLimit,
}

/// What [`ParentBuilder::start`](crate::ParentBuilder::start) configures.
pub(crate) struct Config {
    /// Worker groups: name, count, command; slots are laid out group after group.
    pub(crate) groups: Vec<(String, usize, WorkerCommand)>,
    pub(crate) adopt_timeout: Duration,
    pub(crate) startup_timeout: Duration,
    pub(crate) exit_timeout: Duration,
    pub(crate) batch: usize,
    pub(crate) intensity: Intensity,
    pub(crate) max_in_flight: usize,
    pub(crate) probation: Duration,
}

/// The Handoff actor (build it with [`Parent::builder`](crate::Parent::builder)).
pub(crate) struct Handoff {
    /// Sockets adopted so far, readable without a message ([`Parent::adopted`](crate::Parent::adopted)).
    pub(super) adopted_total: Arc<AtomicU64>,
    pub(super) reactor: Reactor,
    pub(super) config: Config,
    pub(super) ledger: Ledger<Pending>,
    pub(super) budget: Budget,
    pub(super) slots: Vec<Slot>,
    pub(super) links: Vec<Option<Link>>,
    pub(super) procs: Vec<Option<Process>>,
    pub(super) exiting: Vec<Exiting>,
    pub(super) next_gen: u64,
    pub(super) watches: HashMap<WatchId, Watched>,
    pub(super) channel_listener: Option<(Arc<ChannelListener>, Watch)>,
    /// The listeners this parent accepts on, each with its name (what a successor asks for).
    pub(crate) listeners: Vec<(Listener, String)>,
    /// Every listener ever attached, in order: a connection's tag is its listener's index here.
    pub(super) tags: Vec<ListenerId>,
    /// The handshake of each listener in `tags` (same index), if it has one.
    pub(super) handshakes: Vec<Option<HandshakeSpec>>,
    /// Connections in their handshake.
    pub(super) shakes: Shakes,
    pub(super) listeners_paused: bool,
    /// Connections from a listener not attached (yet): its `attach` may still be on its way.
    pub(super) unattached: VecDeque<(Accepted, Instant)>,
    pub(crate) successor: Successor,
    /// Listening sockets every worker accepts on (the nginx shape), kept for later workers.
    pub(crate) shared: Vec<SharedListener>,
    /// Listener shares sent and not yet answered: record id → index in `shared`.
    pub(super) share_sends: HashMap<u64, usize>,
    /// Listener shares a full channel did not take: (slot, incarnation, index), on the tick.
    pub(super) share_retry: Vec<(usize, u64, usize)>,
    /// Steered groups (their members are in `shared`).
    pub(super) steered: Vec<Steered>,
    pub(super) flush_scheduled: bool,
    pub(crate) recv_buf: RecvBuf,
    pub(crate) send_buf: Vec<u8>,
    pub(super) stats: Stats,
    pub(super) latencies: Latencies,
    pub(crate) drain: Option<DrainState>,
    pub(super) logs: Logs,
    pub(super) me: Option<Addr<Handoff>>,
}

impl Handoff {
    pub(crate) fn new(
        config: Config,
        ledger: Ledger<Pending>,
        reactor: Reactor,
        adopted_total: Arc<AtomicU64>,
        taken_over: crossbeam_channel::Sender<()>,
        rolled_back: crossbeam_channel::Sender<()>,
    ) -> Handoff {
        let now = Instant::now();
        let slot_groups: Vec<usize> =
            config.groups.iter().enumerate().flat_map(|(g, (_, n, _))| std::iter::repeat_n(g, *n)).collect();
        let n = slot_groups.len();
        Handoff {
            adopted_total,
            reactor,
            budget: Budget::new(config.max_in_flight),
            successor: Successor::new(taken_over, rolled_back, config.probation),
            config,
            ledger,
            slots: slot_groups.iter().map(|&g| Slot::new(true, g, now)).collect(),
            links: (0..n).map(|_| None).collect(),
            procs: (0..n).map(|_| None).collect(),
            exiting: Vec::new(),
            next_gen: 1,
            watches: HashMap::new(),
            channel_listener: None,
            listeners: Vec::new(),
            tags: Vec::new(),
            handshakes: Vec::new(),
            shakes: Shakes::default(),
            listeners_paused: false,
            unattached: VecDeque::new(),
            shared: Vec::new(),
            share_sends: HashMap::new(),
            share_retry: Vec::new(),
            steered: Vec::new(),
            flush_scheduled: false,
            recv_buf: RecvBuf::default(),
            send_buf: Vec::with_capacity(MAX_RECORD),
            stats: Stats::default(),
            latencies: Latencies::default(),
            drain: None,
            logs: Logs::default(),
            me: None,
        }
    }
}

impl Actor for Handoff {
    type Message = HandoffMsg;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
        ctx.send_after(TICK, HandoffMsg::Tick);
    }

    fn handle(&mut self, ctx: &mut Context<Self>, msg: HandoffMsg) {
        match msg {
            HandoffMsg::Dispatch(d, baseline) => {
                let baseline = baseline.unwrap_or_else(|| Baseline::measure(d.stream.as_fd()));
                self.admit(d, None, baseline);
            }
            HandoffMsg::Accepted(a) => self.accepted(a),
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
        self.steer();
        let replaced = self.ledger.replaced - self.stats.replaced;
        if replaced > 0 {
            // Counted by the ledger, wherever it placed a socket again.
            self.stats.replaced = self.ledger.replaced;
            metrics::counter!("baton_handoff_replaced_total").increment(replaced);
        }
    }

    fn stopped(&mut self, _reason: &baton_runtime::ExitReason) {
        // No worker outlives the parent's actor: ask them to stop, then make sure.
        for slot in 0..self.slots.len() {
            self.send_record(slot, &Record::Stop);
        }
        let mut children: Vec<Child> = self
            .procs
            .iter_mut()
            .filter_map(Option::take)
            .chain(self.exiting.drain(..).map(|e| e.process))
            .filter_map(|p| match p {
                Process::Spawned(c) => Some(c),
                Process::Named(_) => None,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(1);
        for child in &mut children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for link in self.links.iter_mut().filter_map(Option::take) {
            link.watch.close();
        }
        if let Some((_, watch)) = self.channel_listener.take() {
            watch.close();
        }
    }
}

impl Handoff {
    pub(super) fn control(&mut self, c: Control) {
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
            Control::Attach(l, name, handshake) => {
                if self.listeners_paused {
                    l.pause();
                }
                let id = l.id();
                match self.tags.iter().position(|&t| t == id) {
                    Some(index) => self.handshakes[index] = handshake,
                    None => {
                        self.tags.push(id);
                        self.handshakes.push(handshake);
                    }
                }
                self.listeners.push((l, name));
                // Connections that arrived before their listener was attached.
                let (mine, others): (VecDeque<_>, VecDeque<_>) =
                    std::mem::take(&mut self.unattached).into_iter().partition(|(a, _)| a.listener == id);
                self.unattached = others;
                for (a, _) in mine {
                    self.accepted(a);
                }
            }
            Control::OfferTakeover(listener, endpoint, check) => self.offer_takeover(listener, endpoint, check),
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
                if self.links.get(slot).is_some_and(Option::is_some) {
                    log::info!("handoff: retiring worker {slot}");
                    let now = Instant::now();
                    self.slots[slot].drain(Some(later(now, deadline.saturating_add(DRAIN_GRACE))));
                    self.sync(slot);
                    // What was placed there and not yet sent goes elsewhere (it would be refused).
                    self.ledger.unqueue(slot);
                    self.send_record(slot, &Record::Drain { deadline_ms: millis(deadline) });
                    self.schedule_flush();
                }
            }
            Control::Share(listener) => self.share(listener),
            Control::Steer(members, local, tag) => {
                let first = self.shared.len();
                let n = members.len();
                for (i, fd) in members.into_iter().enumerate() {
                    self.share(SharedListener { fd, local: local.clone(), tag, slot: Some(i) });
                }
                self.steered.push(Steered::new(tag, first, n));
                // The parent's own accepting on every member, paused: made now, so that the
                // descriptors a steering parent holds do not grow with its first worker loss.
                let g = self.steered.len() - 1;
                for i in 0..n {
                    self.own_listener(g, i);
                }
                log::info!("handoff: steering {n} listening sockets on {local:?}");
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
                        d.replies.push(reply);
                    }
                    return;
                }
                for (l, _) in self.listeners.drain(..) {
                    l.close_and_wait();
                }
                // Our copies of shared listeners: workers close theirs on DRAIN.
                self.stop_steering();
                self.shared.clear();
                if let Some((_, watch)) = self.channel_listener.take() {
                    // No new workers during a drain.
                    watch.close();
                }
                let deadline = later(Instant::now(), deadline);
                for e in &mut self.exiting {
                    e.kill_at = e.kill_at.min(later(deadline, DRAIN_GRACE));
                }
                self.drain = Some(DrainState {
                    deadline,
                    replies: vec![reply],
                    done: false,
                    told_workers: false,
                    report: DrainReport::default(),
                });
                // Not now: connections the listeners accepted before closing are still in our
                // mailbox, ahead of the next tick, which moves the drain on once they are placed.
            }
        }
    }

    /// Keeps `listener` and sends it to the ready workers it is for.
    fn share(&mut self, listener: SharedListener) {
        self.shared.push(listener);
        let index = self.shared.len() - 1;
        for slot in 0..self.slots.len() {
            if self.slots[slot].phase == Phase::Ready && self.shared[index].for_slot(slot) {
                self.send_listener(slot, index);
            }
        }
    }

    /// Sends shared listener `index` to `slot` (the parent keeps its copy).
    pub(super) fn send_listener(&mut self, slot: usize, index: usize) {
        let Some(link) = self.links[slot].as_ref() else { return };
        let l = &self.shared[index];
        let id = self.ledger.fresh_id();
        let item = Item {
            id,
            kind: Kind::Listener,
            tag: l.tag,
            peer: l.local.clone(),
            local: l.local.clone(),
            key: None,
            prelude: Vec::new(),
            ext: Vec::new(),
        };
        match link.channel.send(&Record::Handoff(vec![item]), &[l.fd.as_fd()], &mut self.send_buf) {
            Ok(()) => {
                self.share_sends.insert(id, index);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || too_many_in_flight(&e) => {
                // The worker's channel is full for now: again on the tick.
                self.share_retry.push((slot, self.slots[slot].gen, index));
            }
            Err(e) => log::error!("handoff: could not share listener {index} with worker {slot}: {e}"),
        }
    }

    pub(crate) fn ready_recipient(&self) -> Recipient<Readiness> {
        self.me.as_ref().expect("set in started").recipient_map(HandoffMsg::Ready)
    }

    pub(crate) fn watch_as(&mut self, watch: &Watch, what: Watched) {
        self.watches.insert(watch.id(), what);
    }

    pub(crate) fn unwatch(&mut self, watch: &Watch) {
        watch.close();
        self.watches.remove(&watch.id());
    }

    pub(super) fn snapshot(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.in_flight = self.ledger.len();
        stats.waiting = self.ledger.waiting();
        stats.handshakes = self.shakes.len();
        stats.budget = self.ledger.limits().max_in_flight;
        (stats.latency_p50, stats.latency_p99) = self.latencies.percentiles();
        let books = self.ledger.books();
        stats.workers = self
            .slots
            .iter()
            .enumerate()
            .map(|(slot, s)| WorkerStats {
                slot,
                group: if s.spawned {
                    self.config.groups.get(s.group).map(|g| g.0.clone()).unwrap_or_default()
                } else {
                    String::new()
                },
                pid: s.pid,
                ready: s.phase == Phase::Ready,
                open: books.get(slot).map_or(0, |b| b.open),
                queued: books.get(slot).map_or(0, |b| b.queued),
                busy: books.get(slot).map_or(0, |b| b.busy),
                in_flight: self.ledger.in_flight(slot),
                adopted: s.adopted,
                gave_up: s.gave_up,
            })
            .collect();
        stats
    }

    // ----- sockets -----------------------------------------------------------------------

    /// A connection a listener accepted: its tag is the listener's index among those attached.
    pub(super) fn accepted(&mut self, a: Accepted) {
        if let Some(g) = self.steered.iter().find(|g| g.owns(a.listener)) {
            // From a steered socket whose worker cannot take it: to another worker.
            let d =
                Dispatch { stream: a.stream, peer: a.peer, local: a.local, tag: g.tag, key: None, prelude: Vec::new() };
            return self.admit(d, None, Baseline::Fresh);
        }
        match self.tags.iter().position(|&id| id == a.listener) {
            Some(index) if self.handshakes[index].is_some() => {
                let spec = self.handshakes[index].clone().expect("checked");
                self.shake(&spec, a.stream, a.peer, a.local, index as u32);
            }
            Some(index) => {
                let d = Dispatch {
                    stream: a.stream,
                    peer: a.peer,
                    local: a.local,
                    tag: index as u32,
                    key: None,
                    prelude: Vec::new(),
                };
                // Accepted here and never read: nothing consumed, nothing written.
                self.admit(d, None, Baseline::Fresh);
            }
            None => self.unattached.push_back((a, Instant::now())),
        }
    }

    /// Takes a socket into the ledger (or closes it, when nobody can take sockets any more).
    pub(super) fn admit(&mut self, d: Dispatch, avoid: Option<usize>, baseline: Baseline) {
        self.admit_to(d, avoid, baseline, None, Vec::new());
    }

    /// [`Handoff::admit`], for the workers of `group` only (`None`: any).
    pub(super) fn admit_to(
        &mut self,
        mut d: Dispatch,
        avoid: Option<usize>,
        baseline: Baseline,
        group: Option<usize>,
        ext: Vec<record::Ext>,
    ) {
        if d.check().is_err() {
            // Sent to the recipient directly, past `Parent::dispatch`'s check.
            limited!(
                self.logs.invalid,
                log::Level::Error,
                "handoff: closing a connection from {:?}: routing key or prelude over the limit",
                d.peer
            );
            metrics::counter!("baton_handoff_invalid_total").increment(1);
            return;
        }
        d.peer = describable(d.peer);
        d.local = describable(d.local);
        self.stats.dispatched += 1;
        metrics::counter!("baton_handoff_dispatched_total").increment(1);
        if let Some(drain) = self.drain.as_mut().filter(|d| d.told_workers) {
            // Too late for any worker: nobody takes new sockets now.
            drain.report.unplaced += 1;
            self.count_ended(End::Drain, 1);
            return;
        }
        self.ledger.admit(Pending { socket: d, baseline, group, ext }, avoid, Instant::now());
        self.schedule_flush();
        metrics::gauge!("baton_handoff_in_flight").set(self.ledger.len() as f64);
    }

    /// Closes what the ledger let go of: shut down first when another process may hold it.
    pub(super) fn close_ended(&mut self, ended: Vec<Ended<Pending>>) {
        for e in ended {
            if e.why.after_send() {
                let _ = rustix::net::shutdown(e.socket.socket.stream.as_fd(), rustix::net::Shutdown::Both);
            }
            limited!(
                self.logs.ended,
                log::Level::Warn,
                "handoff: closing a connection from {:?}: {}",
                e.socket.socket.peer,
                match e.why {
                    End::TooManyTries => "placed too many times",
                    End::Touched => "its worker was lost after it may have read or written it",
                    End::CutOff => "its worker was cut off and may still serve it",
                    End::Drain => "the drain deadline came first",
                    End::Unencodable => "it cannot be described in a record",
                    End::NoWorker => "its worker group had no worker able to take it in time",
                }
            );
            self.count_ended(e.why, 1);
        }
        metrics::gauge!("baton_handoff_in_flight").set(self.ledger.len() as f64);
    }

    pub(super) fn count_ended(&mut self, why: End, n: u64) {
        match why {
            End::TooManyTries => self.stats.closed_after_retries += n,
            End::Touched => self.stats.ended_touched += n,
            End::CutOff => self.stats.ended_cut_off += n,
            End::Drain => self.stats.ended_drain += n,
            End::Unencodable => self.stats.ended_unencodable += n,
            End::NoWorker => self.stats.ended_no_worker += n,
        }
        if why == End::TooManyTries {
            metrics::counter!("baton_handoff_closed_after_retries_total").increment(n);
        }
        metrics::counter!("baton_handoff_ended_total", "reason" => why.label()).increment(n);
    }

    pub(crate) fn count_handed_over(&mut self, n: u64) {
        self.stats.handed_over += n;
        metrics::counter!("baton_handoff_handed_over_total").increment(n);
    }

    /// The index of worker group `name`, if the parent has it and any of its slots is still
    /// served (not given up after too many restarts).
    pub(super) fn group_index(&self, name: &str) -> Option<usize> {
        let g = self.config.groups.iter().position(|(g, _, _)| g == name)?;
        self.slots.iter().any(|s| s.group == g && !s.gave_up).then_some(g)
    }

    /// Tells the ledger what the slot's state says about taking sockets.
    pub(super) fn sync(&mut self, slot: usize) {
        let accepting = self.slots[slot].accepting() && self.links[slot].is_some();
        self.ledger.book(slot).accepting = accepting;
    }

    pub(crate) fn schedule_flush(&mut self) {
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

    // ----- channel I/O ---------------------------------------------------------------------

    /// Sends `slot`'s outbox as HANDOFF records until it is empty or the channel is full.
    pub(super) fn flush(&mut self, slot: usize) {
        loop {
            if self.slots[slot].backed_up {
                return;
            }
            let Some(link) = self.links[slot].as_ref() else { return };
            let channel = link.channel.clone();
            // Version 2, with the extensions, to a worker that said it speaks it.
            let version = if self.slots[slot].v2 { record::VERSION_2 } else { record::VERSION };
            let mut items: Vec<Item> = Vec::new();
            for id in self.ledger.outbox(slot).take(self.config.batch) {
                if let Some(p) = self.ledger.get(id) {
                    let mut item = p.socket.item(id);
                    if version >= record::VERSION_2 {
                        item.ext.clone_from(&p.ext);
                    }
                    items.push(item);
                }
            }
            if items.is_empty() {
                return;
            }
            let n = record::fits(items.iter().map(|i| record::item_len_as(i, version)), self.config.batch);
            items.truncate(n);
            let fds: Vec<BorrowedFd<'_>> =
                items.iter().filter_map(|i| self.ledger.get(i.id)).map(|p| p.socket.stream.as_fd()).collect();
            let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
            match channel.send_as(&Record::Handoff(items), version, &fds, &mut self.send_buf) {
                Ok(()) => {
                    drop(fds);
                    self.ledger.sent(slot, self.slots[slot].gen, n, Instant::now());
                    metrics::counter!("baton_handoff_records_sent_total").increment(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || too_many_in_flight(&e) => {
                    drop(fds);
                    self.slots[slot].backed_up = true;
                    if too_many_in_flight(&e) {
                        // The channel is writable, so waiting for writability would spin: try
                        // again on the tick.
                        limited!(
                            self.logs.exhaustion,
                            log::Level::Warn,
                            "handoff: the kernel refuses more descriptors in flight ({e}); holding"
                        );
                        self.slots[slot].limited = true;
                    } else {
                        log::debug!("handoff: worker {slot}'s channel is full; holding its outbox");
                    }
                    self.sync(slot);
                    self.arm(slot);
                    // What it holds goes elsewhere.
                    self.ledger.unqueue(slot);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    // Not the worker's fault: these sockets cannot be described in a record.
                    drop(fds);
                    log::error!("handoff: cannot encode a record for worker {slot}: {e}");
                    let ended: Vec<_> = ids.iter().filter_map(|&id| self.ledger.unencodable(slot, id)).collect();
                    self.close_ended(ended);
                }
                Err(e) => {
                    drop(fds);
                    log::warn!("handoff: sending to worker {slot} failed: {e}");
                    return self.lose(slot, Down::ChannelError);
                }
            }
        }
    }

    /// Sends a record without descriptors now, or after what the full channel still holds.
    pub(super) fn send_record(&mut self, slot: usize, record: &Record) {
        let Some(link) = self.links[slot].as_mut() else { return };
        if link.control.is_empty() {
            match link.channel.send(record, &[], &mut self.send_buf) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::warn!("handoff: sending to worker {slot} failed: {e}");
                    return self.lose(slot, Down::ChannelError);
                }
            }
        }
        let mut bytes = Vec::new();
        record::encode(record, &mut bytes);
        link.control.push_back(bytes);
        self.slots[slot].backed_up = true;
        self.sync(slot);
        self.arm(slot);
    }

    /// Sends the held control records; true when none is left.
    pub(super) fn send_control(&mut self, slot: usize) -> bool {
        let Some(link) = self.links[slot].as_mut() else { return false };
        while let Some(bytes) = link.control.front() {
            match link.channel.send_bytes(bytes, &[]) {
                Ok(()) => {
                    link.control.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    log::warn!("handoff: sending to worker {slot} failed: {e}");
                    self.lose(slot, Down::ChannelError);
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn arm(&self, slot: usize) {
        let Some(link) = self.links[slot].as_ref() else { return };
        let s = &self.slots[slot];
        link.watch.arm(Interest { readable: !link.deferred, writable: s.backed_up && !s.limited });
    }

    pub(super) fn on_ready(&mut self, r: Readiness) {
        let Some(&which) = self.watches.get(&r.watch) else { return };
        let slot = match which {
            Watched::Worker(slot) => slot,
            Watched::WorkerListener => return self.accept_workers(),
            Watched::TakeoverListener => return self.accept_successor(),
            Watched::Successor => return self.hear_successor(),
            Watched::Handshake => return self.on_shake_ready(r.watch),
        };
        if r.writable && self.slots[slot].backed_up && !self.slots[slot].limited && self.send_control(slot) {
            self.slots[slot].backed_up = false;
            self.sync(slot);
            self.flush(slot);
        }
        if r.readable || !r.writable {
            self.receive(slot);
        }
        self.arm(slot);
        self.ledger.place_waiting();
        self.schedule_flush();
    }

    /// Reads what the worker sent (bounded per wake-up).
    pub(super) fn receive(&mut self, slot: usize) {
        for _ in 0..256 {
            let Some(link) = self.links[slot].as_mut() else { return };
            let channel = link.channel.clone();
            let max = self.ledger.limits().max_in_flight;
            // Near the budget, a RETURN whose descriptors would not fit waits in the channel
            // until they do. Not if this worker holds sockets of ours unanswered: its answers
            // queue behind the RETURN, and they are what frees room (waiting would wait for
            // ever); the reserve beyond the budget takes that one record.
            if self.ledger.len() + record::MAX_FDS > max && self.ledger.in_flight(slot) == 0 {
                if let Some((code::RETURN, fds)) = channel.peek_header() {
                    if self.ledger.len() + fds > max {
                        if !link.deferred {
                            link.deferred = true;
                            self.stats.local_exhaustion += 1;
                            metrics::counter!("baton_handoff_local_exhaustion_total").increment(1);
                            limited!(
                                self.logs.exhaustion,
                                log::Level::Warn,
                                "handoff: at the descriptor budget ({max}); worker {slot}'s migration of {fds} connection(s) waits"
                            );
                        }
                        return;
                    }
                }
            }
            match channel.recv(&mut self.recv_buf) {
                Ok((Record::Return(items), fds)) => self.returned(slot, items, fds),
                Ok((record, _fds)) => self.on_record(slot, record),
                Err(RecvError::WouldBlock) => return,
                Err(RecvError::Closed) => return self.lose(slot, Down::EndOfFile),
                Err(RecvError::Bad { error, .. }) => {
                    if matches!(error, BadRecord::DescriptorsTruncated { .. }) {
                        // Our own descriptor table is full: not the worker's fault.
                        self.stats.local_exhaustion += 1;
                        metrics::counter!("baton_handoff_local_exhaustion_total").increment(1);
                    }
                    metrics::counter!("baton_handoff_bad_records_total").increment(1);
                    limited!(
                        self.logs.bad_records,
                        log::Level::Error,
                        "handoff: worker {slot} sent a bad record: {error}"
                    );
                }
                Err(RecvError::Io(e)) => {
                    log::warn!("handoff: receiving from worker {slot} failed: {e}");
                    return self.lose(slot, Down::ChannelError);
                }
            }
        }
    }

    /// Live connections a worker hands back (migration): placed on other workers.
    pub(super) fn returned(&mut self, slot: usize, items: Vec<Item>, fds: Vec<OwnedFd>) {
        self.slots[slot].heard_at = Instant::now();
        for (mut item, fd) in items.into_iter().zip(fds) {
            let ext = std::mem::take(&mut item.ext);
            let baseline = Baseline::measure(fd.as_fd());
            let Some(socket) = Dispatch::from_item(item, fd) else {
                self.stats.returns_refused += 1;
                metrics::counter!("baton_handoff_returns_refused_total").increment(1);
                limited!(
                    self.logs.returns,
                    log::Level::Warn,
                    "handoff: worker {slot} handed back something that is not a connected stream socket; closed it"
                );
                continue;
            };
            metrics::counter!("baton_handoff_migrated_total").increment(1);
            self.stats.migrated += 1;
            // It stays with the group of the worker that served it.
            let group = self.slots[slot].group;
            self.admit_to(socket, Some(slot), baseline, (group != NO_GROUP).then_some(group), ext);
        }
    }

    pub(super) fn on_record(&mut self, slot: usize, record: Record) {
        let now = Instant::now();
        self.slots[slot].heard_at = now;
        match record {
            Record::Ready { pid } => {
                let first = self.slots[slot].ready(pid);
                self.sync(slot);
                if first {
                    log::info!("handoff: worker {slot} (pid {pid}) is ready");
                    for index in 0..self.shared.len() {
                        if self.shared[index].for_slot(slot) {
                            self.send_listener(slot, index);
                        }
                    }
                }
                self.ledger.place_waiting();
                self.schedule_flush();
            }
            Record::Adopted(ids) => {
                let mut unknown = 0u64;
                for id in ids {
                    if let Some(index) = self.share_sends.remove(&id) {
                        log::info!("handoff: worker {slot} accepts on shared listener {index}");
                        let gen = self.slots[slot].gen;
                        for g in &mut self.steered {
                            if (g.first..g.first + g.len).contains(&index) {
                                g.serving[index - g.first] = gen;
                            }
                        }
                        continue;
                    }
                    // Dropping the socket closes our copy, never shuts it down: the connection
                    // is the worker's now.
                    let Some(adopted) = self.ledger.adopted(slot, id, now) else {
                        unknown += 1;
                        continue;
                    };
                    metrics::histogram!("baton_handoff_latency_seconds").record(adopted.latency);
                    self.latencies.record(adopted.latency);
                    drop(adopted.socket);
                    self.slots[slot].adopted += 1;
                    self.stats.adopted += 1;
                    metrics::counter!("baton_handoff_adopted_total").increment(1);
                }
                self.adopted_total.store(self.stats.adopted, Relaxed);
                self.unknown_ids(slot, "ADOPTED", unknown);
                metrics::gauge!("baton_handoff_in_flight").set(self.ledger.len() as f64);
            }
            Record::Rejected(ids) => {
                let mut unknown = 0u64;
                let mut ended = Vec::new();
                for (id, reason) in ids {
                    if let Some(index) = self.share_sends.remove(&id) {
                        limited!(
                            self.logs.returns,
                            log::Level::Error,
                            "handoff: worker {slot} cannot accept on shared listener {index}: {reason}"
                        );
                        continue;
                    }
                    // Reasons 1–4 come from the worker's own checks, before any application saw
                    // the socket (PROTOCOL.md §9.4).
                    let offered = matches!(reason, Reason::Refused | Reason::Failed);
                    let Some(outcome) = self.ledger.rejected(slot, id, offered) else {
                        unknown += 1;
                        continue;
                    };
                    self.stats.rejected += 1;
                    metrics::counter!("baton_handoff_rejected_total").increment(1);
                    ended.extend(outcome);
                    if reason == Reason::Draining && self.slots[slot].phase == Phase::Ready {
                        // Draining by its own word: it must be gone by the exit deadline, or
                        // it is treated as stuck (killed, or cut off) and its slot restarted.
                        log::info!("handoff: worker {slot} says it is draining");
                        self.slots[slot].drain(Some(later(now, self.config.exit_timeout)));
                        self.sync(slot);
                        self.ledger.unqueue(slot);
                    }
                }
                self.close_ended(ended);
                self.unknown_ids(slot, "REJECTED", unknown);
                self.schedule_flush();
            }
            Record::Closed(ids) => self.ledger.closed(slot, ids.len()),
            Record::Versions(versions) => {
                // From now on (this incarnation), HANDOFFs carry their extensions.
                self.slots[slot].v2 = versions.contains(&record::VERSION_2);
            }
            Record::Load(load) => {
                self.ledger.report_load(slot, load);
                metrics::gauge!("baton_handoff_worker_load", "worker" => slot.to_string())
                    .set(f64::from(self.ledger.in_flight(slot)) + f64::from(load.open) + f64::from(load.queued));
            }
            other => {
                limited!(
                    self.logs.bad_records,
                    log::Level::Error,
                    "handoff: worker {slot} sent a parent's record: {other:?}"
                );
            }
        }
    }

    /// One line (rate-limited) for a record naming ids this worker was not sent.
    pub(super) fn unknown_ids(&mut self, slot: usize, what: &str, n: u64) {
        if n > 0 {
            metrics::counter!("baton_handoff_unknown_ids_total").increment(n);
            limited!(
                self.logs.unknown_ids,
                log::Level::Warn,
                "handoff: worker {slot} sent {what} for {n} id(s) it was not sent or already answered; ignored"
            );
        }
    }

    // ----- time ------------------------------------------------------------------------------

    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        // A worker that sits on a handoff past the deadline *and* has said nothing for as long
        // is presumed hung (a busy one still reports its load). Read what it may have sent
        // before judging.
        let late = self.ledger.late(now, self.config.adopt_timeout);
        for &slot in &late {
            self.receive(slot);
        }
        for slot in 0..self.slots.len() {
            if self.links[slot].is_none() {
                continue;
            }
            let verdict = self.slots[slot].verdict(
                now,
                late.contains(&slot),
                self.config.adopt_timeout,
                self.config.startup_timeout,
            );
            let why = match verdict {
                Verdict::Fine => continue,
                Verdict::NoReady | Verdict::Hung => Down::Deadline,
                Verdict::Overstayed => Down::Overstayed,
            };
            log::warn!("handoff: worker {slot} (pid {}): {verdict}", super::slot::pid_text(self.slots[slot].pid));
            self.lose(slot, why);
        }
        self.watch_exits(now);
        self.shake_tick(now);
        for (slot, gen, index) in std::mem::take(&mut self.share_retry) {
            if index < self.shared.len() && self.slots[slot].gen == gen && self.slots[slot].phase == Phase::Ready {
                self.send_listener(slot, index);
            }
        }
        for slot in 0..self.slots.len() {
            // The kernel refused descriptors in flight: try again now. Control records that
            // queued meanwhile go first (waiting for writability would wait for ever: the
            // channel is writable).
            if self.slots[slot].limited && self.links[slot].is_some() {
                self.slots[slot].limited = false;
                if self.send_control(slot) {
                    self.slots[slot].backed_up = false;
                    self.sync(slot);
                    self.flush(slot);
                }
                self.arm(slot);
            }
        }
        self.successor_tick(now);
        self.supervise(now);
        // Connections from a listener nobody attached within a tick: placed untagged.
        while self.unattached.front().is_some_and(|(_, at)| now.saturating_duration_since(*at) >= TICK) {
            let (a, _) = self.unattached.pop_front().expect("checked");
            limited!(self.logs.unattached, log::Level::Warn, "handoff: a connection from listener {:?}, which was never attached to the parent (Parent::attach); tag {UNATTACHED_TAG}", a.listener);
            let d = Dispatch {
                stream: a.stream,
                peer: a.peer,
                local: a.local,
                tag: UNATTACHED_TAG,
                key: None,
                prelude: Vec::new(),
            };
            self.admit(d, None, Baseline::Fresh);
        }
        let expired = self.ledger.expire_group_waits(now, self.config.startup_timeout);
        self.close_ended(expired);
        let allowance = self.budget.allowance(self.ledger.len() + self.shakes.len(), now);
        self.ledger.set_max_in_flight(allowance);
        for slot in 0..self.slots.len() {
            // A deferred RETURN: read again if it fits now (`receive` defers it again if not).
            if let Some(l) = self.links[slot].as_mut().filter(|l| l.deferred) {
                l.deferred = false;
                self.receive(slot);
                self.arm(slot);
            }
        }
        self.ledger.place_waiting();
        self.schedule_flush();
        self.drain_progress(now);
    }

    pub(super) fn drain_progress(&mut self, now: Instant) {
        let Some(d) = self.drain.as_mut() else { return };
        if !d.told_workers && ((self.ledger.is_empty() && self.shakes.len() == 0) || now >= d.deadline) {
            d.told_workers = true;
            let ms = millis(d.deadline.saturating_duration_since(now));
            let unplaced = self.ledger.end_all(End::Drain, true);
            d.report.unplaced += unplaced.len();
            self.close_ended(unplaced);
            let shaking = self.end_handshakes();
            if let Some(d) = self.drain.as_mut() {
                d.report.unplaced += shaking;
            }
            for slot in 0..self.slots.len() {
                if self.links[slot].is_some() {
                    self.slots[slot].drain(None);
                    self.sync(slot);
                    self.send_record(slot, &Record::Drain { deadline_ms: ms });
                }
            }
        }
        let Some(d) = self.drain.as_ref() else { return };
        if !d.told_workers || d.done {
            return;
        }
        let running = self.links.iter().filter(|l| l.is_some()).count()
            + self.exiting.iter().filter(|e| e.process.spawned()).count();
        if running > 0 && now < later(d.deadline, DRAIN_GRACE) {
            return;
        }
        for slot in 0..self.slots.len() {
            if self.links[slot].is_some() {
                self.lose(slot, Down::Overstayed);
            }
        }
        // Nothing left behind, not even a zombie.
        for mut e in std::mem::take(&mut self.exiting) {
            if let Process::Spawned(child) = &mut e.process {
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                    if !e.killed {
                        self.stats.killed += 1;
                        if let Some(d) = self.drain.as_mut() {
                            d.report.killed += 1;
                        }
                    }
                } else if !e.killed {
                    self.exited_by_itself();
                }
                let _ = child.wait();
            }
        }
        let d = self.drain.as_mut().expect("checked");
        let report = d.report.clone();
        for reply in d.replies.drain(..) {
            let _ = reply.send(report.clone());
        }
        // Kept set, so nothing restarts.
        d.done = true;
    }

    /// Carries the steering rules out: the program each steered group should have, and which
    /// members the parent accepts from itself (see `steering.rs`).
    pub(super) fn steer(&mut self) {
        if self.steered.is_empty() {
            return;
        }
        // A successor on probation steers the group; a draining parent steers nothing.
        let active = self.drain.is_none() && !self.successor.on_probation();
        let books = self.ledger.books();
        let views: Vec<SlotView> = (0..self.slots.len())
            .map(|i| {
                let b = books.get(i);
                SlotView {
                    ready: self.slots[i].phase == Phase::Ready,
                    busy: b.is_some_and(|b| b.busy > 0),
                    load: b.map_or(0, |b| b.open.saturating_add(b.queued)).saturating_add(self.ledger.in_flight(i)),
                }
            })
            .collect();
        let now = Instant::now();
        for g in 0..self.steered.len() {
            let (first, n) = (self.steered[g].first, self.steered[g].len);
            // A worker weighs something only once it accepts on its member (it said ADOPTED
            // for this incarnation): until then, or if it refused it, the parent serves it.
            let mut views = views.clone();
            for (i, v) in views.iter_mut().enumerate().take(n) {
                v.ready &= self.steered[g].serving[i] == self.slots[i].gen;
            }
            // Attached again now and then even when nothing changed (see `REFRESH`): not a change.
            let refresh = now >= self.steered[g].refresh_at;
            if refresh {
                self.steered[g].refresh_at = now + steering::REFRESH;
            }
            if !active {
                self.steered[g].attached = None;
            } else {
                let weights = steering::weights(&views, n);
                let changed = self.steered[g].attached.as_ref() != Some(&weights);
                if changed || refresh {
                    match steering::attach(self.shared[first].fd.as_fd(), &steering::program(&weights)) {
                        Ok(()) if !changed => {}
                        Ok(()) => {
                            metrics::counter!("baton_handoff_steering_changes_total").increment(1);
                            let total: u32 = weights.iter().sum();
                            for (i, w) in weights.iter().enumerate() {
                                let share = if total == 0 { 0.0 } else { f64::from(*w) / f64::from(total) };
                                metrics::gauge!("baton_handoff_steering_share", "tag" => self.steered[g].tag.to_string(), "socket" => i.to_string())
                                    .set(share);
                            }
                            log::trace!("handoff: steering group {} by {weights:?}", self.steered[g].tag);
                            self.steered[g].attached = Some(weights);
                        }
                        Err(e) => limited!(
                            self.logs.steering,
                            log::Level::Error,
                            "handoff: cannot attach the steering program: {e}; the kernel spreads by hash"
                        ),
                    }
                }
            }
            for i in 0..n {
                let want = active && !self.listeners_paused && steering::parent_accepts(&views, i);
                if want == self.steered[g].accepting[i] {
                    continue;
                }
                if want && !self.own_listener(g, i) {
                    continue;
                }
                if let Some(l) = &self.steered[g].own[i] {
                    if want {
                        l.resume();
                    } else {
                        l.pause();
                    }
                }
                self.steered[g].accepting[i] = want;
            }
        }
    }

    /// Makes the parent's own (paused) listener on member `i` of group `g` if there is none
    /// yet; whether there is one now.
    fn own_listener(&mut self, g: usize, i: usize) -> bool {
        if self.steered[g].own[i].is_some() {
            return true;
        }
        let me = self.me.as_ref().expect("set in started").recipient();
        let first = self.steered[g].first;
        let own = steering::duplicate(&self.shared[first + i].fd)
            .and_then(|fd| self.reactor.adopt_listener(fd, ListenOptions::default(), me).map_err(io::Error::other));
        match own {
            Ok(l) => {
                l.pause();
                self.steered[g].own[i] = Some(l);
                true
            }
            Err(e) => {
                limited!(
                    self.logs.steering,
                    log::Level::Error,
                    "handoff: cannot accept on steered socket {i} for its worker: {e}"
                );
                false
            }
        }
    }

    /// Stops steering: the parent's own accepting closes (the members themselves close with
    /// `shared`).
    pub(super) fn stop_steering(&mut self) {
        for g in &mut self.steered {
            g.close();
        }
        self.steered.clear();
    }

    pub(super) fn update_listeners(&mut self) {
        let pause = self.successor.on_probation()
            || self.ledger.len() + self.shakes.len() >= self.ledger.limits().max_in_flight
            || self.ledger.waiting_for_anyone() > 0
            || self.ledger.full()
            || !self.ledger.can_place();
        if pause != self.listeners_paused {
            self.listeners_paused = pause;
            for (l, _) in &self.listeners {
                if pause {
                    l.pause();
                } else {
                    l.resume();
                }
            }
            if pause && self.ledger.full() && self.ledger.limits().max_in_flight < self.config.max_in_flight {
                self.stats.local_exhaustion += 1;
                metrics::counter!("baton_handoff_local_exhaustion_total").increment(1);
                limited!(
                    self.logs.exhaustion,
                    log::Level::Warn,
                    "handoff: at the descriptor budget ({} sockets held); listeners paused",
                    self.ledger.len()
                );
            }
            log::debug!("handoff: listeners {}", if pause { "paused" } else { "resumed" });
        }
    }

    pub(crate) fn reactor(&self) -> &Reactor {
        &self.reactor
    }

    /// The ledger, for the successor's release.
    pub(crate) fn ledger_mut(&mut self) -> &mut Ledger<Pending> {
        &mut self.ledger
    }

    pub(crate) fn batch(&self) -> usize {
        self.config.batch
    }
}

/// A duration in whole milliseconds for a record's `u32` field (saturating).
fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}
