//! The worker side: receive sockets from the parent, give them to the application, report back.
//!
//! A worker process runs its own [`Runtime`] and [`Reactor`]. [`Worker::serve`] starts the
//! **link**, an actor on that reactor's event loop that owns the worker's end of the channel.
//! Everything the worker says to the parent goes through it; everything the application does
//! with a socket reaches it as a report.
//!
//! # The life of a socket in the worker
//!
//! 1. **Arrival** (`link.rs`). The link reads a HANDOFF record and takes its items one by one,
//!    each with its descriptor. A draining or orphaned worker refuses the item at once
//!    (REJECTED, Draining). A listener item is registered with the reactor and accepted from
//!    (ADOPTED, or REJECTED Malformed if it cannot be); what it accepts follows the same path
//!    from step 2 on, but is never reported by id. A connection's family is taken from its
//!    `local` address, or asked of the descriptor when that names none; one that is not a
//!    socket of a family the worker serves is closed (REJECTED, Malformed).
//! 2. **Offer** (`incoming.rs`). Every other item becomes an [`Incoming`]: addresses, tag,
//!    routing key, the prelude the parent read, and the socket. The link sends it to the
//!    application as [`WorkerEvent::Incoming`]. While the application's mailbox is full the
//!    link *holds* it (and everything after it, in order) and stops reading the channel, so the
//!    backlog stays with the parent, which places new sockets elsewhere.
//! 3. **Answer.** The application decides in its own turn. [`Incoming::adopt`] makes the socket
//!    a [`Connection`](baton_transport::Connection) on the worker's reactor whose first `Data`
//!    event is the prelude; [`Incoming::take`] hands over the raw socket as a [`Taken`]; both
//!    are reported ADOPTED. [`Incoming::refuse`], or dropping it, is reported REJECTED
//!    (Refused), and the parent places the socket elsewhere. Adoption happens in the owner's
//!    own turn (a handler, or the `started` of the actor spawned for the connection), so the
//!    connection's events queue behind the turn that stores the handle, and an application may
//!    adopt into whichever actor it likes (one per connection, or one for all).
//! 4. **Reports** (`reports.rs`). Answers, closes and migrations are filed in one [`Reports`]
//!    list shared by the link, the `Incoming`s and the close hooks of adopted connections, and
//!    the link is woken once per batch to send them: ADOPTED, REJECTED, CLOSED records of up to
//!    4096 ids. The load (LOAD) follows them on every 50 ms tick, so it never counts a connection
//!    the parent has not heard of; it is also the worker's heartbeat. [`Status::busy`]
//!    (`status.rs`) makes it go out at once. What a full channel refuses waits in the link's
//!    outbox (`outbox.rs`) and is sent, in order, when the channel is writable. The outbox
//!    holds one READY however many HELLOs ask, only the newest LOAD, and ids merged into
//!    records of up to 4096, and it is bounded: a parent that leaves more unread than that is
//!    not reading, and is cut off as if it were gone (below).
//! 5. **Close.** When an adopted connection closes (or a [`Taken`] is dropped), its close hook
//!    reports CLOSED with its id, never before its ADOPTED. Or the application hands it back
//!    alive with a [`Migrator`] (`migration.rs`): it is detached with its unread bytes and sent
//!    to the parent in a RETURN record, to be placed on another worker; here it counts as
//!    closed.
//!
//! # The end
//!
//! A worker stops taking sockets when the parent says DRAIN: it finishes its open connections
//! up to the deadline DRAIN gives, and then [`Worker::wait`] returns, for the program to shut
//! down and exit. It is **orphaned** when the parent is gone: its channel reads end of file or
//! fails, or the parent has left the outbox full (a parent that reads nothing is cut off, one
//! log line says so). An orphaned worker stops reading and sending, shuts the channel down (a
//! parent still there sees end of file), and finishes its open connections up to the orphan
//! deadline: no worker outlives its parent by more than that. The application can no longer
//! adopt or take sockets it was given before (`NotConnected`; they are closed: the parent may
//! have placed them elsewhere). STOP ends the worker at once.
//!
//! [`Reports`]: self::reports::Reports

mod incoming;
mod link;
mod migration;
mod outbox;
mod reports;
mod status;

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{IntoRecipient, Mailbox, Runtime};
use baton_transport::{Interest, Reactor};

