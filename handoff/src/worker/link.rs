//! The link actor: the worker's end of the channel. It reads the parent's records, gives
//! sockets to the application (holding them while its mailbox is full), sends the reports and
//! the load (through the bounded [`Outbox`] when the channel is full), drains, and is orphaned
//! when the parent is gone or reads nothing. Lines about what the parent sent wrong go through
//! a [`LogLimit`]: a few per window, the exact count in `baton_worker_bad_records_total`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{Actor, Addr, Context, Recipient, TrySendError};
use baton_transport::{Accepted, Address, Interest, ListenOptions, Listener, Readiness, Stream, Watch};

use super::incoming::Incoming;
use super::outbox::Outbox;
use super::reports::{Reports, Shared};
use super::{WorkerEvent, WorkerExit, WorkerOptions};
use crate::channel::stream_from;
use crate::channel::{BadRecord, Channel, RecvBuf, RecvError};
use crate::log_limit::{limited, LogLimit};
use crate::record::{self, Item, Kind, Load, Reason, Record, MAX_IDS};

/// How often the link checks its drain deadline and refreshes the load report.
const TICK: Duration = Duration::from_millis(50);

pub(super) enum LinkMsg {
    Watch(Watch),
    Ready(Readiness),
    Flush,
    Tick,
    /// The application's mailbox has room again for held sockets.
    Room,
    /// A connection accepted from a listener the parent shared.
    Accepted(Accepted),
    /// The shared listeners are closed, and every connection they accepted is ahead of this
    /// message (see `Link::close_listeners`).
    ListenersClosed,
}

impl From<Accepted> for LinkMsg {
    fn from(a: Accepted) -> LinkMsg {
        LinkMsg::Accepted(a)
    }
}

/// Held events beyond which the listeners the parent shared stop accepting (the kernel's
/// backlog holds new clients, or another worker takes them).
const HELD_LISTENER_PAUSE: usize = 64;

pub(super) struct Link {
    channel: Arc<Channel>,
    watch: Option<Watch>,
    app: Recipient<WorkerEvent>,
    shared: Arc<Shared>,
    recv_buf: RecvBuf,
    send_buf: Vec<u8>,
    /// Swapped with the shared reports at each flush and kept, emptied, with its capacity:
    /// gathering reports allocates nothing at steady state.
    spare_reports: Reports,
    /// Records the parent's full queue refused, sent when writable, in order; bounded (past
    /// the bound the parent is cut off, see `send`).
    outbox: Outbox,
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
    /// Listeners were closed and the connections they accepted before may still be in our
    /// mailbox: not drained until `ListenersClosed` comes back.
    listeners_closing: bool,
    /// Ids for connections accepted here (never reported to the parent; counted in LOAD).
    next_local_id: u64,
    me: Option<Addr<Link>>,
    /// A HELLO has come (the first is logged; a HANDOFF before it is served all the same).
    hello: bool,
    /// Lines about what the parent sent wrong: a few per window, whatever it sends.
    limit: LogLimit,
}

fn app_gone(event: WorkerEvent) {
    log::error!("handoff worker: the application actor has stopped; refusing handoffs");
    if let WorkerEvent::Incoming(mut incoming) = event {
        incoming.refusal = Reason::Failed;
    }
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
            LinkMsg::ListenersClosed => self.listeners_closing = false,
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
        self.shared.outbox_empty.store(self.outbox.is_empty(), SeqCst);
    }
}

