//! Addresses: [`Addr`] for a known actor type, [`Recipient`] for anything that takes `M`.
//!
//! Every send path respects the mailbox bound: [`Addr::send`] waits for room,
//! [`Addr::send_timeout`] waits up to a deadline, [`Addr::try_send`] never waits. Each hands the
//! message back when it cannot be delivered.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actor::Actor;
use crate::ask::{AskError, ReplyTo};
use crate::cell::Cell;
use crate::mailbox::{SendError, SendTimeoutError, TrySendError};

/// A process-unique actor id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorId(pub(crate) u64);

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actor#{}", self.0)
    }
}

/// The address of an actor of type `A`. Cheap to clone (one reference count).
pub struct Addr<A: Actor> {
    pub(crate) cell: Arc<Cell<A>>,
}

impl<A: Actor> Clone for Addr<A> {
    fn clone(&self) -> Self {
        Addr { cell: self.cell.clone() }
    }
}

impl<A: Actor> fmt::Debug for Addr<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Addr({}, {})", self.cell.id, self.cell.type_name)
    }
}

impl<A: Actor> Addr<A> {
    pub(crate) fn from_cell(cell: Arc<Cell<A>>) -> Self {
        Addr { cell }
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.cell.id
    }

    /// Sends `msg`, waiting for room in a full bounded mailbox if the calling thread may wait.
    ///
    /// What a full mailbox does depends on the thread that calls (see "Where an actor runs" in
    /// the crate docs):
    ///
    /// - an application thread (any thread not the runtime's): waits until there is room;
    /// - a dedicated-thread actor ([`crate::Runtime::spawn_dedicated`]): waits, as above;
    /// - a pool-thread actor: does not wait, and returns [`SendError::Full`] at once, because a
    ///   pool thread that waited could be the very thread the receiver needs to make room;
    /// - an event-loop actor (or any code on the thread that drives an [`crate::EventLoop`]):
    ///   does not wait, as on the pool: the loop's other actors and its I/O would stall;
    /// - an actor sending to itself, on any thread: [`SendError::Full`], since it can only make
    ///   room once the current handler returns.
    ///
    /// Where waiting is refused, [`Addr::try_send_notify`] is the way to resume on time.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] when the actor has stopped or is stopping; [`SendError::Full`]
    /// as above. Either way the message is handed back.
    pub fn send(&self, msg: A::Message) -> Result<(), SendError<A::Message>> {
        self.cell.send(msg, None).map_err(SendError::without_deadline)
    }

