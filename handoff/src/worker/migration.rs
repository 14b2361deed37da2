//! [`Migrator`]: live connections handed back to the parent (RETURN), to be served elsewhere.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use baton_transport::Connection;

use super::reports::Shared;
use crate::record::{self, Item, Kind};

/// Hands live connections back to the parent, which places them on another worker: used to
/// drain one worker without dropping its keep-alive clients.
#[derive(Clone, Debug)]
pub struct Migrator {
    pub(super) shared: Arc<Shared>,
}

/// Why [`Migrator::migrate`] did not hand a connection back.
#[derive(Debug)]
pub enum MigrateError {
    /// The parent is gone; the connection was left as it was.
    ParentGone,
    /// The connection is already closed.
    Closed,
    /// Bytes written are still buffered here (the peer reads slowly): they would be lost.
    /// Try again when the connection reports `LowWater`, or a little later.
    Unflushed,
    /// More bytes were read and not delivered than a prelude carries
    /// ([`record::MAX_PRELUDE`]): the socket is handed back to the caller to adopt again
    /// (`Reactor::adopt_with` with the unread bytes). The worker has counted it closed (the
    /// parent was told), so it no longer shows in this worker's load.
    TooMuchUnread(baton_transport::Detached),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MigrateError::ParentGone => "the parent is gone",
            MigrateError::Closed => "the connection is closed",
            MigrateError::Unflushed => "written bytes are still buffered",
            MigrateError::TooMuchUnread(_) => "more unread bytes than a prelude carries",
        })
    }
}

impl std::error::Error for MigrateError {}

impl Migrator {
    /// Takes `conn` out of this worker, with the bytes read and not yet delivered, and hands
    /// it back to the parent to place on another worker with `tag` (its [`Tag`](crate::Tag)
    /// there) and `key` (the new worker's
    /// application sees the unread bytes first). The connection's owner gets
    /// `Closed(Detached)`, and the parent hears it closed here.
    ///
    /// Call it where the application holds no partial state for the connection. Bytes already
    /// delivered as `Data` are the application's: pause reading first
    /// ([`Connection::pause_reading`]) and migrate in a later turn (send yourself a message),
    /// so every `Data` queued before the pause has been handled.
    ///
    /// # Errors
    ///
    /// See [`MigrateError`].
    pub fn migrate(&self, conn: &Connection, tag: crate::Tag, key: Option<Vec<u8>>) -> Result<(), MigrateError> {
        if self.shared.parent_gone.load(SeqCst) {
            return Err(MigrateError::ParentGone);
        }
        if conn.buffered() > 0 {
            return Err(MigrateError::Unflushed);
        }
        let (Ok(peer), Ok(local)) = (conn.peer_addr(), conn.local_addr()) else { return Err(MigrateError::Closed) };
        // Counted as unanswered from before the detach (whose close hook wakes the link) until
        // it is queued for sending, so a draining link cannot finish in between and lose it.
        self.shared.unanswered.fetch_add(1, SeqCst);
        let result = match conn.detach() {
            Err(_) => Err(MigrateError::Closed),
            Ok(detached) if detached.unread.len() > record::MAX_PRELUDE => Err(MigrateError::TooMuchUnread(detached)),
            Ok(detached) => {
                let item = Item {
                    id: 0,
                    kind: Kind::Connection,
                    tag,
                    peer,
                    local,
                    key,
                    prelude: detached.unread,
                    ext: Vec::new(),
                };
                self.shared.reports.lock().migrations.push((item, detached.stream));
                Ok(())
            }
        };
        self.shared.unanswered.fetch_sub(1, SeqCst);
        self.shared.report(|_| {});
        result
    }
}