impl Link {
    pub(super) fn new(
        channel: Arc<Channel>,
        app: Recipient<WorkerEvent>,
        shared: Arc<Shared>,
        options: WorkerOptions,
        exit: crossbeam_channel::Sender<WorkerExit>,
    ) -> Link {
        Link {
            channel,
            watch: None,
            app,
            shared,
            recv_buf: RecvBuf::default(),
            send_buf: Vec::new(),
            spare_reports: Reports::default(),
            outbox: Outbox::default(),
            deadline: None,
            parent_gone: false,
            exit: Some(exit),
            options,
            held: VecDeque::new(),
            returning: VecDeque::new(),
            returns_limited: false,
            listeners: Vec::new(),
            listeners_paused: false,
            listeners_closing: false,
            next_local_id: 0,
            me: None,
            hello: false,
            limit: LogLimit::default(),
        }
    }

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
                Err(RecvError::Closed) => return self.orphaned(log::Level::Warn, format_args!("the parent is gone")),
                Err(RecvError::Io(e)) => {
                    return self.orphaned(log::Level::Error, format_args!("the channel failed: {e}"));
                }
                Err(RecvError::Bad { error, ids }) => {
                    metrics::counter!("baton_worker_bad_records_total").increment(1);
                    limited!(self.limit, log::Level::Warn, "handoff worker: refused a record from the parent: {error}");
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

    /// The parent is gone, or cut off (`why`, logged once at `level`): stop reading and
    /// sending, shut the channel down, finish the open connections.
    fn orphaned(&mut self, level: log::Level, why: std::fmt::Arguments<'_>) {
        if self.parent_gone {
            return;
        }
        log::log!(
            level,
            "handoff worker: {why}; finishing open connections (up to {:?})",
            self.options.orphan_deadline
        );
        self.parent_gone = true;
        self.shared.decide_parent_fate();
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
                if self.hello {
                    limited!(
                        self.limit,
                        log::Level::Warn,
                        "handoff worker: the parent sent HELLO again (worker {worker}); answering READY again"
                    );
                } else {
                    log::debug!("handoff worker: hello, I am worker {worker}");
                }
                let first = !self.hello;
                self.hello = true;
                // Queued behind a full channel, it is one READY however many HELLOs ask.
                self.send(&Record::Ready { pid: std::process::id() });
                if first {
                    // Version 2 is said once, after READY, in a record a version 1 parent
                    // discards (PROTOCOL.md §13).
                    self.send_as(&Record::Versions(vec![record::VERSION, record::VERSION_2]), record::VERSION_2);
                }
            }
            Record::Handoff(items) => {
                if !self.hello {
                    // The parent sends none before READY; served all the same.
                    limited!(self.limit, log::Level::Warn, "handoff worker: a HANDOFF before HELLO; serving it");
                }
                for (item, fd) in items.into_iter().zip(fds) {
                    self.offer(item, fd);
                }
            }
            Record::Drain { deadline_ms } => {
                log::info!("handoff worker: draining (deadline {deadline_ms} ms)");
                self.start_drain(Instant::now() + Duration::from_millis(u64::from(deadline_ms)));
            }
            Record::Stop => self.finish(ctx, WorkerExit::Stopped),
            other => {
                // Its descriptors (a RETURN's) close with `fds`.
                metrics::counter!("baton_worker_bad_records_total").increment(1);
                limited!(
                    self.limit,
                    log::Level::Warn,
                    "handoff worker: refused a record meant for a parent: {}",
                    name(&other)
                );
            }
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
            limited!(
                self.limit,
                log::Level::Warn,
                "handoff worker: handoff {} is not a connected stream socket",
                item.id
            );
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
            ext: item.ext,
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
                log::info!(
                    "handoff worker: accepting on {} (a listening socket from the parent)",
                    listener.local_addr()
                );
                if self.listeners_paused {
                    listener.pause();
                }
                self.listeners.push((listener, item.tag));
                self.shared.reports.lock().adopted.push(item.id);
            }
            Err(e) => {
                limited!(
                    self.limit,
                    log::Level::Warn,
                    "handoff worker: cannot accept on the listener the parent shared: {e}"
                );
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
            ext: Vec::new(),
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

    /// Closes the shared listeners. A connection one of them accepted just before may still be
    /// on its way to us (in our mailbox): the worker is not drained until it is served, or a
    /// client whose connection the kernel handed us would see it reset when we exit. So the
    /// close is made at once (we run on the reactor's thread), and a message to ourselves
    /// marks the point after which no accepted connection can arrive.
    fn close_listeners(&mut self) {
        if self.listeners.is_empty() {
            return;
        }
        for (l, _) in self.listeners.drain(..) {
            l.close_and_wait();
        }
        if let Some(me) = &self.me {
            // The mailbox is unbounded: the marker is never refused for room.
            if me.try_send(LinkMsg::ListenersClosed).is_ok() {
                self.listeners_closing = true;
            }
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

    /// Sends a record now, or queues it behind others the parent has not taken yet. A parent
    /// that leaves more queued than the outbox's bound is not reading: it is cut off, as if its
    /// channel had ended.
    fn send(&mut self, record: &Record) {
        self.send_as(record, record::VERSION);
    }

    /// [`Link::send`], in protocol `version`.
    fn send_as(&mut self, record: &Record, version: u8) {
        if self.parent_gone {
            return;
        }
        self.send_buf.clear();
        record::encode_as(record, version, &mut self.send_buf);
        if self.outbox.is_empty() {
            match self.channel.send_bytes(&self.send_buf, &[]) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return self.orphaned(log::Level::Error, format_args!("sending to the parent failed: {e}"));
                }
            }
        }
        self.shared.outbox_empty.store(false, SeqCst);
        if let Err(overflow) = self.outbox.push(&self.send_buf) {
            self.orphaned(
                log::Level::Error,
                format_args!("the parent reads nothing: {overflow}; cutting it off as if it were gone"),
            );
        }
    }

    fn send_outbox(&mut self) {
        self.send_outbox_bytes();
        self.send_returns();
    }

    fn send_outbox_bytes(&mut self) {
        while let Some(bytes) = self.outbox.front() {
            match self.channel.send_bytes(bytes, &[]) {
                Ok(()) => self.outbox.pop_front(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    return self.orphaned(log::Level::Error, format_args!("sending to the parent failed: {e}"));
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
        /// Items per RETURN (PROTOCOL.md §10.9).
        const RETURN_BATCH: usize = 64;
        while !self.returning.is_empty() && self.outbox.is_empty() && !self.parent_gone {
            let take = record::fits(self.returning.iter().map(|(item, _)| record::item_len(item)), RETURN_BATCH);
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
        self.shared.sent_open.store(load.open, SeqCst);
        self.shared.sent_queued.store(load.queued, SeqCst);
        self.send(&Record::Load(load));
    }

    fn check_drained(&mut self, ctx: &mut Context<Self>) {
        let idle = self.shared.open.load(SeqCst) == 0 && self.shared.unanswered.load(SeqCst) == 0;
        // Reports filed since this turn's flush (a migration whose `unanswered` count has just
        // been released, say) are not sent yet: the Flush they queued comes back here.
        let reported = self.shared.reports.lock().is_empty();
        let settled = !self.listeners_closing;
        if self.deadline.is_some() && idle && reported && settled && self.outbox.is_empty() && self.returning.is_empty()
        {
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

/// A record's name, for a log line (its body may be long).
fn name(record: &Record) -> &'static str {
    match record {
        Record::Hello { .. } => "HELLO",
        Record::Handoff(_) => "HANDOFF",
        Record::Drain { .. } => "DRAIN",
        Record::Stop => "STOP",
        Record::Ready { .. } => "READY",
        Record::Adopted(_) => "ADOPTED",
        Record::Rejected(_) => "REJECTED",
        Record::Closed(_) => "CLOSED",
        Record::Load(_) => "LOAD",
        Record::Return(_) => "RETURN",
        Record::Take => "TAKE",
        Record::Serving => "SERVING",
        Record::Released => "RELEASED",
        Record::Versions(_) => "VERSIONS",
    }
}
