//! The queue behind an actor's mailbox.
//!
//! Many senders, one consumer at a time (the thread running the actor's turn), a bound on the
//! messages accepted and not yet taken.
//!
//! Senders push onto a shared `VecDeque` under a short lock. The consumer does not take the
//! lock per message: when its own batch runs dry it swaps the whole shared deque for its empty
//! one (O(1), and the two allocations keep circulating), then pops from the batch with no
//! synchronisation at all, subtracting what it took from the shared count every
//! `PUBLISH_EVERY` messages and whenever it runs dry. So a stream of messages costs the
//! consumer one lock per batch and one atomic operation per `PUBLISH_EVERY` messages.
//!
//! Why not a crossbeam channel, which the mailboxes used before: creating one allocates a
//! cache-padded, 128-byte-aligned block and a slot array of the full capacity up front. An
//! actor per connection paid that on every connection (a `posix_memalign` that, on a
//! fragmented heap, cost a worker several percent of its CPU), and an idle actor carried about
//! 650 bytes of channel. This queue allocates nothing until the first message, then only as
//! many slots as messages wait at once, and gives a burst's memory back once it is handled.
//!
//! The bound counts every message accepted and not yet taken by the consumer, in the shared
//! deque and in the consumer's batch alike, so `Mailbox::Bounded(n)` means at most `n` waiting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Slots an empty deque shrinks to once it has held more than `SHRINK_ABOVE` (a burst); below
/// that, a batch keeps its allocation from one refill to the next.
const KEEP_CAPACITY: usize = 32;
const SHRINK_ABOVE: usize = 256;

/// The consumer subtracts what it took from the shared count once per this many messages (and
/// whenever its batch runs dry), not per message: the count's cache line is the one senders
/// read and write. At most a quarter of the bound, so a small mailbox does not look full for
/// long while its consumer works through a batch.
const PUBLISH_EVERY: usize = 32;

/// The consumer's side of a queue: messages taken from the shared deque in one go, and how many
/// it has handed out since it last subtracted them from the count (until then the count is
/// too high by that much, which can only make a sender wait early, never exceed the bound).
pub(crate) struct Batch<M> {
    items: VecDeque<M>,
    unpublished: usize,
}

impl<M> Default for Batch<M> {
    fn default() -> Self {
        Batch { items: VecDeque::new(), unpublished: 0 }
    }
}

/// Why [`MessageQueue::try_send_with`] handed a message back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused<M> {
    /// At the bound.
    Full(M),
    /// Closed ([`MessageQueue::close`]): the actor is stopping.
    Closed(M),
}

#[cfg(test)]
impl<M> Refused<M> {
    pub(crate) fn map<N>(self, f: impl FnOnce(M) -> N) -> Refused<N> {
        match self {
            Refused::Full(m) => Refused::Full(f(m)),
            Refused::Closed(m) => Refused::Closed(f(m)),
        }
    }
}

pub(crate) struct MessageQueue<M> {
    shared: Mutex<VecDeque<M>>,
    /// No more messages are accepted. Changed only under `shared`'s lock, and read under it by
    /// every push: a message is either in the queue before it closed or handed back, with no
    /// count of senders in flight to wait for.
    closed: AtomicBool,
    /// Accepted and not yet taken: in `shared`, in the consumer's batch, and (until the
    /// consumer publishes) handed out by the consumer since its last `publish`.
    len: AtomicUsize,
    bound: usize,
    /// Senders waiting for room in [`MessageQueue::send_deadline`].
    room: Condvar,
    sleepers: AtomicU32,
}

/// Appends `msg`. A deque's first allocation holds one message, not the four `VecDeque` makes
/// room for: most mailboxes hold one message at a time (a request, an event, a reply), and an
/// idle actor keeps that allocation (an actor per idle connection, thousands of them). A
/// second waiting message grows it as usual.
fn push<M>(shared: &mut VecDeque<M>, msg: M) {
    if shared.capacity() == 0 {
        shared.reserve_exact(1);
    }
    shared.push_back(msg);
}

impl<M> MessageQueue<M> {
    /// A queue of at most `bound` messages (`usize::MAX`: unbounded).
    pub(crate) fn new(bound: usize) -> MessageQueue<M> {
        MessageQueue {
            shared: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            bound: bound.max(1),
            room: Condvar::new(),
            sleepers: AtomicU32::new(0),
        }
    }

    /// Accepts `msg`, or hands it back when the queue is at its bound or closed.
    #[cfg(test)]
    pub(crate) fn try_send(&self, msg: M) -> Result<(), Refused<M>> {
        self.try_send_with(move || msg).map_err(|r| r.map(|make| make()))
    }

