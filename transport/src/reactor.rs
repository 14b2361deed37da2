//! The reactor: one thread that owns an epoll instance ([`crate::poller`]) and a slab of sources.
//!
//! Watches are registered oneshot: after an event fires, the source gets no more until it is
//! re-armed deliberately. Connections and listeners are registered level-triggered and change
//! their registration only when what they want changes (see `poller.rs`). A source re-arms or
//! changes itself at the end of its event handling; other threads (an actor that made room in
//! its mailbox, an API call such as `resume`) ask through the command queue plus
//! `Poller::notify`, so a source's registration changes on the reactor thread, in order
//! (watches excepted: their owner re-arms them directly, `epoll_ctl` being thread-safe).
//! A connection adopted with `read_first` on the reactor thread is registered from the
//! deferred-arm list, which the loop empties right after the event loop's turns of the same
//! pass, before it waits again.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::poller::{Event, Events, Poller};
use baton_runtime::{EventLoop, Recipient, TrySendError};
use parking_lot::Mutex;
use slab::Slab;

/// Something registered with the reactor.
pub(crate) trait Source: Send + Sync {
    /// Handles a readiness event. Runs on the reactor thread.
    fn ready(&self, reactor: &Arc<Shared>, key: usize, event: Event);
    /// Re-arms interest if the source wants more events now. Runs on the reactor thread.
    fn rearm(&self, reactor: &Arc<Shared>, key: usize);
    /// Deregisters and closes. Runs on the reactor thread.
    fn close(&self, reactor: &Arc<Shared>, key: usize);
    /// A deadline the source asked for with [`Command::TimeoutAt`] has come.
    fn timeout(&self, _reactor: &Arc<Shared>, _key: usize) {}
}

pub(crate) enum Command {
    Rearm(usize),
    RearmAt(usize, Instant),
    TimeoutAt(usize, Instant),
    Close(usize),
    /// Close, then tell the waiting caller.
    CloseAndTell(usize, std::sync::mpsc::Sender<()>),
}

pub(crate) struct Shared {
    pub(crate) poller: Poller,
    sources: Mutex<Slab<Arc<dyn Source>>>,
    /// How many sources the slab holds (read on every pass without its lock).
    live: AtomicUsize,
    commands: Mutex<Vec<Command>>,
    /// Sources to arm once the event loop's turns of this pass have run (see
    /// `ConnOptions::read_first`), with their `Arc`, so that an arm whose key was freed and
    /// reused meanwhile is dropped instead of reaching another source. Only the reactor thread
    /// adds to it.
    deferred_arms: Mutex<Vec<(usize, Arc<dyn Source>)>>,
    stopping: AtomicBool,
    /// Source ids are serial numbers, never reused: slab keys are, and an event that names a
    /// closed source must not be taken for the new one that got its key.
    next_serial: AtomicU64,
    /// Actors whose turns run on the reactor thread, between waits.
    pub(crate) event_loop: EventLoop,
    thread: std::sync::OnceLock<std::thread::ThreadId>,
}

impl Shared {
    /// Queues a command for the reactor thread and wakes it.
    pub(crate) fn command(&self, cmd: Command) {
        self.commands.lock().push(cmd);
        if let Err(e) = self.poller.notify() {
            log::error!("reactor: notify failed: {e}");
        }
    }

    /// Arms source `key` after this pass's event-loop turns. Only on the reactor thread, which
    /// looks at the list before it next waits.
    pub(crate) fn defer_arm(&self, source: Arc<crate::connection::ConnSource>) {
        debug_assert!(self.on_reactor_thread());
        let key = source.key();
        self.deferred_arms.lock().push((key, source));
    }

    pub(crate) fn insert(&self, make: impl FnOnce(usize) -> io::Result<Arc<dyn Source>>) -> io::Result<usize> {
        let mut sources = self.sources.lock();
        let entry = sources.vacant_entry();
        let key = entry.key();
        let source = make(key)?;
        entry.insert(source);
        self.live.fetch_add(1, Relaxed);
        Ok(key)
    }

