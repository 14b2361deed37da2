//! The ledger: every socket the parent holds and has not yet seen adopted, and what becomes of it.
//!
//! The parent's promise is that an accepted socket **ends exactly once**: adopted by one
//! worker, handed to a successor, or closed by the parent with a reason that is counted. And a
//! socket that one worker may have touched (read a byte of, written a byte to) is never placed
//! on a second worker, whose first read would wait for bytes that are gone. The ledger is where
//! those rules live; it does no I/O, so every interleaving of events can be driven from a test
//! (see the property tests at the bottom), and the actor around it only carries records and
//! system calls in and out.
//!
//! # The life of an entry
//!
//! ```text
//!            admit
//!              │
//!              ▼        no worker can take it
//!   ┌──────▶ Waiting ◀──────────────────────────┐
//!   │          │ place: the policy picks a slot │ channel full: placed again,
//!   │          ▼                                │ the try not counted
//!   │        Queued(slot) ──────────────────────┘
//!   │          │ sent in a HANDOFF record
//!   │          ▼
//!   │        Sent(slot) ── ADOPTED ──▶ ended: the worker's (the parent closes its copy)
//!   │          │ │
//!   │ REJECTED │ └── worker lost ──▶ process gone? ──yes──▶ verdict
//!   └──────────┘                        │ no (it may still run)
//!   (tries left)                        ▼
//!                                     Held(incarnation) ── exits, or the hold deadline ──▶ verdict
//!
//!   verdict: the kernel's counters say nobody else read or wrote → placed again (a try);
//!            touched, or cannot tell → ended (the client sees the connection close, not a hang)
//! ```
//!
//! A worker may read and even answer before it reports ADOPTED (PROTOCOL.md §9.4), so a
//! worker's death says nothing about whether a socket it was sent is still fresh. Placing it
//! again blindly left clients waiting for an answer that never came; ending every one of them
//! would turn each worker crash into errors for clients it never touched. The ledger asks the
//! socket ([`Held::touched`]) instead, and only once nobody but the parent can touch it any more.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::policy::{Candidate, Policy};

/// What the ledger needs of a socket it holds.
pub(crate) trait Held {
    /// The routing key the policy places by.
    fn key(&self) -> Option<&[u8]>;
    /// Whether anyone but the parent read from or wrote to the socket since it was admitted.
    fn touched(&self) -> Touch;
    /// The worker group it must go to (`None`: any).
    fn group(&self) -> Option<usize> {
        None
    }
}

/// What the kernel says about a socket a lost worker had been sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Nothing read, nothing written, still open both ways: safe to place again.
    Untouched,
    /// Bytes were consumed or written, or the socket was shut down.
    Touched,
    /// No counters to ask (a Unix socket) or asking failed: treated as touched.
    Unknown,
}

/// Why the parent ended a socket itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum End {
    /// Placed the most times allowed ([`Limits::max_tries`]).
    TooManyTries,
    /// A lost worker may have read or written it: placing it again would hang its client.
    Touched,
    /// Sent to a worker that was cut off and may still be running: it could still serve it.
    CutOff,
    /// The parent's drain deadline came first, or it arrived after the workers were told to drain.
    Drain,
    /// It cannot be described in a record (a key or prelude over the limits).
    Unencodable,
    /// Its worker group had no worker able to take it in time.
    NoWorker,
}

impl End {
    /// The label of `baton_handoff_ended_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            End::TooManyTries => "too_many_tries",
            End::Touched => "touched",
            End::CutOff => "cut_off",
            End::Drain => "drain",
            End::Unencodable => "unencodable",
            End::NoWorker => "no_worker",
        }
    }

    /// True when another process may still hold a copy: the parent must shut the socket down,
    /// not only close its copy, for the client to see the end.
    pub(crate) fn after_send(self) -> bool {
        matches!(self, End::Touched | End::CutOff)
    }
}

/// A socket the ledger let go of, for the caller to close (see [`End::after_send`]).
#[derive(Debug)]
pub(crate) struct Ended<S> {
    pub(crate) id: u64,
    pub(crate) socket: S,
    pub(crate) why: End,
}

/// A socket adopted by a worker: the caller closes its copy.
#[derive(Debug)]
pub(crate) struct Adopted<S> {
    pub(crate) socket: S,
    /// From admission to adoption.
    pub(crate) latency: Duration,
}

