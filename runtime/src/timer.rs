//! Timers: one thread keeps a heap of deadlines and sends when each comes due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::address::Recipient;
use crate::mailbox::TrySendError;
use crate::runtime::RuntimeShared;

/// What a firing did; tells the timer thread whether to schedule the entry again.
enum Fired {
    Done,
    RetryAt(Instant),
}

type Fire = Box<dyn FnMut(Instant) -> Fired + Send>;

struct Entry {
    fire: Fire,
    cancelled: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    entries: HashMap<u64, Entry>,
    next: u64,
    stopped: bool,
}

pub(crate) struct Timers {
    state: Mutex<State>,
    changed: Condvar,
    skipped: metrics::Counter,
}

/// Cancels a timer. Dropping the handle does not cancel it.
#[derive(Debug, Clone)]
pub struct TimerHandle {
    cancelled: Arc<AtomicBool>,
}

impl TimerHandle {
    /// Stops the timer: no send happens after this returns (one already under way may finish).
    pub fn cancel(&self) {
        self.cancelled.store(true, SeqCst);
    }

    /// Whether [`TimerHandle::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(SeqCst)
    }
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            skipped: metrics::counter!("baton_timer_ticks_skipped_total"),
        }
    }

    pub(crate) fn start(&self, shared: &Arc<RuntimeShared>) -> JoinHandle<()> {
        let shared = Arc::downgrade(shared);
        std::thread::Builder::new()
            .name("baton-timers".into())
            .spawn(move || {
                while let Some(rt) = shared.upgrade() {
                    if !rt.timers.tick() {
                        break;
                    }
                }
            })
            .expect("spawning the timer thread")
    }

    pub(crate) fn stop(&self) {
        let mut state = self.state.lock();
        state.stopped = true;
        state.entries.clear();
        state.heap.clear();
        self.changed.notify_all();
    }

    fn add(&self, at: Instant, fire: Fire) -> TimerHandle {
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut state = self.state.lock();
        if state.stopped {
            cancelled.store(true, SeqCst);
            return TimerHandle { cancelled };
        }
        let key = state.next;
        state.next += 1;
        state.entries.insert(key, Entry { fire, cancelled: cancelled.clone() });
        state.heap.push(Reverse((at, key)));
        self.changed.notify_one();
        TimerHandle { cancelled }
    }

    /// Waits for the next due entry (at most 100 ms, so a dropped runtime is noticed) and fires
    /// it. Returns false once stopped.
    fn tick(&self) -> bool {
        let mut state = self.state.lock();
        if state.stopped {
            return false;
        }
        let now = Instant::now();
        match state.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {}
            Some(Reverse((at, _))) => {
                let wait = (*at - now).min(Duration::from_millis(100));
                self.changed.wait_for(&mut state, wait);
                return true;
            }
            None => {
                self.changed.wait_for(&mut state, Duration::from_millis(100));
                return true;
            }
        }
        let Reverse((_, key)) = state.heap.pop().expect("peeked");
        let Some(mut entry) = state.entries.remove(&key) else {
            return true;
        };
        if entry.cancelled.load(SeqCst) {
            return true;
        }
        drop(state);
        // A panicking `make` retires its own timer, not the timer thread.
        let fired = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (entry.fire)(now))) {
            Ok(fired) => fired,
            Err(_) => {
                log::error!("a timer callback panicked; that timer is cancelled");
                Fired::Done
            }
        };
        if let Fired::RetryAt(at) = fired {
            let mut state = self.state.lock();
            if !state.stopped && !entry.cancelled.load(SeqCst) {
                state.entries.insert(key, entry);
                state.heap.push(Reverse((at, key)));
            }
        }
        true
    }
}

pub(crate) fn send_after<M: Send + 'static>(
    rt: &Arc<RuntimeShared>,
    to: Recipient<M>,
    delay: Duration,
    msg: M,
) -> TimerHandle {
    let mut msg = Some(msg);
    rt.timers.add(
        Instant::now() + delay,
        Box::new(move |now| {
            let Some(m) = msg.take() else { return Fired::Done };
            match to.try_send(m) {
                Ok(()) => Fired::Done,
                Err(TrySendError::Full(m)) => {
                    msg = Some(m);
                    Fired::RetryAt(now + Duration::from_millis(1))
                }
                Err(TrySendError::Closed(_)) => {
                    log::debug!("timer for {} fired after it closed", to.id());
                    Fired::Done
                }
            }
        }),
    )
}

pub(crate) fn send_interval<M: Send + 'static>(
    rt: &Arc<RuntimeShared>,
    to: Recipient<M>,
    period: Duration,
    mut make: impl FnMut() -> M + Send + 'static,
) -> TimerHandle {
    let period = period.max(Duration::from_micros(100));
    let weak = Arc::downgrade(rt);
    let mut next = Instant::now() + period;
    rt.timers.add(
        next,
        Box::new(move |now| {
            match to.try_send(make()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    if let Some(rt) = weak.upgrade() {
                        rt.timers.skipped.increment(1);
                    }
                }
                Err(TrySendError::Closed(_)) => return Fired::Done,
            }
            // Fixed rate; ticks missed while the thread was late are skipped, not bunched.
            next += period;
            while next <= now {
                next += period;
            }
            Fired::RetryAt(next)
        }),
    )
}
