//! The descriptor budget: how many sockets the parent may hold at once.
//!
//! Every socket accepted and not yet adopted is a descriptor in the parent's table, and so is
//! every migrated connection it receives and every listener copy a takeover makes. A parent
//! that runs out meets `EMFILE` on `accept`, on `recvmsg` (a worker's RETURN arrives with its
//! descriptors cut short, and those clients are lost: the worker has closed its copies), and on
//! the `socketpair` of a restart. So the parent bounds what it holds by what the process has
//! left — `RLIMIT_NOFILE`'s soft limit, less the descriptors the rest of the process uses, less
//! a reserve for restarts and records — read again every second, since the rest of the process
//! and the limit itself change. At the budget the listeners pause (the kernel's backlog holds
//! new clients) and a RETURN waits in its channel until there is room; nothing spins, and no
//! worker is blamed for the parent's shortage.

use std::time::{Duration, Instant};

/// Descriptors kept free beyond the budget: a listener's accept batch (64 by default: the
/// reactor accepts a batch before the parent, on the same thread, sees them and pauses it), and
/// 32 for what the parent must still be able to do at the budget (start a worker: a socket pair
/// and the spawn's pipes; accept a named worker; receive a record).
pub(crate) const RESERVE: usize = 64 + 32;

/// How often the budget is measured again (`/proc/self/fd` is read, once).
const EVERY: Duration = Duration::from_secs(1);

/// The bound on sockets held, recomputed from the process's descriptor limit.
#[derive(Debug)]
pub(crate) struct Budget {
    /// What the application asked for ([`ParentBuilder::max_in_flight`](crate::ParentBuilder::max_in_flight)).
    configured: usize,
    measured_at: Option<Instant>,
    current: usize,
}

impl Budget {
    pub(crate) fn new(configured: usize) -> Budget {
        Budget { configured: configured.max(1), measured_at: None, current: configured.max(1) }
    }

    /// The bound now, given that the parent holds `held` sockets; measured at most once a
    /// second.
    pub(crate) fn allowance(&mut self, held: usize, now: Instant) -> usize {
        if self.measured_at.is_none_or_due(now) {
            self.measured_at = Some(now);
            self.current = self.compute(held, limit(), open_descriptors());
        }
        self.current
    }

    /// The bound for a soft limit of `limit` descriptors of which `open` are open, `held` of
    /// them by the ledger: what is left after the rest of the process and the reserve, and
    /// never more than half the limit (the kernel also counts descriptors in flight in
    /// `SCM_RIGHTS` messages against it) or than configured. At least 1, so placement never
    /// stops for good.
    pub(crate) fn compute(&self, held: usize, limit: Option<usize>, open: Option<usize>) -> usize {
        let Some(limit) = limit else { return self.configured };
        let others = open.map_or(0, |o| o.saturating_sub(held));
        let room = limit.saturating_sub(others + RESERVE);
        self.configured.min(room).min(limit / 2).max(1)
    }
}

trait Due {
    fn is_none_or_due(&self, now: Instant) -> bool;
}

impl Due for Option<Instant> {
    fn is_none_or_due(&self, now: Instant) -> bool {
        self.is_none_or(|at| now.saturating_duration_since(at) >= EVERY)
    }
}

/// `RLIMIT_NOFILE`'s soft limit; `None` when unlimited.
fn limit() -> Option<usize> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.map(|n| n as usize)
}

/// Descriptors open in this process (`/proc/self/fd`, less the directory's own).
fn open_descriptors() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_what_the_limit_leaves() {
        let b = Budget::new(1024);
        assert_eq!(b.compute(0, None, Some(10)), 1024, "unlimited: as configured");
        assert_eq!(b.compute(0, Some(100_000), Some(10)), 1024, "plenty: as configured");
        assert_eq!(b.compute(0, Some(256), Some(20)), 128, "half the limit at most");
        // 200 open, 150 of them held: the rest of the process uses 50.
        assert_eq!(b.compute(150, Some(300), Some(200)), 150.min(300 - 50 - RESERVE));
        assert_eq!(b.compute(0, Some(64), Some(60)), 1, "never zero");
    }
}