/// Where an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// No worker could take it yet.
    Waiting,
    /// In `slot`'s outbox, not yet sent.
    Queued(usize),
    /// Sent to `slot` (incarnation `gen`) at this instant, unanswered.
    Sent { slot: usize, gen: u64, at: Instant },
    /// Sent to incarnation `gen` of `slot`, whose channel is gone while its process may still
    /// run: judged when it exits. At `until` (if any) the untouched ones are released.
    Held { slot: usize, gen: u64, until: Option<Instant> },
}

struct Entry<S> {
    socket: S,
    place: Place,
    /// Placements made (sent or about to be); a placement that never left the outbox because
    /// the channel was full is not counted.
    tries: u32,
    /// Slots that refused or lost this socket (bit per slot, slots < 64).
    tried: u64,
    admitted: Instant,
}

/// What the ledger knows of one worker slot.
#[derive(Clone, Debug, Default)]
pub(crate) struct Book {
    /// Can take sockets now (the worker is ready, its channel not backed up). Set by the owner
    /// of the slot's state.
    pub(crate) accepting: bool,
    /// The current incarnation (a process and its channel); 0 while none.
    pub(crate) gen: u64,
    /// The worker group of the slot.
    pub(crate) group: usize,
    /// Load the worker reported.
    pub(crate) open: u32,
    pub(crate) queued: u32,
    pub(crate) busy: u32,
    /// Placed here (queued or sent) and unanswered.
    in_flight: u32,
    outbox: VecDeque<u64>,
}

/// The ledger's bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Entries at which the listeners pause (the descriptor budget).
    pub(crate) max_in_flight: usize,
    /// Unanswered placements on one worker.
    pub(crate) max_per_worker: u32,
    /// Placements before a socket is ended.
    pub(crate) max_tries: u32,
    /// How long a lost worker's live process may keep the sockets it was sent undecided.
    pub(crate) hold: Duration,
}

/// Every socket held, with its place. See the module docs.
pub(crate) struct Ledger<S> {
    entries: HashMap<u64, Entry<S>, BuildIdHasher>,
    waiting: VecDeque<u64>,
    /// How many in `waiting` any worker could take (bound to no group), kept as they join
    /// and leave: the parent asks after every message, and counting a long line each time
    /// made its work grow with the square of the backlog (a tenth of its thread in the handoff
    /// benchmark).
    waiting_any: usize,
    /// The candidates of the last placement, kept so that a placement allocates nothing.
    candidates: Vec<Candidate>,
    next_id: u64,
    books: Vec<Book>,
    policy: Box<dyn Policy>,
    limits: Limits,
    /// Sockets placed again after a refusal or a loss.
    pub(crate) replaced: u64,
}

