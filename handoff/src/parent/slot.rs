//! A worker slot: the parent's view of one worker, across its incarnations.
//!
//! A slot is a place for a worker. A spawned slot gets a new process (an *incarnation*, with a
//! new channel and a new number) each time the last one is lost, within a restart intensity; a
//! named slot is filled by whichever worker connects. Everything here is decided from plain
//! values (instants, counts, what the worker said), so the rules — when a worker is presumed
//! hung, when a draining worker has overstayed, when a slot restarts or gives up — are tested
//! without processes. The actor owns the process and the channel and applies the decisions.
//!
//! ```text
//!   Down ──link──▶ Starting ──READY──▶ Ready ──DRAIN sent, or REJECTED 4──▶ Draining
//!    ▲                │                  │                                   │
//!    └────────────────┴──── end of file, channel error, deadline missed ─────┘
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use baton_runtime::Intensity;

/// Where a worker is in its life (PROTOCOL.md §10.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Channel open, HELLO sent, READY not yet received.
    Starting,
    /// Takes handoffs.
    Ready,
    /// Takes nothing new; should exit by `until` (`None`: the parent's own drain, which has a
    /// deadline of its own).
    Draining { until: Option<Instant> },
    /// No channel.
    Down,
}

/// What the slot's state says to do about a worker that is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing.
    Fine,
    /// No READY within the startup deadline.
    NoReady,
    /// Sockets unanswered past the adoption deadline, and nothing heard for as long.
    Hung,
    /// Draining (by its own word or a retire) past its deadline.
    Overstayed,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Fine => "fine",
            Verdict::NoReady => "not ready within the startup deadline",
            Verdict::Hung => "sockets unanswered past the adoption deadline and nothing heard for as long",
            Verdict::Overstayed => "still draining past its deadline",
        })
    }
}

/// The pid for a log line: the number, or `-` for a worker not (yet) known by one.
pub(crate) fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "-".to_string(), |p| p.to_string())
}

/// What to do about a slot that is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Not now (not due, not spawned, or the parent drains).
    No,
    /// Start a new incarnation.
    Now,
    /// Too many restarts within the intensity period: leave the slot down for good.
    GiveUp,
}

/// One slot's state.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) phase: Phase,
    /// Spawned by the parent (so restarted by it); false for workers that connected by name.
    pub(crate) spawned: bool,
    /// The worker group (an index into the parent's groups; named workers: none, `usize::MAX`).
    pub(crate) group: usize,
    /// The current incarnation's number (unique in the parent), 0 before the first.
    pub(crate) gen: u64,
    pub(crate) pid: Option<u32>,
    /// The current incarnation said it speaks protocol version 2 (VERSIONS).
    pub(crate) v2: bool,
    /// The last send met a full channel; nothing more goes to it until it is writable.
    pub(crate) backed_up: bool,
    /// Backed up because the kernel refused descriptors in flight: retried on the tick.
    pub(crate) limited: bool,
    /// Sockets adopted over every incarnation.
    pub(crate) adopted: u64,
    restarts: VecDeque<Instant>,
    restart_at: Option<Instant>,
    /// Restarted too often: left down.
    pub(crate) gave_up: bool,
    /// When HELLO was sent.
    linked_at: Instant,
    /// When the worker last sent anything.
    pub(crate) heard_at: Instant,
}

impl Slot {
    pub(crate) fn new(spawned: bool, group: usize, now: Instant) -> Slot {
        Slot {
            phase: Phase::Down,
            spawned,
            group,
            gen: 0,
            pid: None,
            v2: false,
            backed_up: false,
            limited: false,
            adopted: 0,
            restarts: VecDeque::new(),
            restart_at: None,
            gave_up: false,
            linked_at: now,
            heard_at: now,
        }
    }

