//! The per-actor state machine: mailbox lanes, the `scheduled` flag, and the lifecycle.
//!
//! See `SCHEDULER.md` beside this crate for the wake-up protocol in prose.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::actor::{Actor, Context, Down, ExitReason};
use crate::address::ActorId;
use crate::mailbox::{SendTimeoutError, TrySendError};
use crate::metrics::ActorMetrics;
use crate::queue::{Batch, MessageQueue, Refused};
use crate::runtime::RuntimeShared;
use crate::scheduler::{Executor, Runnable};
use crate::supervisor::Restart;

/// How many user messages one turn handles before the actor yields its thread.
pub(crate) const BATCH: usize = 64;

/// One turn in this many is timed for the mailbox-wait and handler-duration histograms.
const SAMPLE_EVERY: u32 = 16;

/// A turn that has handled this many messages treats the mailbox as a stream and spins briefly
/// when it runs dry; single messages (request/response, rings) end the turn at once.
const STREAM_MIN: u64 = 4;

/// Polls of an empty mailbox before ending a streaming turn (about a microsecond in all).
const STREAM_SPINS: u32 = 24;

pub(crate) enum Signal {
    Stop(ExitReason),
    Down(Down),
    Restart,
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum Phase {
    /// `started` has not run yet for the current instance.
    Starting,
    Running,
    /// Closed to new messages; handles what was accepted, then exits with the reason.
    Draining(ExitReason),
    /// A supervised actor exited; its mailbox is kept until the supervisor decides.
    AwaitingSupervisor,
    Terminated,
}

type Factory<A> = Box<dyn FnMut() -> A + Send>;
type Monitor = Box<dyn FnOnce(Down) + Send>;
type RoomWaiter = Box<dyn FnOnce() + Send>;

/// What few actors ever use, kept out of the cell until one does: an idle actor (one per
/// connection, say) is smaller by its vectors and their lock.
#[derive(Default)]
struct Cold {
    /// Control signals (stop, down, restart) not yet handled: their own lane, never full.
    signals: Vec<Signal>,
    /// Monitors waiting for this actor's exit.
    waiting: Vec<Monitor>,
    /// Why it exited, once it has, unless the reason was `Normal` and nothing had made this
    /// box yet: an actor that ends normally, unwatched, allocates nothing at its end (one per
    /// connection ends with every connection). A monitor added later hears at once.
    exit: Option<ExitReason>,
    /// Producers that found the mailbox full and want a call when there is room again.
    room_waiters: Vec<RoomWaiter>,
}
pub(crate) type SupervisorHook = Box<dyn Fn(Down) + Send + Sync>;

/// What only a supervised child has, behind one pointer: an actor that is not supervised (one
/// per connection, say) carries none of it.
pub(crate) struct Supervision<A: Actor> {
    /// Builds the next instance for a restart.
    pub factory: Factory<A>,
    /// Tells the supervisor of an exit it decides on.
    pub hook: SupervisorHook,
    pub restart: Restart,
    /// Why the last instance exited, while the supervisor decides.
    pub last_exit: Option<ExitReason>,
}

struct Inner<A: Actor> {
    actor: Option<A>,
    phase: Phase,
    /// Dropped when the actor terminates: the hook holds its supervisor's cell.
    supervision: Option<Box<Supervision<A>>>,
    /// Turns that handled messages (counted from a phase of the actor's id); one in
    /// `SAMPLE_EVERY` is timed.
    busy_turns: u32,
    /// Messages the turns took from the mailbox in one go and have not handled yet (see
    /// `queue.rs`); they still count against the mailbox's bound.
    batch: Batch<A::Message>,
}

/// Type-erased control over any cell: what the runtime registry and supervisors hold.
pub(crate) trait Control: Send + Sync {
    fn signal(self: Arc<Self>, sig: Signal);
}

pub(crate) struct Cell<A: Actor> {
    pub(crate) id: ActorId,
    pub(crate) runtime: Arc<RuntimeShared>,
    pub(crate) mailbox: MessageQueue<A::Message>,
    /// Signals wait in `cold`; this says some may.
    has_control: AtomicBool,
    scheduled: AtomicBool,
    terminated: AtomicBool,
    /// When the actor became runnable (nanoseconds since the runtime started), or 0 when this
    /// turn is not sampled. Only the thread that won the `scheduled` flag writes it.
    runnable_since: AtomicU64,
    /// Wake-ups, for sampling one in `SAMPLE_EVERY` (wraps; only the remainder matters).
    wakes: AtomicU32,
    pub(crate) executor: Executor,
    inner: Mutex<Inner<A>>,
    /// Signals, monitors, the exit reason and room waiters, allocated by the first that needs
    /// them.
    cold: Mutex<Option<Box<Cold>>>,
    has_room_waiters: AtomicBool,
    pub(crate) registry_key: AtomicUsize,
    /// Supervision depth: 0 for top-level actors, one more than the parent otherwise.
    pub(crate) depth: u32,
    metrics: Arc<ActorMetrics>,
}

impl<A: Actor> Cell<A> {
    /// The actor type's short name (for log lines and thread names).
    pub(crate) fn type_name(&self) -> &'static str {
        self.metrics.name
    }
}

