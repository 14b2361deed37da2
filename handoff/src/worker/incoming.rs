//! [`Incoming`]: one socket given to the application, and [`Taken`], one it serves itself.

use std::io;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use baton_runtime::IntoRecipient;
use baton_transport::{Address, CloseReason, ConnEvent, ConnOptions, Connection, Stream};

use super::migration::Migrator;
use super::reports::Shared;
use super::status::Status;
use crate::record::Reason;

/// A socket the parent handed over, for the application to adopt.
///
/// Dropping it without [`Incoming::adopt`] refuses it: the parent places it elsewhere.
pub struct Incoming {
    /// The parent's id for this handoff.
    pub id: u64,
    /// Its [`Tag`](crate::Tag): by default the index of the parent's listener that accepted it.
    pub tag: crate::Tag,
    /// The client's address.
    pub peer: Address,
    /// The address the client connected to.
    pub local: Address,
    /// The routing key the parent placed it by, if any.
    pub key: Option<Vec<u8>>,
    pub(super) stream: Option<Stream>,
    pub(super) prelude: Vec<u8>,
    /// Version 2 extensions (the balancer's address and the PROXY TLVs, say): see
    /// [`Incoming::proxied_by`], [`Incoming::extensions`].
    pub(super) ext: Vec<crate::record::Ext>,
    pub(super) refusal: Reason,
    pub(super) shared: Arc<Shared>,
    /// Handed over by the parent (so adoption, refusal and close are reported to it), rather
    /// than accepted here from a listener the parent shared.
    pub(super) reported: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("prelude", &self.prelude.len())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// The connection came through a load balancer that sent the PROXY protocol: its address
    /// (the connection's own peer; [`Incoming::peer`] is the client's, from the header). `None`
    /// when the parent speaks only protocol version 1, or the connection came directly.
    pub fn proxied_by(&self) -> Option<Address> {
        self.extension(crate::record::ext::PROXIED_BY).and_then(|e| e.as_address())
    }

    /// The address the client connected to at the balancer, from a PROXY header.
    pub fn destination(&self) -> Option<Address> {
        self.extension(crate::record::ext::DESTINATION).and_then(|e| e.as_address())
    }

    /// The PROXY v2 header's TLVs, raw, if there were any.
    pub fn proxy_tlvs(&self) -> Option<&[u8]> {
        self.extension(crate::record::ext::PROXY_TLVS).map(|e| e.value.as_slice())
    }

    /// Every extension the parent sent with this socket (protocol version 2).
    pub fn extensions(&self) -> &[crate::record::Ext] {
        &self.ext
    }

    fn extension(&self, kind: u8) -> Option<&crate::record::Ext> {
        self.ext.iter().find(|e| e.kind == kind)
    }

    /// Bytes the parent read before handing the socket over; [`Incoming::adopt`] delivers them
    /// as the first `Data` event.
    pub fn prelude(&self) -> &[u8] {
        &self.prelude
    }