    /// Sends `msg`, waiting at most `timeout` for room in a full bounded mailbox if the
    /// calling thread may wait: application threads and dedicated-thread actors wait; pool
    /// threads, event loops and an actor sending to itself never wait, however long `timeout`
    /// is, and get [`SendTimeoutError::Full`] at once (see [`Addr::send`] for why).
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] (waited, still full), [`SendTimeoutError::Full`] (not
    /// allowed to wait) or [`SendTimeoutError::Closed`], with the message.
    pub fn send_timeout(&self, msg: A::Message, timeout: Duration) -> Result<(), SendTimeoutError<A::Message>> {
        self.cell.send(msg, Some(Instant::now() + timeout))
    }

    /// Sends `msg` if there is room now. Never waits, on any thread; the same on all of them.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] or [`TrySendError::Closed`], with the message.
    pub fn try_send(&self, msg: A::Message) -> Result<(), TrySendError<A::Message>> {
        self.cell.try_send(msg)
    }

    /// Sends `msg` if there is room now; when the mailbox is full, keeps `notify` and calls it
    /// once room appears (after the actor's next turn) or the actor closes. This is how a
    /// producer such as a socket reader pauses without polling and resumes on time.
    ///
    /// Never waits, on any thread, so it is the way for pool-thread and event-loop actors to
    /// wait for room without holding their thread. `notify` runs on whichever thread makes
    /// room: keep it short (set a flag, wake a poller, send to an unbounded or idle actor).
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] (with `notify` registered) or [`TrySendError::Closed`], with the
    /// message.
    pub fn try_send_notify(
        &self,
        msg: A::Message,
        notify: impl FnOnce() + Send + 'static,
    ) -> Result<(), TrySendError<A::Message>> {
        let mut notify = Some(notify);
        self.cell.try_send_notify(msg, &mut || Box::new(notify.take().expect("asked for once")))
    }

    /// Sends a request built by `make` and waits up to `timeout` for the reply.
    ///
    /// # Errors
    ///
    /// See [`AskError`]: asking yourself, asking from a pool thread, a full or closed mailbox,
    /// a dropped reply, or the deadline.
    pub fn ask<R: Send + 'static>(
        &self,
        make: impl FnOnce(ReplyTo<R>) -> A::Message,
        timeout: Duration,
    ) -> Result<R, AskError> {
        crate::ask::ask(self.cell.id, timeout, make, |m, t| self.send_timeout(m, t))
    }

    /// Asks the actor to stop: accepted messages are handled, then it stops with
    /// [`crate::ExitReason::Normal`]. Travels on the control lane, so it is never refused.
    pub fn stop(&self) {
        self.cell.signal_stop(crate::ExitReason::Normal);
    }

    /// Whether the actor has stopped for good.
    pub fn is_stopped(&self) -> bool {
        self.cell.is_terminated()
    }

    /// Messages waiting in the mailbox now.
    pub fn mailbox_len(&self) -> usize {
        self.cell.mailbox.len()
    }

    /// An address that hides the actor type.
    pub fn recipient(&self) -> Recipient<A::Message> {
        Recipient { inner: Arc::new(self.clone()) }
    }

    /// A recipient of another message type `M`, for an actor whose message is an enum with a
    /// variant for `M` (for example connection events alongside the actor's own requests).
    /// `wrap` builds the variant; `unwrap` takes it apart again so a message the mailbox
    /// refuses can be handed back to the sender as an `M`. `unwrap` must invert `wrap` (it only
    /// ever sees what `wrap` made); if it returns `None`, the refused message is dropped with a
    /// logged error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use baton_runtime::{Actor, Context, Runtime};
    /// enum Msg { Line(String), Tick }
    /// struct Logger;
    /// impl Actor for Logger {
    ///     type Message = Msg;
    ///     fn handle(&mut self, _ctx: &mut Context<Self>, _msg: Msg) {}
    /// }
    /// let rt = Runtime::new();
    /// let lines = rt.spawn(Logger).recipient_map(Msg::Line, |m| match m {
    ///     Msg::Line(s) => Some(s),
    ///     _ => None,
    /// });
    /// lines.send("hello".to_string()).unwrap();
    /// # rt.shutdown(std::time::Duration::from_secs(1)).unwrap();
    /// ```
    pub fn recipient_map<M: Send + 'static>(
        &self,
        wrap: fn(M) -> A::Message,
        unwrap: fn(A::Message) -> Option<M>,
    ) -> Recipient<M> {
        Recipient { inner: Arc::new(Mapped { addr: self.clone(), wrap, unwrap }) }
    }
}

/// A recipient of `M` that wraps each message into the actor's own message type.
struct Mapped<A: Actor, M> {
    addr: Addr<A>,
    wrap: fn(M) -> A::Message,
    unwrap: fn(A::Message) -> Option<M>,
}

impl<A: Actor, M: Send + 'static> Mapped<A, M> {
    /// Turns a message the mailbox handed back into the caller's type again.
    fn back(&self, msg: A::Message) -> Option<M> {
        match (self.unwrap)(msg) {
            Some(m) => Some(m),
            None => {
                log::error!("recipient_map for {}: unwrap did not invert wrap; message dropped", self.addr.cell.id);
                None
            }
        }
    }

    fn back_try(&self, e: TrySendError<A::Message>) -> Result<(), TrySendError<M>> {
        match e {
            TrySendError::Full(m) => self.back(m).map_or(Ok(()), |m| Err(TrySendError::Full(m))),
            TrySendError::Closed(m) => self.back(m).map_or(Ok(()), |m| Err(TrySendError::Closed(m))),
        }
    }
}

impl<A: Actor, M: Send + 'static> Deliver<M> for Mapped<A, M> {
    fn id(&self) -> ActorId {
        self.addr.cell.id
    }
    fn send(&self, msg: M, deadline: Option<Instant>) -> Result<(), SendTimeoutError<M>> {
        match self.addr.cell.send((self.wrap)(msg), deadline) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(m)) => self.back(m).map_or(Ok(()), |m| Err(SendTimeoutError::Timeout(m))),
            Err(SendTimeoutError::Closed(m)) => self.back(m).map_or(Ok(()), |m| Err(SendTimeoutError::Closed(m))),
            Err(SendTimeoutError::Full(m)) => self.back(m).map_or(Ok(()), |m| Err(SendTimeoutError::Full(m))),
        }
    }
    fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.addr.cell.try_send((self.wrap)(msg)).or_else(|e| self.back_try(e))
    }
    fn try_send_notify(&self, msg: M, notify: MakeRoomWaiter<'_>) -> Result<(), TrySendError<M>> {
        self.addr.cell.try_send_notify((self.wrap)(msg), notify).or_else(|e| self.back_try(e))
    }
    fn mailbox_len(&self) -> usize {
        self.addr.mailbox_len()
    }
}

