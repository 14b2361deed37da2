//! The fixed pool of threads that runs actors, and the dedicated threads of blocking actors.
//!
//! The protocol (runnable edge, batches, the LIFO slot, parking) is written up in
//! `SCHEDULER.md` beside this crate.

use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use crossbeam_utils::Backoff;
use parking_lot::Mutex;

/// Something the pool can run: an actor cell with work to do.
pub(crate) trait Runnable: Send + Sync {
    fn run(self: Arc<Self>);
    /// Queues this on its runtime's pool whatever its placement: an event loop that closes
    /// hands its queue over this way.
    fn run_on_pool(self: Arc<Self>);
}

pub(crate) type Task = Arc<dyn Runnable>;

/// How many turns in a row a thread may take from its LIFO slot before it looks at its queues
/// again; keeps a ping-pong pair from starving everyone else.
const LIFO_LIMIT: u32 = 32;

/// Actors waiting in a thread's own queue before a wake-up from that thread also wakes a
/// parked thread to steal them. One or two are a hand-off chain the running thread gets to in
/// a moment; waking another thread for them costs a futex call and moves the actors' data to
/// another core for work that is not parallel.
const WAKE_BACKLOG: usize = 4;

/// Rounds of looking for work (with a growing pause between them, about 10 µs in all) before
/// an idle thread parks: an actor that answers within that time costs no futex wake-up.
const SEARCH_ROUNDS: u32 = 10;

pub(crate) struct Pool {
    id: usize,
    /// Runnable actors from outside the pool's threads, and actors that used up a batch.
    injector: Injector<Task>,
    /// The other end of each thread's local queue, for stealing.
    stealers: Vec<Stealer<Task>>,
    /// The local queues, until `start` hands each to its thread.
    workers: Mutex<Vec<Worker<Task>>>,
    /// Threads parked for want of work (see `wake_one`), and their count for a lock-free look.
    sleepers: Mutex<Vec<(usize, std::thread::Thread)>>,
    idle: AtomicUsize,
    stopping: AtomicBool,
    parks: metrics::Counter,
    unparks: metrics::Counter,
}

struct Local {
    pool: usize,
    slot: Option<Task>,
    queue: Worker<Task>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

impl Pool {
    pub(crate) fn new(threads: usize) -> Arc<Pool> {
        let workers: Vec<Worker<Task>> = (0..threads).map(|_| Worker::new_fifo()).collect();
        Arc::new(Pool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            injector: Injector::new(),
            stealers: workers.iter().map(Worker::stealer).collect(),
            workers: Mutex::new(workers),
            sleepers: Mutex::new(Vec::new()),
            idle: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            parks: metrics::counter!("baton_pool_parks_total"),
            unparks: metrics::counter!("baton_pool_unparks_total"),
        })
    }

