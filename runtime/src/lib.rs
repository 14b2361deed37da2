//! baton-runtime: actors on a synchronous thread pool.
//!
//! An *actor* is a value that owns its state and handles one type of message at a time
//! ([`Actor`]). Spawning it ([`Runtime::spawn`]) gives an [`Addr`]: a cheap handle that sends
//! messages into the actor's *mailbox*. Mailboxes are bounded by default, and no send path
//! ignores the bound: [`Addr::send`] waits, [`Addr::send_timeout`] waits up to a deadline,
//! [`Addr::try_send`] hands the message back at once. Stop requests, [`Down`] notices and
//! supervisor signals travel on a separate *control lane* that is never full.
//!
//! Many actors share a few threads. An actor becomes runnable when its mailbox goes from empty
//! to non-empty, handles at most a bounded batch per turn, and idle threads park. Actors whose
//! handlers block run on a dedicated thread ([`Runtime::spawn_dedicated`]); actors whose
//! handlers only react to I/O can run on the I/O thread itself, through an [`EventLoop`] that
//! thread drains ([`Runtime::spawn_on`]). The protocol is written up in `SCHEDULER.md` beside
//! this crate.
//!
//! A panic in a handler is caught, and the instance's [`Actor::stopped`] runs with
//! [`ExitReason::Panicked`] (on the state the panic left: see its docs). An unsupervised actor
//! then stops and its monitors hear about it; a supervised one is reported to its [`Supervisor`], which may
//! restart it in place (same address, same mailbox) or let it stop for good.
//!
//! Request/reply ([`Addr::ask`]) always has a deadline and refuses to block a pool thread, so it
//! cannot deadlock the pool (see [`AskError`]).
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use baton_runtime::{Actor, Context, ReplyTo, Runtime};
//!
//! enum Msg { Add(u64), Get(ReplyTo<u64>) }
//! struct Sum(u64);
//! impl Actor for Sum {
//!     type Message = Msg;
//!     fn handle(&mut self, _ctx: &mut Context<Self>, msg: Msg) {
//!         match msg {
//!             Msg::Add(n) => self.0 += n,
//!             Msg::Get(reply) => { let _ = reply.send(self.0); }
//!         }
//!     }
//! }
//!
//! let rt = Runtime::new();
//! let sum = rt.spawn(Sum(0));
//! for n in 1..=10 { sum.send(Msg::Add(n)).unwrap(); }
//! assert_eq!(sum.ask(Msg::Get, Duration::from_secs(1)), Ok(55));
//! rt.shutdown(Duration::from_secs(1)).unwrap();
//! ```
#![warn(missing_docs)]

mod actor;
mod address;
mod ask;
mod cell;
mod event_loop;
mod mailbox;
mod metrics;
mod queue;
mod runtime;
mod scheduler;
mod supervisor;
mod timer;

pub use crate::actor::{Actor, Context, Down, ExitReason};
pub use crate::address::{ActorId, Addr, IntoRecipient, Recipient};
pub use crate::ask::{AskError, ReplyTo};
pub use crate::event_loop::EventLoop;
pub use crate::mailbox::{Mailbox, SendError, SendTimeoutError, TrySendError};
pub use crate::runtime::{Builder, Runtime, ShutdownError, SpawnError};
pub use crate::supervisor::{ChildSpec, Intensity, Restart, Strategy, Supervisor, SupervisorHandle, SupervisorMsg};
pub use crate::timer::TimerHandle;
