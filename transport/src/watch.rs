//! Watches: readiness of any descriptor, as actor messages.
//!
//! Listeners and connections are the transport's own sources. A [`Watch`] is the general form
//! for everything else that speaks through a descriptor (the handoff layer's SEQPACKET channels,
//! a pipe, a signalfd): the reactor reports readiness to an owner actor as one [`Readiness`]
//! message and then stays quiet until the owner asks again with [`Watch::arm`] — Erlang's
//! "active once", so an owner that is behind never receives a flood of stale wake-ups. The owner
//! does the I/O itself, on its own thread, until the descriptor says `EAGAIN`, then re-arms.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::poller::{Event, Mode};
use baton_runtime::{IntoRecipient, Recipient, TrySendError};
use parking_lot::Mutex;

use crate::reactor::{offer, Reactor, Shared, Source};

/// Identifies a watch within its reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WatchId(pub(crate) u64);

/// Which readiness to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Interest {
    /// Report when the descriptor is readable (or at end of input, or on error).
    pub readable: bool,
    /// Report when the descriptor is writable (or on error).
    pub writable: bool,
}

impl Interest {
    /// Readable only.
    pub const READ: Interest = Interest { readable: true, writable: false };
    /// Writable only.
    pub const WRITE: Interest = Interest { readable: false, writable: true };
    /// Readable and writable.
    pub const BOTH: Interest = Interest { readable: true, writable: true };
}

impl Interest {
    fn event(self, key: usize) -> Event {
        let mut event = Event::none(key);
        event.readable = self.readable;
        event.writable = self.writable;
        event
    }
}

/// The message a watch sends its owner: the descriptor became ready. The watch is disarmed
/// until the owner calls [`Watch::arm`] again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Which watch.
    pub watch: WatchId,
    /// Reading will not block (data, end of input, or an error to collect).
    pub readable: bool,
    /// Writing will not block.
    pub writable: bool,
}

struct WatchState {
    /// False once closed: the descriptor is deregistered and must not be armed again.
    registered: bool,
    /// Armed with no interest: the kernel still reports hang-ups and errors, which must not
    /// reach an owner that asked for nothing.
    parked: bool,
    /// The interest the descriptor is armed with and has not fired for yet: arming again with
    /// the same is skipped (an owner that re-arms after every message would otherwise pay an
    /// `epoll_ctl` each time).
    armed: Option<Interest>,
    /// A readiness the owner's full mailbox handed back, delivered when there is room.
    pending: Option<Readiness>,
    waiting_for_room: bool,
}

struct WatchSource {
    id: WatchId,
    key: usize,
    fd: Arc<dyn AsFd + Send + Sync>,
    owner: Recipient<Readiness>,
    state: Mutex<WatchState>,
}

impl WatchSource {
    fn deliver(&self, reactor: &Arc<Shared>, state: &mut WatchState) {
        if let Some(msg) = state.pending.take() {
            match offer(reactor, self.key, &self.owner, &mut state.waiting_for_room, msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => state.pending = Some(msg),
                Err(TrySendError::Closed(_)) => {
                    log::debug!("watch {:?}: owner gone, deregistering", self.id);
                    self.deregister(reactor, state);
                }
            }
        }
    }

    fn deregister(&self, reactor: &Arc<Shared>, state: &mut WatchState) {
        if state.registered {
            state.registered = false;
            let _ = reactor.poller.delete(self.fd.as_fd());
            reactor.remove(self.key);
        }
    }
}

impl Source for WatchSource {
    fn ready(&self, reactor: &Arc<Shared>, _key: usize, event: Event) {
        let mut state = self.state.lock();
        // Oneshot: the event disarmed the descriptor.
        state.armed = None;
        if !state.registered || state.parked {
            // (The watch stays disarmed until the owner arms it with some interest.)
            return;
        }
        state.pending = Some(Readiness { watch: self.id, readable: event.readable, writable: event.writable });
        self.deliver(reactor, &mut state);
    }

    fn rearm(&self, reactor: &Arc<Shared>, _key: usize) {
        let mut state = self.state.lock();
        state.waiting_for_room = false;
        self.deliver(reactor, &mut state);
    }

    fn close(&self, reactor: &Arc<Shared>, _key: usize) {
        let mut state = self.state.lock();
        self.deregister(reactor, &mut state);
    }
}

/// A descriptor the reactor watches on an owner's behalf. Cheap to clone.
///
/// The watch keeps a reference to the descriptor, so it is never closed while registered;
/// [`Watch::close`] (or stopping the reactor) deregisters it and lets go.
#[derive(Clone)]
pub struct Watch {
    source: Arc<WatchSource>,
    reactor: Arc<Shared>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watch({:?})", self.source.id)
    }
}

impl Watch {
    /// The id carried by this watch's [`Readiness`] messages.
    pub fn id(&self) -> WatchId {
        self.source.id
    }

    /// Asks for one more [`Readiness`] message, when the descriptor is ready for `interest`.
    /// Call it after doing I/O until `EAGAIN`; arming with nothing wanted disarms.
    ///
    /// The change is made at once from the calling thread (`epoll_ctl` is thread-safe), so an
    /// owner that re-arms at the end of its handler pays no reactor round trip.
    pub fn arm(&self, interest: Interest) {
        let mut state = self.source.state.lock();
        if !state.registered || state.armed == Some(interest) {
            return;
        }
        state.parked = interest == Interest::default();
        let key = self.source.key;
        let event = interest.event(key);
        match self.reactor.poller.modify(self.source.fd.as_fd(), event, Mode::Oneshot) {
            Ok(()) => state.armed = Some(interest),
            Err(e) => log::error!("watch {:?}: arm failed: {e}", self.source.id),
        }
    }

    /// Deregisters the descriptor. No [`Readiness`] arrives after this returns, except one
    /// already in the owner's mailbox.
    pub fn close(&self) {
        let mut state = self.source.state.lock();
        state.pending = None;
        self.source.deregister(&self.reactor, &mut state);
    }
}

impl Reactor {
    /// Watches `fd` for `interest` and reports readiness to `owner` (any address or recipient
    /// whose message converts from [`Readiness`], see [`IntoRecipient`]), once per [`Watch::arm`]
    /// (the first report is armed by this call). The descriptor should be non-blocking: the
    /// owner reads and writes it until `EAGAIN`.
    ///
    /// # Errors
    ///
    /// When the descriptor cannot be registered (already registered with this reactor, or not
    /// pollable).
    pub fn watch<F: AsFd + Send + Sync + 'static>(
        &self,
        fd: Arc<F>,
        interest: Interest,
        owner: impl IntoRecipient<Readiness>,
    ) -> io::Result<Watch> {
        let owner = owner.into_recipient();
        let mut made: Option<Arc<WatchSource>> = None;
        let id = WatchId(self.shared.serial());
        self.shared.insert(|key| {
            let source = Arc::new(WatchSource {
                id,
                key,
                fd,
                owner,
                state: Mutex::new(WatchState {
                    registered: true,
                    parked: interest == Interest::default(),
                    armed: Some(interest),
                    pending: None,
                    waiting_for_room: false,
                }),
            });
            // The source holds a reference to the descriptor, so it stays open until
            // `deregister` deletes it from the poller; only then is the reference released.
            self.shared.poller.add(source.fd.as_fd(), interest.event(key), Mode::Oneshot)?;
            made = Some(source.clone());
            Ok(source as Arc<dyn Source>)
        })?;
        Ok(Watch { source: made.expect("set by insert"), reactor: self.shared.clone() })
    }
}
