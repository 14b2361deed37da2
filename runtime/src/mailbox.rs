//! Mailbox capacity and the errors of each send operation. Every error hands the message back.

use std::fmt;

/// How many user messages a mailbox holds. Control signals are not counted: they have their
/// own lane that is never full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mailbox {
    /// At most this many messages; senders wait or get the message back.
    Bounded(usize),
    /// No bound. Must be asked for by name: a producer faster than its consumer grows it
    /// without limit.
    Unbounded,
}

impl Mailbox {
    /// The default: bounded, 1024 messages.
    pub const DEFAULT: Mailbox = Mailbox::Bounded(1024);
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox::DEFAULT
    }
}

/// [`crate::Addr::send`] failed; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SendError<M> {
    /// The actor has stopped or is stopping.
    Closed(M),
    /// The mailbox is full and this thread does not wait for room: it is a pool thread or an
    /// event loop's driver (waiting could hold the very thread the receiver needs to make
    /// room), or the sender is the receiving actor itself (which can only make room after the
    /// current handler returns). The actor is alive; try again later, or use
    /// [`crate::Addr::try_send_notify`] to be called when there is room. The module docs of
    /// the crate have a table of what each kind of thread does.
    Full(M),
}

/// [`crate::Addr::try_send`] failed; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySendError<M> {
    /// The mailbox is at its bound.
    Full(M),
    /// The actor has stopped or is stopping.
    Closed(M),
}

/// [`crate::Addr::send_timeout`] failed; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SendTimeoutError<M> {
    /// The mailbox stayed full until the deadline.
    Timeout(M),
    /// The actor has stopped or is stopping.
    Closed(M),
    /// The mailbox is full and this thread does not wait for room, deadline or not (see
    /// [`SendError::Full`]).
    Full(M),
}

impl<M> TrySendError<M> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> M {
        match self {
            TrySendError::Full(m) | TrySendError::Closed(m) => m,
        }
    }
}

impl<M> SendTimeoutError<M> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> M {
        match self {
            SendTimeoutError::Timeout(m) | SendTimeoutError::Closed(m) | SendTimeoutError::Full(m) => m,
        }
    }
}

impl<M> SendError<M> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Closed(m) | SendError::Full(m) => m,
        }
    }
}

impl<M> TrySendError<M> {
    /// The same error around another payload.
    pub(crate) fn map<N>(self, f: impl FnOnce(M) -> N) -> TrySendError<N> {
        match self {
            TrySendError::Full(m) => TrySendError::Full(f(m)),
            TrySendError::Closed(m) => TrySendError::Closed(f(m)),
        }
    }
}

impl<M> SendTimeoutError<M> {
    /// The same error around another payload.
    pub(crate) fn map<N>(self, f: impl FnOnce(M) -> N) -> SendTimeoutError<N> {
        match self {
            SendTimeoutError::Timeout(m) => SendTimeoutError::Timeout(f(m)),
            SendTimeoutError::Closed(m) => SendTimeoutError::Closed(f(m)),
            SendTimeoutError::Full(m) => SendTimeoutError::Full(f(m)),
        }
    }
}

impl<M> SendError<M> {
    /// The error of a send without a deadline, which cannot time out.
    pub(crate) fn without_deadline(e: SendTimeoutError<M>) -> Self {
        match e {
            SendTimeoutError::Closed(m) | SendTimeoutError::Timeout(m) => SendError::Closed(m),
            SendTimeoutError::Full(m) => SendError::Full(m),
        }
    }
}

macro_rules! error_impls {
    ($t:ident, $($pat:pat => $text:expr),+) => {
        impl<M> fmt::Debug for $t<M> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl<M> fmt::Display for $t<M> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                #[allow(unused_variables)]
                let text = match self { $($pat => $text),+ };
                f.write_str(text)
            }
        }
        impl<M> std::error::Error for $t<M> {}
    };
}

/// What `Full` from a waiting send says: why this thread did not wait.
const FULL_NO_WAIT: &str = "mailbox full; not waiting for room on a pool thread, an event loop or the receiver itself";

error_impls!(SendError, SendError::Closed(_) => "sending to a closed actor", SendError::Full(_) => FULL_NO_WAIT);
error_impls!(TrySendError, TrySendError::Full(_) => "mailbox full", TrySendError::Closed(_) => "sending to a closed actor");
error_impls!(SendTimeoutError, SendTimeoutError::Timeout(_) => "mailbox stayed full until the deadline", SendTimeoutError::Closed(_) => "sending to a closed actor", SendTimeoutError::Full(_) => FULL_NO_WAIT);
