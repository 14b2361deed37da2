//! The worker side: receive sockets from the parent, give them to the application, report back.
//!
//! A worker process runs its own [`Runtime`] and [`Reactor`]. [`Worker::serve`] starts a link
//! actor that watches the channel on that reactor. For every socket in a HANDOFF record the
//! application's actor receives an [`Incoming`]: the socket's addresses, tag and routing key,
//! and [`Incoming::adopt`], which registers it with the worker's reactor as a transport
//! [`Connection`](baton_transport::Connection) whose first `Data` event carries the prelude
//! bytes the parent read. Adopting (or refusing, or dropping the `Incoming`) is reported to the
//! parent, as is every adopted connection's close, and the worker's load.
//!
//! Adoption happens in the owner's own turn (a handler, or the `started` of the actor spawned
//! for the connection), so the connection's events queue behind the turn that stores the
//! [`Connection`](baton_transport::Connection) handle, and an application may adopt into
//! whichever actor it likes (one per connection, or one for all).
//!
//! A worker stops taking sockets when the parent says DRAIN, or when the parent is gone (its
//! channel reads end-of-file): it finishes its open connections up to a deadline and then
//! [`Worker::wait`] returns, for the program to shut down and exit. No worker outlives its
//! parent by more than that deadline.

mod incoming;
mod link;
mod migration;
mod reports;
mod status;

use std::io;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{Mailbox, Recipient, Runtime};
use baton_transport::{Interest, Reactor};

use crate::channel::Channel;

pub(crate) use self::incoming::stream_from;
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
    /// The worker is draining (told by the parent, or orphaned): no more sockets will come.
    /// Close idle connections, finish busy ones (HTTP: answer with `Connection: close`); the
    /// worker exits when none is left open, or at `deadline`.
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
    /// [`WorkerEvent::Incoming`], and the start of a drain as [`WorkerEvent::Drain`].
    ///
    /// # Errors
    ///
    /// When the link actor cannot be spawned or the channel cannot be watched.
    pub fn serve(
        channel: Channel,
        runtime: &Runtime,
        reactor: &Reactor,
        app: Recipient<WorkerEvent>,
        options: WorkerOptions,
    ) -> io::Result<Worker> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let channel = Arc::new(channel);
        let shared = Arc::new(Shared::new(reactor.clone()));
        let link = Link::new(channel.clone(), app, shared.clone(), options, tx);
        let addr = runtime
            .spawn_on(reactor.event_loop(), link, Mailbox::Unbounded)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ = shared.link.set(addr.clone());
        let ready = addr.recipient_map(LinkMsg::Ready, |m| match m {
            LinkMsg::Ready(r) => Some(r),
            _ => None,
        });
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
}