pub(crate) struct CellParts<A: Actor> {
    pub depth: u32,
    pub actor: A,
    pub supervision: Option<Box<Supervision<A>>>,
    pub mailbox: MessageQueue<A::Message>,
    pub executor: Executor,
}

impl<A: Actor> Cell<A> {
    pub(crate) fn new(id: ActorId, runtime: Arc<RuntimeShared>, parts: CellParts<A>) -> Arc<Self> {
        let metrics = runtime.metrics_for::<A>();
        Arc::new(Cell {
            id,
            runtime,
            mailbox: parts.mailbox,
            has_control: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
            runnable_since: AtomicU64::new(0),
            // Each actor starts its sampling count at a different phase: a short-lived actor
            // (one per connection) would otherwise time its first wake-up and turn, every one.
            wakes: AtomicU32::new(id.0 as u32),
            executor: parts.executor,
            inner: Mutex::new(Inner {
                actor: Some(parts.actor),
                phase: Phase::Starting,
                supervision: parts.supervision,
                busy_turns: id.0 as u32,
                batch: Batch::default(),
            }),
            cold: Mutex::new(None),
            has_room_waiters: AtomicBool::new(false),
            registry_key: AtomicUsize::new(usize::MAX),
            depth: parts.depth,
            metrics,
        })
    }

    // ---- sending -------------------------------------------------------------------------

    fn delivered(self: &Arc<Self>) {
        self.metrics.sent.increment(1);
        self.wake();
    }

    pub(crate) fn try_send(self: &Arc<Self>, msg: A::Message) -> Result<(), TrySendError<A::Message>> {
        self.try_send_with(move || msg).map_err(|e| e.map(|make| make()))
    }

    /// As `try_send`, for the message `make` builds: it is called only if the message is
    /// accepted, and handed back uncalled otherwise (see `MessageQueue::try_send_with`).
    pub(crate) fn try_send_with<F: FnOnce() -> A::Message>(self: &Arc<Self>, make: F) -> Result<(), TrySendError<F>> {
        match self.mailbox.try_send_with(make) {
            Ok(()) => {
                self.delivered();
                Ok(())
            }
            Err(Refused::Full(m)) => Err(TrySendError::Full(m)),
            Err(Refused::Closed(m)) => Err(TrySendError::Closed(m)),
        }
    }

