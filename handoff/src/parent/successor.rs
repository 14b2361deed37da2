//! The old parent's side of a takeover (PROTOCOL.md §12): a successor connects, takes the
//! listening sockets, confirms it serves, and receives what this parent accepted and never
//! placed. The new parent's side is [`crate::takeover`].

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_transport::{Interest, Watch};

use super::handoff::{Handoff, Watched};
use crate::bootstrap::ChannelListener;
use crate::channel::{Channel, RecvError};
use crate::record::{self, Item, Kind, Record};

/// How long a successor may take between connecting and confirming SERVING.
const PATIENCE: Duration = Duration::from_secs(60);

/// The takeover socket and the successor connected to it, if any.
pub(crate) struct Successor {
    pub(crate) listener: Option<(Arc<ChannelListener>, Watch)>,
    peer: Option<(Arc<Channel>, Watch)>,
    /// When the successor connected: one that never confirms is dropped after [`PATIENCE`],
    /// so it cannot hold the only takeover slot.
    since: Instant,
    /// The connected successor received every listening socket (only then may it confirm).
    has_listeners: bool,
    /// Told once a successor has taken over.
    taken_over: crossbeam_channel::Sender<()>,
}

impl Successor {
    pub(crate) fn new(taken_over: crossbeam_channel::Sender<()>) -> Successor {
        Successor { listener: None, peer: None, since: Instant::now(), has_listeners: false, taken_over }
    }
}

impl Handoff {
    /// A successor connects to the takeover socket: one at a time.
    pub(crate) fn accept_successor(&mut self) {
        let Some((listener, watch)) = self.successor.listener.as_ref() else { return };
        let (listener, watch) = (listener.clone(), watch.clone());
        for channel in self.accept_waiting(&listener, "a successor") {
            if self.successor.peer.is_some() {
                log::warn!("handoff: a takeover is already in progress; refusing another");
                continue;
            }
            let channel = Arc::new(channel);
            match self.reactor_watch(channel.clone()) {
                Ok(w) => {
                    log::info!("handoff: a successor connected for takeover");
                    self.watch_as(&w, Watched::Successor);
                    self.successor.peer = Some((channel, w));
                    self.successor.since = Instant::now();
                    self.successor.has_listeners = false;
                }
                Err(e) => log::error!("handoff: cannot watch the successor: {e}"),
            }
        }
        watch.arm(Interest::READ);
    }

    fn reactor_watch(&self, channel: Arc<Channel>) -> std::io::Result<Watch> {
        self.reactor().watch(channel, Interest::READ, self.ready_recipient())
    }

    /// Forgets the successor's control connection (closing our end).
    fn drop_successor(&mut self) {
        if let Some((_, w)) = self.successor.peer.take() {
            self.unwatch(&w);
        }
    }

    /// Drops a successor that has not confirmed in time while this parent still serves.
    pub(crate) fn successor_tick(&mut self, now: Instant) {
        let still_serving = !self.listeners.is_empty() || !self.shared.is_empty();
        if self.successor.peer.is_some() && still_serving && now.duration_since(self.successor.since) > PATIENCE {
            log::warn!("handoff: the successor did not confirm within {PATIENCE:?}; dropping it");
            self.drop_successor();
        }
    }

    /// Records from the successor: TAKE, then SERVING (or nothing, and end of file: rollback).
    pub(crate) fn hear_successor(&mut self) {
        loop {
            let Some((channel, _)) = self.successor.peer.as_ref() else { return };
            let channel = channel.clone();
            match channel.recv(&mut self.recv_buf) {
                Ok((Record::Take, _)) => self.give_listeners(&channel),
                Ok((Record::Serving, _)) if self.successor.has_listeners => self.release(&channel),
                Ok((Record::Serving, _)) => {
                    log::warn!("handoff: SERVING from a successor that has not taken the listeners; ignored");
                }
                Ok((other, _)) => log::warn!("handoff: unexpected {other:?} from the successor"),
                Err(RecvError::WouldBlock) => break,
                Err(e) => {
                    if self.listeners.is_empty() && self.shared.is_empty() {
                        log::info!("handoff: the successor disconnected after the takeover");
                    } else {
                        log::warn!("handoff: the successor went away before serving ({e}); still serving");
                    }
                    self.drop_successor();
                    return;
                }
            }
        }
        if let Some((_, w)) = self.successor.peer.as_ref() {
            w.arm(Interest::READ);
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
                (
                    rustix::io::fcntl_dupfd_cloexec(&l.fd, 0).map_err(std::io::Error::from),
                    l.local.clone(),
                    format!("shared:{}", l.tag),
                )
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
            self.successor.has_listeners = true;
            // Nothing to hand over (an empty HANDOFF is no record): say so with RELEASED.
            log::warn!("handoff: a successor asked for listeners, but this parent has none");
            let _ = channel.send(&Record::Released, &[], &mut self.send_buf);
            return;
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        match channel.send(&Record::Handoff(items), &borrowed, &mut self.send_buf) {
            Ok(()) => {
                self.successor.has_listeners = true;
                log::info!("handoff: gave {} listening socket(s) to the successor", fds.len());
            }
            Err(e) => log::error!("handoff: sending listeners to the successor failed: {e}"),
        }
    }

    /// The successor serves: stop accepting, hand over what was accepted and never sent to a
    /// worker, say RELEASED.
    fn release(&mut self, channel: &Channel) {
        for (l, _) in std::mem::take(&mut self.listeners) {
            // The successor listens on the same socket (and path) now. Waiting for the close
            // puts every connection this listener accepted in our mailbox ahead of the drain
            // our application asks for once it hears it was taken over.
            l.keep_path_on_close();
            l.close_and_wait();
        }
        self.shared.clear();
        // A successor of the successor will bind the control socket again.
        if let Some((_, w)) = self.successor.listener.take() {
            self.unwatch(&w);
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
            if !sent {
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
        log::info!("handoff: taken over; no longer accepting");
        let _ = self.successor.taken_over.try_send(());
    }
}