    /// A fresh id for a new source.
    pub(crate) fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Relaxed)
    }

    /// Forgets a source after it deregistered and closed itself.
    pub(crate) fn remove(&self, key: usize) {
        let mut sources = self.sources.lock();
        if sources.contains(key) {
            sources.remove(key);
            self.live.fetch_sub(1, Relaxed);
        }
    }

    fn source(&self, key: usize) -> Option<Arc<dyn Source>> {
        self.sources.lock().get(key).cloned()
    }

    /// True on the reactor thread itself (in an event handler, or an actor on its loop), where
    /// waiting for the reactor would wait forever.
    pub(crate) fn on_reactor_thread(&self) -> bool {
        self.thread.get() == Some(&std::thread::current().id())
    }

    /// Closes source `key` at once. Only on the reactor thread, where every other change to a
    /// source's registration also happens.
    pub(crate) fn close_on_reactor_thread(self: &Arc<Self>, key: usize) {
        debug_assert!(self.on_reactor_thread());
        if let Some(source) = self.source(key) {
            source.close(self, key);
        }
    }
}

/// Offers `msg` to a source's owner. When the mailbox is full, the runtime is asked (once per
/// pause; `waiting_for_room` remembers it) to re-arm source `key` as soon as there is room, so
/// the source stops instead of polling and resumes on time.
pub(crate) fn offer<M: Send + 'static>(
    reactor: &Arc<Shared>,
    key: usize,
    owner: &Recipient<M>,
    waiting_for_room: &mut bool,
    msg: M,
) -> Result<(), TrySendError<M>> {
    let result = if *waiting_for_room {
        owner.try_send(msg)
    } else {
        let reactor = reactor.clone();
        owner.try_send_notify(msg, move || reactor.command(Command::Rearm(key)))
    };
    if matches!(result, Err(TrySendError::Full(_))) {
        *waiting_for_room = true;
    }
    result
}

/// A running reactor thread. Cheap to share: clone the [`Reactor`] handle.
///
/// Dropping the last handle does not stop the thread; call [`Reactor::stop`].
#[derive(Clone)]
pub struct Reactor {
    pub(crate) shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reactor")
    }
}