    pub(crate) fn send(
        self: &Arc<Self>,
        msg: A::Message,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<A::Message>> {
        self.send_with(move || msg, deadline).map_err(|e| e.map(|make| make()))
    }

    /// As `send`, for the message `make` builds (see `try_send_with`).
    pub(crate) fn send_with<F: FnOnce() -> A::Message>(
        self: &Arc<Self>,
        make: F,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<F>> {
        match self.try_send_with(make) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(m)) => Err(SendTimeoutError::Closed(m)),
            Err(TrySendError::Full(m)) => {
                if crate::ask::on_pool_thread() || crate::ask::current_actor() == Some(self.id) {
                    // Waiting here could hold the very thread the receiver needs (or, sending
                    // to itself, the receiver's own turn): hand it back as full, not closed.
                    log::debug!(
                        "send to the full mailbox of {} ({}) on a thread that may not wait",
                        self.id,
                        self.metrics.name
                    );
                    return Err(SendTimeoutError::Full(m));
                }
                match self.mailbox.send_deadline_with(m, deadline.unwrap_or_else(far_future)) {
                    Ok(()) => {
                        self.delivered();
                        Ok(())
                    }
                    Err(Refused::Full(m)) => Err(SendTimeoutError::Timeout(m)),
                    Err(Refused::Closed(m)) => Err(SendTimeoutError::Closed(m)),
                }
            }
        }
    }

    /// As `try_send`, but when the mailbox is full `notify` is kept and called once there is
    /// room again (or the actor closes), so a producer can pause instead of polling.
    pub(crate) fn try_send_notify_with<F: FnOnce() -> A::Message>(
        self: &Arc<Self>,
        make: F,
        notify: crate::address::MakeRoomWaiter<'_>,
    ) -> Result<(), TrySendError<F>> {
        match self.try_send_with(make) {
            Err(TrySendError::Full(m)) => {
                self.cold.lock().get_or_insert_with(Box::default).room_waiters.push(notify());
                self.has_room_waiters.store(true, SeqCst);
                // The actor may have emptied its mailbox between the failed push and the
                // registration; it would then never look at the waiters. Check again.
                if !self.mailbox.is_full() || self.mailbox.is_closed() {
                    self.call_room_waiters();
                }
                Err(TrySendError::Full(m))
            }
            other => other,
        }
    }

    #[inline]
    fn call_room_waiters(&self) {
        if self.has_room_waiters.load(SeqCst) {
            self.call_room_waiters_now();
        }
    }

    #[cold]
    fn call_room_waiters_now(&self) {
        if self.has_room_waiters.swap(false, SeqCst) {
            let waiters = self.cold.lock().as_mut().map(|c| std::mem::take(&mut c.room_waiters)).unwrap_or_default();
            for w in waiters {
                if catch_unwind(AssertUnwindSafe(w)).is_err() {
                    log::error!("a room-waiter callback of {} panicked", self.id);
                }
            }
        }
    }

    pub(crate) fn push_signal(self: &Arc<Self>, sig: Signal) {
        {
            // `terminate` sets the flag under this lock: a signal is either in before the
            // signals are cleared, or refused, never left behind for a dead actor.
            let mut cold = self.cold.lock();
            if self.terminated.load(SeqCst) {
                return;
            }
            cold.get_or_insert_with(Box::default).signals.push(sig);
        }
        self.has_control.store(true, SeqCst);
        self.wake();
    }

    pub(crate) fn signal_stop(self: &Arc<Self>, reason: ExitReason) {
        self.push_signal(Signal::Stop(reason));
    }

    pub(crate) fn signal_down(self: &Arc<Self>, down: Down) {
        self.push_signal(Signal::Down(down));
    }

    pub(crate) fn add_monitor(&self, monitor: Monitor) {
        let mut cold = self.cold.lock();
        // `terminate` sets the flag under this lock, with the reason unless it was `Normal`.
        if self.terminated.load(SeqCst) {
            let reason = cold.as_ref().and_then(|c| c.exit.clone()).unwrap_or(ExitReason::Normal);
            drop(cold);
            monitor(Down { id: self.id, reason });
            return;
        }
        cold.get_or_insert_with(Box::default).waiting.push(monitor);
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated.load(SeqCst)
    }

