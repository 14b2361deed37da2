//! Worker processes and their channels, as the parent's actor runs them: starting one (an
//! incarnation: a process, a channel, a number), named workers connecting, losing one (what
//! becomes of the sockets it was sent is the ledger's verdict, what becomes of the slot the
//! slot's), giving a process whose channel closed time to exit before killing it, and
//! restarting within the intensity.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_transport::Interest;

use super::handoff::{later, Handoff, Link, Watched, DRAIN_GRACE, NO_GROUP};
use super::ledger::Lost;
use super::slot::{Phase, Restart, Slot};
use crate::bootstrap::ChannelListener;
use crate::channel::Channel;
use crate::log_limit::limited;
use crate::record::Record;

/// A worker's process.
#[derive(Debug)]
pub(super) enum Process {
    /// Started by the parent: it can be killed and reaped.
    Spawned(Child),
    /// Connected by name; watched through a pidfd when one could be opened.
    Named(Option<OwnedFd>),
}

impl Process {
    /// Known to have exited (and, for a child, reaped).
    pub(super) fn exited(&mut self) -> bool {
        match self {
            Process::Spawned(child) => !matches!(child.try_wait(), Ok(None)),
            Process::Named(Some(pidfd)) => crate::process::exited(pidfd, Duration::ZERO),
            Process::Named(None) => false,
        }
    }

    pub(super) fn spawned(&self) -> bool {
        matches!(self, Process::Spawned(_))
    }
}

/// A process whose channel is gone and that has not been seen to exit.
pub(super) struct Exiting {
    pub(super) slot: usize,
    pub(super) gen: u64,
    pub(super) process: Process,
    /// Killed (spawned) or let go (named) at this instant.
    pub(super) kill_at: Instant,
    pub(super) killed: bool,
}

/// Why a worker's link went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Down {
    /// Its end of the channel closed (it exited, or dropped the channel).
    EndOfFile,
    /// Sending or receiving failed otherwise.
    ChannelError,
    /// It did not answer in time (no READY, or sockets unanswered and silence).
    Deadline,
    /// It was draining and did not exit in time.
    Overstayed,
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Down::EndOfFile => "its channel closed",
            Down::ChannelError => "its channel failed",
            Down::Deadline => "it stopped answering",
            Down::Overstayed => "it did not finish draining in time",
        })
    }
}

impl Handoff {
    pub(super) fn spawn_worker(&mut self, slot: usize) -> io::Result<()> {
        let group = self.slots[slot].group;
        let command =
            self.config.groups.get(group).map(|(_, _, c)| c).ok_or_else(|| io::Error::other("no worker command"))?;
        let (channel, child) = command.spawn(slot)?;
        let pid = child.id();
        self.slots[slot].pid = Some(pid);
        log::info!("handoff: worker {slot} started (pid {pid})");
        match self.link(slot, channel) {
            Ok(()) => {
                self.procs[slot] = Some(Process::Spawned(child));
                Ok(())
            }
            Err(e) => {
                // A worker we cannot talk to is no worker: stop it and try again later.
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                self.slots[slot].retry_start(Instant::now() + Duration::from_millis(200));
                Err(e)
            }
        }
    }

    /// Puts a channel into service for `slot` as a new incarnation: watch it and say hello.
    pub(super) fn link(&mut self, slot: usize, channel: Channel) -> io::Result<()> {
        let channel = Arc::new(channel);
        let watch = self.reactor.watch(channel.clone(), Interest::READ, self.ready_recipient())?;
        self.watch_as(&watch, Watched::Worker(slot));
        let gen = self.next_gen;
        self.next_gen += 1;
        self.links[slot] = Some(Link { channel, watch, control: VecDeque::new(), deferred: false });
        self.slots[slot].linked(gen, Instant::now());
        self.ledger.relink(slot, gen, self.slots[slot].group);
        self.send_record(slot, &Record::Hello { worker: slot as u32 });
        Ok(())
    }