use crate::channel::Channel;

pub use self::incoming::{Incoming, Taken};
pub use self::migration::{MigrateError, Migrator};
pub use self::status::{Busy, Status};

use self::link::{Link, LinkMsg};
use self::reports::Shared;

/// What the worker tells the application actor.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A socket from the parent: adopt it, take it, or drop it to refuse it.
    Incoming(Incoming),
    /// The worker is draining (told by the parent, or orphaned): the parent sends no more
    /// sockets, and listening sockets it shared are closed, but a connection one of them
    /// accepted just before may still follow this event (it is served, not dropped: treat it
    /// as draining from its start). Close idle connections, finish busy ones (HTTP: answer
    /// with `Connection: close`); the worker exits when none is left open, or at `deadline`.
    Drain {
        /// When the worker stops waiting for open connections.
        deadline: Instant,
    },
}

/// Why [`Worker::wait`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Told to drain, and every connection finished.
    Drained,
    /// The drain deadline passed with connections still open.
    DeadlineExpired {
        /// Connections still open.
        open: u32,
    },
    /// Told to stop.
    Stopped,
    /// The parent is gone (its end of the channel closed); open connections finished or the
    /// deadline passed.
    ParentGone,
}

/// Settings for [`Worker::serve`].
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// How long open connections may run on once the parent is gone. Default 30 s.
    pub orphan_deadline: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { orphan_deadline: Duration::from_secs(30) }
    }
}

/// A running worker link. [`Worker::wait`] blocks until the worker should exit.
#[derive(Debug)]
pub struct Worker {
    exit: crossbeam_channel::Receiver<WorkerExit>,
    shared: Arc<Shared>,
}

impl Worker {
    /// Serves `channel`: every socket the parent sends reaches `app` as
    /// [`WorkerEvent::Incoming`], and the start of a drain as [`WorkerEvent::Drain`]. `app` is
    /// any address or recipient whose message converts from `WorkerEvent`
    /// ([`IntoRecipient`]), so an actor with an enum message passes its address.
    ///
    /// # Errors
    ///
    /// When the link actor cannot be spawned or the channel cannot be watched.
    pub fn serve(
        channel: Channel,
        runtime: &Runtime,
        reactor: &Reactor,
        app: impl IntoRecipient<WorkerEvent>,
        options: WorkerOptions,
    ) -> io::Result<Worker> {
        let app = app.into_recipient();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let channel = Arc::new(channel);
        // The process at the other end (for a socket pair: the one that created it, our parent).
        let parent = crate::process::peer_pidfd(channel.as_fd());
        let shared = Arc::new(Shared::new(reactor.clone(), parent, channel.clone()));
        let link = Link::new(channel.clone(), app, shared.clone(), options, tx);
        let addr = runtime
            .spawn_on(reactor.event_loop(), link, Mailbox::Unbounded)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ = shared.link.set(addr.clone());
        let ready = addr.recipient_map(LinkMsg::Ready);
        let watch = reactor.watch(channel, Interest::READ, ready)?;
        if addr.send(LinkMsg::Watch(watch)).is_err() {
            return Err(io::Error::other("worker link stopped at once"));
        }
        Ok(Worker { exit: rx, shared })
    }

    /// Blocks until the worker should exit (drained, stopped, or orphaned), and says why.
    pub fn wait(&self) -> WorkerExit {
        self.exit.recv().unwrap_or(WorkerExit::Stopped)
    }

    /// [`Worker::wait`] with a limit; `None` when it passed.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<WorkerExit> {
        self.exit.recv_timeout(timeout).ok()
    }

    /// Connections adopted and not yet closed.
    pub fn open(&self) -> u32 {
        self.shared.open.load(SeqCst)
    }

    /// A handle for telling the parent this worker is busy (see [`Status`]); the same as
    /// [`Incoming::status`], to be had before any socket arrives (hand it to the application
    /// actor at start).
    pub fn status(&self) -> Status {
        Status { shared: self.shared.clone() }
    }

    /// A handle for handing live connections back to the parent (see [`Migrator`]); the same
    /// as [`Incoming::migrator`]. Give it to the application actor at start, so it has one at
    /// [`WorkerEvent::Drain`], when no [`Incoming`] is at hand.
    pub fn migrator(&self) -> Migrator {
        Migrator { shared: self.shared.clone() }
    }
}
