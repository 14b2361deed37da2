//! [`ParentError`]: the one way the [`Parent`](crate::Parent) handle says its actor did not
//! take a request.

use std::fmt;
use std::io;

use baton_runtime::{AskError, SendError};

/// Why the parent's actor did not take (or answer) a request made through the
/// [`Parent`](crate::Parent) handle. Every method that talks to the actor reports these
/// cases with this type: directly ([`Parent::stats`](crate::Parent::stats),
/// [`Parent::attach`](crate::Parent::attach), ...), inside
/// [`DispatchError::Parent`](crate::DispatchError::Parent) with the socket handed back, or as
/// the inner error of an [`io::Error`] from the methods that also bind or inspect sockets
/// (`io::Error::get_ref` downcasts to it; its kind is [`ParentError::kind`]).
///
/// # Examples
///
/// ```no_run
/// # fn f(parent: &baton_handoff::Parent) {
/// use baton_handoff::ParentError;
/// match parent.stats() {
///     Ok(stats) => println!("{} in flight", stats.in_flight),
///     Err(ParentError::Stopped) => println!("the parent has stopped"),
///     Err(e) => println!("no answer: {e}"),
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentError {
    /// The parent's actor has stopped ([`Parent::stop`](crate::Parent::stop), a drain that
    /// finished, or a panic).
    Stopped,
    /// Its mailbox is full and the calling thread does not wait for room: a pool thread or an
    /// event loop (see [`baton_runtime::SendError::Full`]). Try again later, or call from a
    /// thread of your own.
    Full,
    /// A request that waits for an answer got none: it timed out, or was made from a thread
    /// that must not wait (a pool thread, or the parent's own reactor thread).
    NoAnswer(AskError),
}

impl ParentError {
    /// The [`io::ErrorKind`] this is reported with inside an [`io::Error`]: `NotConnected`
    /// (stopped), `WouldBlock` (full), `TimedOut` (no answer).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ParentError::Stopped => io::ErrorKind::NotConnected,
            ParentError::Full => io::ErrorKind::WouldBlock,
            ParentError::NoAnswer(_) => io::ErrorKind::TimedOut,
        }
    }
}

impl fmt::Display for ParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParentError::Stopped => f.write_str("the parent has stopped"),
            ParentError::Full => f.write_str("the parent's mailbox is full, and this thread does not wait for room"),
            ParentError::NoAnswer(e) => write!(f, "the parent did not answer: {e}"),
        }
    }
}

impl std::error::Error for ParentError {}

impl From<ParentError> for io::Error {
    fn from(e: ParentError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

impl<M> From<SendError<M>> for ParentError {
    fn from(e: SendError<M>) -> ParentError {
        match e {
            SendError::Closed(_) => ParentError::Stopped,
            SendError::Full(_) => ParentError::Full,
        }
    }
}

impl From<AskError> for ParentError {
    fn from(e: AskError) -> ParentError {
        match e {
            // A stopping actor drops what it was asked without answering.
            AskError::Closed | AskError::NoReply => ParentError::Stopped,
            other => ParentError::NoAnswer(other),
        }
    }
}
