//! The old parent's side of a takeover (PROTOCOL.md §12): a successor connects, takes the
//! listening sockets, confirms it serves, and receives what this parent accepted and never
//! placed. The new parent's side is [`crate::takeover`].
//!
//! After SERVING the successor is **on probation**: this parent stops accepting (its listeners
//! pause; the kernel queues new connections in the sockets both processes share, and the
//! successor accepts them), but keeps its listening sockets, its workers, and a pidfd of the
//! successor's process. If that process dies before the probation ends — the failure an
//! upgrade most often meets is a new binary that crashes right after it starts — this parent
//! accepts again from the same sockets, so what waits in their queues is served, and offers
//! the takeover again. Once the probation passes it lets go: closes its listening sockets and
//! tells its application, which drains. Shared listeners (the nginx shape) stay with this
//! parent's workers until then, so during the probation both generations' workers accept.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_transport::{Interest, Watch};

use super::handoff::{later, Handoff, Watched};
use crate::bootstrap::{ChannelListener, Endpoint, PeerCheck};
use crate::channel::{Channel, RecvError};
use crate::record::{self, Item, Kind, Record};

/// How long a successor may take between connecting and confirming SERVING.
const PATIENCE: Duration = Duration::from_secs(60);

/// The takeover socket, the successor connected to it, and a successor on probation.
pub(crate) struct Successor {
    pub(crate) listener: Option<(Arc<ChannelListener>, Watch)>,
    /// Where the takeover socket was bound, to bind it again after a rollback.
    offer: Option<(Endpoint, PeerCheck)>,
    peer: Option<Peer>,
    /// After SERVING, until the probation passes or the successor dies.
    trial: Option<Trial>,
    probation: Duration,
    /// Told once a successor has taken over.
    taken_over: crossbeam_channel::Sender<()>,
    /// Told each time a successor died on probation and this parent serves again.
    rolled_back: crossbeam_channel::Sender<()>,
}

/// A connected successor.
struct Peer {
    channel: Arc<Channel>,
    watch: Watch,
    /// Its process, when a pidfd could be opened.
    pidfd: Option<OwnedFd>,
    /// When it connected: one that never confirms is dropped after [`PATIENCE`], so it cannot
    /// hold the only takeover slot.
    since: Instant,
    /// It received every listening socket (only then may it confirm).
    has_listeners: bool,
}

struct Trial {
    until: Instant,
    pidfd: Option<OwnedFd>,
}

impl Successor {
    pub(crate) fn new(
        taken_over: crossbeam_channel::Sender<()>,
        rolled_back: crossbeam_channel::Sender<()>,
        probation: Duration,
    ) -> Successor {
        Successor { listener: None, offer: None, peer: None, trial: None, probation, taken_over, rolled_back }
    }

    /// A successor serves and this parent waits to see it last: its listeners stay paused.
    pub(crate) fn on_probation(&self) -> bool {
        self.trial.is_some()
    }
}

impl Handoff {
    /// Offers the takeover at `endpoint` (again, after a rollback).
    pub(crate) fn offer_takeover(&mut self, listener: ChannelListener, endpoint: Endpoint, check: PeerCheck) {
        let listener = Arc::new(listener);
        match self.reactor_watch(listener.clone()) {
            Ok(watch) => {
                self.watch_as(&watch, Watched::TakeoverListener);
                self.successor.listener = Some((listener, watch));
                self.successor.offer = Some((endpoint, check));
            }
            Err(e) => log::error!("handoff: cannot watch the takeover socket: {e}"),
        }
    }

    /// A successor connects to the takeover socket: one at a time.
    pub(crate) fn accept_successor(&mut self) {
        let Some((listener, watch)) = self.successor.listener.as_ref() else { return };
        let (listener, watch) = (listener.clone(), watch.clone());
        for channel in self.accept_waiting(&listener, "a successor") {
            if self.successor.peer.is_some() || self.successor.trial.is_some() {
                log::warn!("handoff: a takeover is already in progress; refusing another");
                continue;
            }
            let pidfd = crate::process::peer_pidfd(channel.as_fd());
            let channel = Arc::new(channel);
            match self.reactor_watch(channel.clone()) {
                Ok(w) => {
                    log::info!("handoff: a successor connected for takeover");
                    self.watch_as(&w, Watched::Successor);
                    self.successor.peer =
                        Some(Peer { channel, watch: w, pidfd, since: Instant::now(), has_listeners: false });
                }
                Err(e) => log::error!("handoff: cannot watch the successor: {e}"),
            }
        }
        watch.arm(Interest::READ);
    }