impl<S: Held> Ledger<S> {
    pub(crate) fn new(policy: Box<dyn Policy>, limits: Limits) -> Ledger<S> {
        Ledger {
            entries: HashMap::default(),
            waiting: VecDeque::new(),
            waiting_any: 0,
            candidates: Vec::new(),
            next_id: 1,
            books: Vec::new(),
            policy,
            limits,
            replaced: 0,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Lowers or raises the entry bound (the descriptor budget moves with the limit).
    pub(crate) fn set_max_in_flight(&mut self, n: usize) {
        self.limits.max_in_flight = n.max(1);
    }

    /// A fresh id, never used again (also for listener shares, which are not entries).
    pub(crate) fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The book of `slot`, created (empty) if new.
    pub(crate) fn book(&mut self, slot: usize) -> &mut Book {
        if slot >= self.books.len() {
            self.books.resize_with(slot + 1, Book::default);
        }
        &mut self.books[slot]
    }

    pub(crate) fn books(&self) -> &[Book] {
        &self.books
    }

    /// Entries held (each is one descriptor of the parent's).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries no worker could take yet.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Entries waiting that any worker could take (not bound to a group): the listeners pause
    /// while there are some. Sockets waiting for a group's workers do not hold up the others.
    pub(crate) fn waiting_for_anyone(&self) -> usize {
        self.waiting_any
    }

    /// Puts `id` at the end of the waiting line.
    fn wait(&mut self, id: u64) {
        if self.entries.get(&id).is_some_and(|e| e.socket.group().is_none()) {
            self.waiting_any += 1;
        }
        self.waiting.push_back(id);
    }

    /// Ends the entries bound to a group that have waited longer than `limit` since they were
    /// admitted: that group has had no worker able to take them.
    pub(crate) fn expire_group_waits(&mut self, now: Instant, limit: Duration) -> Vec<Ended<S>> {
        let expired: Vec<u64> = self
            .waiting
            .iter()
            .copied()
            .filter(|id| {
                self.entries.get(id).is_some_and(|e| {
                    e.place == Place::Waiting
                        && e.socket.group().is_some()
                        && now.saturating_duration_since(e.admitted) > limit
                })
            })
            .collect();
        expired.into_iter().filter_map(|id| self.end(id, End::NoWorker)).collect()
    }

    /// Placed on `slot` and unanswered.
    pub(crate) fn in_flight(&self, slot: usize) -> u32 {
        self.books.get(slot).map_or(0, |b| b.in_flight)
    }

    /// At the entry bound: the listeners should pause.
    pub(crate) fn full(&self) -> bool {
        self.entries.len() >= self.limits.max_in_flight
    }

    /// Some worker can take a socket now (of any group).
    pub(crate) fn can_place(&self) -> bool {
        self.books.iter().any(|b| self.eligible(b))
    }

    fn eligible(&self, b: &Book) -> bool {
        b.accepting && b.in_flight < self.limits.max_per_worker
    }

    pub(crate) fn get(&self, id: u64) -> Option<&S> {
        self.entries.get(&id).map(|e| &e.socket)
    }

    /// A new incarnation `gen` of `slot` is linked: its book starts empty (it takes nothing
    /// until it is accepting).
    pub(crate) fn relink(&mut self, slot: usize, gen: u64, group: usize) {
        let b = self.book(slot);
        b.gen = gen;
        b.group = group;
        b.accepting = false;
        b.open = 0;
        b.queued = 0;
        b.busy = 0;
    }

    /// The worker's LOAD: its own count replaces ours (ADOPTED and CLOSED keep it exact between).
    pub(crate) fn report_load(&mut self, slot: usize, load: crate::record::Load) {
        let b = self.book(slot);
        b.open = load.open;
        b.queued = load.queued;
        b.busy = load.busy;
    }

    /// The worker's CLOSED, for `n` connections.
    pub(crate) fn closed(&mut self, slot: usize, n: usize) {
        let b = self.book(slot);
        b.open = b.open.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// A new socket: it gets an id and a place (a worker's outbox, or the waiting line). A
    /// socket coming back from worker `avoid` (a migration) goes elsewhere when it can.
    pub(crate) fn admit(&mut self, socket: S, avoid: Option<usize>, now: Instant) -> u64 {
        let id = self.fresh_id();
        let tried = avoid.filter(|&s| s < 64).map_or(0, |s| 1 << s);
        self.entries.insert(id, Entry { socket, place: Place::Waiting, tries: 0, tried, admitted: now });
        self.place(id);
        id
    }

    /// Chooses a worker for entry `id` (which is `Waiting`), or leaves it waiting. True when placed.
    fn place(&mut self, id: u64) -> bool {
        let mut candidates = std::mem::take(&mut self.candidates);
        let placed = self.place_among(id, &mut candidates);
        self.candidates = candidates;
        placed
    }

    /// [`Ledger::place`], with a vector to fill with the candidates.
    fn place_among(&mut self, id: u64, candidates: &mut Vec<Candidate>) -> bool {
        let Some(e) = self.entries.get(&id) else { return false };
        let candidate = |(slot, b): (usize, &Book)| Candidate {
            slot,
            in_flight: b.in_flight,
            open: b.open,
            queued: b.queued,
            busy: b.busy,
        };
        let fresh = |slot: usize| slot >= 64 || e.tried & (1 << slot) == 0;
        let group = e.socket.group();
        let eligible = |b: &Book| self.eligible(b) && group.is_none_or_eq(b.group);
        candidates.clear();
        candidates.extend(self.books.iter().enumerate().filter(|&(slot, b)| eligible(b) && fresh(slot)).map(candidate));
        if candidates.is_empty() && e.tried != 0 {
            // Every able worker already had a go: try them again rather than wait forever.
            candidates.extend(self.books.iter().enumerate().filter(|(_, b)| eligible(b)).map(candidate));
        }
        if candidates.is_empty() {
            self.wait(id);
            return false;
        }
        let choice = self.policy.choose(candidates, e.socket.key());
        let slot = candidates.get(choice).unwrap_or(&candidates[0]).slot;
        let e = self.entries.get_mut(&id).expect("checked above");
        e.place = Place::Queued(slot);
        e.tries += 1;
        let b = &mut self.books[slot];
        b.in_flight += 1;
        b.outbox.push_back(id);
        true
    }

    /// Places waiting entries, in order, while some worker can take them; an entry whose group
    /// has no worker able to take it keeps its place in the line without holding up the others.
    pub(crate) fn place_waiting(&mut self) {
        if self.waiting.is_empty() || !self.can_place() {
            return;
        }
        let line: Vec<u64> = self.waiting.drain(..).collect();
        self.waiting_any = 0;
        for id in line {
            if !self.entries.get(&id).is_some_and(|e| e.place == Place::Waiting) {
                continue;
            }
            if self.can_place() {
                self.place(id); // back in the line if nobody of its group can take it
            } else {
                self.wait(id);
            }
        }
    }

    /// The ids queued for `slot`, in order (stale ones are skipped by [`Ledger::sent`]).
    pub(crate) fn outbox(&self, slot: usize) -> impl Iterator<Item = u64> + '_ {
        self.books.get(slot).into_iter().flat_map(|b| b.outbox.iter().copied())
    }

    /// The first `n` ids of `slot`'s outbox left in a record sent to incarnation `gen`.
    pub(crate) fn sent(&mut self, slot: usize, gen: u64, n: usize, now: Instant) {
        let Some(b) = self.books.get_mut(slot) else { return };
        for id in b.outbox.drain(..n.min(b.outbox.len())) {
            if let Some(e) = self.entries.get_mut(&id) {
                if e.place == Place::Queued(slot) {
                    e.place = Place::Sent { slot, gen, at: now };
                }
            }
        }
    }

    /// `slot`'s channel is full: what its outbox holds goes to other workers, and the try is
    /// not counted (the worker never saw it).
    pub(crate) fn unqueue(&mut self, slot: usize) {
        let Some(b) = self.books.get_mut(slot) else { return };
        let ids: Vec<u64> = b.outbox.drain(..).collect();
        for id in ids {
            let Some(e) = self.entries.get_mut(&id) else { continue };
            if e.place != Place::Queued(slot) {
                continue;
            }
            e.place = Place::Waiting;
            e.tries = e.tries.saturating_sub(1);
            if slot < 64 {
                e.tried |= 1 << slot;
            }
            self.books[slot].in_flight = self.books[slot].in_flight.saturating_sub(1);
            self.place(id);
        }
    }

    /// Removes ids queued on `slot` that cannot be encoded, ending them.
    pub(crate) fn unencodable(&mut self, slot: usize, id: u64) -> Option<Ended<S>> {
        if !self.entries.get(&id).is_some_and(|e| e.place == Place::Queued(slot)) {
            return None;
        }
        self.end(id, End::Unencodable)
    }

    /// Worker `slot` adopted `id`. `None` when `id` is not a socket sent to that worker and
    /// unanswered (an unknown id, a late answer, a worker answering for another).
    pub(crate) fn adopted(&mut self, slot: usize, id: u64, now: Instant) -> Option<Adopted<S>> {
        let e = self.entries.get(&id)?;
        if !matches!(e.place, Place::Sent { slot: s, .. } if s == slot) {
            return None;
        }
        let e = self.entries.remove(&id).expect("checked");
        let b = &mut self.books[slot];
        b.in_flight = b.in_flight.saturating_sub(1);
        b.open = b.open.saturating_add(1);
        Some(Adopted { socket: e.socket, latency: now.saturating_duration_since(e.admitted) })
    }

    /// Worker `slot` refused `id`: it goes elsewhere, or ends after too many tries or when the
    /// worker touched it before refusing. `offered`: the refusal came from the application
    /// (which may have read before it refused), not from the worker's checks before any
    /// application saw the socket (PROTOCOL.md §9.4); only then does "cannot tell" (a Unix
    /// socket) count as touched. `None` when the id is unknown (as for [`Ledger::adopted`]);
    /// `Some(None)` when placed again.
    pub(crate) fn rejected(&mut self, slot: usize, id: u64, offered: bool) -> Option<Option<Ended<S>>> {
        let e = self.entries.get(&id)?;
        if !matches!(e.place, Place::Sent { slot: s, .. } if s == slot) {
            return None;
        }
        self.books[slot].in_flight = self.books[slot].in_flight.saturating_sub(1);
        self.entries.get_mut(&id).expect("checked").place = Place::Waiting;
        // A worker that read or wrote before refusing (it may, §9.4) made it unusable elsewhere.
        Some(self.verdict(id, slot, offered))
    }

    /// Another placement for `id`, which `slot` refused or lost; ended after the last try.
    fn again(&mut self, id: u64, slot: usize) -> Option<Ended<S>> {
        let e = self.entries.get_mut(&id)?;
        e.place = Place::Waiting;
        if slot < 64 {
            e.tried |= 1 << slot;
        }
        if e.tries >= self.limits.max_tries {
            return self.end(id, End::TooManyTries);
        }
        self.replaced += 1;
        self.place(id);
        None
    }

    /// Worker `slot`'s channel is gone. What was queued goes elsewhere. What was sent is
    /// judged now when its process is gone (nobody can touch it any more), held until the process
    /// exits (or [`Limits::hold`] passes) when it may still run, and ended when it was
    /// `cut_off` (presumed hung, alive, not killed: it may still serve what it was sent).
    pub(crate) fn lost(&mut self, slot: usize, how: Lost, now: Instant) -> Vec<Ended<S>> {
        let Some(b) = self.books.get_mut(slot) else { return Vec::new() };
        let gen = b.gen;
        b.accepting = false;
        b.outbox.clear();
        b.in_flight = 0;
        b.open = 0;
        b.queued = 0;
        b.busy = 0;
        let mine: Vec<(u64, Place)> = self
            .entries
            .iter()
            .filter(|(_, e)| match e.place {
                Place::Queued(s) => s == slot,
                Place::Sent { slot: s, .. } => s == slot,
                _ => false,
            })
            .map(|(&id, e)| (id, e.place))
            .collect();
        let mut ended = Vec::new();
        for (id, place) in mine {
            match (place, how) {
                (Place::Queued(_), _) => {
                    // Never sent: the worker never saw it. Not a try.
                    let e = self.entries.get_mut(&id).expect("listed");
                    e.place = Place::Waiting;
                    e.tries = e.tries.saturating_sub(1);
                    if slot < 64 {
                        e.tried |= 1 << slot;
                    }
                    self.place(id);
                }
                (Place::Sent { .. }, Lost::ProcessGone) => ended.extend(self.verdict(id, slot, true)),
                (Place::Sent { .. }, Lost::MayRun) => {
                    let e = self.entries.get_mut(&id).expect("listed");
                    e.place = Place::Held { slot, gen, until: Some(later(now, self.limits.hold)) };
                }
                (Place::Sent { .. }, Lost::CutOff) => ended.extend(self.end(id, End::CutOff)),
                _ => {}
            }
        }
        ended
    }

    /// Incarnation `gen` of `slot` has exited (or will not be waited for any longer): what it
    /// held is judged.
    pub(crate) fn judge(&mut self, slot: usize, gen: u64) -> Vec<Ended<S>> {
        self.held_by(gen).into_iter().filter_map(|id| self.verdict(id, slot, true)).collect()
    }

    /// Incarnation `gen` of `slot` outlived the hold: what it has not touched by now it will
    /// not adopt (PROTOCOL.md §10.6: after its channel ends a worker adopts nothing more), so
    /// those go elsewhere; what it touched it may be serving still (a worker that lost its
    /// channel finishes its connections, and its unsent ADOPTED went with the channel), so those
    /// stay held until the process exits, and are never shut down under it. Returns what it
    /// ended: an untouched socket that has had all its tries.
    #[must_use = "an ended socket must be closed and counted, never dropped unseen"]
    pub(crate) fn release_untouched(&mut self, slot: usize, gen: u64) -> Vec<Ended<S>> {
        let mut ended = Vec::new();
        for id in self.held_by(gen) {
            let e = self.entries.get_mut(&id).expect("listed");
            if e.socket.touched() == Touch::Untouched {
                // Judged already: placed again, or ended if out of tries (asking the kernel a
                // second time could answer otherwise, and end it as touched under a worker
                // that may be serving it).
                ended.extend(self.again(id, slot));
            } else {
                e.place = Place::Held { slot, gen, until: None };
            }
        }
        ended
    }

    fn held_by(&self, gen: u64) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Held { gen: g, .. } if g == gen))
            .map(|(&id, _)| id)
            .collect()
    }

    /// The incarnations (slot, gen) whose hold deadline has passed with sockets still held.
    pub(crate) fn hold_expired(&self, now: Instant) -> Vec<(usize, u64)> {
        let mut due: Vec<(usize, u64)> = self
            .entries
            .values()
            .filter_map(|e| match e.place {
                Place::Held { slot, gen, until: Some(until) } if until <= now => Some((slot, gen)),
                _ => None,
            })
            .collect();
        due.sort_unstable();
        due.dedup();
        due
    }

    /// A socket nobody but the parent can touch any more: placed again if untouched (and if
    /// `unknown_touched` is false, also when the kernel cannot tell). Its slot's books no
    /// longer count it (the caller saw to that).
    fn verdict(&mut self, id: u64, slot: usize, unknown_touched: bool) -> Option<Ended<S>> {
        let e = self.entries.get_mut(&id)?;
        e.place = Place::Waiting; // not in the line: placed or ended right below
        let touch = e.socket.touched();
        if touch == Touch::Untouched || (touch == Touch::Unknown && !unknown_touched) {
            self.again(id, slot)
        } else {
            self.end(id, End::Touched)
        }
    }

    /// Slots with a socket sent more than `timeout` ago and unanswered.
    pub(crate) fn late(&self, now: Instant, timeout: Duration) -> Vec<usize> {
        let mut late: Vec<usize> = self
            .entries
            .values()
            .filter_map(|e| match e.place {
                Place::Sent { slot, at, .. } if now.saturating_duration_since(at) > timeout => Some(slot),
                _ => None,
            })
            .collect();
        late.sort_unstable();
        late.dedup();
        late
    }

    /// Ends one entry.
    pub(crate) fn end(&mut self, id: u64, why: End) -> Option<Ended<S>> {
        let e = self.entries.remove(&id)?;
        match e.place {
            Place::Queued(slot) | Place::Sent { slot, .. } => {
                let b = &mut self.books[slot];
                b.in_flight = b.in_flight.saturating_sub(1);
                b.outbox.retain(|&o| o != id);
            }
            Place::Waiting => {
                // (A socket being judged is `Waiting` without being in the line.)
                let before = self.waiting.len();
                self.waiting.retain(|&w| w != id);
                if self.waiting.len() < before && e.socket.group().is_none() {
                    self.waiting_any -= 1;
                }
            }
            Place::Held { .. } => {}
        }
        Some(Ended { id, socket: e.socket, why })
    }

    /// Ends every entry not yet sent to a worker (waiting or queued), or every entry.
    pub(crate) fn end_all(&mut self, why: End, sent_too: bool) -> Vec<Ended<S>> {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| sent_too || matches!(e.place, Place::Waiting | Place::Queued(_)))
            .map(|(&id, _)| id)
            .collect();
        ids.into_iter().filter_map(|id| self.end(id, why)).collect()
    }

    /// Takes every entry no worker has seen (waiting or queued), in admission order: for a
    /// successor. What it cannot take goes back with [`Ledger::readmit`].
    pub(crate) fn take_unsent(&mut self) -> Vec<(u64, S)> {
        let mut ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Waiting | Place::Queued(_)))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.end(id, End::Drain).map(|e| (e.id, e.socket))).collect()
    }

    /// Takes back a socket [`Ledger::take_unsent`] gave out, under its old id.
    pub(crate) fn readmit(&mut self, id: u64, socket: S, now: Instant) {
        self.entries.insert(id, Entry { socket, place: Place::Waiting, tries: 0, tried: 0, admitted: now });
        self.place(id);
    }
}

/// `at + d`, or a century on when that overflows (`Duration::MAX` passed as "no deadline").
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(d.min(CENTURY)).unwrap_or(at)
}

/// `None` matches every group.
trait GroupMatch {
    fn is_none_or_eq(&self, group: usize) -> bool;
}

impl GroupMatch for Option<usize> {
    fn is_none_or_eq(&self, group: usize) -> bool {
        self.is_none_or(|g| g == group)
    }
}

/// How a worker was lost (see [`Ledger::lost`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lost {
    /// Its process is gone (reaped, or known to have exited): nobody can touch its sockets.
    ProcessGone,
    /// Its channel ended while its process may still run: wait for it (up to the hold).
    MayRun,
    /// Presumed hung and cut off, alive: whatever it was sent it may still serve.
    CutOff,
}

/// Hashes the parent's handoff ids, which are serial numbers: one multiplication (Fibonacci
/// hashing spreads consecutive ids over the table) instead of SipHash, which guards against
/// keys an attacker picks, and these are not.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
