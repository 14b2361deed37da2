//! HAProxy's agent check: a balancer in front of several parents asks each how much it can
//! take, and places by the load the parent already measures.
//!
//! HAProxy (`server ... weight 100 agent-check agent-port P agent-inter 1s`) connects to the
//! agent port every interval and reads one line. The `W%` below is a share of the server's
//! configured weight: give it one of 100 or so, since with HAProxy's default of 1 every share
//! under 100 % rounds to 0, which takes the server out of rotation under any load. [`AgentCheck`] answers it from the parent's [`Stats`]:
//!
//! - `up W% ready` while serving, with the weight `W` computed by [`weight`] from what the
//!   workers report: the share of worker slots ready, less the share of those busy with heavy
//!   work, less what their open connections say about how full they are (`ready` lifts a
//!   `drain` or `maint` state an operator or an earlier answer set);
//! - `drain` once [`AgentCheck::drain`] is called: HAProxy sends this instance no new
//!   connection but lets those it has finish. A graceful stop says `drain` first, waits for the
//!   balancer to hear it (a few agent intervals), then drains the parent: no client is sent to
//!   an instance that has stopped accepting;
//! - `down#no worker ready` while no worker is ready (starting, or every worker lost): an
//!   operational state, which the next `up` lifts (`maint` would stay until a `ready`).
//!
//! A parent that has been taken over closes its agent port ([`AgentCheck::close`]): its
//! successor, listening on the same port (`SO_REUSEPORT`), answers for the server from then on.
//!
//! The agent accepts on the reactor's thread and answers from an actor on a thread of its own:
//! asking the parent for its stats is a wait that neither the reactor thread nor a pool thread
//! may make.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use baton_runtime::{Actor, Context, Runtime};
use baton_transport::{Accepted, ListenOptions, Listener, Reactor};

use crate::{Parent, Stats};

/// The weight, in percent (1..=100), an instance advertises: the share of its worker slots
/// that are ready, times the share of those not busy with heavy work, times how much room
/// their open connections leave (`1 − open / (ready × per_worker)`, at least 10 %). Never 0
/// while a worker is ready: `drain` and `maint` say that.
pub fn weight(stats: &Stats, per_worker: u32) -> u32 {
    let slots = stats.workers.len().max(1) as f64;
    let ready: Vec<_> = stats.workers.iter().filter(|w| w.ready).collect();
    if ready.is_empty() {
        return 0;
    }
    let n = ready.len() as f64;
    let busy = ready.iter().filter(|w| w.busy > 0).count() as f64;
    let open: f64 = ready.iter().map(|w| f64::from(w.open) + f64::from(w.in_flight)).sum();
    let room = (1.0 - open / (n * f64::from(per_worker.max(1)))).max(0.1);
    let w = 100.0 * (n / slots) * (1.0 - busy / n).max(0.1) * room;
    (w.round() as u32).clamp(1, 100)
}

/// The agent-check line for `stats` (see the module docs).
pub fn answer(stats: &Stats, per_worker: u32, draining: bool) -> String {
    if draining {
        return "drain\n".to_string();
    }
    match weight(stats, per_worker) {
        0 => "down#no worker ready\n".to_string(),
        w => format!("up {w}% ready\n"),
    }
}

/// A running agent check (see the module docs).
#[derive(Clone, Debug)]
pub struct AgentCheck {
    draining: Arc<AtomicBool>,
    listener: Listener,
}

impl AgentCheck {
    /// Answers HAProxy's agent checks for `parent` on `addr`; `per_worker` is the number of
    /// open connections at which a worker counts as full for the weight.
    ///
    /// # Errors
    ///
    /// Socket, bind and listen errors.
    pub fn serve(
        runtime: &Runtime,
        reactor: &Reactor,
        parent: Parent,
        addr: SocketAddr,
        per_worker: u32,
    ) -> io::Result<AgentCheck> {
        let draining = Arc::new(AtomicBool::new(false));
        // On a thread of its own: it asks the parent for its stats, which a pool thread may not
        // wait for.
        let agent = runtime
            .spawn_dedicated(Agent { parent, per_worker, draining: draining.clone() }, baton_runtime::Mailbox::DEFAULT)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // SO_REUSEPORT: a successor answers on the same port while its predecessor still does.
        let options = ListenOptions { reuse_port: true, ..ListenOptions::default() };
        let listener = reactor.listen_tcp(addr, options, agent.recipient())?;
        Ok(AgentCheck { draining, listener })
    }

    /// Says `drain` from now on.
    pub fn drain(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Stops answering (a taken-over parent: its successor answers on the same port).
    pub fn close(&self) {
        self.listener.close();
    }

    /// Where it listens.
    pub fn local_addr(&self) -> &baton_transport::Address {
        self.listener.local_addr()
    }
}

struct Agent {
    parent: Parent,
    per_worker: u32,
    draining: Arc<AtomicBool>,
}

impl Actor for Agent {
    type Message = Accepted;

    fn handle(&mut self, _ctx: &mut Context<Self>, a: Accepted) {
        let line = match self.parent.stats() {
            Ok(stats) => answer(&stats, self.per_worker, self.draining.load(Relaxed)),
            // The parent does not answer: not a state to send clients to.
            Err(_) => "down\n".to_string(),
        };
        // One short line into a fresh socket's buffer: never blocks.
        use std::os::fd::AsFd;
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        let _ = rustix::net::send(a.stream.as_fd(), line.as_bytes(), flags);
        let _ = rustix::net::shutdown(a.stream.as_fd(), rustix::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkerStats;

    fn stats(workers: &[(bool, u32, u32)]) -> Stats {
        Stats {
            workers: workers
                .iter()
                .enumerate()
                .map(|(slot, &(ready, open, busy))| WorkerStats { slot, ready, open, busy, ..WorkerStats::default() })
                .collect(),
            ..Stats::default()
        }
    }

    #[test]
    fn the_weight_follows_readiness_busyness_and_open_connections() {
        assert_eq!(answer(&stats(&[(true, 0, 0), (true, 0, 0)]), 100, false), "up 100% ready\n");
        assert_eq!(weight(&stats(&[(true, 0, 0), (false, 0, 0)]), 100), 50, "half the slots ready");
        assert_eq!(weight(&stats(&[(true, 0, 1), (true, 0, 0)]), 100), 50, "one of two busy");
        assert_eq!(weight(&stats(&[(true, 50, 0), (true, 50, 0)]), 100), 50, "half full");
        assert_eq!(weight(&stats(&[(true, 500, 1), (true, 500, 1)]), 100), 1, "never 0 while ready");
        // Regression (review): `maint` stayed until a `ready`, so an instance that once had no
        // worker ready was never sent traffic again.
        assert_eq!(answer(&stats(&[(false, 0, 0)]), 100, false), "down#no worker ready\n");
        assert_eq!(answer(&stats(&[(true, 0, 0)]), 100, true), "drain\n");
    }
}