impl Reactor {
    /// Starts the reactor thread.
    ///
    /// # Errors
    ///
    /// When the poller or the thread cannot be created.
    pub fn start() -> io::Result<Reactor> {
        let poller = Poller::new()?;
        // The loop's wake-up is the poller's notify; a weak handle, so that the loop (inside
        // `Shared`) does not keep its own reactor alive.
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let waker = weak.clone();
            Shared {
                poller,
                sources: Mutex::new(Slab::new()),
                live: AtomicUsize::new(0),
                commands: Mutex::new(Vec::new()),
                deferred_arms: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
                next_serial: AtomicU64::new(1),
                event_loop: EventLoop::new(move || {
                    if let Some(shared) = waker.upgrade() {
                        if let Err(e) = shared.poller.notify() {
                            log::error!("reactor: notify failed: {e}");
                        }
                    }
                }),
                thread: std::sync::OnceLock::new(),
            }
        });
        let run = shared.clone();
        let thread = std::thread::Builder::new().name("baton-reactor".into()).spawn(move || run_loop(&run))?;
        Ok(Reactor { shared, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// Closes every source (deregistering each before closing it) and joins the thread. Actors
    /// on the reactor's [`EventLoop`] move to their runtime's pool and keep running.
    ///
    /// Called on the reactor thread itself (from an actor on its loop), it asks the thread to
    /// stop and returns without waiting.
    pub fn stop(&self) {
        self.shared.stopping.store(true, SeqCst);
        let _ = self.shared.poller.notify();
        if self.shared.on_reactor_thread() {
            return;
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    /// The reactor thread's [`EventLoop`]: actors spawned on it (with
    /// [`baton_runtime::Runtime::spawn_on`] or [`baton_runtime::Context::spawn_on`]) run their
    /// turns on the reactor thread, right after the events that made them runnable, with no
    /// hop to a pool thread. Their handlers must never block: while one runs, no socket of this
    /// reactor is served. A connection's owner that only parses and writes is the case for it.
    ///
    /// # Examples
    ///
    /// ```
    /// use baton_runtime::{Actor, Context, Mailbox, Runtime};
    /// use baton_transport::Reactor;
    ///
    /// struct Hello;
    /// impl Actor for Hello {
    ///     type Message = &'static str;
    ///     fn handle(&mut self, _ctx: &mut Context<Self>, _msg: &'static str) {}
    /// }
    ///
    /// let rt = Runtime::new();
    /// let reactor = Reactor::start().unwrap();
    /// let hello = rt.spawn_on(reactor.event_loop(), Hello, Mailbox::DEFAULT).unwrap();
    /// hello.send("runs on the reactor thread").unwrap();
    /// reactor.stop();
    /// rt.shutdown(std::time::Duration::from_secs(1)).unwrap();
    /// ```
    pub fn event_loop(&self) -> &EventLoop {
        &self.shared.event_loop
    }

    /// Sources (listeners and connections) currently registered.
    pub fn sources(&self) -> usize {
        self.shared.sources.lock().len()
    }
}

/// What a deadline does when it comes.
#[derive(Clone, Copy, Debug)]
enum Due {
    /// [`Source::rearm`]: the end of a back-off.
    Rearm,
    /// [`Source::timeout`]: a connection's idle or read deadline.
    Timeout,
}

/// One entry of [`Deadlines`], 32 bytes: every idle connection has one, so its size is part of
/// an idle connection's (a 56-byte entry cost 92 bytes per connection at 20,000 connections,
/// with the heap's spare capacity).
struct Deadline {
    /// When, in nanoseconds since [`epoch`].
    at: u64,
    /// The source's key: slab keys are below the number of sources, which descriptors bound
    /// far below `u32::MAX`.
    key: u32,
    due: Due,
    /// The very source that asked: a closed source's deadline must not reach the new source
    /// that got its key, and must not keep the closed one alive.
    source: std::sync::Weak<dyn Source>,
}

/// The instant deadlines count from: the first use in this process.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` in nanoseconds since [`epoch`] (0 for an instant before it: due at once).
fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Ties are equal: which of two deadlines of the same nanosecond comes first does not matter.
impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The reactor's deadlines, earliest first: O(log n) to add and to take the next.
///
/// Every connection with an idle or read timeout has one. A connection that closes leaves its
/// entry behind (removing from the middle of a heap is not worth it); such entries are skipped
/// when they come due, and swept out whenever they outnumber live sources, so that a server
/// accepting thousands of short connections a second with a 60 s idle timeout neither scans
/// nor keeps a minute's worth of them. (A list scanned on every wake-up once cost a worker a
/// quarter of its CPU under `wrk`.)
struct Deadlines {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Deadline>>,
    /// Sweep when the heap grows past this (doubling after each sweep keeps sweeps amortized
    /// even when what remains is alive).
    sweep_at: usize,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { heap: Default::default(), sweep_at: 1024 }
    }
}

impl Deadlines {
    fn push(&mut self, at: Instant, key: usize, source: &Arc<dyn Source>, due: Due, shared: &Shared) {
        debug_assert!(u32::try_from(key).is_ok(), "a slab key past u32::MAX: more sources than descriptors");
        let entry = Deadline { at: since_epoch(at), key: key as u32, due, source: Arc::downgrade(source) };
        self.heap.push(std::cmp::Reverse(entry));
        if self.heap.len() > self.sweep_at && self.heap.len() > 2 * shared.sources.lock().len() {
            // Each live source has an entry or two: the rest are closed sources'.
            self.heap.retain(|std::cmp::Reverse(d)| d.source.strong_count() > 0);
            self.sweep_at = (2 * self.heap.len()).max(1024);
        }
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|std::cmp::Reverse(d)| epoch() + Duration::from_nanos(d.at))
    }

    /// The deadlines that have come, with their sources if still alive.
    fn take_due(&mut self, now: Instant) -> Vec<(usize, Arc<dyn Source>, Due)> {
        let now = since_epoch(now);
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|std::cmp::Reverse(d)| d.at <= now) {
            let std::cmp::Reverse(d) = self.heap.pop().expect("peeked");
            if let Some(source) = d.source.upgrade() {
                due.push((d.key as usize, source, d.due));
            }
        }
        due
    }
}

/// Sources below which a fall is not worth giving memory back for.
const RELEASE_ABOVE: usize = 1024;

/// The most sources held since memory was last given back.
#[derive(Default)]
struct Peak(usize);

