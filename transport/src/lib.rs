//! baton-transport: one reactor thread whose listeners and connections speak in actor messages.
//!
//! A [`Reactor`] owns an epoll instance on its own thread. A [`Listener`] accepts in bounded
//! batches and posts every connection to its owner actor as an [`Accepted`] message; when the
//! owner's mailbox is full, the listener stops accepting (the kernel's backlog holds new clients)
//! and resumes when the runtime reports room. Listening sockets can also be adopted from a raw
//! descriptor, with validation.
//!
//! A [`Connection`] binds a connected socket to an owner actor ([`Reactor::adopt`]): bytes read
//! arrive as [`ConnEvent::Data`] (reading pauses while the owner's mailbox is full), writes go
//! straight to the socket from the writer's thread and are buffered only when the kernel does
//! not take them, with high/low-water events for producers; half-close, close-after-flush,
//! abort (RST), and exactly one [`ConnEvent::Closed`]. [`Connection::detach`] takes the socket
//! out with the bytes read but not delivered, for handing to another reactor or process.
//!
//! Owners can live on the pool or on the reactor thread itself: [`Reactor::event_loop`] is a
//! [`baton_runtime::EventLoop`] the reactor drains after every wait, so an actor spawned on it
//! (`rt.spawn_on(reactor.event_loop(), actor, mailbox)`) handles its events on the thread that
//! read them and writes its answer before the reactor waits again: no cross-thread wake-up per
//! request. Such handlers must never block.
//!
//! A socket that its owner adopts in its own handler on the reactor thread is read at once,
//! before it is registered with epoll ([`ConnOptions::read_first`]); the registration is made
//! after the rest of the event loop's turns in that pass, and only if the connection is still
//! open. A client that speaks first has usually sent its request by the time its socket is
//! accepted (or handed over by another process), so a request answered and closed in the
//! owner's first turns never touches `epoll_ctl`.
//!
//! Two TCP options spare a connection's first and last round trips for protocols where the
//! client speaks first (HTTP). [`ListenOptions::defer_accept`] (`TCP_DEFER_ACCEPT`) has the
//! kernel report a connection to `accept` only once its request is in, so the acceptor never
//! wakes for a bare handshake and the first read finds the request. And
//! [`Connection::write_and_close`] sends the last answer with `MSG_MORE`, so that the shutdown
//! after it carries the FIN in the same segment: one segment less to send, deliver and
//! acknowledge per connection.
//!
//! Deadlines (idle and read timeouts, back-offs) live in a heap on the reactor thread; a closed
//! connection's deadline is skipped when it comes and swept out when such entries outnumber the
//! live sources.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod connection;
mod listener;
mod poller;
mod reactor;
mod sockopt;
mod watch;

pub use crate::connection::{CloseHook, CloseReason, ConnEvent, ConnId, ConnOptions, Connection, Detached, WriteError};
pub use crate::listener::{Accepted, Address, AdoptError, ListenOptions, Listener, ListenerId, Stream};
pub use crate::reactor::Reactor;
pub use crate::sockopt::set_defer_accept;
pub use crate::watch::{Interest, Readiness, Watch, WatchId};