    pub(crate) fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let workers = std::mem::take(&mut *self.workers.lock());
        workers
            .into_iter()
            .enumerate()
            .map(|(i, queue)| {
                let pool = self.clone();
                std::thread::Builder::new()
                    .name(format!("baton-pool-{i}"))
                    .spawn(move || pool.work(i, queue))
                    .expect("spawning a pool thread")
            })
            .collect()
    }

    pub(crate) fn push(&self, task: Task) {
        // On one of our own threads, the newly runnable actor runs next on this thread: the
        // sender's data is hot in this core's cache and no other thread needs waking. What was
        // in the slot goes to this thread's queue, and only then is there work for a second
        // thread: two actors are runnable besides the one running.
        let task = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            match l.as_mut() {
                Some(local) if local.pool == self.id => {
                    if let Some(displaced) = local.slot.replace(task) {
                        local.queue.push(displaced);
                        if local.queue.len() >= WAKE_BACKLOG {
                            self.wake_one();
                        }
                    }
                    None
                }
                _ => Some(task),
            }
        });
        if let Some(task) = task {
            self.push_fair(task);
        }
    }

    /// Enqueues at the back of the shared queue, bypassing the LIFO slot and the thread's own
    /// queue, and wakes a parked thread if there is one.
    pub(crate) fn push_fair(&self, task: Task) {
        self.injector.push(task);
        self.wake_one();
    }

    /// Unparks one parked thread, if any is parked.
    fn wake_one(&self) {
        // Pairs with the fence in `park`: either this load sees the thread's count, or the
        // thread's last look for work sees what was just queued.
        fence(Ordering::SeqCst);
        if self.idle.load(Ordering::SeqCst) == 0 {
            return;
        }
        let sleeper = {
            let mut sleepers = self.sleepers.lock();
            let sleeper = sleepers.pop();
            if sleeper.is_some() {
                self.idle.fetch_sub(1, Ordering::SeqCst);
            }
            sleeper
        };
        if let Some((_, thread)) = sleeper {
            self.unparks.increment(1);
            thread.unpark();
        }
    }

    /// True when the calling thread has nothing queued for it: its LIFO slot, its own queue
    /// and the shared queue are empty. A streaming turn spins for its next message only then;
    /// with other actors waiting the spin would only hold them up.
    pub(crate) fn nothing_else_to_run(&self) -> bool {
        self.injector.is_empty()
            && LOCAL.with(|l| match l.borrow().as_ref() {
                Some(local) if local.pool == self.id => local.slot.is_none() && local.queue.is_empty(),
                _ => true,
            })
    }

    pub(crate) fn stop_threads(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let sleepers = {
            let mut sleepers = self.sleepers.lock();
            self.idle.store(0, Ordering::SeqCst);
            std::mem::take(&mut *sleepers)
        };
        for (_, thread) in sleepers {
            thread.unpark();
        }
    }

    /// The next task for this thread: its LIFO slot (up to `LIFO_LIMIT` in a row while others
    /// wait), its own queue, the shared queue, then the other threads' queues.
    fn find_task(&self, lifo_streak: &mut u32) -> Option<Task> {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let local = l.as_mut().expect("a pool thread has its local state");
            if let Some(task) = local.slot.take() {
                // Past the limit the slot yields only to actors actually waiting: with nothing
                // queued nobody is starved.
                if *lifo_streak < LIFO_LIMIT || (local.queue.is_empty() && self.injector.is_empty()) {
                    *lifo_streak += 1;
                    return Some(task);
                }
                local.queue.push(task);
            }
            *lifo_streak = 0;
            if let Some(task) = local.queue.pop() {
                return Some(task);
            }
            loop {
                match self.injector.steal_batch_and_pop(&local.queue) {
                    Steal::Success(task) => return Some(task),
                    Steal::Retry => continue,
                    Steal::Empty => break,
                }
            }
            let mut retry = true;
            while retry {
                retry = false;
                for stealer in &self.stealers {
                    match stealer.steal_batch_and_pop(&local.queue) {
                        Steal::Success(task) => return Some(task),
                        Steal::Retry => retry = true,
                        Steal::Empty => {}
                    }
                }
            }
            None
        })
    }

    fn has_queued_work(&self) -> bool {
        !self.injector.is_empty() || self.stealers.iter().any(|s| !s.is_empty())
    }

    /// Parks the calling thread until `wake_one` or `stop_threads` picks it, unless work shows
    /// up while it announces itself.
    fn park(&self, me: usize) {
        {
            let mut sleepers = self.sleepers.lock();
            sleepers.push((me, std::thread::current()));
            self.idle.fetch_add(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        if !self.has_queued_work() && !self.stopping.load(Ordering::SeqCst) {
            self.parks.increment(1);
            // A futex wait; an `unpark` that came first makes it return at once.
            std::thread::park();
        }
        // Off the list, unless a waker took us off already. `park` can also return for
        // other reasons (a spurious wake-up, an unpark meant for a blocking call a handler
        // made): a stale entry would have the next waker unpark a thread that is not asleep.
        let mut sleepers = self.sleepers.lock();
        if let Some(i) = sleepers.iter().position(|(who, _)| *who == me) {
            sleepers.swap_remove(i);
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn work(self: Arc<Self>, me: usize, queue: Worker<Task>) {
        crate::ask::mark_pool_thread();
        LOCAL.with(|l| *l.borrow_mut() = Some(Local { pool: self.id, slot: None, queue }));
        let mut lifo_streak = 0u32;
        'run: loop {
            let mut task = self.find_task(&mut lifo_streak);
            let backoff = Backoff::new();
            let mut rounds = 0;
            while task.is_none() {
                if self.stopping.load(Ordering::SeqCst) {
                    break 'run;
                }
                if rounds < SEARCH_ROUNDS {
                    rounds += 1;
                    backoff.snooze();
                } else {
                    self.park(me);
                    rounds = 0;
                    backoff.reset();
                }
                task = self.find_task(&mut lifo_streak);
            }
            let task = task.expect("found a task");
            // Cells catch handler panics themselves; this backstop keeps the thread (and the
            // actors queued behind it) alive if anything else unwinds.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run())).is_err() {
                log::error!("a task unwound onto pool thread {:?}", std::thread::current().name());
            }
        }
        // Anything left in the slot or the local queue goes to the shared queue.
        if let Some(local) = LOCAL.with(|l| l.borrow_mut().take()) {
            if let Some(task) = local.slot {
                self.injector.push(task);
            }
            while let Some(task) = local.queue.pop() {
                self.injector.push(task);
            }
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