    /// Makes the socket a [`Connection`] on the worker's reactor, owned by `owner` (any
    /// address or recipient whose message converts from `ConnEvent`: usually
    /// `ctx.address()`), and tells the parent it may close its copy. The prelude arrives first, as
    /// `ConnEvent::Data`. Call it from the owner's own turn, a handler or its `started` (see
    /// [`Reactor::adopt`](baton_transport::Reactor::adopt)).
    ///
    /// A handed-over socket's first bytes are nearly always waiting by now: with
    /// [`ConnOptions::read_first`] (the default), no prelude, and `owner` the actor calling
    /// this on the reactor's event loop, the socket is read at once and registered with the
    /// poller only if it is still open after the owner's turns.
    ///
    /// # Errors
    ///
    /// When the socket cannot be registered (the parent is told and places it elsewhere), or
    /// the parent cut this worker off (`NotConnected`: it may have placed the socket elsewhere
    /// already). A parent whose process died placed nothing elsewhere: its sockets are still
    /// adopted, and served while the worker finishes.
    pub fn adopt(mut self, owner: impl IntoRecipient<ConnEvent>, options: ConnOptions) -> io::Result<Connection> {
        if !self.shared.may_adopt() {
            // Dropping `self` closes our copy; the parent's placed it elsewhere or closed it.
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the parent is gone; not adopting"));
        }
        let stream = self.stream.take().expect("present until adopted or dropped");
        let prelude = std::mem::take(&mut self.prelude);
        let id = self.id;
        let shared = self.shared.clone();
        let reported = self.reported;
        // ADOPTED must reach the parent before CLOSED. The connection can close (a peer reset,
        // on the reactor thread) between its registration and our report: then the hook leaves
        // CLOSED to us. Both sides decide under the reports lock, so a flush can never take
        // the CLOSED without the ADOPTED before it.
        // 0: ADOPTED not reported yet; 1: reported; 2: closed before it was reported. (Only for
        // a socket the parent handed over: one accepted here is reported to nobody.)
        let order = reported.then(|| Arc::new(std::sync::atomic::AtomicU8::new(0)));
        let hook_order = order.clone();
        let hook = Box::new(move |_: &CloseReason| {
            shared.open.fetch_sub(1, SeqCst);
            if let Some(hook_order) = hook_order {
                shared.report(|r| {
                    if hook_order.compare_exchange(0, 2, SeqCst, SeqCst).is_err() {
                        r.closed.push(id);
                    }
                });
            }
        });
        self.shared.open.fetch_add(1, SeqCst);
        self.shared.unanswered.fetch_sub(1, SeqCst);
        match self.shared.reactor.adopt_with(stream, prelude, Some(hook), options, owner) {
            Ok(conn) => {
                if let Some(order) = order {
                    // Batched with the others adopted in this round: the parent closes its
                    // copy when it hears, and the connection's own close does not wait for
                    // that (the transport shuts a socket down before closing it).
                    self.shared.report(|r| {
                        r.adopted.push(id);
                        if order.compare_exchange(0, 1, SeqCst, SeqCst).is_err() {
                            r.closed.push(id);
                        }
                    });
                }
                Ok(conn)
            }
            Err(e) => {
                self.shared.open.fetch_sub(1, SeqCst);
                log::warn!("handoff worker: adopting {id} failed: {e}");
                if self.reported {
                    self.shared.report(|r| r.rejected.push((id, Reason::Failed)));
                }
                Err(e)
            }
        }
    }

    /// Takes the socket out of the worker's hands, for an application that serves it
    /// without the reactor (a thread of its own, blocking I/O). The parent is told it was
    /// adopted; the worker counts it open until the returned [`Taken`] is dropped, which also
    /// closes the socket (unless it was moved out of `stream` first).
    ///
    /// # Errors
    ///
    /// `NotConnected` when the parent cut this worker off (it may have placed the socket
    /// elsewhere); not when its process died.
    pub fn take(mut self) -> io::Result<Taken> {
        if !self.shared.may_adopt() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the parent is gone; not taking"));
        }
        let stream = self.stream.take().expect("present until adopted or dropped");
        let prelude = std::mem::take(&mut self.prelude);
        self.shared.open.fetch_add(1, SeqCst);
        self.shared.unanswered.fetch_sub(1, SeqCst);
        let id = self.id;
        if self.reported {
            self.shared.report(|r| r.adopted.push(id));
        }
        Ok(Taken { stream, prelude, closer: Closer { id, shared: self.shared.clone(), reported: self.reported } })
    }

    /// Refuses the socket: the parent places it on another worker.
    pub fn refuse(self) {}

    /// A handle for telling the parent about this worker's state (see [`Status`]).
    pub fn status(&self) -> Status {
        Status { shared: self.shared.clone() }
    }

    /// A handle for handing live connections back to the parent later (see [`Migrator`]).
    pub fn migrator(&self) -> Migrator {
        Migrator { shared: self.shared.clone() }
    }
}

/// A socket the application took with [`Incoming::take`]. Dropping it reports the connection
/// closed to the parent.
#[derive(Debug)]
pub struct Taken {
    /// The connected socket (non-blocking).
    pub stream: Stream,
    /// Bytes the parent read before handing the socket over; they come before anything read
    /// from `stream`.
    pub prelude: Vec<u8>,
    closer: Closer,
}

impl Taken {
    /// The parent's id for this handoff.
    pub fn id(&self) -> u64 {
        self.closer.id
    }
}

#[derive(Debug)]
struct Closer {
    id: u64,
    shared: Arc<Shared>,
    reported: bool,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, SeqCst);
        if self.reported {
            let id = self.id;
            self.shared.report(|r| r.closed.push(id));
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.stream.take().is_some() {
            self.shared.unanswered.fetch_sub(1, SeqCst);
            if self.reported {
                let reason = self.refusal;
                let id = self.id;
                self.shared.report(|r| r.rejected.push((id, reason)));
            }
        }
    }
}