impl Peak {
    /// Whether `live` sources is a fall to under half of a peak of at least [`RELEASE_ABOVE`]
    /// (then the peak starts again from `live`).
    fn fell(&mut self, live: usize) -> bool {
        if live > self.0 {
            self.0 = live;
            false
        } else if self.0 >= RELEASE_ABOVE && live < self.0 / 2 {
            self.0 = live;
            true
        } else {
            false
        }
    }
}

/// After a peak of connections has passed, gives back what it left: the deadlines of closed
/// sources (each pins its source's allocation until it would have come due: a minute, with the
/// HTTP example's idle timeout), the slab's tail, and then the allocator's free pages. Without
/// it, a worker that held 20,000 idle connections kept 29 MiB of resident memory after they
/// all closed (`benches/idle_memory.sh`). Rare by construction (a fall by half from at least
/// [`RELEASE_ABOVE`] sources), so its cost (a sweep of the heap, and glibc's `malloc_trim`, a
/// few milliseconds for tens of megabytes) is paid once per peak.
fn release_memory(shared: &Shared, deadlines: &mut Deadlines) {
    deadlines.heap.retain(|std::cmp::Reverse(d)| d.source.strong_count() > 0);
    deadlines.heap.shrink_to_fit();
    deadlines.sweep_at = (2 * deadlines.heap.len()).max(1024);
    shared.sources.lock().shrink_to_fit();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only returns free memory of glibc's arenas to the kernel; it
        // takes the allocator's own locks and touches no memory in use. (An application with
        // another global allocator loses nothing: glibc's arenas are then all but empty.)
        unsafe {
            libc::malloc_trim(0);
        }
    }
    log::debug!("reactor: connections fell below half their peak; memory given back");
}

/// Closes the reactor's event loop when the thread leaves `run_loop`, however it leaves: if a
/// source or a deadline panics, the actors on the loop move to their pools and keep running
/// (and stopping) rather than waiting forever for a thread that is gone.
struct CloseLoopOnExit<'a>(&'a EventLoop);

impl Drop for CloseLoopOnExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!("reactor: the reactor thread panicked; its event loop's actors move to the pool");
        }
        self.0.close();
    }
}

/// What the reactor keeps of its per-pass buffers: a burst's memory is given back.
const KEEP_BUFFERED: usize = 1024;