    /// The empty-to-runnable edge: whoever flips `scheduled` from false to true enqueues.
    pub(crate) fn wake(self: &Arc<Self>) {
        // A plain load first: while the actor is already scheduled (the common case under load)
        // senders skip the read-modify-write and leave the cache line shared.
        if self.scheduled.load(SeqCst) {
            return;
        }
        if !self.scheduled.swap(true, SeqCst) {
            // Timing every wake-up costs a clock read per message when the consumer keeps up;
            // one in SAMPLE_EVERY is enough for the histogram.
            // Only the winner of the flag gets here, one at a time (each win follows the
            // previous turn's store of `false`), so a load and a store count without a locked
            // instruction.
            let n = self.wakes.load(Relaxed);
            self.wakes.store(n.wrapping_add(1), Relaxed);
            let since = if n % SAMPLE_EVERY == 0 { self.runtime.now_nanos().max(1) } else { 0 };
            self.runnable_since.store(since, Relaxed);
            self.executor.schedule(self.clone());
        }
    }

    // ---- running -------------------------------------------------------------------------

    /// Runs one turn. Returns whether the actor handles user messages in its current phase
    /// (not while awaiting its supervisor's decision, nor after terminating).
    fn turn(self: &Arc<Self>) -> bool {
        let mut inner = self.inner.lock();
        if inner.phase == Phase::Terminated {
            return false;
        }
        let previous = crate::ask::set_current_actor(Some(self.id));
        // The context's own count (two atomic operations per turn): the runtime crate has no
        // unsafe code, and borrowing the count without one would need it.
        let mut ctx = Context { cell: self.clone(), stop_requested: false };

        // Start first, so a Down or Stop that arrived before the first turn finds an instance.
        if inner.phase == Phase::Starting {
            self.start_instance(&mut inner, &mut ctx);
        }

        // A load first: signals are rare, and the swap is a write to a line senders read.
        if self.has_control.load(SeqCst) && self.has_control.swap(false, SeqCst) {
            let signals = self.cold.lock().as_mut().map(|c| std::mem::take(&mut c.signals)).unwrap_or_default();
            for sig in signals {
                self.on_signal(&mut inner, &mut ctx, sig);
                self.apply_stop_request(&mut inner, &mut ctx);
            }
        }

        if matches!(inner.phase, Phase::Running | Phase::Draining(_)) {
            let since = self.runnable_since.load(Relaxed);
            if since != 0 {
                let waited = self.runtime.now_nanos().saturating_sub(since);
                self.metrics.mailbox_wait.record(waited as f64 / 1e9);
            }
            let started = (inner.busy_turns % SAMPLE_EVERY == 0).then(Instant::now);
            let mut handled = 0u64;
            while handled < BATCH as u64 {
                let msg = match self.mailbox.recv(&mut inner.batch) {
                    Some(msg) => msg,
                    // A stream is flowing (this turn already handled several messages): wait a
                    // moment for the next one rather than end the turn and pay a reschedule,
                    // and likely a cross-CPU wake-up, per message. Only on a pool thread with
                    // nothing else to run: other runnable actors would wait behind the spin
                    // (many actors messaging each other at random fill their mailboxes in
                    // bursts and would spin after every one). Not on an event loop: there the
                    // producer is usually the loop's own thread, which the spin would hold.
                    None if handled >= STREAM_MIN && self.executor.may_spin() => {
                        match self.spin_for_message(&mut inner.batch) {
                            Some(msg) => msg,
                            None => break,
                        }
                    }
                    None => break,
                };
                handled += 1;
                let actor = inner.actor.as_mut().expect("running phase has an actor");
                let r = catch_unwind(AssertUnwindSafe(|| actor.handle(&mut ctx, msg)));
                if let Err(payload) = r {
                    self.crashed(&mut inner, &mut ctx, payload);
                    break;
                }
                self.apply_stop_request(&mut inner, &mut ctx);
            }
            if handled > 0 {
                inner.busy_turns = inner.busy_turns.wrapping_add(1);
                self.metrics.handled.increment(handled);
                if let Some(started) = started {
                    self.metrics.handler.record(started.elapsed().as_secs_f64() / handled as f64);
                }
            }
            // The count is exact from here on: the drain check below and the runnable-edge
            // check after the turn read it.
            self.mailbox.publish(&mut inner.batch);
            self.metrics.depth.set(self.mailbox.len() as f64);
            if handled > 0 {
                self.call_room_waiters();
            }
            if let Phase::Draining(reason) = inner.phase.clone() {
                // The mailbox is closed: it can only shrink, so empty now is empty for good.
                if self.mailbox.is_empty() {
                    self.exit_instance(&mut inner, &mut ctx, reason);
                }
            }
        }
        crate::ask::set_current_actor(previous);
        !matches!(inner.phase, Phase::AwaitingSupervisor | Phase::Terminated)
    }