    fn reactor_watch<T: AsFd + Send + Sync + 'static>(&self, source: Arc<T>) -> std::io::Result<Watch> {
        self.reactor().watch(source, Interest::READ, self.ready_recipient())
    }

    /// Forgets the successor's control connection (closing our end); returns its pidfd.
    fn drop_successor(&mut self) -> Option<OwnedFd> {
        let peer = self.successor.peer.take()?;
        self.unwatch(&peer.watch);
        peer.pidfd
    }

    /// Drops a successor that has not confirmed in time while this parent still serves; ends a
    /// probation, one way or the other.
    pub(crate) fn successor_tick(&mut self, now: Instant) {
        let waited_too_long = self.successor.peer.as_ref().is_some_and(|p| now.duration_since(p.since) > PATIENCE);
        if waited_too_long && self.successor.trial.is_none() {
            log::warn!("handoff: the successor did not confirm within {PATIENCE:?}; dropping it");
            self.drop_successor();
        }
        let Some(trial) = self.successor.trial.as_ref() else { return };
        if trial.pidfd.as_ref().is_some_and(|p| crate::process::exited(p, Duration::ZERO)) {
            self.roll_back();
        } else if now >= trial.until {
            self.let_go();
        }
    }

    /// Records from the successor: TAKE, then SERVING (or nothing, and end of file: rollback).
    pub(crate) fn hear_successor(&mut self) {
        loop {
            let Some(peer) = self.successor.peer.as_ref() else { return };
            let channel = peer.channel.clone();
            match channel.recv(&mut self.recv_buf) {
                Ok((Record::Take, _)) => self.give_listeners(&channel),
                Ok((Record::Serving, _)) if self.successor.peer.as_ref().is_some_and(|p| p.has_listeners) => {
                    self.release(&channel)
                }
                Ok((Record::Serving, _)) => {
                    log::warn!("handoff: SERVING from a successor that has not taken the listeners; ignored");
                }
                Ok((other, _)) => log::warn!("handoff: unexpected {other:?} from the successor"),
                Err(RecvError::WouldBlock) => break,
                Err(e) => {
                    if self.successor.trial.is_some() {
                        // Its end closed: the tick tells a successor that died (roll back)
                        // from one that only let go of the connection (older builds do).
                        log::debug!("handoff: the successor closed its control connection on probation");
                        if let Some(trial) = self.successor.trial.as_mut() {
                            if trial.pidfd.is_none() {
                                // Without a pidfd there is no telling: take it as serving.
                                trial.until = Instant::now();
                            }
                        }
                    } else {
                        log::warn!("handoff: the successor went away before serving ({e}); still serving");
                    }
                    self.drop_successor();
                    return;
                }
            }
        }
        if let Some(peer) = self.successor.peer.as_ref() {
            peer.watch.arm(Interest::READ);
        }
    }

    fn give_listeners(&mut self, channel: &Channel) {
        let mut items = Vec::new();
        let mut fds = Vec::new();
        let named: Vec<_> = self
            .listeners
            .iter()
            .map(|(l, name)| (l.duplicate(), l.local_addr().clone(), name.clone()))
            .chain(self.shared.iter().map(|l| {
                (rustix::io::fcntl_dupfd_cloexec(&l.fd, 0).map_err(std::io::Error::from), l.local.clone(), l.name())
            }))
            .collect();
        let wanted = named.len();
        for (fd, local, name) in named {
            match fd {
                Ok(fd) => {
                    let id = self.ledger_mut().fresh_id();
                    items.push(Item {
                        id,
                        kind: Kind::Listener,
                        tag: 0,
                        peer: local.clone(),
                        local,
                        key: Some(name.into_bytes()),
                        prelude: Vec::new(),
                        ext: Vec::new(),
                    });
                    fds.push(fd);
                }
                Err(e) => log::error!("handoff: cannot duplicate listener {name} for the successor: {e}"),
            }
        }
        let fit = record::fits(items.iter().map(record::item_len), record::MAX_FDS);
        if items.len() != wanted || fit != items.len() {
            // A partial hand-over would let the successor confirm and us close sockets it never
            // received: refuse the takeover instead (it sees end of file; we keep serving).
            log::error!("handoff: cannot give every listener to the successor in one record; refusing the takeover");
            self.drop_successor();
            return;
        }
        if items.is_empty() {
            self.mark_has_listeners();
            // Nothing to hand over (an empty HANDOFF is no record): say so with RELEASED.
            log::warn!("handoff: a successor asked for listeners, but this parent has none");
            let _ = channel.send(&Record::Released, &[], &mut self.send_buf);
            return;
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        match channel.send(&Record::Handoff(items), &borrowed, &mut self.send_buf) {
            Ok(()) => {
                self.mark_has_listeners();
                log::info!("handoff: gave {} listening socket(s) to the successor", fds.len());
            }
            Err(e) => log::error!("handoff: sending listeners to the successor failed: {e}"),
        }
    }

    fn mark_has_listeners(&mut self) {
        if let Some(peer) = self.successor.peer.as_mut() {
            peer.has_listeners = true;
        }
    }

    /// The successor serves: stop accepting (listeners paused, kept), hand over what was
    /// accepted and never sent to a worker, say RELEASED, and watch the successor live through
    /// its probation.
    fn release(&mut self, channel: &Channel) {
        // A successor of the successor will bind the control socket again.
        if let Some((_, w)) = self.successor.listener.take() {
            self.unwatch(&w);
        }
        let pidfd = self.successor.peer.as_mut().and_then(|p| p.pidfd.take());
        self.successor.trial = Some(Trial { until: later(Instant::now(), self.successor.probation), pidfd });
        for (l, _) in &self.listeners {
            l.pause();
        }
        let batch = self.batch();
        let mut unsent = self.ledger_mut().take_unsent();
        let now = Instant::now();
        while !unsent.is_empty() {
            let items: Vec<Item> = unsent.iter().take(batch).map(|(id, p)| p.socket.item(*id)).collect();
            let n = record::fits(items.iter().map(record::item_len), batch);
            let chunk: Vec<_> = unsent.drain(..n).collect();
            let items: Vec<Item> = items.into_iter().take(n).collect();
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, p)| p.socket.stream.as_fd()).collect();
            let sent = channel.send(&Record::Handoff(items), &fds, &mut self.send_buf).is_ok();
            drop(fds);
            if sent {
                self.count_handed_over(chunk.len() as u64);
            } else {
                // Keep serving them ourselves.
                for (id, p) in chunk {
                    self.ledger_mut().readmit(id, p, now);
                }
            }
            // Sent: the successor has its own copies; ours close here.
        }
        self.schedule_flush();
        if let Err(e) = channel.send(&Record::Released, &[], &mut self.send_buf) {
            log::warn!("handoff: telling the successor we released failed: {e}");
        }
        log::info!("handoff: a successor serves; on probation for {:?}", self.successor.probation);
        if self.successor.probation.is_zero() {
            self.let_go();
        }
    }

    /// The successor lasted its probation: close the listening sockets (their path stays: the
    /// successor listens there) and tell the application.
    fn let_go(&mut self) {
        self.successor.trial = None;
        self.drop_successor();
        for (l, _) in std::mem::take(&mut self.listeners) {
            // Waiting for the close puts every connection this listener accepted in our
            // mailbox ahead of the drain our application asks for once it hears.
            l.keep_path_on_close();
            l.close_and_wait();
        }
        self.stop_steering();
        self.shared.clear();
        log::info!("handoff: taken over; no longer accepting");
        let _ = self.successor.taken_over.try_send(());
    }

    /// The successor died on probation: accept again from the same sockets, and offer the
    /// takeover again.
    fn roll_back(&mut self) {
        self.successor.trial = None;
        self.drop_successor();
        metrics::counter!("baton_takeover_rolled_back_total").increment(1);
        log::warn!("handoff: the successor died on probation; serving again");
        if let Some((endpoint, check)) = self.successor.offer.clone() {
            match ChannelListener::bind(&endpoint, check) {
                Ok(listener) => self.offer_takeover(listener, endpoint, check),
                Err(e) => log::error!("handoff: cannot offer the takeover again: {e}"),
            }
        }
        // (Full: the application has not heard of the previous one yet; one signal says it.)
        let _ = self.successor.rolled_back.try_send(());
    }
}
