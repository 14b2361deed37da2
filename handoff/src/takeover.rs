//! Takeover: a new parent obtains the listening sockets of a running one, for an upgrade
//! without a refused connection.
//!
//! ```text
//! old parent (Parent::offer_takeover)         new parent (take_over)
//!   control socket ◀──connect, credentials checked both ways──
//!                  ◀── TAKE
//!   HANDOFF: one listener item per named listening socket (key = name), descriptors attached ──▶
//!   (both now accept from the same sockets)        new parent starts its workers, serves
//!                  ◀── SERVING
//!   stops accepting; HANDOFF: the connections it accepted and never placed ──▶ dispatched
//!   RELEASED ──▶
//!   drains its workers and exits
//! ```
//!
//! Until SERVING arrives the old parent changes nothing, so a new parent that fails (or
//! disconnects) before confirming leaves the old one serving as before: rollback is doing
//! nothing. The old parent takes one takeover at a time. The records are the channel's
//! (`PROTOCOL.md`, "Takeover").

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::bootstrap::{self, Endpoint, PeerCheck};
use crate::channel::{Channel, RecvBuf, RecvError};
use crate::parent::{Dispatch, Parent};
use crate::record::{Kind, Record};

/// A takeover in progress, on the new parent's side.
#[derive(Debug)]
pub struct Takeover {
    channel: Channel,
    listeners: Vec<(String, OwnedFd)>,
    buf: RecvBuf,
}

/// Asks the parent at `endpoint` for its listening sockets (see the module docs). The old
/// parent keeps serving until [`Takeover::serving`].
///
/// # Errors
///
/// Connect and credential errors, a malformed answer, or no answer within `timeout`.
pub fn take_over(endpoint: &Endpoint, check: PeerCheck, timeout: Duration) -> io::Result<Takeover> {
    let channel = bootstrap::connect(endpoint, check)?;
    channel.send(&Record::Take, &[], &mut Vec::new())?;
    let mut buf = RecvBuf::default();
    let (record, fds) = recv_within(&channel, &mut buf, timeout)?;
    if record == Record::Released {
        // The old parent has no listening sockets to give.
        return Ok(Takeover { channel, listeners: Vec::new(), buf });
    }
    let Record::Handoff(items) = record else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected the listeners, got {record:?}")));
    };
    let mut listeners = Vec::new();
    for (item, fd) in items.into_iter().zip(fds) {
        if item.kind != Kind::Listener {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a takeover answer carried a connection"));
        }
        let name = String::from_utf8_lossy(item.key.as_deref().unwrap_or_default()).into_owned();
        listeners.push((name, fd));
    }
    Ok(Takeover { channel, listeners, buf })
}

fn recv_within(channel: &Channel, buf: &mut RecvBuf, timeout: Duration) -> io::Result<(Record, Vec<OwnedFd>)> {
    let deadline = Instant::now() + timeout;
    loop {
        match channel.recv(buf) {
            Ok(got) => return Ok(got),
            Err(RecvError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the old parent did not answer"));
                }
                // A handful of records, once per upgrade: polling beats a reactor here.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(RecvError::Closed) => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the old parent went away"))
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

impl Takeover {
    /// The names of the listening sockets received.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.listeners.iter().map(|(n, _)| n.as_str())
    }

    /// Takes the listening socket called `name` (hand it to
    /// [`Reactor::adopt_listener`](baton_transport::Reactor::adopt_listener) and
    /// [`Parent::attach`], or to [`Parent::share_listener`]).
    pub fn listener(&mut self, name: &str) -> Option<OwnedFd> {
        let i = self.listeners.iter().position(|(n, _)| n == name)?;
        Some(self.listeners.remove(i).1)
    }

    /// Takes the members of the steered group `tag` (see
    /// [`Parent::listen_steered`]), in group order, for [`Parent::steer`]. Empty when the
    /// predecessor had none.
    pub fn steered(&mut self, tag: crate::Tag) -> Vec<OwnedFd> {
        let prefix = format!("steered:{tag}:");
        let mut members: Vec<(usize, OwnedFd)> = Vec::new();
        let mut rest = Vec::new();
        for (name, fd) in self.listeners.drain(..) {
            match name.strip_prefix(&prefix).and_then(|i| i.parse().ok()) {
                Some(i) => members.push((i, fd)),
                None => rest.push((name, fd)),
            }
        }
        self.listeners = rest;
        members.sort_by_key(|(i, _)| *i);
        members.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Confirms that this parent serves: the old one stops accepting, sends the connections it
    /// accepted and never placed (dispatched here through `parent`), and drains. Returns how
    /// many connections came over.
    ///
    /// # Errors
    ///
    /// When the old parent does not release within `timeout` (it may have stopped accepting
    /// already; this parent serves either way).
    pub fn serving(mut self, parent: &Parent, timeout: Duration) -> io::Result<usize> {
        self.channel.send(&Record::Serving, &[], &mut Vec::new())?;
        let mut moved = 0;
        loop {
            match recv_within(&self.channel, &mut self.buf, timeout)? {
                (Record::Released, _) => return Ok(moved),
                (Record::Handoff(items), fds) => {
                    for (item, fd) in items.into_iter().zip(fds) {
                        let Some(socket) = Dispatch::from_item(item, fd) else { continue };
                        if parent.dispatch(socket).is_ok() {
                            moved += 1;
                        }
                    }
                }
                (other, _) => log::warn!("takeover: unexpected {other:?} from the old parent"),
            }
        }
    }
}
