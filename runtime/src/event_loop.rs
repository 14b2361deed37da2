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

use std::cell::{Cell as StdCell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::scheduler::Task;

thread_local! {
    /// The loop bound to this thread (its address, as an id), or 0.
    static BOUND: StdCell<usize> = const { StdCell::new(0) };
    /// Actors of the bound loop made runnable on this thread itself (a handler on the loop sent
    /// them a message): the driver's own run queue, which needs no lock.
    static DRIVEN: RefCell<VecDeque<Task>> = const { RefCell::new(VecDeque::new()) };
}

/// A run queue of actors drained by one thread of your own (see the module docs).
///
/// Cheap to clone: clones share the queue.
#[derive(Clone)]
pub struct EventLoop {
    pub(crate) inner: Arc<LoopInner>,
}

pub(crate) struct LoopInner {
    /// What other threads made runnable (and actors waiting for the next pass).
    queue: Mutex<LoopQueue>,
    /// Set by [`EventLoop::close`] (under `queue`'s lock): the driver's thread reads it before
    /// queuing on its own.
    closed: AtomicBool,
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
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.inner.queue.lock();
        f.debug_struct("EventLoop")
            .field("runnable", &q.runnable.len())
            .field("closed", &self.inner.closed.load(SeqCst))
            .finish()
    }
}

impl EventLoop {
    /// A new, empty loop. `wake` is called (from any thread but the driver's) when an actor
    /// becomes runnable, to bring the driver out of its wait; it must not block.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> EventLoop {
        EventLoop {
            inner: Arc::new(LoopInner {
                queue: Mutex::new(LoopQueue { runnable: VecDeque::new(), next_pass: VecDeque::new() }),
                closed: AtomicBool::new(false),
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
        let bound = self.is_bound_here();
        if self.inner.closed.load(SeqCst) {
            // Closed meanwhile from another thread: what this thread had queued goes to the pool.
            if bound {
                for task in DRIVEN.with(|d| std::mem::take(&mut *d.borrow_mut())) {
                    task.run_on_pool();
                }
            }
            return false;
        }
        // Other threads' wake-ups, and the actors held back from the last pass, go first.
        self.take_shared(true);
        let mut turns = 0;
        while turns < Self::TURNS_PER_PASS {
            let next = DRIVEN.with(|d| d.borrow_mut().pop_front());
            let task = match next {
                Some(task) => task,
                // Run dry: look at what other threads queued meanwhile before giving up.
                None if self.take_shared(false) => continue,
                None => break,
            };
            turns += 1;
            // Cells catch handler panics themselves; this backstop keeps the driver (and the
            // actors queued behind it) alive if anything else unwinds.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run())).is_err() {
                log::error!("a task unwound onto an event loop");
            }
        }
        if DRIVEN.with(|d| d.borrow().capacity() > KEEP_BATCH) {
            DRIVEN.with(|d| d.borrow_mut().shrink_to(KEEP_BATCH));
        }
        self.runnable() > 0
    }

    /// Moves what other threads queued (with `held_back`, also the actors that used up their
    /// batch in the last pass) onto this thread's queue; says whether there was any.
    fn take_shared(&self, held_back: bool) -> bool {
        let mut q = self.inner.queue.lock();
        if q.runnable.is_empty() && (!held_back || q.next_pass.is_empty()) {
            return false;
        }
        DRIVEN.with(|d| {
            let mut d = d.borrow_mut();
            if held_back {
                d.extend(q.next_pass.drain(..));
            }
            d.extend(q.runnable.drain(..));
        });
        true
    }

    fn is_bound_here(&self) -> bool {
        BOUND.with(|b| b.get()) == self.id()
    }

    /// The driver is stopping: queued actors and every later wake-up go to the runtime's pool,
    /// so actors on this loop keep running (on pool threads) until they stop. Call it on the
    /// driving thread, or before that thread's last [`EventLoop::run_ready`]: what the driver
    /// queued on its own thread is handed over there.
    pub fn close(&self) {
        let mut q = self.inner.queue.lock();
        self.inner.closed.store(true, SeqCst);
        let mut stranded = std::mem::take(&mut q.runnable);
        stranded.append(&mut q.next_pass);
        drop(q);
        if self.is_bound_here() {
            stranded.extend(DRIVEN.with(|d| std::mem::take(&mut *d.borrow_mut())));
        }
        for task in stranded {
            task.run_on_pool();
        }
    }

    /// Actors runnable now and waiting for [`EventLoop::run_ready`] (on the driving thread,
    /// including those it queued itself).
    pub fn runnable(&self) -> usize {
        let own = if self.is_bound_here() { DRIVEN.with(|d| d.borrow().len()) } else { 0 };
        let q = self.inner.queue.lock();
        own + q.runnable.len() + q.next_pass.len()
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
        let here = BOUND.with(|b| b.get()) == self.id();
        if here && !next_pass && !self.closed.load(SeqCst) {
            // The driver's own wake-up: its queue, no lock, no wake.
            DRIVEN.with(|d| d.borrow_mut().push_back(task));
            return;
        }
        let mut q = self.queue.lock();
        if self.closed.load(SeqCst) {
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
        if !here {
            (self.wake)();
        }
    }
}
