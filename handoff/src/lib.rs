//! baton-handoff: hand connected sockets to worker processes, with status back and nothing lost.
//!
//! The dispatcher pattern: a parent process accepts connections (optionally reading a short
//! handshake first) and hands each socket to a worker process, which from then on owns it
//! completely. The parent learns from each worker how loaded it is and places the next socket
//! accordingly.
//!
//! ```text
//! client ──TCP──▶ parent: Listener ──Accepted──▶ parent's actor ── policy picks a worker
//!                    HANDOFF record + descriptor ──SEQPACKET / SCM_RIGHTS──▶ worker process
//!                    worker: link actor ──Incoming──▶ application actor ── Incoming::adopt
//!                    ADOPTED / REJECTED / CLOSED / LOAD ──▶ parent closes its copy, updates load
//! ```
//!
//! - [`record`]: the wire format (specified byte for byte in `PROTOCOL.md`).
//! - [`Channel`]: one SEQPACKET socket per worker; records with their descriptors.
//! - [`bootstrap`]: how a worker reaches its channel (inherited, socket path, abstract name)
//!   and the peer-credential check.
//! - [`Parent`], the handle on the parent's actor, around a ledger with no I/O: placement, the
//!   parent's copy kept until adoption, a socket placed again after a refusal or a worker's
//!   death only if the kernel says nobody else touched it (ended otherwise, so no client
//!   waits for an answer that will not come), a descriptor budget, worker processes supervised
//!   with an intensity limit and given time to exit, graceful drain, takeover with a
//!   probation. `parent/mod.rs` says where each rule lives.
//! - [`policy`]: least-loaded (default), round-robin, power-of-two-choices, sticky by key, or
//!   your own [`Policy`].
//!   Its address, [`Parent::recipient`], takes [`ToParent`] (a listener's `Accepted`, or a
//!   [`Dispatch`]); every call the parent's actor does not take says why with [`ParentError`].
//! - [`Worker`]: the worker side; the application receives [`Incoming`] sockets, and gets a
//!   [`Status`] and a [`Migrator`] from the [`Worker`] handle (or from an `Incoming`).
//! - [`Parent::share_listener`]: the nginx shape, workers accepting from a listening socket
//!   the parent sends them; [`systemd`]: listening sockets from socket activation.
//!
//! # Examples
//!
//! One binary plays both roles: started normally it is the parent; started by the parent it
//! finds its channel in the environment and serves.
//!
//! ```no_run
//! use baton_handoff::{Parent, Worker, WorkerCommand, WorkerEvent, WorkerOptions};
//! use baton_runtime::{Actor, Context, Runtime};
//! use baton_transport::{ConnEvent, ConnOptions, Connection, ListenOptions, Reactor};
//! use std::collections::HashMap;
//!
//! // Each event source is given Echo's address and wraps its events with these conversions.
//! enum Msg { Worker(WorkerEvent), Conn(ConnEvent) }
//! impl From<WorkerEvent> for Msg { fn from(e: WorkerEvent) -> Msg { Msg::Worker(e) } }
//! impl From<ConnEvent> for Msg { fn from(e: ConnEvent) -> Msg { Msg::Conn(e) } }
//!
//! struct Echo { conns: HashMap<baton_transport::ConnId, Connection> }
//! impl Actor for Echo {
//!     type Message = Msg;
//!     fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
//!         match msg {
//!             Msg::Worker(WorkerEvent::Incoming(inc)) => {
//!                 if let Ok(conn) = inc.adopt(ctx.address(), ConnOptions::default()) {
//!                     self.conns.insert(conn.id(), conn);
//!                 }
//!             }
//!             Msg::Conn(ConnEvent::Data(id, bytes)) => { let _ = self.conns[&id].write(&bytes); }
//!             Msg::Conn(ConnEvent::ReadClosed(id)) => self.conns[&id].close(),
//!             Msg::Conn(ConnEvent::Closed(id, _)) => { self.conns.remove(&id); }
//!             Msg::Conn(_) | Msg::Worker(WorkerEvent::Drain { .. }) => {}
//!         }
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let rt = Runtime::new();
//!     let reactor = Reactor::start()?;
//!     if let Some(channel) = baton_handoff::channel_from_env(Default::default()) {
//!         let app = rt.spawn(Echo { conns: HashMap::new() });
//!         let worker = Worker::serve(channel?, &rt, &reactor, app, WorkerOptions::default())?;
//!         worker.wait();
//!         return Ok(());
//!     }
//!     let parent = Parent::builder().spawn(2, WorkerCommand::current_exe()?).start(&rt, &reactor)?;
//!     parent.listen_tcp("127.0.0.1:8080".parse().unwrap(), ListenOptions::default())?;
//!     std::thread::park();
//!     Ok(())
//! }
//! ```
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod bootstrap;
mod channel;
mod log_limit;
mod parent;
pub mod policy;
mod process;
pub mod record;
pub mod systemd;
pub mod takeover;
mod worker;

pub use crate::bootstrap::{channel_from_env, ChannelListener, Endpoint, PeerCheck};
pub use crate::channel::{BadRecord, Channel, RecvBuf, RecvError};
pub use crate::parent::{handshake, proxy, sni};
pub use crate::parent::{
    Dispatch, DispatchError, DrainReport, Parent, ParentBuilder, ParentError, Stats, ToParent, WorkerStats,
    LATENCY_WINDOW, UNATTACHED_TAG,
};
pub use crate::policy::{Candidate, LeastLoaded, Policy, PowerOfTwo, RoundRobin, Sticky};
pub use crate::process::{WorkerCommand, ENV_SLOT};
pub use crate::record::Tag;
pub use crate::worker::{
    Busy, Incoming, MigrateError, Migrator, Status, Taken, Worker, WorkerEvent, WorkerExit, WorkerOptions,
};
