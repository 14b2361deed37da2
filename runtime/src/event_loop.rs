//! Actors whose turns run on a thread you drive: an I/O reactor's, say.
//!
//! The pool is the right home for most actors, but a message from an I/O thread to a pool
//! actor crosses threads: the I/O thread queues the actor and wakes a pool thread, the pool
//! thread runs the turn. For protocol code whose handlers only parse, compute a little and
//! write to non-blocking sockets, that hop is most of the cost: on a 2-vCPU machine an echo
//! server on pool actors does about two thirds of the round trips of a hand-written epoll loop,
//! because every response leaves from another thread than the one that read the request.
//!
//! An [`EventLoop`] is a run queue that one thread drains itself, between its own waits
//! (Twisted's reactor, Node's event loop and nginx's workers run protocol code the same way).
//! Actors spawned on it with [`crate::Runtime::spawn_on`] are ordinary actors: addresses,
//! bounded mailboxes, monitors, supervision and shutdown all work as on the pool. What changes
//! is where their turns run, and so the rule their handlers must keep: **never block**. A
//! handler that sleeps or waits stalls everything else on that thread, the I/O included.
//!
//! The protocol:
//!
//! - The driving thread calls [`EventLoop::bind`] once, then [`EventLoop::run_ready`] after each
//!   of its waits. `run_ready` runs turns until no actor is runnable, so a message handed from
//!   one actor on the loop to another is handled in the same call, with no trip through the
//!   driver's wait (a request/response pair, a ring, a pipeline: that trip would cost a system
//!   call per message). Two bounds keep the driver's own work (its I/O) from waiting behind the
//!   actors: an actor whose turn ended with its mailbox still full (a turn handles up to a batch
//!   of messages) runs again only in the next call, and one call runs at most
//!   [`EventLoop::TURNS_PER_PASS`] turns. It says whether more are runnable, in which case the
//!   driver should not block in its next wait.
//! - Making an actor runnable from the driving thread itself only queues it: the driver runs
//!   `run_ready` before it waits again. From any other thread it queues it and calls the wake
//!   function given to [`EventLoop::new`] (for a reactor: `Poller::notify`), so the driver
//!   comes out of its wait.
//! - [`EventLoop::close`] (the driver is stopping) hands every queued actor to the runtime's
//!   pool, and later wake-ups go to the pool too: an actor outlives the thread that drove it,
//!   and runtime shutdown never waits for a turn that nobody will run.
//! - Like a pool thread, the driving thread refuses blocking asks ([`crate::AskError`]) and
//!   never waits for room in a full mailbox: `Addr::send` there hands the message back at once
//!   when the mailbox is full, as `try_send` does. Code that blocks until another actor answers
//!   (a blocking API built on asks, `std::thread::sleep`, waiting on a child process) does not
//!   belong in a handler on a loop.

use std::cell::Cell as StdCell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::scheduler::Task;

thread_local! {
    /// The loop bound to this thread (its address, as an id), or 0.
    static BOUND: StdCell<usize> = const { StdCell::new(0) };
}

/// A run queue of actors drained by one thread of your own (see the module docs).
///
/// Cheap to clone: clones share the queue.
#[derive(Clone)]
pub struct EventLoop {
    pub(crate) inner: Arc<LoopInner>,
}

pub(crate) struct LoopInner {
    queue: Mutex<LoopQueue>,
    wake: Box<dyn Fn() + Send + Sync>,
}

/// What a driver keeps between passes beyond this: a burst's memory is given back.
const KEEP_BATCH: usize = 1024;

struct LoopQueue {
    /// Runnable actors (of any runtime: several may share a loop).
    runnable: VecDeque<Task>,
    /// Actors whose turn ended with a full batch and more mail: they run in the next pass,
    /// after the driver has looked at its I/O.
    next_pass: VecDeque<Task>,
    /// The driver's last batch, emptied: swapped with `runnable` on each pass, so neither side
    /// allocates at steady state.
    spare: VecDeque<Task>,
    /// Set by [`EventLoop::close`]: turns go to the actors' pools from then on.
    closed: bool,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.inner.queue.lock();
        f.debug_struct("EventLoop").field("runnable", &q.runnable.len()).field("closed", &q.closed).finish()
    }
}