    /// Accepts the message `make` builds, or hands `make` back uncalled when the queue is at its
    /// bound or closed. The message is built only once it is accepted (under the lock: keep
    /// `make` cheap), so a sender holding a value of another type converts it only if it goes
    /// in, and keeps it otherwise.
    pub(crate) fn try_send_with<F: FnOnce() -> M>(&self, make: F) -> Result<(), Refused<F>> {
        let mut shared = self.shared.lock();
        if self.closed.load(SeqCst) {
            return Err(Refused::Closed(make));
        }
        if self.len.load(SeqCst) >= self.bound {
            return Err(Refused::Full(make));
        }
        push(&mut shared, make());
        self.len.fetch_add(1, SeqCst);
        Ok(())
    }

    /// Accepts `msg`, waiting until `until` for room; hands it back if none came, or as soon as
    /// the queue closes.
    #[cfg(test)]
    pub(crate) fn send_deadline(&self, msg: M, until: Instant) -> Result<(), Refused<M>> {
        self.send_deadline_with(move || msg, until).map_err(|r| r.map(|make| make()))
    }

    /// As [`MessageQueue::try_send_with`], waiting until `until` for room.
    pub(crate) fn send_deadline_with<F: FnOnce() -> M>(&self, make: F, until: Instant) -> Result<(), Refused<F>> {
        let mut shared = self.shared.lock();
        loop {
            if self.closed.load(SeqCst) {
                return Err(Refused::Closed(make));
            }
            // Announce the wait before looking at the count: the consumer frees room, then
            // looks for sleepers, so one of the two always sees the other (see `taken`).
            self.sleepers.fetch_add(1, SeqCst);
            if self.len.load(SeqCst) < self.bound {
                self.sleepers.fetch_sub(1, SeqCst);
                push(&mut shared, make());
                self.len.fetch_add(1, SeqCst);
                return Ok(());
            }
            let timed_out = self.room.wait_until(&mut shared, until).timed_out();
            self.sleepers.fetch_sub(1, SeqCst);
            if timed_out && Instant::now() >= until {
                return Err(Refused::Full(make));
            }
        }
    }

    /// Stops accepting messages; senders waiting for room get theirs back. What was accepted
    /// stays for the consumer.
    pub(crate) fn close(&self) {
        let _shared = self.shared.lock();
        self.closed.store(true, SeqCst);
        self.room.notify_all();
    }

