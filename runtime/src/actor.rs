//! The [`Actor`] trait, the [`Context`] a handler runs in, and why actors stop.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::address::{ActorId, Addr, IntoRecipient};
use crate::cell::Cell;
use crate::mailbox::Mailbox;
use crate::runtime::{Placement, SpawnError, SpawnOptions};
use crate::timer::TimerHandle;

/// A unit of application state that handles one type of message at a time.
///
/// The runtime guarantees that `handle` and the lifecycle hooks of one actor never run
/// concurrently, so an actor needs no locks around its own state.
///
/// # Examples
///
/// ```
/// use baton_runtime::{Actor, Context, Runtime};
///
/// struct Counter(u64);
/// impl Actor for Counter {
///     type Message = u64;
///     fn handle(&mut self, _ctx: &mut Context<Self>, n: u64) {
///         self.0 += n;
///     }
/// }
///
/// let rt = Runtime::new();
/// let addr = rt.spawn(Counter(0));
/// addr.send(2).unwrap();
/// rt.shutdown(std::time::Duration::from_secs(1)).unwrap();
/// ```
pub trait Actor: Send + Sized + 'static {
    /// The one message type this actor handles.
    type Message: Send + 'static;

    /// Handles one message.
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Self::Message);

    /// Runs once before the first message (and again after each restart).
    fn started(&mut self, _ctx: &mut Context<Self>) {}

    /// Runs when the actor has been asked to stop, after its accepted messages were handled.
    fn stopping(&mut self, _ctx: &mut Context<Self>) {}

    /// Runs last, once per instance, with the reason it stopped: after [`Actor::stopping`] on
    /// an orderly stop, and also when a handler or hook of this instance panicked, with
    /// [`ExitReason::Panicked`] (then `stopping` is skipped: the mailbox is not drained).
    ///
    /// After a panic, `self` is the state the panic left behind, possibly halfway through an
    /// update: use `stopped` to release what the instance holds (close files and sockets, tell
    /// peers it is gone), not to trust invariants the interrupted handler was restoring. A
    /// panic inside `stopped` (or `stopping`, which then skips `stopped`) is caught and logged,
    /// and the exit is reported as before. Supervisors and monitors hear about the exit after
    /// `stopped` returns; a supervised actor is then rebuilt by its factory, so every instance
    /// that ends gets its `stopped` call, restarted or not. It does not run when a
    /// supervisor's factory itself panics (there is no instance).
    fn stopped(&mut self, _reason: &ExitReason) {}

    /// Receives the notice that an actor this one monitors has stopped.
    ///
    /// It arrives on the control lane, so it is never refused because the mailbox is full.
    fn down(&mut self, _ctx: &mut Context<Self>, _down: Down) {}
}

/// Why an actor stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// It called [`Context::stop`], or it was stopped through its address.
    Normal,
    /// A handler or hook panicked; the payload's text if it had one.
    Panicked(String),
    /// The runtime shut down.
    Shutdown,
    /// A supervisor gave up: its children restarted more often than its intensity allows.
    Escalated,
}

impl ExitReason {
    /// Whether the stop was a failure (a panic or an escalation).
    pub fn is_abnormal(&self) -> bool {
        matches!(self, ExitReason::Panicked(_) | ExitReason::Escalated)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Panicked(m) => write!(f, "panicked: {m}"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Escalated => f.write_str("escalated: restart intensity exceeded"),
        }
    }
}

/// The notice a monitor receives when the monitored actor stops for good. A supervised actor
/// that is restarted in place has not stopped for good, so its monitors hear nothing; they
/// hear when its supervisor gives up on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    /// The actor that stopped.
    pub id: ActorId,
    /// Why it stopped.
    pub reason: ExitReason,
}

/// What a handler can do besides changing its own state: learn its address, stop, monitor
/// others, and set timers that send to itself.
pub struct Context<A: Actor> {
    pub(crate) cell: Arc<Cell<A>>,
    pub(crate) stop_requested: bool,
}

impl<A: Actor> Context<A> {
    /// This actor's id.
    pub fn id(&self) -> ActorId {
        self.cell.id
    }

    /// An address of this actor.
    pub fn address(&self) -> Addr<A> {
        Addr::from_cell(Arc::clone(&self.cell))
    }

    /// Stops the actor once the current message is handled. Messages already accepted into its
    /// mailbox are still handled first; new ones are handed back to their senders.
    pub fn stop(&mut self) {
        self.stop_requested = true;
    }

    /// Delivers a [`Down`] to this actor (through [`Actor::down`]) when `other` stops.
    /// If `other` has already stopped, the notice comes at once.
    pub fn monitor<B: Actor>(&self, other: &Addr<B>) {
        let me = Arc::clone(&self.cell);
        other.cell.add_monitor(Box::new(move |down| me.signal_down(down)));
    }

