//! [`Runtime`]: the pool, the registry of live actors, spawning, and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use parking_lot::{Condvar, Mutex};
use slab::Slab;

use crate::actor::Actor;
use crate::address::{ActorId, Addr, IntoRecipient};
use crate::cell::{Cell, CellParts, Control, Supervision};
use crate::event_loop::EventLoop;
use crate::mailbox::Mailbox;
use crate::metrics::ActorMetrics;
use crate::queue::MessageQueue;
use crate::scheduler::{dedicated_loop, Executor, Pool};
use crate::supervisor::{Intensity, Strategy, SupervisorHandle};
use crate::timer::{TimerHandle, Timers};

/// Builds a [`Runtime`].
#[derive(Debug, Clone)]
pub struct Builder {
    threads: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder { threads: std::thread::available_parallelism().map_or(2, |n| n.get()) }
    }
}

impl Builder {
    /// Pool threads (default: available parallelism; at least one).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Starts the pool and timer threads.
    pub fn build(self) -> Runtime {
        let pool = Pool::new(self.threads);
        let threads = pool.start();
        let shared = Arc::new(RuntimeShared {
            pool,
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            registry: Mutex::new(Slab::new()),
            registry_changed: Condvar::new(),
            metrics: Mutex::new(HashMap::new()),
            dedicated: Mutex::new(Vec::new()),
            timers: Timers::new(),
        });
        let timer_thread = shared.timers.start(&shared);
        Runtime { shared, threads: Mutex::new(threads), timer_thread: Mutex::new(Some(timer_thread)) }
    }
}

struct Entry {
    depth: u32,
    /// The cell itself (no allocation of its own per actor).
    control: Arc<dyn Control>,
}

pub(crate) struct RuntimeShared {
    pub(crate) pool: Arc<Pool>,
    epoch: Instant,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    registry: Mutex<Slab<Entry>>,
    registry_changed: Condvar,
    /// Per actor type, keyed by `TypeId` so a spawn neither formats nor hashes the type's name.
    metrics: Mutex<HashMap<std::any::TypeId, Arc<ActorMetrics>>>,
    dedicated: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) timers: Timers,
}

impl RuntimeShared {
    pub(crate) fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(SeqCst)
    }

    pub(crate) fn metrics_for<A: 'static>(&self) -> Arc<ActorMetrics> {
        let mut metrics = self.metrics.lock();
        let entry = metrics.entry(std::any::TypeId::of::<A>());
        entry.or_insert_with(|| Arc::new(ActorMetrics::register(crate::cell::short_type_name::<A>()))).clone()
    }

    pub(crate) fn deregister(&self, key: usize) {
        let mut registry = self.registry.lock();
        if registry.contains(key) {
            registry.remove(key);
        }
        self.registry_changed.notify_all();
    }

    /// Creates, registers and starts a cell. Shared by every spawn path.
    pub(crate) fn spawn_cell<A: Actor>(
        self: &Arc<Self>,
        actor: A,
        supervision: Option<Box<Supervision<A>>>,
        spec: SpawnOptions,
    ) -> Result<Addr<A>, SpawnError> {
        let mailbox = MessageQueue::new(match spec.mailbox {
            Mailbox::Bounded(n) => n,
            Mailbox::Unbounded => usize::MAX,
        });
        let id = ActorId(self.next_id.fetch_add(1, SeqCst));
        let (executor, wakeups) = match &spec.placement {
            Placement::Pool => (Executor::Pool(self.pool.clone()), None),
            Placement::Dedicated => {
                let (tx, rx) = unbounded();
                (Executor::Dedicated(tx), Some(rx))
            }
            Placement::Loop(event_loop) => (Executor::Loop(event_loop.inner.clone(), self.pool.clone()), None),
        };
        let parts = CellParts { depth: spec.depth, actor, supervision, mailbox, executor };
        let cell = Cell::new(id, self.clone(), parts);
        let key = {
            // Checked under the registry lock, which shutdown also takes to set the flag: an
            // actor is either refused or seen by shutdown, never missed.
            let mut registry = self.registry.lock();
            if self.is_shutting_down() {
                return Err(SpawnError::ShuttingDown);
            }
            let key = registry.insert(Entry { depth: spec.depth, control: cell.clone() });
            cell.registry_key.store(key, SeqCst);
            key
        };
        if let Some(wakeups) = wakeups {
            let task = cell.clone();
            let watch = cell.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("baton-{}", cell.type_name()))
                .spawn(move || dedicated_loop(task, wakeups, move || watch.is_terminated()));
            match spawned {
                Ok(handle) => {
                    let mut dedicated = self.dedicated.lock();
                    // Threads of actors that already stopped are done: drop (detach) their
                    // handles so a long-lived runtime does not accumulate them.
                    dedicated.retain(|h| !h.is_finished());
                    dedicated.push(handle);
                }
                Err(e) => {
                    self.deregister(key);
                    return Err(SpawnError::Thread(e));
                }
            }
        }
        cell.wake();
        Ok(Addr::from_cell(cell))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SpawnOptions {
    pub mailbox: Mailbox,
    pub placement: Placement,
    pub depth: u32,
}

