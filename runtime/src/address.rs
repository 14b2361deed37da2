//! Addresses: [`Addr`] for a known actor type, [`Recipient`] for anything that takes `M`, and
//! [`IntoRecipient`], which lets an address stand for a recipient of any event its message
//! converts from.
//!
//! Every send path respects the mailbox bound: [`Addr::send`] waits for room where the calling
//! thread may wait (an application thread or a dedicated one, not a pool thread nor an event
//! loop), [`Addr::send_timeout`] waits up to a deadline on the same threads, [`Addr::try_send`]
//! never waits. Each hands the message back when it cannot be delivered.
//!
//! A recipient of `E` in front of an actor whose message is `M` converts each `E` into an `M`
//! only once the mailbox has accepted it, under the mailbox's lock. So a refused event comes
//! back to its sender as the `E` it was, and the conversion needs no inverse: a `From` impl
//! (or any closure, [`Addr::recipient_map`]) is all an event source needs.

use std::any::{Any, TypeId};
use std::fmt;
use std::marker::PhantomData;
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
        write!(f, "Addr({}, {})", self.cell.id, self.cell.type_name())
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
        self.cell
            .try_send_notify_with(move || msg, &mut || Box::new(notify.take().expect("asked for once")))
            .map_err(|e| e.map(|make| make()))
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

    /// A recipient of another message type `E`, which `wrap` turns into this actor's message:
    /// the escape hatch for when [`IntoRecipient`] (a `From<E>` conversion) does not fit, for
    /// example two variants that carry the same event type. `wrap` may be any closure; it is
    /// called only for a message the mailbox accepts (a refused one is handed back to the
    /// sender as the `E` it was), so it needs no inverse.
    ///
    /// # Examples
    ///
    /// ```
    /// # use baton_runtime::{Actor, Context, Runtime};
    /// enum Msg { Line(u32, String), Tick }
    /// struct Logger;
    /// impl Actor for Logger {
    ///     type Message = Msg;
    ///     fn handle(&mut self, _ctx: &mut Context<Self>, _msg: Msg) {}
    /// }
    /// let rt = Runtime::new();
    /// let source = 7;
    /// let lines = rt.spawn(Logger).recipient_map(move |s: String| Msg::Line(source, s));
    /// lines.send("hello".to_string()).unwrap();
    /// # rt.shutdown(std::time::Duration::from_secs(1)).unwrap();
    /// ```
    pub fn recipient_map<E: Send + 'static>(
        &self,
        wrap: impl Fn(E) -> A::Message + Send + Sync + 'static,
    ) -> Recipient<E> {
        Recipient { inner: Arc::new(Mapped::new(self.clone(), wrap)) }
    }
}

/// Anything that can stand for a [`Recipient<E>`]: an [`Addr`] or a [`Recipient`] (owned or
/// borrowed) whose message type converts from `E` with [`From`]. Event sources (listeners,
/// connections, watches, worker events, timers) take `impl IntoRecipient<E>`, so an actor
/// whose message is an enum with a variant per source passes its address and nothing else:
///
/// ```
/// # use baton_runtime::{Actor, Context, IntoRecipient, Recipient, Runtime};
/// # #[derive(Debug)] pub struct Tick;
/// enum Msg { Tick(Tick), Stop }
/// impl From<Tick> for Msg {
///     fn from(t: Tick) -> Msg { Msg::Tick(t) }
/// }
/// # struct Clock;
/// # impl Actor for Clock { type Message = Msg; fn handle(&mut self, _: &mut Context<Self>, _: Msg) {} }
/// # let rt = Runtime::new();
/// let clock = rt.spawn(Clock);
/// // What an event source does with what it is given:
/// let ticks: Recipient<Tick> = (&clock).into_recipient();
/// ticks.send(Tick).unwrap(); // arrives as Msg::Tick(Tick)
/// # rt.shutdown(std::time::Duration::from_secs(1)).unwrap();
/// ```
///
/// [`from_variants!`](crate::from_variants) writes such `From` impls in one line.
///
/// A message is converted only once the mailbox accepts it, so a refused one comes back to
/// the source as the `E` it was (no `TryFrom` needed). A [`Recipient<E>`] of exactly `E` is
/// passed through as it is. For a conversion `From` cannot express, see
/// [`Addr::recipient_map`] and [`Recipient::map`].
pub trait IntoRecipient<E: Send + 'static> {
    /// The recipient of `E`.
    fn into_recipient(self) -> Recipient<E>;
}

impl<A: Actor, E: Send + 'static> IntoRecipient<E> for Addr<A>
where
    A::Message: From<E>,
{
    fn into_recipient(self) -> Recipient<E> {
        same_or(self, |a| a.recipient(), |a| a.recipient_map(A::Message::from))
    }
}

