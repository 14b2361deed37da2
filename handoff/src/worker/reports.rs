//! What the worker owes the parent: [`Reports`] gathered between flushes, and the [`Shared`]
//! state the link shares with [`Incoming`](super::Incoming)s and close hooks.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::OnceLock;

use baton_runtime::Addr;
use baton_transport::{Reactor, Stream};
use parking_lot::Mutex;

use super::link::{Link, LinkMsg};
use crate::channel::Channel;
use crate::record::{self, Item, Load, Reason, Record};

#[derive(Default)]
pub(super) struct Reports {
    pub(super) adopted: Vec<u64>,
    pub(super) rejected: Vec<(u64, Reason)>,
    pub(super) closed: Vec<u64>,
    /// Connections the application hands back, with their description.
    pub(super) migrations: Vec<(Item, Stream)>,
}

impl Reports {
    pub(super) fn is_empty(&self) -> bool {
        self.adopted.is_empty() && self.rejected.is_empty() && self.closed.is_empty() && self.migrations.is_empty()
    }

    /// Empties every list (dropping migrations not taken out), keeping room for an ordinary
    /// round but not a burst's.
    pub(super) fn clear(&mut self) {
        self.adopted.clear();
        self.adopted.shrink_to(1024);
        self.rejected.clear();
        self.rejected.shrink_to(1024);
        self.closed.clear();
        self.closed.shrink_to(1024);
        self.migrations.clear();
        self.migrations.shrink_to(64);
    }
}

/// What the link actor shares with [`Incoming`](super::Incoming)s and the close hooks of adopted
/// connections.
pub(super) struct Shared {
    pub(super) reactor: Reactor,
    pub(super) reports: Mutex<Reports>,
    pub(super) open: AtomicU32,
    /// `Incoming`s given to the application and not yet adopted or refused.
    pub(super) unanswered: AtomicU32,
    /// The channel is gone: the parent may have placed unreported sockets elsewhere, so
    /// nothing more is adopted.
    pub(super) parent_gone: AtomicBool,
    /// Handlers that said they are busy ([`Status::busy`](super::Status::busy)).
    pub(super) busy: AtomicU32,
    /// Send LOAD at the next flush, not the next tick (busy changed).
    pub(super) load_now: AtomicBool,
    pub(super) flush_requested: AtomicBool,
    pub(super) link: OnceLock<Addr<Link>>,
    /// The channel, for a LOAD sent from the thread whose handler became busy or free.
    channel: std::sync::Arc<Channel>,
    /// Nothing waits in the link's outbox: a LOAD sent directly overtakes no record.
    pub(super) outbox_empty: AtomicBool,
    /// The `open` and `queued` of the last LOAD the link sent (a direct LOAD repeats them, so it
    /// never counts a connection the parent has not heard of).
    pub(super) sent_open: AtomicU32,
    pub(super) sent_queued: AtomicU32,
    /// The parent's process (a pidfd), when one could be opened: a parent that *died* cannot
    /// have placed anything elsewhere, so what it sent may still be adopted.
    parent: Option<std::os::fd::OwnedFd>,
    /// Decided once, when the channel ended: the parent's process had exited.
    parent_dead: AtomicBool,
}

impl Shared {
    pub(super) fn new(
        reactor: Reactor,
        parent: Option<std::os::fd::OwnedFd>,
        channel: std::sync::Arc<Channel>,
    ) -> Shared {
        Shared {
            channel,
            outbox_empty: AtomicBool::new(true),
            sent_open: AtomicU32::new(0),
            sent_queued: AtomicU32::new(0),
            parent,
            parent_dead: AtomicBool::new(false),
            reactor,
            reports: Mutex::new(Reports::default()),
            open: AtomicU32::new(0),
            unanswered: AtomicU32::new(0),
            parent_gone: AtomicBool::new(false),
            busy: AtomicU32::new(0),
            load_now: AtomicBool::new(false),
            flush_requested: AtomicBool::new(false),
            link: OnceLock::new(),
        }
    }

    /// Whether the application may still adopt a socket the parent sent: yes while the channel
    /// lives; after it ended, only if the parent's process is dead (then nobody can have placed
    /// the socket elsewhere, and refusing it would drop the client). A parent that just died
    /// is seen as such up to 20 ms after its channel closed (the kernel closes a process's
    /// descriptors before it marks it exited): decided once, by [`Shared::decide_parent_fate`].
    pub(super) fn may_adopt(&self) -> bool {
        !self.parent_gone.load(SeqCst) || self.parent_dead.load(SeqCst)
    }

    /// The channel ended: decides, once, whether because the parent's process died (waiting
    /// up to 20 ms for it to be marked exited). Called before `parent_gone` is set, so
    /// [`Shared::may_adopt`] never sees a half-made decision.
    pub(super) fn decide_parent_fate(&self) {
        let Some(pidfd) = self.parent.as_ref() else { return };
        let dead = crate::process::exited(pidfd, std::time::Duration::from_millis(20));
        self.parent_dead.store(dead, SeqCst);
    }

    /// `busy` changed: tells the parent at once. A handler that is about to block the thread
    /// the link runs on (a single-threaded worker's shape) cannot wait for the link, so the
    /// LOAD goes from this thread when nothing is queued before it; otherwise the link sends
    /// it at its next flush.
    pub(super) fn load_changed(&self) {
        if self.outbox_empty.load(SeqCst) && !self.parent_gone.load(SeqCst) {
            let load = Load {
                open: self.sent_open.load(SeqCst),
                queued: self.sent_queued.load(SeqCst),
                busy: self.busy.load(SeqCst),
            };
            let mut buf = Vec::with_capacity(32);
            record::encode(&Record::Load(load), &mut buf);
            if self.channel.send_bytes(&buf, &[]).is_ok() {
                return;
            }
        }
        self.load_now.store(true, SeqCst);
        self.report(|_| {});
    }

    /// Queues a report for the parent and wakes the link to send it (once per batch).
    pub(super) fn report(&self, f: impl FnOnce(&mut Reports)) {
        f(&mut self.reports.lock());
        if !self.flush_requested.swap(true, SeqCst) {
            if let Some(link) = self.link.get() {
                // The link's mailbox is unbounded: a report is never refused for room.
                let _ = link.try_send(LinkMsg::Flush);
            }
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}