/// Where an actor's turns run.
#[derive(Clone, Debug)]
pub(crate) enum Placement {
    /// The runtime's pool threads.
    Pool,
    /// A thread of its own, for handlers that block.
    Dedicated,
    /// The thread that drives this loop.
    Loop(EventLoop),
}

/// Why a spawn failed.
#[derive(Debug)]
pub enum SpawnError {
    /// The runtime is shutting down and takes no new actors.
    ShuttingDown,
    /// The supervisor has escalated or stopped and takes no new children.
    SupervisorStopped,
    /// The operating system refused a dedicated thread.
    Thread(std::io::Error),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::ShuttingDown => f.write_str("the runtime is shutting down"),
            SpawnError::SupervisorStopped => f.write_str("the supervisor has stopped"),
            SpawnError::Thread(e) => write!(f, "cannot start a dedicated thread: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Shutdown did not finish before its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownError {
    /// Actors still running at the deadline.
    pub unfinished: usize,
}

impl std::fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} actors had not stopped by the shutdown deadline", self.unfinished)
    }
}

impl std::error::Error for ShutdownError {}

/// Actors on a fixed pool of threads, plus timers and supervision.
///
/// Dropping a runtime shuts it down with a five-second deadline.
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    timer_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

impl Runtime {
    /// A runtime with one pool thread per available core.
    pub fn new() -> Runtime {
        Builder::default().build()
    }

    /// Configure before starting.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Spawns `actor` on the pool with the default bounded mailbox ([`Mailbox::DEFAULT`]).
    ///
    /// # Panics
    ///
    /// If the runtime is shutting down; use [`Runtime::try_spawn`] to get an error instead.
    pub fn spawn<A: Actor>(&self, actor: A) -> Addr<A> {
        self.try_spawn(actor, Mailbox::DEFAULT).expect("spawn on a runtime that is shutting down")
    }

    /// Spawns `actor` on the pool with the given mailbox.
    ///
    /// # Errors
    ///
    /// [`SpawnError::ShuttingDown`] once shutdown has begun.
    pub fn try_spawn<A: Actor>(&self, actor: A, mailbox: Mailbox) -> Result<Addr<A>, SpawnError> {
        self.shared.spawn_cell(actor, None, SpawnOptions { mailbox, placement: Placement::Pool, depth: 0 })
    }

    /// Spawns `actor` on an [`EventLoop`]: its turns run on the thread that drives the loop
    /// (a transport reactor's, for protocol actors), not on the pool. Its handlers must never
    /// block; see [`EventLoop`] for why and when this pays.
    ///
    /// # Errors
    ///
    /// [`SpawnError::ShuttingDown`] once shutdown has begun.
    pub fn spawn_on<A: Actor>(
        &self,
        event_loop: &EventLoop,
        actor: A,
        mailbox: Mailbox,
    ) -> Result<Addr<A>, SpawnError> {
        let options = SpawnOptions { mailbox, placement: Placement::Loop(event_loop.clone()), depth: 0 };
        self.shared.spawn_cell(actor, None, options)
    }

