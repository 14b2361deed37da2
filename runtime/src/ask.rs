//! Request/reply with a deadline, and the rule that keeps it from deadlocking the pool.
//!
//! A pool thread that blocked waiting for a reply would hold its thread while the actor that
//! must reply may need that very thread. So [`crate::Addr::ask`] refuses to block on a pool
//! thread ([`AskError::OnPoolThread`]) and refuses an actor asking itself
//! ([`AskError::SelfAsk`]) on any thread. Handlers on the pool pass a [`crate::Recipient`] for
//! the answer instead; blocking asks belong to application threads and dedicated-thread actors.

use std::cell::Cell as StdCell;
use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::address::ActorId;
use crate::mailbox::SendTimeoutError;

thread_local! {
    static CURRENT_ACTOR: StdCell<Option<ActorId>> = const { StdCell::new(None) };
    static ON_POOL: StdCell<bool> = const { StdCell::new(false) };
}

pub(crate) fn set_current_actor(id: Option<ActorId>) -> Option<ActorId> {
    CURRENT_ACTOR.with(|c| c.replace(id))
}

pub(crate) fn current_actor() -> Option<ActorId> {
    CURRENT_ACTOR.with(|c| c.get())
}

pub(crate) fn mark_pool_thread() {
    ON_POOL.with(|p| p.set(true));
}

pub(crate) fn on_pool_thread() -> bool {
    ON_POOL.with(|p| p.get())
}

/// The one-shot channel a request carries for its answer.
pub struct ReplyTo<R> {
    tx: Sender<R>,
}

impl<R> fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyTo")
    }
}

impl<R> ReplyTo<R> {
    /// Sends the answer. Returns it back if the asker stopped waiting.
    ///
    /// # Errors
    ///
    /// The value, when the asker has gone (its deadline passed).
    pub fn send(self, value: R) -> Result<(), R> {
        self.tx.try_send(value).map_err(|e| e.into_inner())
    }
}

/// Why an ask failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskError {
    /// The handler asked its own actor: it could never answer.
    SelfAsk,
    /// Called on a runtime pool thread, where blocking could deadlock the pool.
    OnPoolThread,
    /// The actor is stopped or stopping.
    Closed,
    /// The actor dropped the request without replying.
    NoReply,
    /// No reply before the deadline (including waiting for room in a full mailbox).
    Timeout,
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AskError::SelfAsk => "an actor asked itself, which can never be answered",
            AskError::OnPoolThread => "blocking ask on a runtime pool thread (could deadlock the pool)",
            AskError::Closed => "the actor is closed",
            AskError::NoReply => "the actor dropped the request without replying",
            AskError::Timeout => "no reply before the deadline",
        })
    }
}

impl std::error::Error for AskError {}

pub(crate) fn ask<M, R>(
    target: ActorId,
    timeout: Duration,
    make: impl FnOnce(ReplyTo<R>) -> M,
    send: impl FnOnce(M, Duration) -> Result<(), SendTimeoutError<M>>,
) -> Result<R, AskError> {
    if CURRENT_ACTOR.with(|c| c.get()) == Some(target) {
        return Err(AskError::SelfAsk);
    }
    if on_pool_thread() {
        return Err(AskError::OnPoolThread);
    }
    let deadline = Instant::now() + timeout;
    let (tx, rx) = bounded(1);
    send(make(ReplyTo { tx }), timeout).map_err(|e| match e {
        SendTimeoutError::Timeout(_) => AskError::Timeout,
        SendTimeoutError::Closed(_) => AskError::Closed,
        // Unreachable in practice: the threads that may not wait were refused above.
        SendTimeoutError::Full(_) => AskError::OnPoolThread,
    })?;
    match rx.recv_deadline(deadline) {
        Ok(r) => Ok(r),
        Err(RecvTimeoutError::Timeout) => Err(AskError::Timeout),
        Err(RecvTimeoutError::Disconnected) => Err(AskError::NoReply),
    }
}
