//! What goes into the parent: a socket to place ([`Dispatch`]), as its address receives it
//! ([`ToParent`]), and why the parent may hand one back ([`DispatchError`]).

use std::os::fd::OwnedFd;

use baton_transport::{Accepted, Address, Stream};

use super::error::ParentError;

use crate::record::{self, Item, Kind};

/// A socket for the parent to place on a worker.
#[derive(Debug)]
pub struct Dispatch {
    /// The connected socket.
    pub stream: Stream,
    /// The client's address.
    pub peer: Address,
    /// The address it arrived on.
    pub local: Address,
    /// The [`Tag`](crate::Tag) the worker receives with it, chosen by the application.
    pub tag: crate::Tag,
    /// A routing key for [`Sticky`](crate::Sticky) placement.
    pub key: Option<Vec<u8>>,
    /// Bytes already read from the socket; the worker's application receives them first.
    pub prelude: Vec<u8>,
}

impl Dispatch {
    /// The record item describing this socket, as handoff `id`.
    pub(crate) fn item(&self, id: u64) -> Item {
        Item {
            id,
            kind: Kind::Connection,
            tag: self.tag,
            peer: self.peer.clone(),
            local: self.local.clone(),
            key: self.key.clone(),
            prelude: self.prelude.clone(),
            ext: Vec::new(),
        }
    }

    /// A connection item received with its descriptor (a migration or a takeover), or `None`
    /// (the descriptor is closed) when it is not a connected stream socket or the item is a
    /// listener.
    pub(crate) fn from_item(item: Item, fd: OwnedFd) -> Option<Dispatch> {
        if item.kind != Kind::Connection {
            return None;
        }
        let stream = crate::channel::connected_stream(fd)?;
        Some(Dispatch {
            stream,
            peer: item.peer,
            local: item.local,
            tag: item.tag,
            key: item.key,
            prelude: item.prelude,
        })
    }

    /// Why a record could not carry it, if so.
    pub(crate) fn check(&self) -> Result<(), fn(Box<Dispatch>) -> DispatchError> {
        if self.key.as_ref().is_some_and(|k| k.len() > record::MAX_KEY) {
            return Err(DispatchError::KeyTooLong);
        }
        if self.prelude.len() > record::MAX_PRELUDE {
            return Err(DispatchError::PreludeTooLong);
        }
        Ok(())
    }
}

/// What the parent's address ([`Parent::recipient`](crate::Parent::recipient)) receives: a
/// connection one of its listeners accepted, or a socket the application hands over. Both
/// convert into it (`From`), so the address serves as a listener's owner as it is, and an
/// actor that holds it sends `dispatch.into()`.
///
/// Prefer [`Parent::dispatch`](crate::Parent::dispatch) for a socket of your own: it checks
/// the key and prelude lengths and hands the socket back in a [`DispatchError`]; a `Dispatch`
/// sent here that no record can carry is closed and logged.
#[derive(Debug)]
pub enum ToParent {
    /// A connection a listener accepted (the listener's owner is the parent's address).
    Accepted(Accepted),
    /// A socket to place.
    Dispatch(Dispatch),
}

baton_runtime::from_variants!(ToParent::Accepted(Accepted), ToParent::Dispatch(Dispatch));

impl From<ToParent> for super::handoff::HandoffMsg {
    fn from(m: ToParent) -> super::handoff::HandoffMsg {
        match m {
            ToParent::Accepted(a) => super::handoff::HandoffMsg::Accepted(a),
            ToParent::Dispatch(d) => super::handoff::HandoffMsg::Dispatch(d, None),
        }
    }
}

/// Why [`Parent::dispatch`](crate::Parent::dispatch) refused a socket; the socket is handed
/// back inside ([`DispatchError::into_inner`]).
#[derive(Debug)]
pub enum DispatchError {
    /// The routing key is longer than [`record::MAX_KEY`].
    KeyTooLong(Box<Dispatch>),
    /// The prelude is longer than [`record::MAX_PRELUDE`].
    PreludeTooLong(Box<Dispatch>),
    /// The parent did not take it: it has stopped, or its mailbox is full on a thread that
    /// does not wait ([`ParentError`]).
    Parent(ParentError, Box<Dispatch>),
}

impl DispatchError {
    /// The socket, back.
    pub fn into_inner(self) -> Dispatch {
        match self {
            DispatchError::KeyTooLong(d) | DispatchError::PreludeTooLong(d) | DispatchError::Parent(_, d) => *d,
        }
    }
}

impl std::fmt::Display for DispatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DispatchError::KeyTooLong(_) => f.write_str("routing key longer than MAX_KEY"),
            DispatchError::PreludeTooLong(_) => f.write_str("prelude longer than MAX_PRELUDE"),
            DispatchError::Parent(e, _) => e.fmt(f),
        }
    }
}

impl std::error::Error for DispatchError {}

/// An address a record can carry: a Unix path the format cannot hold (empty, longer than 107
/// bytes, or with a NUL) is sent as unnamed rather than making the record malformed.
pub(crate) fn describable(addr: Address) -> Address {
    use std::os::unix::ffi::OsStrExt;
    match addr {
        Address::Unix(Some(p)) => {
            let b = p.as_os_str().as_bytes();
            if b.is_empty() || b.len() > 107 || b.contains(&0) {
                Address::Unix(None)
            } else {
                Address::Unix(Some(p))
            }
        }
        other => other,
    }
}
