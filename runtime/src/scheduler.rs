//! The fixed pool of threads that runs actors, and the dedicated threads of blocking actors.
//!
//! The protocol (runnable edge, batches, the LIFO slot, parking) is written up in
//! `SCHEDULER.md` beside this crate.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};

/// Something the pool can run: an actor cell with work to do.
pub(crate) trait Runnable: Send + Sync {
    fn run(self: Arc<Self>);
    /// Queues this on its runtime's pool whatever its placement: an event loop that closes
    /// hands its queue over this way.
    fn run_on_pool(self: Arc<Self>);
}

pub(crate) type Task = Arc<dyn Runnable>;

enum Job {
    Run(Task),
    Exit,
}

/// How many turns in a row a thread may take from its LIFO slot before it looks at the shared
/// queue again; keeps a ping-pong pair from starving everyone else.
const LIFO_LIMIT: u32 = 32;

pub(crate) struct Pool {
    id: usize,
    tx: Sender<Job>,
    rx: Receiver<Job>,
    threads: usize,
    parks: metrics::Counter,
    unparks: metrics::Counter,
}

struct Local {
    pool: usize,
    slot: Option<Task>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

impl Pool {
    pub(crate) fn new(threads: usize) -> Arc<Pool> {
        let (tx, rx) = unbounded();
        Arc::new(Pool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            tx,
            rx,
            threads,
            parks: metrics::counter!("baton_pool_parks_total"),
            unparks: metrics::counter!("baton_pool_unparks_total"),
        })
    }

    pub(crate) fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        (0..self.threads)
            .map(|i| {
                let pool = self.clone();
                std::thread::Builder::new()
                    .name(format!("baton-pool-{i}"))
                    .spawn(move || pool.work())
                    .expect("spawning a pool thread")
            })
            .collect()
    }

    pub(crate) fn push(&self, task: Task) {
        // On one of our own threads, the newly runnable actor runs next on this thread: the
        // sender's data is hot in this core's cache and no other thread needs waking.
        let task = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            match l.as_mut() {
                Some(local) if local.pool == self.id => local.slot.replace(task),
                _ => Some(task),
            }
        });
        if let Some(task) = task {
            let _ = self.tx.send(Job::Run(task));
        }
    }

    /// True when the calling thread has nothing queued for it: its LIFO slot and the shared
    /// queue are empty. A streaming turn spins for its next message only then; with other
    /// actors waiting the spin would only hold them up.
    pub(crate) fn nothing_else_to_run(&self) -> bool {
        self.rx.is_empty() && LOCAL.with(|l| !matches!(l.borrow().as_ref(), Some(local) if local.slot.is_some()))
    }

    /// Enqueues at the back of the shared queue, bypassing the LIFO slot.
    pub(crate) fn push_fair(&self, task: Task) {
        let _ = self.tx.send(Job::Run(task));
    }

    pub(crate) fn stop_threads(&self) {
        for _ in 0..self.threads {
            let _ = self.tx.send(Job::Exit);
        }
    }

    fn work(self: Arc<Self>) {
        crate::ask::mark_pool_thread();
        LOCAL.with(|l| *l.borrow_mut() = Some(Local { pool: self.id, slot: None }));
        let mut lifo_streak = 0u32;
        loop {
            let local = LOCAL.with(|l| l.borrow_mut().as_mut().and_then(|l| l.slot.take()));
            let job = match local {
                // Past the limit the slot yields only to actors actually waiting: with an
                // empty shared queue nobody is starved, and sending the slot there would wake
                // the other thread to run a chain that is not parallel.
                Some(task) if lifo_streak < LIFO_LIMIT || self.rx.is_empty() => {
                    lifo_streak += 1;
                    Job::Run(task)
                }
                Some(task) => {
                    lifo_streak = 0;
                    let _ = self.tx.send(Job::Run(task));
                    continue;
                }
                None => {
                    lifo_streak = 0;
                    match self.rx.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => {
                            self.parks.increment(1);
                            let job = self.rx.recv();
                            self.unparks.increment(1);
                            match job {
                                Ok(job) => job,
                                Err(_) => break,
                            }
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            };
            match job {
                // Cells catch handler panics themselves; this backstop keeps the thread (and
                // the actors queued behind it) alive if anything else unwinds.
                Job::Run(task) => {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run())).is_err() {
                        log::error!("a task unwound onto pool thread {:?}", std::thread::current().name());
                    }
                }
                Job::Exit => break,
            }
        }
        // Anything left in the slot goes back to the shared queue for the remaining threads.
        if let Some(task) = LOCAL.with(|l| l.borrow_mut().take().and_then(|l| l.slot)) {
            let _ = self.tx.send(Job::Run(task));
        }
    }
}

/// Where a cell runs when it becomes runnable.
pub(crate) enum Executor {
    Pool(Arc<Pool>),
    /// A dedicated thread waiting on this channel for "you have work" tokens.
    Dedicated(Sender<()>),
    /// A thread of the application's that drains this queue between its own waits; the
    /// actor's runtime's pool takes over if the loop closes.
    Loop(Arc<crate::event_loop::LoopInner>, Arc<Pool>),
}

impl Executor {
    pub(crate) fn schedule(&self, task: Task) {
        match self {
            Executor::Pool(pool) => pool.push(task),
            Executor::Dedicated(wake) => {
                let _ = wake.send(());
            }
            Executor::Loop(event_loop, _) => event_loop.schedule(task),
        }
    }

    /// Whether a streaming turn may spin for its next message (see `Cell::turn`): on a pool
    /// thread with nothing else to run, or on the actor's own thread.
    pub(crate) fn may_spin(&self) -> bool {
        match self {
            Executor::Pool(pool) => pool.nothing_else_to_run(),
            Executor::Dedicated(_) => true,
            Executor::Loop(..) => false,
        }
    }

    pub(crate) fn schedule_fair(&self, task: Task) {
        match self {
            Executor::Pool(pool) => pool.push_fair(task),
            Executor::Loop(event_loop, _) => event_loop.schedule_next_pass(task),
            Executor::Dedicated(_) => self.schedule(task),
        }
    }
}

/// The loop of a dedicated-thread actor: run a turn for every wake-up token until terminated.
pub(crate) fn dedicated_loop(task: Task, wakeups: Receiver<()>, terminated: impl Fn() -> bool) {
    while wakeups.recv().is_ok() {
        let task = task.clone();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run())).is_err() {
            log::error!("a task unwound onto a dedicated thread");
        }
        if terminated() {
            break;
        }
    }
}