impl<A: Actor, E: Send + 'static> IntoRecipient<E> for &Addr<A>
where
    A::Message: From<E>,
{
    fn into_recipient(self) -> Recipient<E> {
        self.clone().into_recipient()
    }
}

impl<M: Send + 'static, E: Send + 'static> IntoRecipient<E> for Recipient<M>
where
    M: From<E>,
{
    fn into_recipient(self) -> Recipient<E> {
        same_or(self, |r| r, |r| r.map(M::from))
    }
}

impl<M: Send + 'static, E: Send + 'static> IntoRecipient<E> for &Recipient<M>
where
    M: From<E>,
{
    fn into_recipient(self) -> Recipient<E> {
        self.clone().into_recipient()
    }
}

/// Implements `From<T> for Enum` for each `Enum::Variant(T)` listed, so that an actor whose
/// message is an enum with a variant per event source can hand its address to each source
/// (see [`IntoRecipient`]). Plain `macro_rules!`, no derive: it writes the impls you would.
///
/// # Examples
///
/// ```
/// # pub struct WorkerEvent; pub struct ConnEvent;
/// enum Msg {
///     Worker(WorkerEvent),
///     Conn(ConnEvent),
///     Tick,
/// }
/// baton_runtime::from_variants!(Msg::Worker(WorkerEvent), Msg::Conn(ConnEvent));
///
/// assert!(matches!(Msg::from(ConnEvent), Msg::Conn(_)));
/// ```
#[macro_export]
macro_rules! from_variants {
    ($($enum:ident :: $variant:ident ( $ty:ty )),+ $(,)?) => {
        $(
            impl ::core::convert::From<$ty> for $enum {
                fn from(event: $ty) -> $enum {
                    $enum::$variant(event)
                }
            }
        )+
    };
}

/// `same(source)` when its message type `M` is `E` (the identity `From`: no wrapper, no extra
/// call per message), else `convert(source)`.
fn same_or<T, M: Send + 'static, E: Send + 'static>(
    source: T,
    same: impl FnOnce(T) -> Recipient<M>,
    convert: impl FnOnce(T) -> Recipient<E>,
) -> Recipient<E> {
    if TypeId::of::<M>() != TypeId::of::<E>() {
        return convert(source);
    }
    let mut slot = Some(same(source));
    let same = (&mut slot as &mut dyn Any).downcast_mut::<Option<Recipient<E>>>().and_then(Option::take);
    same.expect("M is E")
}

/// A recipient of `E` in front of a deliverer of `M`: each message is wrapped by `wrap` only
/// once the mailbox behind has room for it.
struct Mapped<D, F, M> {
    inner: D,
    wrap: F,
    target: PhantomData<fn() -> M>,
}

impl<D, F, M> Mapped<D, F, M> {
    fn new(inner: D, wrap: F) -> Self {
        Mapped { inner, wrap, target: PhantomData }
    }
}

impl<D, F, M, E> Deliver<E> for Mapped<D, F, M>
where
    D: Deliver<M>,
    F: Fn(E) -> M + Send + Sync,
    M: Send + 'static,
{
    fn id(&self) -> ActorId {
        self.inner.id()
    }
    fn send_with(&self, make: &mut dyn FnMut() -> E, deadline: Option<Instant>) -> Result<(), SendTimeoutError<()>> {
        self.inner.send_with(&mut || (self.wrap)(make()), deadline)
    }
    fn try_send_with(
        &self,
        make: &mut dyn FnMut() -> E,
        notify: Option<MakeRoomWaiter<'_>>,
    ) -> Result<(), TrySendError<()>> {
        self.inner.try_send_with(&mut || (self.wrap)(make()), notify)
    }
    fn mailbox_len(&self) -> usize {
        self.inner.mailbox_len()
    }
}

/// Boxes a room-waiter callback only when the mailbox is full: a send that finds room, the
/// common case, allocates nothing for it.
pub(crate) type MakeRoomWaiter<'a> = &'a mut dyn FnMut() -> Box<dyn FnOnce() + Send>;

/// What a [`Recipient`] delivers through. The message is built by `make`, called only once the
/// mailbox accepts it, so the errors carry no message: the caller still holds it.
pub(crate) trait Deliver<M>: Send + Sync {
    fn id(&self) -> ActorId;
    fn send_with(&self, make: &mut dyn FnMut() -> M, deadline: Option<Instant>) -> Result<(), SendTimeoutError<()>>;
    fn try_send_with(
        &self,
        make: &mut dyn FnMut() -> M,
        notify: Option<MakeRoomWaiter<'_>>,
    ) -> Result<(), TrySendError<()>>;
    fn mailbox_len(&self) -> usize;
}