fn run_loop(shared: &Arc<Shared>) {
    let _close_loop = CloseLoopOnExit(&shared.event_loop);
    let _ = shared.thread.set(std::thread::current().id());
    shared.event_loop.bind();
    let mut events = Events::new();
    let mut deadlines = Deadlines::default();
    let mut commands = Vec::new();
    let mut deferred = Vec::new();
    // Actors on the loop that are runnable again: poll without blocking, then run them.
    let mut more_turns = false;
    let mut peak = Peak::default();
    loop {
        let timeout = if more_turns {
            Some(Duration::ZERO)
        } else {
            deadlines.next().map(|at| at.saturating_duration_since(Instant::now()))
        };

        if let Err(e) = shared.poller.wait(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("reactor: poll failed: {e}; retrying in 10 ms");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if shared.stopping.load(SeqCst) {
            break;
        }
        for ev in events.iter() {
            if let Some(source) = shared.source(ev.key) {
                source.ready(shared, ev.key, ev);
            }
        }
        for (key, source, what) in deadlines.take_due(Instant::now()) {
            match what {
                Due::Timeout => source.timeout(shared, key),
                Due::Rearm => source.rearm(shared, key),
            }
        }
        if peak.fell(shared.live.load(Relaxed)) {
            release_memory(shared, &mut deadlines);
        }
        // Swapped with a buffer kept across passes (up to a size): no allocation per pass.
        commands.shrink_to(KEEP_BUFFERED);
        std::mem::swap(&mut *shared.commands.lock(), &mut commands);
        for cmd in commands.drain(..) {
            match cmd {
                Command::Rearm(key) => {
                    if let Some(source) = shared.source(key) {
                        source.rearm(shared, key);
                    }
                }
                Command::RearmAt(key, at) => {
                    if let Some(source) = shared.source(key) {
                        deadlines.push(at, key, &source, Due::Rearm, shared);
                    }
                }
                Command::TimeoutAt(key, at) => {
                    if let Some(source) = shared.source(key) {
                        deadlines.push(at, key, &source, Due::Timeout, shared);
                    }
                }
                Command::Close(key) => {
                    if let Some(source) = shared.source(key) {
                        source.close(shared, key);
                    }
                }
                Command::CloseAndTell(key, done) => {
                    if let Some(source) = shared.source(key) {
                        source.close(shared, key);
                    }
                    let _ = done.send(());
                }
            }
        }
        more_turns = shared.event_loop.run_ready();
        // Until none is left: an arm can run a close hook, and that hook could adopt again.
        loop {
            deferred.shrink_to(KEEP_BUFFERED);
            std::mem::swap(&mut *shared.deferred_arms.lock(), &mut deferred);
            if deferred.is_empty() {
                break;
            }
            for (key, source) in deferred.drain(..) {
                // Only while the slab still holds this very source: one that closed in this
                // pass has left it, and its key may already name a newer source, which a late
                // arm of the old one would remove (`flush_pending` forgets a finished source).
                if shared.source(key).is_some_and(|current| Arc::ptr_eq(&current, &source)) {
                    source.rearm(shared, key);
                }
            }
            // An arm can deliver events (a refused registration closes the connection), and
            // actors made runnable from this thread do not wake the poller.
            more_turns |= shared.event_loop.runnable() > 0;
        }
    }
    let all: Vec<(usize, Arc<dyn Source>)> = shared.sources.lock().iter().map(|(k, s)| (k, s.clone())).collect();
    for (key, source) in all {
        source.close(shared, key);
    }
    // Whatever the closes made runnable, and every later turn, goes to the pool (`_close_loop`).
}

#[cfg(test)]
mod peak_tests {
    use super::{Peak, RELEASE_ABOVE};

    #[test]
    fn memory_is_given_back_once_per_fall_by_half_from_a_real_peak() {
        let mut p = Peak::default();
        // Small servers never trim.
        assert!(!p.fell(RELEASE_ABOVE - 1) && !p.fell(0));
        assert!(!p.fell(4 * RELEASE_ABOVE));
        assert!(!p.fell(2 * RELEASE_ABOVE), "half is not under half");
        assert!(p.fell(2 * RELEASE_ABOVE - 1));
        // The peak starts again from there: no second trim until another fall by half.
        assert!(!p.fell(RELEASE_ABOVE + 1) && !p.fell(RELEASE_ABOVE) && !p.fell(RELEASE_ABOVE - 1));
        assert!(p.fell(RELEASE_ABOVE - 2), "under half of 2 × RELEASE_ABOVE - 1");
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    struct Nothing;
    impl Source for Nothing {
        fn ready(&self, _: &Arc<Shared>, _: usize, _: Event) {}
        fn rearm(&self, _: &Arc<Shared>, _: usize) {}
        fn close(&self, _: &Arc<Shared>, _: usize) {}
    }

    fn entry(at: Instant, key: usize, source: &Arc<dyn Source>) -> std::cmp::Reverse<Deadline> {
        std::cmp::Reverse(Deadline {
            at: since_epoch(at),
            key: key as u32,
            due: Due::Timeout,
            source: Arc::downgrade(source),
        })
    }

    #[test]
    fn a_deadline_entry_is_32_bytes_since_every_idle_connection_has_one() {
        assert_eq!(std::mem::size_of::<Deadline>(), 32);
    }

    #[test]
    fn deadlines_come_due_in_order_and_a_closed_source_s_are_skipped() {
        let now = Instant::now();
        let kept: Arc<dyn Source> = Arc::new(Nothing);
        let closed: Arc<dyn Source> = Arc::new(Nothing);
        let mut d = Deadlines::default();
        d.heap.push(entry(now + Duration::from_millis(30), 3, &kept));
        d.heap.push(entry(now + Duration::from_millis(10), 1, &closed));
        d.heap.push(entry(now + Duration::from_millis(20), 2, &kept));
        d.heap.push(entry(now + Duration::from_secs(60), 4, &kept));
        drop(closed);
        let next = d.next().expect("a deadline");
        assert!(next >= now + Duration::from_millis(10) - Duration::from_micros(1));
        assert!(next <= now + Duration::from_millis(10) + Duration::from_micros(1), "kept to the nanosecond");
        let due: Vec<usize> = d.take_due(now + Duration::from_millis(30)).into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(due, vec![2, 3], "earliest first; the closed source's deadline is dropped");
        assert_eq!(d.heap.len(), 1, "the minute-long one waits");
    }
}