impl EventLoop {
    /// A new, empty loop. `wake` is called (from any thread but the driver's) when an actor
    /// becomes runnable, to bring the driver out of its wait; it must not block.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> EventLoop {
        EventLoop {
            inner: Arc::new(LoopInner {
                queue: Mutex::new(LoopQueue {
                    runnable: VecDeque::new(),
                    next_pass: VecDeque::new(),
                    spare: VecDeque::new(),
                    closed: false,
                }),
                wake: Box::new(wake),
            }),
        }
    }

    /// Makes the calling thread this loop's driver: wake-ups caused on it only queue, and it
    /// keeps the pool threads' rules (no blocking asks, no waiting for mailbox room). Call it
    /// once, on the thread that will call [`EventLoop::run_ready`].
    pub fn bind(&self) {
        BOUND.with(|b| b.set(self.id()));
        crate::ask::mark_pool_thread();
    }

    /// The most turns one [`EventLoop::run_ready`] runs before it hands the thread back to its
    /// driver: enough that the driver's wait (a system call) is a small part of a chain of
    /// hand-offs between actors on the loop, few enough that its I/O is looked at often.
    pub const TURNS_PER_PASS: usize = 256;

    /// Runs turns until no actor on the loop is runnable, at most
    /// [`EventLoop::TURNS_PER_PASS`] of them; an actor whose turn ended with a full batch and
    /// more mail waits for the next call. Returns true if actors are runnable when it returns:
    /// the driver should then poll without blocking and call this again.
    pub fn run_ready(&self) -> bool {
        let mut turns = 0;
        let mut batch = VecDeque::new();
        loop {
            {
                let mut q = self.inner.queue.lock();
                if batch.capacity() > 0 {
                    // The batch just run, emptied: the next swap's spare.
                    if batch.capacity() > KEEP_BATCH {
                        batch.shrink_to(KEEP_BATCH);
                    }
                    q.spare = std::mem::take(&mut batch);
                }
                if q.runnable.is_empty() || turns >= Self::TURNS_PER_PASS {
                    let later = std::mem::take(&mut q.next_pass);
                    q.runnable.extend(later);
                    return !q.runnable.is_empty();
                }
                let spare = std::mem::take(&mut q.spare);
                batch = std::mem::replace(&mut q.runnable, spare);
            }
            turns += batch.len();
            for task in batch.drain(..) {
                // Cells catch handler panics themselves; this backstop keeps the driver (and
                // the actors queued behind it) alive if anything else unwinds.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run())).is_err() {
                    log::error!("a task unwound onto an event loop");
                }
            }
        }
    }

    /// The driver is stopping: queued actors and every later wake-up go to the runtime's pool,
    /// so actors on this loop keep running (on pool threads) until they stop.
    pub fn close(&self) {
        let mut q = self.inner.queue.lock();
        q.closed = true;
        let mut stranded = std::mem::take(&mut q.runnable);
        stranded.append(&mut q.next_pass);
        drop(q);
        for task in stranded {
            task.run_on_pool();
        }
    }

    /// Actors runnable now and waiting for [`EventLoop::run_ready`].
    pub fn runnable(&self) -> usize {
        let q = self.inner.queue.lock();
        q.runnable.len() + q.next_pass.len()
    }

    fn id(&self) -> usize {
        self.inner.id()
    }
}

impl LoopInner {
    /// This loop's identity for [`BOUND`]: its address.
    fn id(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as *const u8 as usize
    }

    /// Queues `task` for the current pass; on a closed loop, hands it to its runtime's pool.
    pub(crate) fn schedule(self: &Arc<Self>, task: Task) {
        self.enqueue(task, false);
    }

    /// As [`LoopInner::schedule`], for an actor that used up its batch: it runs in the next
    /// pass, after the driver's I/O.
    pub(crate) fn schedule_next_pass(self: &Arc<Self>, task: Task) {
        self.enqueue(task, true);
    }

    fn enqueue(self: &Arc<Self>, task: Task, next_pass: bool) {
        let mut q = self.queue.lock();
        if q.closed {
            drop(q);
            task.run_on_pool();
            return;
        }
        if next_pass {
            q.next_pass.push_back(task);
        } else {
            q.runnable.push_back(task);
        }
        drop(q);
        if BOUND.with(|b| b.get()) != self.id() {
            (self.wake)();
        }
    }
}
