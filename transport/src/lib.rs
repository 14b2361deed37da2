//! baton-transport: one reactor thread whose listeners and connections speak in actor messages.
//!
//! A [`Reactor`] owns a `polling::Poller` on its own thread. A [`Listener`] accepts in bounded
//! batches and posts every connection to its owner actor as an [`Accepted`] message; when the
//! owner's mailbox is full, the listener stops accepting (the kernel's backlog holds new clients)
//! and resumes when the runtime reports room. Listening sockets can also be adopted from a raw
//! descriptor, with validation.
//!
//! Connections as actor messages (reads, buffered writes, water marks, half-close, detach and
//! adopt) are the next part of this crate and are not here yet.
#![warn(missing_docs)]

mod listener;
mod reactor;

pub use crate::listener::{Accepted, Address, AdoptError, ListenOptions, Listener, ListenerId, Stream};
pub use crate::reactor::Reactor;