    /// Spawns `actor` on a thread of its own, for handlers that block (disk, DNS, foreign
    /// libraries). It can be monitored and stopped like any other actor; blocking asks are
    /// allowed from its handlers.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] when shutting down or when no thread can be started.
    pub fn spawn_dedicated<A: Actor>(&self, actor: A, mailbox: Mailbox) -> Result<Addr<A>, SpawnError> {
        self.shared.spawn_cell(actor, None, SpawnOptions { mailbox, placement: Placement::Dedicated, depth: 0 })
    }

    /// Starts a supervisor; add children with [`SupervisorHandle::start_child`].
    ///
    /// # Errors
    ///
    /// [`SpawnError::ShuttingDown`] once shutdown has begun.
    pub fn supervisor(&self, strategy: Strategy, intensity: Intensity) -> Result<SupervisorHandle, SpawnError> {
        crate::supervisor::start(&self.shared, strategy, intensity, 0)
    }

    /// Sends `msg` to `to` (an address or recipient, see [`IntoRecipient`]) after `delay`,
    /// from the runtime's timer thread, which never waits for room: if the mailbox is full
    /// then, delivery is retried every millisecond until it is accepted, the timer is
    /// cancelled, or the actor closes.
    pub fn send_after<M: Send + 'static>(&self, to: impl IntoRecipient<M>, delay: Duration, msg: M) -> TimerHandle {
        crate::timer::send_after(&self.shared, to.into_recipient(), delay, msg)
    }

    /// Sends `make()` to `to` every `period`, from the timer thread. A tick that finds the
    /// mailbox full is skipped and counted (`baton_timer_ticks_skipped_total`); the timer ends
    /// when it is cancelled or the actor closes.
    pub fn send_interval<M: Send + 'static>(
        &self,
        to: impl IntoRecipient<M>,
        period: Duration,
        make: impl FnMut() -> M + Send + 'static,
    ) -> TimerHandle {
        crate::timer::send_interval(&self.shared, to.into_recipient(), period, make)
    }

    /// Actors that have not stopped yet.
    pub fn live_actors(&self) -> usize {
        self.shared.registry.lock().len()
    }

    /// Shuts down: no new actors; every actor is stopped children-first (deepest supervision
    /// level first), each after handling the messages it had accepted; then every thread is
    /// joined. Messages sent after an actor closed are handed back to their senders.
    ///
    /// # Errors
    ///
    /// [`ShutdownError`] if actors were still running at the deadline. The pool threads finish
    /// the turns they are in and exit; actors that had not stopped are abandoned (their
    /// remaining messages are never handled) and their threads are detached, not joined, so
    /// the call returns at the deadline.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), ShutdownError> {
        let deadline = Instant::now() + timeout;
        let shared = &self.shared;
        {
            let _registry = shared.registry.lock();
            shared.shutting_down.store(true, SeqCst);
        }
        shared.timers.stop();
        let mut result = Ok(());
        loop {
            let level = {
                let registry = shared.registry.lock();
                let Some(depth) = registry.iter().map(|(_, e)| e.depth).max() else {
                    break;
                };
                for (_, e) in registry.iter().filter(|(_, e)| e.depth == depth) {
                    e.control.clone().signal(crate::cell::Signal::Stop(crate::ExitReason::Shutdown));
                }
                depth
            };
            let mut registry = shared.registry.lock();
            while registry.iter().any(|(_, e)| e.depth == level) {
                if shared.registry_changed.wait_until(&mut registry, deadline).timed_out() {
                    result = Err(ShutdownError { unfinished: registry.len() });
                    break;
                }
            }
            if result.is_err() {
                break;
            }
        }
        if let Some(t) = self.timer_thread.lock().take() {
            let _ = t.join();
        }
        if let Err(e) = result {
            log::error!("runtime shutdown: {e}");
            shared.pool.stop_threads();
            // Detach: a handler stuck past the deadline must not make Drop wait again.
            self.threads.lock().clear();
            shared.dedicated.lock().clear();
            return Err(e);
        }
        shared.pool.stop_threads();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        for t in shared.dedicated.lock().drain(..) {
            let _ = t.join();
        }
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.threads.lock().is_empty() {
            let _ = self.shutdown(Duration::from_secs(5));
        }
    }
}