    fn apply_stop_request(self: &Arc<Self>, inner: &mut Inner<A>, ctx: &mut Context<A>) {
        if ctx.stop_requested {
            ctx.stop_requested = false;
            if inner.phase == Phase::Running {
                self.begin_drain(inner, ExitReason::Normal);
            }
        }
    }

    fn spin_for_message(&self, batch: &mut Batch<A::Message>) -> Option<A::Message> {
        for i in 0..STREAM_SPINS {
            if i % 4 == 3 && !self.executor.may_spin() {
                return None;
            }
            for _ in 0..(1 << i.min(4)) {
                std::hint::spin_loop();
            }
            if let Some(msg) = self.mailbox.recv(batch) {
                return Some(msg);
            }
        }
        None
    }

    fn wants_turn(&self, handles_user_messages: bool) -> bool {
        if self.terminated.load(SeqCst) {
            return false;
        }
        self.has_control.load(SeqCst) || (handles_user_messages && !self.mailbox.is_empty())
    }

    fn on_signal(self: &Arc<Self>, inner: &mut Inner<A>, ctx: &mut Context<A>, sig: Signal) {
        match sig {
            Signal::Stop(reason) => match inner.phase {
                Phase::Starting | Phase::Running => {
                    if inner.phase == Phase::Starting {
                        self.start_instance(inner, ctx);
                    }
                    if inner.phase == Phase::Running {
                        self.begin_drain(inner, reason);
                    } else if inner.phase == Phase::AwaitingSupervisor {
                        self.terminate(inner, reason);
                    }
                }
                Phase::Draining(ref current) => {
                    if reason == ExitReason::Shutdown && *current != ExitReason::Shutdown {
                        inner.phase = Phase::Draining(reason);
                    }
                }
                Phase::AwaitingSupervisor => {
                    // Shutdown overtook the supervisor's decision. A child it would restart is
                    // rebuilt now so the messages it had accepted are still handled.
                    let restarts = inner
                        .supervision
                        .as_ref()
                        .is_some_and(|s| s.restart.restarts_after(s.last_exit.as_ref().unwrap_or(&ExitReason::Normal)));
                    if reason == ExitReason::Shutdown && restarts {
                        self.rebuild(inner, ctx);
                    } else {
                        self.terminate(inner, reason);
                    }
                }
                Phase::Terminated => {}
            },
            Signal::Down(down) => {
                if matches!(inner.phase, Phase::Running | Phase::Draining(_)) {
                    let actor = inner.actor.as_mut().expect("running phase has an actor");
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| actor.down(ctx, down))) {
                        self.crashed(inner, ctx, p);
                    }
                }
            }
            Signal::Restart => match inner.phase {
                // Without a factory (a nested supervisor) there is nothing to rebuild from.
                // A draining actor keeps draining: a pending stop outranks a sibling's restart.
                Phase::Running if inner.supervision.is_some() => {
                    if let Some(mut actor) = inner.actor.take() {
                        let _ = catch_unwind(AssertUnwindSafe(|| {
                            actor.stopping(ctx);
                            actor.stopped(&ExitReason::Shutdown);
                            drop(actor);
                        }));
                    }
                    self.rebuild(inner, ctx);
                }
                Phase::Running | Phase::Draining(_) => {}
                Phase::AwaitingSupervisor => self.rebuild(inner, ctx),
                Phase::Starting | Phase::Terminated => {}
            },
        }
    }

    fn rebuild(self: &Arc<Self>, inner: &mut Inner<A>, ctx: &mut Context<A>) {
        let Some(supervision) = inner.supervision.as_mut() else {
            self.terminate(inner, ExitReason::Normal);
            return;
        };
        match catch_unwind(AssertUnwindSafe(&mut supervision.factory)) {
            Ok(actor) => {
                self.metrics.restarts.increment(1);
                inner.actor = Some(actor);
                inner.phase = Phase::Starting;
                self.mailbox.reopen();
                self.start_instance(inner, ctx);
                if self.runtime.is_shutting_down() && inner.phase == Phase::Running {
                    // Restarted during shutdown: finish what was accepted, then stop for good.
                    self.begin_drain(inner, ExitReason::Shutdown);
                }
            }
            Err(p) => {
                log::error!("{} ({}): factory panicked during restart", self.id, self.metrics.name);
                self.crashed(inner, ctx, p);
            }
        }
    }

    fn start_instance(self: &Arc<Self>, inner: &mut Inner<A>, ctx: &mut Context<A>) {
        inner.phase = Phase::Running;
        let actor = inner.actor.as_mut().expect("starting phase has an actor");
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| actor.started(ctx))) {
            self.crashed(inner, ctx, p);
            return;
        }
        if ctx.stop_requested {
            ctx.stop_requested = false;
            self.begin_drain(inner, ExitReason::Normal);
        }
    }

    fn begin_drain(self: &Arc<Self>, inner: &mut Inner<A>, reason: ExitReason) {
        self.mailbox.close();
        inner.phase = Phase::Draining(reason);
    }

    fn crashed(self: &Arc<Self>, inner: &mut Inner<A>, ctx: &mut Context<A>, payload: Box<dyn std::any::Any + Send>) {
        let text = panic_text(&payload);
        log::error!("{} ({}) panicked: {text}", self.id, self.metrics.name);
        self.metrics.panics.increment(1);
        let reason = ExitReason::Panicked(text);
        // The state may be half-updated by the panic, but its `Drop` runs on it anyway; so does
        // `stopped`, which exists to release what the instance holds (see `Actor::stopped`).
        // `stopping` does not: it belongs to an orderly stop, with the mailbox drained.
        if let Some(mut actor) = inner.actor.take() {
            let r = catch_unwind(AssertUnwindSafe(|| {
                actor.stopped(&reason);
                drop(actor);
            }));
            if let Err(p) = r {
                log::error!(
                    "{} ({}) panicked in stopped after a panic: {}",
                    self.id,
                    self.metrics.name,
                    panic_text(&p)
                );
            }
        }
        self.after_exit(inner, ctx, reason);
    }

    fn exit_instance(self: &Arc<Self>, inner: &mut Inner<A>, ctx: &mut Context<A>, reason: ExitReason) {
        if let Some(mut actor) = inner.actor.take() {
            let r = catch_unwind(AssertUnwindSafe(|| {
                actor.stopping(ctx);
                actor.stopped(&reason);
                drop(actor);
            }));
            if let Err(p) = r {
                log::error!("{} ({}) panicked while stopping: {}", self.id, self.metrics.name, panic_text(&p));
            }
        }
        self.after_exit(inner, ctx, reason);
    }

    fn after_exit(self: &Arc<Self>, inner: &mut Inner<A>, _ctx: &mut Context<A>, reason: ExitReason) {
        match inner.supervision.as_mut() {
            // Shutdown and escalation are final: there is no supervisor left to decide.
            Some(supervision) if !matches!(reason, ExitReason::Shutdown | ExitReason::Escalated) => {
                inner.phase = Phase::AwaitingSupervisor;
                supervision.last_exit = Some(reason.clone());
                (supervision.hook)(Down { id: self.id, reason });
            }
            _ => self.terminate(inner, reason),
        }
    }

    fn terminate(self: &Arc<Self>, inner: &mut Inner<A>, reason: ExitReason) {
        inner.phase = Phase::Terminated;
        inner.actor = None;
        inner.supervision = None;
        self.mailbox.close();
        // Closed: nothing more can arrive, so what is left is all there will be.
        let mut dropped = 0usize;
        while let Some(msg) = self.mailbox.recv(&mut inner.batch) {
            dropped += 1;
            let _ = catch_unwind(AssertUnwindSafe(move || drop(msg)));
        }
        if dropped > 0 {
            log::warn!("{} ({}) stopped ({reason}) with {dropped} unhandled messages", self.id, self.metrics.name);
            self.metrics.dropped.increment(dropped as u64);
        }
        let monitors = {
            let mut cold = self.cold.lock();
            self.terminated.store(true, SeqCst);
            match cold.as_mut() {
                Some(c) => {
                    c.exit = Some(reason.clone());
                    c.signals = Vec::new();
                    std::mem::take(&mut c.waiting)
                }
                // Nobody watches, and a later monitor hears `Normal` without a box.
                None if reason == ExitReason::Normal => Vec::new(),
                None => {
                    cold.get_or_insert_with(Box::default).exit = Some(reason.clone());
                    Vec::new()
                }
            }
        };
        for m in monitors {
            let down = Down { id: self.id, reason: reason.clone() };
            if catch_unwind(AssertUnwindSafe(move || m(down))).is_err() {
                log::error!("a monitor of {} panicked", self.id);
            }
        }
        self.call_room_waiters();
        self.runtime.deregister(self.registry_key.load(SeqCst));
    }
}

