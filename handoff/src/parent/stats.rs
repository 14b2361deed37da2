//! What the parent reports about itself: counters, per-worker state, drain outcomes.

use std::collections::VecDeque;
use std::time::Duration;

/// Adoptions the latency percentiles in [`Stats`] are computed over.
pub const LATENCY_WINDOW: usize = 4096;

/// Counters and per-worker state, for tests and dashboards.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Sockets received for placement.
    pub dispatched: u64,
    /// Sockets adopted by a worker.
    pub adopted: u64,
    /// Rejections received.
    pub rejected: u64,
    /// Sockets placed again after a rejection, or after a lost worker is known not to have
    /// touched them.
    pub replaced: u64,
    /// Sockets closed after too many tries.
    pub closed_after_retries: u64,
    /// Sockets a lost worker may have read or written (the kernel's counters say so, or cannot
    /// tell): ended, so their clients see the connection close instead of waiting for an
    /// answer that will not come.
    pub ended_touched: u64,
    /// Sockets sent to a worker that was cut off alive (a named worker presumed hung): shut
    /// down, since it could still serve them.
    pub ended_cut_off: u64,
    /// Sockets closed by the parent's drain (never adopted by its deadline, or arriving after
    /// the workers were told to drain).
    pub ended_drain: u64,
    /// Sockets no record could describe (a key or prelude over the limits), closed.
    pub ended_unencodable: u64,
    /// Sockets routed to a worker group that had no worker able to take them within the
    /// startup deadline, closed.
    pub ended_no_worker: u64,
    /// Sockets handed to a successor in a takeover.
    pub handed_over: u64,
    /// Live connections workers handed back to be placed elsewhere.
    pub migrated: u64,
    /// Descriptors a worker handed back that were not connected stream sockets: closed.
    pub returns_refused: u64,
    /// Sockets accepted and not yet adopted (each holds one of the parent's descriptors).
    pub in_flight: usize,
    /// Sockets waiting for any worker to be able to take them.
    pub waiting: usize,
    /// Connections in their handshake (see [`crate::handshake`]).
    pub handshakes: usize,
    /// Handshakes that ran out of time (closed).
    pub handshake_timeouts: u64,
    /// Handshakes that refused their connection (closed), by the handshake's decision, or for
    /// reading more than allowed, or a client that closed first.
    pub handshake_rejected: u64,
    /// How many sockets the parent may hold at once: the configured bound, lowered to fit the
    /// descriptors the process has left (`RLIMIT_NOFILE`). The listeners pause at it.
    pub budget: usize,
    /// Times the parent found itself short of descriptors (listeners paused and migrations
    /// left waiting at the budget, or a record's descriptors cut short on arrival).
    pub local_exhaustion: u64,
    /// Worker restarts.
    pub restarts: u64,
    /// Worker slots left down for good after restarting too often within the intensity
    /// ([`ParentBuilder::intensity`](crate::ParentBuilder::intensity)); each is also logged as
    /// an error and counted in `baton_handoff_worker_gave_up_total`, and shows `gave_up` in
    /// [`Stats::workers`].
    pub gave_up: u64,
    /// Worker processes killed because they did not exit in time.
    pub killed: u64,
    /// Median time from accept (or dispatch) to the worker's ADOPTED, over the last
    /// [`LATENCY_WINDOW`] adoptions.
    pub latency_p50: Option<Duration>,
    /// 99th percentile of the same.
    pub latency_p99: Option<Duration>,
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
}

/// One worker's view in [`Stats`].
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    /// Slot number.
    pub slot: usize,
    /// Its worker group's name ([`ParentBuilder::spawn_group`](crate::ParentBuilder::spawn_group); `""`
    /// for [`ParentBuilder::spawn`](crate::ParentBuilder::spawn)'s and for named workers).
    pub group: String,
    /// Process id of the current worker; `None` while the slot has none (down, or given up).
    pub pid: Option<u32>,
    /// Ready for handoffs.
    pub ready: bool,
    /// Connections open in the worker.
    pub open: u32,
    /// Work waiting in the worker, as it last reported.
    pub queued: u32,
    /// Handlers busy with heavy work in the worker, as it last reported.
    pub busy: u32,
    /// Handoffs not yet answered.
    pub in_flight: u32,
    /// Sockets this slot adopted, over all its incarnations.
    pub adopted: u64,
    /// Restarted too often within the intensity period: left down for good.
    pub gave_up: bool,
}

/// What [`Parent::drain`](crate::Parent::drain) achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Accepted sockets that were never adopted (closed at the deadline).
    pub unplaced: usize,
    /// Workers that exited by themselves (spawned ones once reaped; named ones when their
    /// channel closed).
    pub exited: usize,
    /// Spawned workers still running at the deadline, killed; named ones cut off.
    pub killed: usize,
}

/// `2 worker(s) exited, 0 killed, 0 connection(s) never placed`.
impl std::fmt::Display for DrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} worker(s) exited, {} killed, {} connection(s) never placed",
            self.exited, self.killed, self.unplaced
        )
    }
}

/// The last [`LATENCY_WINDOW`] accept-to-adopted times.
#[derive(Debug, Default)]
pub(crate) struct Latencies(VecDeque<Duration>);

impl Latencies {
    pub(crate) fn record(&mut self, latency: Duration) {
        if self.0.len() == LATENCY_WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(latency);
    }

    /// The median and the 99th percentile.
    pub(crate) fn percentiles(&self) -> (Option<Duration>, Option<Duration>) {
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied();
        (at(0.5), at(0.99))
    }
}
