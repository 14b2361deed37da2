//! baton: servers in the dispatcher pattern on Linux, as one dependency.
//!
//! A parent process accepts connections and hands each socket to a worker process, which
//! owns it from then on; application code is actors on a synchronous thread pool, with no
//! `async`. This crate gathers the three crates that do it, so a program needs one line in
//! its `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! baton = "0.1"
//! ```
//!
//! | module | crate | what it is | feature |
//! |---|---|---|---|
//! | [`runtime`] | `baton-runtime` | actors, mailboxes, the scheduler, timers, supervision | always |
//! | [`transport`] | `baton-transport` | a reactor thread: listeners, connections, readiness watches | `transport` (default) |
//! | [`handoff`] | `baton-handoff` | the parent and its worker processes, the wire between them | `handoff` (default; needs `transport`) |
//!
//! An application that only wants actors writes
//! `baton = { version = "0.1", default-features = false }`.
//!
//! [`prelude`] holds the names nearly every program uses; everything else is reached through
//! the modules (`baton::handoff::handshake`, `baton::runtime::Supervisor`, ...).
//!
//! # Examples
//!
//! An echo server: one actor owns every connection a listener accepts.
//!
//! ```no_run
//! use baton::prelude::*;
//! use std::collections::HashMap;
//!
//! enum Msg { Accepted(Accepted), Conn(ConnEvent) }
//! baton::from_variants!(Msg::Accepted(Accepted), Msg::Conn(ConnEvent));
//!
//! struct Echo { reactor: Reactor, conns: HashMap<ConnId, Connection> }
//! impl Actor for Echo {
//!     type Message = Msg;
//!     fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
//!         match msg {
//!             Msg::Accepted(a) => {
//!                 if let Ok(conn) = self.reactor.adopt(a.stream, ConnOptions::default(), ctx.address()) {
//!                     self.conns.insert(conn.id(), conn);
//!                 }
//!             }
//!             Msg::Conn(ConnEvent::Data(id, bytes)) => { let _ = self.conns[&id].write(&bytes); }
//!             Msg::Conn(ConnEvent::Closed(id, _)) => { self.conns.remove(&id); }
//!             Msg::Conn(_) => {}
//!         }
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let rt = Runtime::new();
//!     let reactor = Reactor::start()?;
//!     let echo = rt.spawn(Echo { reactor: reactor.clone(), conns: HashMap::new() });
//!     let _listener = reactor.listen_tcp("127.0.0.1:7000".parse().unwrap(), ListenOptions::default(), echo)?;
//!     std::thread::park();
//!     Ok(())
//! }
//! ```
//!
//! The handoff version (a parent and two worker processes from one binary) is in the README
//! and in [`handoff`]'s crate docs.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

pub use baton_runtime as runtime;
/// Writes the `From` impls that let an actor with an enum message pass its address to every
/// event source (see [`runtime::IntoRecipient`]).
pub use baton_runtime::from_variants;

#[cfg(feature = "transport")]
pub use baton_transport as transport;

#[cfg(feature = "handoff")]
pub use baton_handoff as handoff;

/// The names nearly every program uses: `use baton::prelude::*;`.
pub mod prelude {
    pub use baton_runtime::{Actor, Addr, Context, IntoRecipient, Mailbox, Recipient, Runtime, SendError};

    #[cfg(feature = "transport")]
    pub use baton_transport::{Accepted, ConnEvent, ConnId, ConnOptions, Connection, ListenOptions, Listener, Reactor};

    #[cfg(feature = "handoff")]
    pub use baton_handoff::{
        channel_from_env, Dispatch, Incoming, Parent, ParentError, Worker, WorkerCommand, WorkerEvent, WorkerOptions,
    };
}
