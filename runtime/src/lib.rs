//! baton-runtime: actors on a synchronous thread pool.
//!
//! An *actor* is a value that owns its state and handles one type of message at a time
//! ([`Actor`]). Spawning it ([`Runtime::spawn`]) gives an [`Addr`]: a cheap handle that sends
//! messages into the actor's *mailbox*. Mailboxes are bounded by default, and no send path
//! ignores the bound: [`Addr::send`] waits for room where the calling thread may wait (see
//! below), [`Addr::send_timeout`] waits up to a deadline, [`Addr::try_send`] hands the message
//! back at once. Stop requests, [`Down`] notices and supervisor signals travel on a separate
//! *control lane* that is never full.
//!
//! Many actors share a few threads. An actor becomes runnable when its mailbox goes from empty
//! to non-empty, handles at most a bounded batch per turn, and idle threads park. The protocol
//! is written up in `SCHEDULER.md` beside this crate.
//!
//! A panic in a handler is caught, and the instance's [`Actor::stopped`] runs with
//! [`ExitReason::Panicked`] (on the state the panic left: see its docs). An unsupervised actor
//! then stops and its monitors hear about it; a supervised one is reported to its
//! [`Supervisor`], which may restart it in place (same address, same mailbox) or let it stop
//! for good.
//!
//! Request/reply ([`Addr::ask`]) always has a deadline and refuses to block a pool thread, so it
//! cannot deadlock the pool (see [`AskError`]).
//!
//! Event sources (the transport's listeners and connections, the handoff worker, timers) take
//! any address whose message converts from their event ([`IntoRecipient`]): an actor with an
//! enum message passes its address, after [`from_variants!`] has written the conversions.
//!
//! # Where an actor runs
//!
//! What a handler may do depends on the thread its turns run on. An actor's *placement* is
//! chosen when it is spawned; code that is not an actor at all (`main`, your own threads)
//! calls in from an *application thread*.
//!
//! | placement | spawned with | may block? | may [`ask`](Addr::ask)? | [`send`](Addr::send) to a full mailbox | timers |
//! |---|---|---|---|---|---|
//! | pool thread (the default) | [`Runtime::spawn`], [`Context::spawn`], a [`ChildSpec`] | no: it holds one of a few shared threads; short CPU work only | no: [`AskError::OnPoolThread`]; send a [`ReplyTo`] or your [`Recipient`] and handle the answer as a message | [`SendError::Full`] at once, message handed back; [`Addr::try_send_notify`] calls back when there is room | fire on the timer thread, handled as messages |
//! | dedicated thread | [`Runtime::spawn_dedicated`], [`Context::spawn_dedicated`] | yes: the thread is its own (blocking I/O, a child process, a sleep) | yes, with its deadline | waits for room ([`Addr::send_timeout`]: up to the deadline) | as on the pool |
//! | event loop (e.g. the reactor's thread) | [`Runtime::spawn_on`], [`Context::spawn_on`], [`ChildSpec::on_loop`] | never: it stalls every actor on the loop and the loop's I/O | no: [`AskError::OnPoolThread`] | [`SendError::Full`] at once, as on the pool | as on the pool |
//! | application thread, calling in | not an actor: `main`, threads you start | yours to decide | yes, with its deadline | waits for room | set with [`Runtime::send_after`] and [`Runtime::send_interval`]; as on the pool |
//!
//! On every placement: sending to yourself never waits ([`SendError::Full`] when your own
//! mailbox is full), asking yourself is [`AskError::SelfAsk`], and [`Addr::try_send`] and
//! [`Addr::try_send_notify`] never wait. Timers ([`Context::send_after`],
//! [`Context::send_interval`], [`Runtime::send_after`]) never block whoever sets them: the
//! runtime's timer thread delivers each message with `try_send`, retrying a one-shot every
//! millisecond while the mailbox is full and skipping a periodic tick (counted), so a timer
//! never holds any thread. The message is then handled like any other, on the actor's own
//! placement.
//!
//! A blocking call on the pool or a loop does not fail by itself: it just holds a thread that
//! others need. Move such work to a dedicated-thread actor and answer with a message when it
//! is done (the `prefork` example does this for its slow requests).
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
#![warn(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

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
