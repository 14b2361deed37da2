//! The reactor: one thread that owns a `polling::Poller` and a slab of sources.
//!
//! Sources are registered in oneshot mode: after an event fires, the source gets no more until
//! it is re-armed deliberately. A source re-arms itself at the end of its event handling when it
//! wants more; other threads (an actor that made room in its mailbox, an API call such as
//! `resume`) ask for a re-arm through the command queue plus `Poller::notify`, so every
//! `Poller::modify` of a source happens on the reactor thread, in order.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_runtime::{Recipient, TrySendError};
use parking_lot::Mutex;
use polling::{Event, Events, Poller};
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
    commands: Mutex<Vec<Command>>,
    stopping: AtomicBool,
    /// Source ids are serial numbers, never reused: slab keys are, and an event that names a
    /// closed source must not be taken for the new one that got its key.
    next_serial: AtomicU64,
}

impl Shared {
    /// Queues a command for the reactor thread and wakes it.
    pub(crate) fn command(&self, cmd: Command) {
        self.commands.lock().push(cmd);
        if let Err(e) = self.poller.notify() {
            log::error!("reactor: notify failed: {e}");
        }
    }

    pub(crate) fn insert(&self, make: impl FnOnce(usize) -> io::Result<Arc<dyn Source>>) -> io::Result<usize> {
        let mut sources = self.sources.lock();
        let entry = sources.vacant_entry();
        let key = entry.key();
        let source = make(key)?;
        entry.insert(source);
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
        }
    }

    fn source(&self, key: usize) -> Option<Arc<dyn Source>> {
        self.sources.lock().get(key).cloned()
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
        let shared = Arc::new(Shared {
            poller: Poller::new()?,
            sources: Mutex::new(Slab::new()),
            commands: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            next_serial: AtomicU64::new(1),
        });
        let run = shared.clone();
        let thread = std::thread::Builder::new().name("baton-reactor".into()).spawn(move || run_loop(&run))?;
        Ok(Reactor { shared, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// Closes every source (deregistering each before closing it) and joins the thread.
    pub fn stop(&self) {
        self.shared.stopping.store(true, SeqCst);
        let _ = self.shared.poller.notify();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    /// Sources (listeners and connections) currently registered.
    pub fn sources(&self) -> usize {
        self.shared.sources.lock().len()
    }
}

fn run_loop(shared: &Arc<Shared>) {
    let mut events = Events::new();
    // (deadline, key, is_timeout): re-arms after a back-off, and connection deadlines.
    let mut timed: Vec<(Instant, usize, bool)> = Vec::new();
    loop {
        let timeout = timed.iter().map(|(at, _, _)| *at).min().map(|at| at.saturating_duration_since(Instant::now()));
        events.clear();
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
        let now = Instant::now();
        let mut due = Vec::new();
        timed.retain(|&(at, key, is_timeout)| {
            if at <= now {
                due.push((key, is_timeout));
                false
            } else {
                true
            }
        });
        for (key, is_timeout) in due {
            if let Some(source) = shared.source(key) {
                if is_timeout {
                    source.timeout(shared, key);
                } else {
                    source.rearm(shared, key);
                }
            }
        }
        let commands = std::mem::take(&mut *shared.commands.lock());
        for cmd in commands {
            match cmd {
                Command::Rearm(key) => {
                    if let Some(source) = shared.source(key) {
                        source.rearm(shared, key);
                    }
                }
                Command::RearmAt(key, at) => timed.push((at, key, false)),
                Command::TimeoutAt(key, at) => timed.push((at, key, true)),
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
    }
    let all: Vec<(usize, Arc<dyn Source>)> = shared.sources.lock().iter().map(|(k, s)| (k, s.clone())).collect();
    for (key, source) in all {
        source.close(shared, key);
    }
}