impl<A: Actor> Runnable for Cell<A> {
    fn run(self: Arc<Self>) {
        let handles_user_messages = self.turn();
        self.scheduled.store(false, SeqCst);
        if self.wants_turn(handles_user_messages) && !self.scheduled.swap(true, SeqCst) {
            // Still busy: go to the back of the shared queue, not this thread's LIFO slot, so
            // the batch bound really lets other actors run.
            self.runnable_since.store(0, Relaxed);
            self.executor.schedule_fair(self.clone());
        }
    }

    fn run_on_pool(self: Arc<Self>) {
        match &self.executor {
            Executor::Pool(pool) | Executor::Loop(_, pool) => pool.clone().push_fair(self),
            Executor::Dedicated(_) => self.executor.schedule(self.clone()),
        }
    }
}

impl<A: Actor> Control for Cell<A> {
    fn signal(self: Arc<Self>, sig: Signal) {
        self.push_signal(sig);
    }
}

pub(crate) fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

pub(crate) fn short_type_name<A>() -> &'static str {
    let full = std::any::type_name::<A>();
    let base = full.split('<').next().unwrap_or(full);
    let start = base.rfind("::").map_or(0, |i| i + 2);
    &full[start..]
}

/// A deadline no send waits for: "no deadline" for [`MessageQueue::send_deadline`].
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(60 * 60 * 24 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Idle;
    impl Actor for Idle {
        type Message = ();
        fn handle(&mut self, _: &mut Context<Self>, _: ()) {}
    }

    /// An actor per connection multiplies every byte of the cell by the connections held:
    /// supervision, signals, monitors and room waiters stay behind pointers until used.
    #[test]
    fn an_idle_actor_s_cell_keeps_what_few_actors_use_behind_pointers() {
        let size = std::mem::size_of::<Cell<Idle>>();
        eprintln!("cell of a zero-sized actor: {size} bytes");
        assert!(size <= 256, "{size} bytes");
        assert_eq!(std::mem::size_of::<Option<Box<Supervision<Idle>>>>(), 8);
    }
}