    /// A new incarnation's channel is in service (HELLO about to go out).
    pub(crate) fn linked(&mut self, gen: u64, now: Instant) {
        self.phase = Phase::Starting;
        self.gen = gen;
        self.v2 = false;
        self.linked_at = now;
        self.heard_at = now;
        self.backed_up = false;
        self.limited = false;
    }

    /// The worker answered HELLO. True when this is the incarnation's first READY (so its
    /// shared listeners go out once per incarnation, PROTOCOL.md §10.8).
    pub(crate) fn ready(&mut self, pid: u32) -> bool {
        self.pid = Some(pid);
        if self.phase == Phase::Starting {
            self.phase = Phase::Ready;
            return true;
        }
        false
    }

    /// Takes no new sockets from now on, and should be gone by `until`.
    pub(crate) fn drain(&mut self, until: Option<Instant>) {
        if self.phase != Phase::Down {
            let until = match self.phase {
                Phase::Draining { until: Some(old) } => Some(until.map_or(old, |u| u.min(old))),
                _ => until,
            };
            self.phase = Phase::Draining { until };
        }
    }

    /// The channel is gone. A spawned slot restarts at `restart_at` unless `restart` is false.
    pub(crate) fn down(&mut self, restart: bool, now: Instant) {
        self.phase = Phase::Down;
        // The process is gone or going: a pid kept here would be shown for whichever worker
        // fills a named slot next, until its READY.
        self.pid = None;
        self.backed_up = false;
        self.limited = false;
        if self.spawned && restart && !self.gave_up {
            self.restart_at = Some(now);
        }
    }

    /// Can take a socket now (the ledger adds its own in-flight bound).
    pub(crate) fn accepting(&self) -> bool {
        self.phase == Phase::Ready && !self.backed_up
    }

    /// Judges a linked worker: `late` says the ledger has a socket sent to it and unanswered
    /// for longer than `adopt_timeout`.
    pub(crate) fn verdict(&self, now: Instant, late: bool, adopt_timeout: Duration, startup: Duration) -> Verdict {
        match self.phase {
            Phase::Down => Verdict::Fine,
            Phase::Starting if now.saturating_duration_since(self.linked_at) > startup => Verdict::NoReady,
            Phase::Draining { until: Some(until) } if now > until => Verdict::Overstayed,
            _ if late && now.saturating_duration_since(self.heard_at) > adopt_timeout => Verdict::Hung,
            _ => Verdict::Fine,
        }
    }