impl<A: Actor> Deliver<A::Message> for Addr<A> {
    fn id(&self) -> ActorId {
        self.cell.id
    }
    fn send_with(
        &self,
        make: &mut dyn FnMut() -> A::Message,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<()>> {
        self.cell.send_with(make, deadline).map_err(|e| e.map(drop))
    }
    fn try_send_with(
        &self,
        make: &mut dyn FnMut() -> A::Message,
        notify: Option<MakeRoomWaiter<'_>>,
    ) -> Result<(), TrySendError<()>> {
        match notify {
            Some(notify) => self.cell.try_send_notify_with(make, notify),
            None => self.cell.try_send_with(make),
        }
        .map_err(|e| e.map(drop))
    }
    fn mailbox_len(&self) -> usize {
        Addr::mailbox_len(self)
    }
}

impl<M: Send + 'static> Deliver<M> for Recipient<M> {
    fn id(&self) -> ActorId {
        self.inner.id()
    }
    fn send_with(&self, make: &mut dyn FnMut() -> M, deadline: Option<Instant>) -> Result<(), SendTimeoutError<()>> {
        self.inner.send_with(make, deadline)
    }
    fn try_send_with(
        &self,
        make: &mut dyn FnMut() -> M,
        notify: Option<MakeRoomWaiter<'_>>,
    ) -> Result<(), TrySendError<()>> {
        self.inner.try_send_with(make, notify)
    }
    fn mailbox_len(&self) -> usize {
        self.inner.mailbox_len()
    }
}

/// An address of any actor whose message type is `M`. Cheap to clone.
///
/// Made by [`Addr::recipient`], [`Addr::recipient_map`], [`Recipient::map`] or
/// [`IntoRecipient::into_recipient`].
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

/// Runs one send through `deliver` with `msg` in a slot `make` takes it from; hands the message
/// back inside the error when it was not taken.
fn through<M, K>(msg: M, deliver: impl FnOnce(&mut dyn FnMut() -> M) -> Result<(), K>) -> Result<(), (K, M)> {
    let mut slot = Some(msg);
    match deliver(&mut || slot.take().expect("a message is built once")) {
        Ok(()) => Ok(()),
        Err(kind) => Err((kind, slot.take().expect("a refused message is not built"))),
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

    /// A recipient of `E` that delivers each message here as `wrap(message)`: as
    /// [`Addr::recipient_map`], for a recipient.
    pub fn map<E: Send + 'static>(&self, wrap: impl Fn(E) -> M + Send + Sync + 'static) -> Recipient<E> {
        Recipient { inner: Arc::new(Mapped::new(self.clone(), wrap)) }
    }

    /// As [`Addr::send`]: waits for room on application threads and dedicated-thread actors;
    /// on pool threads, event loops and the receiving actor itself, a full mailbox is
    /// [`SendError::Full`] at once.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] or [`SendError::Full`], with the message.
    pub fn send(&self, msg: M) -> Result<(), SendError<M>> {
        self.send_timeout_at(msg, None).map_err(SendError::without_deadline)
    }

    /// As [`Addr::send_timeout`]: waits up to `timeout` only where [`Recipient::send`] would
    /// wait at all.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError`] with the message.
    pub fn send_timeout(&self, msg: M, timeout: Duration) -> Result<(), SendTimeoutError<M>> {
        self.send_timeout_at(msg, Some(Instant::now() + timeout))
    }

    fn send_timeout_at(&self, msg: M, deadline: Option<Instant>) -> Result<(), SendTimeoutError<M>> {
        through(msg, |make| self.inner.send_with(make, deadline)).map_err(|(kind, msg)| kind.map(|()| msg))
    }

    /// As [`Addr::try_send`]: never waits, on any thread.
    ///
    /// # Errors
    ///
    /// [`TrySendError`] with the message.
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        through(msg, |make| self.inner.try_send_with(make, None)).map_err(|(kind, msg)| kind.map(|()| msg))
    }

    /// As [`Addr::try_send_notify`]: never waits, on any thread.
    ///
    /// # Errors
    ///
    /// [`TrySendError`] with the message.
    pub fn try_send_notify(&self, msg: M, notify: impl FnOnce() + Send + 'static) -> Result<(), TrySendError<M>> {
        let mut notify = Some(notify);
        let mut waiter = || -> Box<dyn FnOnce() + Send> { Box::new(notify.take().expect("asked for once")) };
        through(msg, |make| self.inner.try_send_with(make, Some(&mut waiter))).map_err(|(kind, msg)| kind.map(|()| msg))
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