/// Boxes a room-waiter callback only when the mailbox is full: a send that finds room, the
/// common case, allocates nothing for it.
pub(crate) type MakeRoomWaiter<'a> = &'a mut dyn FnMut() -> Box<dyn FnOnce() + Send>;

pub(crate) trait Deliver<M>: Send + Sync {
    fn id(&self) -> ActorId;
    fn send(&self, msg: M, deadline: Option<Instant>) -> Result<(), SendTimeoutError<M>>;
    fn try_send(&self, msg: M) -> Result<(), TrySendError<M>>;
    fn try_send_notify(&self, msg: M, notify: MakeRoomWaiter<'_>) -> Result<(), TrySendError<M>>;
    fn mailbox_len(&self) -> usize;
}

impl<A: Actor> Deliver<A::Message> for Addr<A> {
    fn id(&self) -> ActorId {
        self.cell.id
    }
    fn send(&self, msg: A::Message, deadline: Option<Instant>) -> Result<(), SendTimeoutError<A::Message>> {
        self.cell.send(msg, deadline)
    }
    fn try_send(&self, msg: A::Message) -> Result<(), TrySendError<A::Message>> {
        self.cell.try_send(msg)
    }
    fn try_send_notify(&self, msg: A::Message, notify: MakeRoomWaiter<'_>) -> Result<(), TrySendError<A::Message>> {
        self.cell.try_send_notify(msg, notify)
    }
    fn mailbox_len(&self) -> usize {
        Addr::mailbox_len(self)
    }
}

/// An address of any actor whose message type is `M`. Cheap to clone.
pub struct Recipient<M: Send + 'static> {
    inner: Arc<dyn Deliver<M>>,
}

impl<M: Send + 'static> Clone for Recipient<M> {
    fn clone(&self) -> Self {
        Recipient { inner: self.inner.clone() }
    }
}

impl<M: Send + 'static> fmt::Debug for Recipient<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.inner.id())
    }
}

impl<M: Send + 'static> Recipient<M> {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.inner.id()
    }

    /// Whether this is the address of the actor whose handler is running on this thread right
    /// now: a message sent to it then is handled after the current one (in the same turn
    /// unless the turn reaches its batch limit first).
    pub fn is_current(&self) -> bool {
        crate::ask::current_actor() == Some(self.inner.id())
    }

    /// As [`Addr::send`]: waits for room on application threads and dedicated-thread actors;
    /// on pool threads, event loops and the receiving actor itself, a full mailbox is
    /// [`SendError::Full`] at once.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] or [`SendError::Full`], with the message.
    pub fn send(&self, msg: M) -> Result<(), SendError<M>> {
        self.inner.send(msg, None).map_err(SendError::without_deadline)
    }

    /// As [`Addr::send_timeout`]: waits up to `timeout` only where [`Recipient::send`] would
    /// wait at all.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError`] with the message.
    pub fn send_timeout(&self, msg: M, timeout: Duration) -> Result<(), SendTimeoutError<M>> {
        self.inner.send(msg, Some(Instant::now() + timeout))
    }

    /// As [`Addr::try_send`]: never waits, on any thread.
    ///
    /// # Errors
    ///
    /// [`TrySendError`] with the message.
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.inner.try_send(msg)
    }

    /// As [`Addr::try_send_notify`]: never waits, on any thread.
    ///
    /// # Errors
    ///
    /// [`TrySendError`] with the message.
    pub fn try_send_notify(&self, msg: M, notify: impl FnOnce() + Send + 'static) -> Result<(), TrySendError<M>> {
        let mut notify = Some(notify);
        self.inner.try_send_notify(msg, &mut || Box::new(notify.take().expect("asked for once")))
    }

    /// As [`Addr::mailbox_len`].
    pub fn mailbox_len(&self) -> usize {
        self.inner.mailbox_len()
    }

    /// As [`Addr::ask`].
    ///
    /// # Errors
    ///
    /// See [`AskError`].
    pub fn ask<R: Send + 'static>(&self, make: impl FnOnce(ReplyTo<R>) -> M, timeout: Duration) -> Result<R, AskError> {
        crate::ask::ask(self.id(), timeout, make, |m, t| self.send_timeout(m, t))
    }
}