    /// Whether a down slot restarts now; records the restart when it does.
    pub(crate) fn restart(&mut self, now: Instant, intensity: Intensity) -> Restart {
        if !self.spawned || self.gave_up || self.phase != Phase::Down || self.restart_at.is_none_or(|at| at > now) {
            return Restart::No;
        }
        self.restart_at = None;
        while self.restarts.front().is_some_and(|&t| now.saturating_duration_since(t) > intensity.period) {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= intensity.max_restarts as usize {
            self.gave_up = true;
            return Restart::GiveUp;
        }
        self.restarts.push_back(now);
        Restart::Now
    }

    /// A start that failed (the parent's own trouble, such as no descriptors: not the
    /// worker's fault): try again at `at`, and take back the restart [`Slot::restart`] counted.
    pub(crate) fn retry_start(&mut self, at: Instant) {
        self.restart_at = Some(at);
        self.restarts.pop_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn a_slot_that_restarts_too_often_gives_up_and_says_so() {
        let now = Instant::now();
        let intensity = Intensity { max_restarts: 2, period: Duration::from_secs(10) };
        let mut s = Slot::new(true, 0, now);
        for i in 0..2 {
            s.down(true, now);
            assert_eq!(s.restart(now, intensity), Restart::Now, "restart {i}");
            s.linked(i + 1, now);
        }
        s.down(true, now);
        assert_eq!(s.restart(now, intensity), Restart::GiveUp);
        assert!(s.gave_up);
        s.down(true, now);
        assert_eq!(s.restart(now, intensity), Restart::No, "given up for good");
    }

    #[test]
    fn restarts_older_than_the_period_do_not_count() {
        let now = Instant::now();
        let intensity = Intensity { max_restarts: 1, period: Duration::from_secs(1) };
        let mut s = Slot::new(true, 0, now);
        s.down(true, now);
        assert_eq!(s.restart(now, intensity), Restart::Now);
        s.linked(1, now);
        let later = now + Duration::from_secs(2);
        s.down(true, later);
        assert_eq!(s.restart(later, intensity), Restart::Now);
    }

    #[test]
    fn named_slots_and_slots_told_not_to_restart_stay_down() {
        let now = Instant::now();
        let intensity = Intensity { max_restarts: 5, period: Duration::from_secs(1) };
        let mut named = Slot::new(false, 0, now);
        named.down(true, now);
        assert_eq!(named.restart(now, intensity), Restart::No);
        let mut draining = Slot::new(true, 0, now);
        draining.down(false, now);
        assert_eq!(draining.restart(now, intensity), Restart::No);
    }

    #[test]
    fn a_busy_worker_that_still_reports_is_not_hung() {
        let now = Instant::now();
        let mut s = Slot::new(true, 0, now);
        s.linked(1, now);
        s.ready(42);
        let later = now + 2 * T;
        s.heard_at = later - Duration::from_millis(50);
        assert_eq!(s.verdict(later, true, T, T), Verdict::Fine);
        s.heard_at = now;
        assert_eq!(s.verdict(later, true, T, T), Verdict::Hung);
        assert_eq!(s.verdict(later, false, T, T), Verdict::Fine, "nothing unanswered: silence is not a hang");
    }

    #[test]
    fn a_worker_that_never_answers_hello_misses_the_startup_deadline() {
        let now = Instant::now();
        let mut s = Slot::new(true, 0, now);
        s.linked(1, now);
        assert_eq!(s.verdict(now + T, false, T, 2 * T), Verdict::Fine);
        assert_eq!(s.verdict(now + 3 * T, false, T, 2 * T), Verdict::NoReady);
    }

    #[test]
    fn a_worker_draining_by_its_own_word_overstays_its_deadline() {
        let now = Instant::now();
        let mut s = Slot::new(true, 0, now);
        s.linked(1, now);
        s.ready(1);
        s.drain(Some(now + T));
        assert!(!s.accepting());
        assert_eq!(s.verdict(now + T, false, T, T), Verdict::Fine);
        assert_eq!(s.verdict(now + 2 * T, false, T, T), Verdict::Overstayed);
        // A later, shorter deadline wins; a longer one does not extend it.
        s.drain(Some(now + 10 * T));
        assert_eq!(s.verdict(now + 2 * T, false, T, T), Verdict::Overstayed);
    }

    #[test]
    fn starts_that_fail_do_not_use_up_the_restart_intensity() {
        // Regression: each failed spawn (EMFILE in the parent) counted as a restart, so the
        // parent's own shortage gave the slot up for good.
        let now = Instant::now();
        let intensity = Intensity { max_restarts: 2, period: Duration::from_secs(10) };
        let mut s = Slot::new(true, 0, now);
        s.down(true, now);
        for i in 0..10u32 {
            let at = now + Duration::from_millis(200 * u64::from(i));
            assert_eq!(s.restart(at, intensity), Restart::Now, "try {i}");
            s.retry_start(at + Duration::from_millis(200));
        }
        assert!(!s.gave_up);
    }

    #[test]
    fn ready_counts_once_per_incarnation() {
        let now = Instant::now();
        let mut s = Slot::new(true, 0, now);
        s.linked(1, now);
        assert!(s.ready(7));
        assert!(!s.ready(7), "a second READY does not re-send the shared listeners");
        s.down(true, now);
        s.linked(2, now);
        assert!(s.ready(8));
    }
}