    /// Spawns a child actor on the pool. It is one level deeper than this actor, so runtime
    /// shutdown stops it before this one. To restart children on failure, use a supervisor.
    ///
    /// # Errors
    ///
    /// [`SpawnError::ShuttingDown`] once shutdown has begun.
    pub fn spawn<B: Actor>(&self, actor: B, mailbox: Mailbox) -> Result<Addr<B>, SpawnError> {
        let options = SpawnOptions { mailbox, placement: Placement::Pool, depth: self.cell.depth + 1 };
        self.cell.runtime.spawn_cell(actor, None, options)
    }

    /// Spawns a child actor on an [`crate::EventLoop`] (see [`crate::Runtime::spawn_on`]).
    ///
    /// # Errors
    ///
    /// [`SpawnError::ShuttingDown`] once shutdown has begun.
    pub fn spawn_on<B: Actor>(
        &self,
        event_loop: &crate::EventLoop,
        actor: B,
        mailbox: Mailbox,
    ) -> Result<Addr<B>, SpawnError> {
        let options =
            SpawnOptions { mailbox, placement: Placement::Loop(event_loop.clone()), depth: self.cell.depth + 1 };
        self.cell.runtime.spawn_cell(actor, None, options)
    }

    /// Spawns a child actor on a thread of its own (see [`crate::Runtime::spawn_dedicated`]).
    ///
    /// # Errors
    ///
    /// [`SpawnError`] once shutdown has begun, or when no thread can be started.
    pub fn spawn_dedicated<B: Actor>(&self, actor: B, mailbox: Mailbox) -> Result<Addr<B>, SpawnError> {
        let options = SpawnOptions { mailbox, placement: Placement::Dedicated, depth: self.cell.depth + 1 };
        self.cell.runtime.spawn_cell(actor, None, options)
    }

    /// Sends `msg` to this actor after `delay`. See [`crate::Runtime::send_after`].
    pub fn send_after(&self, delay: Duration, msg: A::Message) -> TimerHandle {
        crate::timer::send_after(&self.cell.runtime, self.address().recipient(), delay, msg)
    }

    /// Sends `make()` to this actor every `period`, until the returned handle is cancelled or
    /// the actor stops for good. A tick that finds the mailbox full is skipped (see
    /// [`crate::Runtime::send_interval`]).
    ///
    /// The timer belongs to the address, not to this instance: a supervised actor restarted in
    /// place keeps receiving its ticks, and one that sets its timer in [`Actor::started`]
    /// should keep the handle and cancel it in [`Actor::stopped`] (which runs for every
    /// instance that ends, a panicked one included), or each restart adds a timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use baton_runtime::{Actor, Context, Runtime, TimerHandle};
    ///
    /// enum Msg { Tick }
    /// struct Heartbeat { ticks: u32, timer: Option<TimerHandle> }
    /// impl Actor for Heartbeat {
    ///     type Message = Msg;
    ///     fn started(&mut self, ctx: &mut Context<Self>) {
    ///         self.timer = Some(ctx.send_interval(Duration::from_millis(10), || Msg::Tick));
    ///     }
    ///     fn handle(&mut self, ctx: &mut Context<Self>, Msg::Tick: Msg) {
    ///         self.ticks += 1;
    ///         if self.ticks == 3 {
    ///             ctx.stop();
    ///         }
    ///     }
    ///     fn stopped(&mut self, _reason: &baton_runtime::ExitReason) {
    ///         if let Some(timer) = self.timer.take() {
    ///             timer.cancel();
    ///         }
    ///     }
    /// }
    ///
    /// let rt = Runtime::new();
    /// let beat = rt.spawn(Heartbeat { ticks: 0, timer: None });
    /// while !beat.is_stopped() {
    ///     std::thread::sleep(Duration::from_millis(5));
    /// }
    /// rt.shutdown(Duration::from_secs(1)).unwrap();
    /// ```
    pub fn send_interval(&self, period: Duration, make: impl FnMut() -> A::Message + Send + 'static) -> TimerHandle {
        crate::timer::send_interval(&self.cell.runtime, self.address().recipient(), period, make)
    }

    /// Sends `make()` to `to` (another actor's address or recipient, see
    /// [`crate::IntoRecipient`]) every `period`, until the handle is cancelled or that actor
    /// stops. As [`crate::Runtime::send_interval`], from inside a handler.
    pub fn send_interval_to<M: Send + 'static>(
        &self,
        to: impl IntoRecipient<M>,
        period: Duration,
        make: impl FnMut() -> M + Send + 'static,
    ) -> TimerHandle {
        crate::timer::send_interval(&self.cell.runtime, to.into_recipient(), period, make)
    }
}