    /// Accepts messages again (a restarted actor).
    pub(crate) fn reopen(&self) {
        let _shared = self.shared.lock();
        self.closed.store(false, SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// The next message for the consumer, refilling `batch` (the consumer's own deque, empty
    /// between turns or not) from the shared one when it is empty.
    ///
    /// One consumer at a time: the cell passes its `Inner::batch`, which only the holder of
    /// its `inner` lock (the thread running the actor's turn) can reach.
    pub(crate) fn recv(&self, batch: &mut Batch<M>) -> Option<M> {
        if let Some(msg) = batch.items.pop_front() {
            batch.unpublished += 1;
            if batch.unpublished >= self.publish_every() {
                self.publish(batch);
            }
            return Some(msg);
        }
        // Before reading the count: it must not include what this consumer already took.
        self.publish(batch);
        if self.len.load(SeqCst) == 0 {
            return None;
        }
        if batch.items.capacity() > SHRINK_ABOVE {
            // What a burst left behind goes back to the allocator, so an idle actor does not
            // keep its peak backlog's memory for life.
            batch.items.shrink_to(KEEP_CAPACITY);
        }
        let mut shared = self.shared.lock();
        if shared.len() == 1 {
            // One message (request/response, most actors most of the time): take it and leave
            // the allocations where they are, so a short-lived actor makes one.
            let msg = shared.pop_front();
            drop(shared);
            batch.unpublished = 1;
            self.publish(batch);
            return msg;
        }
        std::mem::swap(&mut batch.items, &mut *shared);
        drop(shared);
        let msg = batch.items.pop_front()?;
        batch.unpublished = 1;
        Some(msg)
    }

    /// `PUBLISH_EVERY`, or a quarter of a smaller bound (at least 1). Computed, not stored: an
    /// idle actor's size is a target of its own.
    fn publish_every(&self) -> usize {
        (self.bound / 4).clamp(1, PUBLISH_EVERY)
    }

    /// Subtracts the messages the consumer took since it last did so from the count, and wakes
    /// waiting senders if that freed half the queue. `recv` calls it every `publish_every`
    /// messages and whenever its batch runs dry; the cell calls it at the end of every turn,
    /// so the count is exact whenever the actor is not running.
    pub(crate) fn publish(&self, batch: &mut Batch<M>) {
        let taken = std::mem::take(&mut batch.unpublished);
        if taken == 0 {
            return;
        }
        let left = self.len.fetch_sub(taken, SeqCst) - taken;
        // Waiting senders are woken once half the queue is free, all together: waking one per
        // freed slot would have a producer that outruns its consumer sleep and wake (two
        // futex calls, often a cross-CPU wake-up) for every message.
        if left <= self.bound / 2 && self.sleepers.load(SeqCst) > 0 {
            // Taking the lock orders this wake-up after a sender's check-then-wait.
            let _shared = self.shared.lock();
            self.room.notify_all();
        }
    }

    /// Messages accepted and not yet taken (while the consumer runs, possibly up to
    /// `publish_every - 1` too many).
    pub(crate) fn len(&self) -> usize {
        self.len.load(SeqCst)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn bound_counts_the_consumers_batch_too() {
        let q = MessageQueue::new(3);
        let mut batch = Batch::default();
        for i in 0..3 {
            q.try_send(i).unwrap();
        }
        assert!(matches!(q.try_send(3), Err(Refused::Full(3))));
        // The first recv moves all three into the batch; only one is taken.
        assert_eq!(q.recv(&mut batch), Some(0));
        assert_eq!(q.len(), 3, "counted until the consumer publishes what it took");
        q.publish(&mut batch);
        assert_eq!(q.len(), 2);
        q.try_send(3).unwrap();
        assert!(matches!(q.try_send(4), Err(Refused::Full(4))), "two in the batch and one shared fill the bound");
        let got: Vec<i32> = std::iter::from_fn(|| q.recv(&mut batch)).collect();
        assert_eq!(got, vec![1, 2, 3], "order kept across the swap");
        assert!(q.is_empty());
    }

    #[test]
    fn a_small_mailbox_has_room_again_soon_after_its_consumer_starts_a_batch() {
        let q = MessageQueue::new(8);
        let mut batch = Batch::default();
        for i in 0..8 {
            q.try_send(i).unwrap();
        }
        assert_eq!(q.recv(&mut batch), Some(0));
        assert_eq!(q.recv(&mut batch), Some(1));
        // A quarter of the bound taken: published, so senders see the room.
        q.try_send(8).expect("room after two of eight were taken");
    }

    #[test]
    fn send_deadline_waits_for_room_and_times_out_without_it() {
        let q = Arc::new(MessageQueue::new(1));
        q.try_send(0).unwrap();
        let t = Instant::now();
        assert!(matches!(q.send_deadline(1, Instant::now() + Duration::from_millis(30)), Err(Refused::Full(1))));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || q.send_deadline(2, Instant::now() + Duration::from_secs(10)))
        };
        while q.sleepers.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        let mut batch = Batch::default();
        assert_eq!(q.recv(&mut batch), Some(0));
        assert!(sender.join().unwrap().is_ok(), "woken by the room the consumer made");
        assert_eq!(q.recv(&mut batch), Some(2));
    }

    #[test]
    fn a_burst_s_memory_is_given_back_once_handled() {
        let q = MessageQueue::new(usize::MAX);
        let mut batch = Batch::default();
        for i in 0..10_000 {
            q.try_send(i).unwrap();
        }
        while q.recv(&mut batch).is_some() {}
        q.try_send(0).unwrap();
        assert_eq!(q.recv(&mut batch), Some(0));
        q.try_send(1).unwrap();
        assert_eq!(q.recv(&mut batch), Some(1));
        assert!(batch.items.capacity() <= KEEP_CAPACITY && q.shared.lock().capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn a_mailbox_s_first_allocation_holds_one_message_and_grows_for_a_second() {
        let q = MessageQueue::new(usize::MAX);
        let mut batch = Batch::default();
        q.try_send(0u64).unwrap();
        assert_eq!(q.shared.lock().capacity(), 1, "an idle actor keeps one slot, not four");
        assert_eq!(q.recv(&mut batch), Some(0));
        q.try_send(1).unwrap();
        assert_eq!(q.shared.lock().capacity(), 1, "the slot is reused, not made again");
        q.try_send(2).unwrap();
        assert!(q.shared.lock().capacity() >= 2);
        let got: Vec<u64> = std::iter::from_fn(|| q.recv(&mut batch)).collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn many_senders_one_consumer_lose_nothing() {
        let q = Arc::new(MessageQueue::new(8));
        let senders: Vec<_> = (0..4u64)
            .map(|s| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        assert!(q.send_deadline(s << 32 | i, Instant::now() + Duration::from_secs(30)).is_ok());
                    }
                })
            })
            .collect();
        let mut batch = Batch::default();
        let mut next = [0u64; 4];
        let mut got = 0;
        while got < 40_000 {
            match q.recv(&mut batch) {
                Some(m) => {
                    let (s, i) = ((m >> 32) as usize, m & 0xffff_ffff);
                    assert_eq!(i, next[s], "each sender's messages arrive in order");
                    next[s] += 1;
                    got += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for s in senders {
            s.join().unwrap();
        }
        q.publish(&mut batch); // as the cell does at the end of every turn
        assert!(q.is_empty());
    }
}