    /// Named workers connect: each takes a free named slot, or a new one.
    pub(super) fn accept_workers(&mut self) {
        let Some((listener, watch)) = self.channel_listener.as_ref() else { return };
        let (listener, watch) = (listener.clone(), watch.clone());
        for channel in self.accept_waiting(&listener, "a worker channel") {
            let pidfd = crate::process::peer_pidfd(channel.as_fd());
            let slot = (0..self.slots.len())
                .find(|&s| !self.slots[s].spawned && self.links[s].is_none())
                .unwrap_or_else(|| {
                    self.slots.push(Slot::new(false, NO_GROUP, Instant::now()));
                    self.links.push(None);
                    self.procs.push(None);
                    self.slots.len() - 1
                });
            match self.link(slot, channel) {
                Ok(()) => {
                    self.procs[slot] = Some(Process::Named(pidfd));
                    log::info!("handoff: worker {slot} connected by name");
                }
                Err(e) => log::error!("handoff: cannot serve a connected worker: {e}"),
            }
        }
        watch.arm(Interest::READ);
    }

    /// Accepts every connection waiting on a named socket; peers that fail the credential
    /// check are refused (logged, rate-limited: anyone who can reach an abstract name can make
    /// that happen); other errors end the round.
    pub(crate) fn accept_waiting(&mut self, listener: &ChannelListener, what: &str) -> Vec<Channel> {
        let mut accepted = Vec::new();
        loop {
            match listener.accept() {
                Ok(channel) => accepted.push(channel),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    metrics::counter!("baton_handoff_peers_refused_total").increment(1);
                    limited!(self.logs.refused_peers, log::Level::Warn, "handoff: refused {what}: {e}");
                }
                Err(e) => {
                    log::error!("handoff: accepting {what} failed: {e}");
                    break;
                }
            }
        }
        accepted
    }

    /// The worker's channel is gone (end of file, error, or cut off). Queued sockets go
    /// elsewhere; sent ones are judged when nobody can touch them any more (see the ledger);
    /// a spawned worker is restarted within the intensity, and its process given time to exit.
    pub(super) fn lose(&mut self, slot: usize, why: Down) {
        let Some(link) = self.links[slot].take() else { return };
        self.unwatch(&link.watch);
        drop(link);
        let now = Instant::now();
        let s = &self.slots[slot];
        let (gen, pid) = (s.gen, s.pid);
        let quiet = why == Down::EndOfFile && (matches!(s.phase, Phase::Draining { .. }) || self.drain.is_some());
        if quiet {
            log::info!("handoff: worker {slot} (pid {}) finished", super::slot::pid_text(pid));
        } else {
            log::warn!("handoff: worker {slot} (pid {}) is down: {why}", super::slot::pid_text(pid));
            metrics::counter!("baton_handoff_worker_down_total").increment(1);
        }
        let mut process = self.procs[slot].take();
        let mut killed = false;
        let exited =
            matches!(why, Down::EndOfFile | Down::ChannelError) && process.as_mut().is_some_and(Process::exited);
        let lost = match (why, process.as_mut()) {
            (Down::Deadline | Down::Overstayed, Some(Process::Spawned(child))) => {
                // Dead for sure before its sockets are judged, so it cannot touch them later.
                let _ = child.kill();
                killed = true;
                Lost::MayRun
            }
            (Down::Deadline | Down::Overstayed, _) => Lost::CutOff,
            _ if exited => Lost::ProcessGone,
            _ => Lost::MayRun,
        };
        if killed || lost == Lost::CutOff {
            self.stats.killed += 1;
            if let Some(d) = self.drain.as_mut() {
                d.report.killed += 1;
            }
        }
        let named = !self.slots[slot].spawned;
        if why == Down::EndOfFile && named {
            if let Some(d) = self.drain.as_mut() {
                d.report.exited += 1;
            }
        }
        let ended = self.ledger.lost(slot, lost, now);
        self.close_ended(ended);
        self.slots[slot].down(self.drain.is_none(), now);
        self.sync(slot);
        match process {
            Some(p) if lost == Lost::ProcessGone && p.spawned() && !killed => self.exited_by_itself(),
            Some(_) if lost == Lost::ProcessGone => {}
            Some(p) => {
                let kill_at = if killed { now } else { self.exit_deadline(now) };
                self.exiting.push(Exiting { slot, gen, process: p, kill_at, killed });
            }
            None => {}
        }
        self.ledger.place_waiting();
        self.schedule_flush();
    }

    pub(super) fn exited_by_itself(&mut self) {
        if let Some(d) = self.drain.as_mut() {
            d.report.exited += 1;
        }
    }

    /// When a process whose channel closed now is killed if it still runs.
    pub(super) fn exit_deadline(&self, now: Instant) -> Instant {
        let own = later(now, self.config.exit_timeout);
        match &self.drain {
            Some(d) => own.min(later(d.deadline.max(now), DRAIN_GRACE)),
            None => own,
        }
    }

    /// Processes whose channel is gone: reaped when they exit (their held sockets judged),
    /// killed when they overstay.
    pub(super) fn watch_exits(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.exiting.len() {
            let e = &mut self.exiting[i];
            if e.process.exited() {
                let e = self.exiting.swap_remove(i);
                log::debug!("handoff: worker {} (incarnation {}) exited", e.slot, e.gen);
                if e.process.spawned() && !e.killed {
                    self.exited_by_itself();
                }
                let ended = self.ledger.judge(e.slot, e.gen);
                self.close_ended(ended);
                continue;
            }
            if now >= e.kill_at {
                match &mut e.process {
                    Process::Spawned(child) if !e.killed => {
                        log::warn!("handoff: worker {} (pid {}) did not exit in time; killing it", e.slot, child.id());
                        let _ = child.kill();
                        e.killed = true;
                        self.stats.killed += 1;
                        if let Some(d) = self.drain.as_mut() {
                            d.report.killed += 1;
                        }
                    }
                    Process::Spawned(_) => {}
                    Process::Named(_) => {
                        // Not ours to kill: stop watching it, and judge what it held.
                        let e = self.exiting.swap_remove(i);
                        let ended = self.ledger.judge(e.slot, e.gen);
                        self.close_ended(ended);
                        continue;
                    }
                }
            }
            i += 1;
        }
        // Held past the hold deadline by a process that still runs: what it has not touched
        // by now it refuses (it has seen its channel end).
        for (slot, gen) in self.ledger.hold_expired(now) {
            // Out of tries: only the parent's copy is closed. Its worker's process may hold
            // one too, and may even be serving it (an ADOPTED lost with its channel before the
            // client said anything), so no shutdown under it; a process that holds it without
            // serving it is killed at its exit deadline if we spawned it, which closes that copy.
            let ended = self.ledger.release_untouched(slot, gen);
            self.close_ended(ended);
        }
    }

    /// Restarts, within the intensity, the spawned slots that are down.
    pub(super) fn supervise(&mut self, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        for slot in 0..self.slots.len() {
            match self.slots[slot].restart(now, self.config.intensity) {
                Restart::No => {}
                Restart::GiveUp => {
                    self.stats.gave_up += 1;
                    metrics::counter!("baton_handoff_worker_gave_up_total").increment(1);
                    log::error!(
                        "handoff: worker {slot} died more than {} times in {:?}; not restarting it",
                        self.config.intensity.max_restarts,
                        self.config.intensity.period
                    );
                }
                Restart::Now => match self.spawn_worker(slot) {
                    Ok(()) => {
                        self.stats.restarts += 1;
                        metrics::counter!("baton_handoff_worker_restarts_total").increment(1);
                    }
                    Err(e) => log::error!("handoff: restarting worker {slot} failed: {e}; retrying"),
                },
            }
        }
    }
}
