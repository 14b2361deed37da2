//! The channel: one AF_UNIX SOCK_SEQPACKET socket between a parent and one worker.
//!
//! SEQPACKET keeps record boundaries, so each `sendmsg` is one record and the descriptors
//! attached to it arrive with that record and no other: a descriptor can never drift to the
//! wrong record, as it can on a byte stream. Every send is non-blocking with `MSG_NOSIGNAL` (a
//! dead peer is an error value, not a `SIGPIPE`); every receive uses `MSG_CMSG_CLOEXEC` (received
//! descriptors are close-on-exec atomically) with a control buffer sized for [`MAX_FDS`]
//! descriptors, and a record whose descriptors were cut short (`MSG_CTRUNC`) is a failed record:
//! whatever did arrive is closed and the items are named in the error so the sender can be told.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::record::{self, DecodeError, Record, MAX_FDS, MAX_RECORD};

/// One end of a parent–worker channel. Non-blocking and close-on-exec.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.fd
    }
}

/// Why a received packet is not a usable record. Descriptors that arrived with it are closed
/// before this is returned.
#[derive(Debug)]
pub enum BadRecord {
    /// The bytes are not a record.
    Decode(DecodeError),
    /// Longer than [`MAX_RECORD`] (the kernel cut it).
    Oversized,
    /// Fewer descriptors arrived than the record carries (`MSG_CTRUNC`: the receiver is at its
    /// descriptor limit, or the sender attached more than a control buffer holds).
    DescriptorsTruncated {
        /// Descriptors the record declares.
        declared: usize,
        /// Descriptors that arrived.
        arrived: usize,
    },
    /// A different number of descriptors arrived than the record declares.
    DescriptorMismatch {
        /// Descriptors the record declares.
        declared: usize,
        /// Descriptors that arrived.
        arrived: usize,
    },
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRecord::Decode(e) => write!(f, "{e}"),
            BadRecord::Oversized => write!(f, "record longer than {MAX_RECORD} bytes"),
            BadRecord::DescriptorsTruncated { declared, arrived } => {
                write!(f, "descriptors truncated: {arrived} of {declared} arrived (MSG_CTRUNC)")
            }
            BadRecord::DescriptorMismatch { declared, arrived } => {
                write!(f, "record declares {declared} descriptors but {arrived} arrived")
            }
        }
    }
}

/// What [`Channel::recv`] can fail with.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing to read now; wait for readiness.
    WouldBlock,
    /// The peer closed its end (or died).
    Closed,
    /// A packet arrived but is not a usable record. `ids` names the handoff items when the
    /// body could still be read, so the receiver can reject them by id.
    Bad {
        /// What is wrong.
        error: BadRecord,
        /// Handoff ids the packet named (empty when unreadable).
        ids: Vec<u64>,
    },
    /// Any other system error.
    Io(io::Error),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::WouldBlock => f.write_str("nothing to read"),
            RecvError::Closed => f.write_str("channel closed by the peer"),
            RecvError::Bad { error, .. } => write!(f, "bad record: {error}"),
            RecvError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// A reusable receive buffer: one record's bytes plus a control buffer for [`MAX_FDS`]
/// descriptors.
pub struct RecvBuf {
    data: Vec<u8>,
    control: Vec<MaybeUninit<u8>>,
    /// The version of the last good record received.
    version: u8,
}

impl RecvBuf {
    /// The protocol version the last good record [`Channel::recv`] returned was written in.
    pub fn version(&self) -> u8 {
        self.version
    }
}

impl Default for RecvBuf {
    fn default() -> Self {
        RecvBuf {
            // One byte more than the largest record, so an oversized one shows as truncated.
            data: vec![0; MAX_RECORD + 1],
            control: vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))],
            version: record::VERSION,
        }
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecvBuf")
    }
}

impl Channel {
    /// A connected pair (`socketpair`), both ends non-blocking and close-on-exec.
    ///
    /// # Errors
    ///
    /// When the system has no descriptors or memory left.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps a descriptor that should be a connected SEQPACKET Unix socket (an inherited one,
    /// say), after checking that it is, and makes it non-blocking.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when it is a socket of another kind; the system error when it is not a
    /// socket at all (`ENOTSOCK`) or not open (`EBADF`).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Channel> {
        if rustix::net::sockopt::socket_type(&fd)? != SocketType::SEQPACKET
            || rustix::net::sockopt::socket_domain(&fd)? != AddressFamily::UNIX
        {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an AF_UNIX SOCK_SEQPACKET socket"));
        }
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Channel { fd })
    }

    /// Sends one record with its descriptors (`record.fds()` of them, in item order).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the peer's queue is full (nothing was sent; try again when writable);
    /// `BrokenPipe` / `ConnectionReset` when the peer is gone; `InvalidInput` when the record
    /// and the descriptors disagree or the record is larger than [`MAX_RECORD`].
    pub fn send(&self, record: &Record, fds: &[BorrowedFd<'_>], scratch: &mut Vec<u8>) -> io::Result<()> {
        self.send_as(record, record::VERSION, fds, scratch)
    }

    /// [`Channel::send`] in protocol `version` (send version 2 only to a peer that said it
    /// speaks it: PROTOCOL.md §13).
    ///
    /// # Errors
    ///
    /// As [`Channel::send`].
    pub fn send_as(
        &self,
        record: &Record,
        version: u8,
        fds: &[BorrowedFd<'_>],
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        if record.fds() != fds.len() || fds.len() > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "descriptor count does not match the record"));
        }
        scratch.clear();
        record::encode_as(record, version, scratch);
        if scratch.len() > MAX_RECORD {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "record larger than MAX_RECORD"));
        }
        self.send_bytes(scratch, fds)
    }

    /// Sends raw bytes as one packet with descriptors attached. For tests of hostile peers and
    /// for writing records encoded elsewhere; [`Channel::send`] is the normal path.
    ///
    /// # Errors
    ///
    /// As [`Channel::send`].
    pub fn send_bytes(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one record"));
        }
        let iov = [IoSlice::new(bytes)];
        loop {
            match rustix::net::sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The peer has closed its end (or shut down its writing side).
    fn hung_up(&self) -> bool {
        use rustix::event::{PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.fd, PollFlags::RDHUP)];
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })) {
            Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => true,
        }
    }

    /// Receives one record and the descriptors that came with it (close-on-exec, in item
    /// order).
    ///
    /// # Errors
    ///
    /// See [`RecvError`]. A bad record has already had its descriptors closed.
    pub fn recv(&self, buf: &mut RecvBuf) -> Result<(Record, Vec<OwnedFd>), RecvError> {
        let mut control = RecvAncillaryBuffer::new(&mut buf.control);
        let msg = loop {
            let mut iov = [IoSliceMut::new(&mut buf.data)];
            match rustix::net::recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT)
            {
                Ok(msg) => break msg,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Err(RecvError::WouldBlock),
                Err(Errno::CONNRESET) | Err(Errno::PIPE) => return Err(RecvError::Closed),
                Err(e) => return Err(RecvError::Io(e.into())),
            }
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        drop(control);
        if msg.bytes == 0 && fds.is_empty() {
            // End of file, or an empty packet (which SEQPACKET allows and no record is): only a
            // hang-up says the peer is gone.
            if self.hung_up() {
                return Err(RecvError::Closed);
            }
            return Err(RecvError::Bad { error: BadRecord::Decode(DecodeError::TooShort), ids: Vec::new() });
        }
        let bytes = &buf.data[..msg.bytes.min(buf.data.len())];
        if msg.flags.contains(ReturnFlags::TRUNC) || msg.bytes > MAX_RECORD {
            // `fds` drops here, closing whatever arrived.
            return Err(RecvError::Bad { error: BadRecord::Oversized, ids: Vec::new() });
        }
        let record = match record::decode(bytes) {
            Ok(r) => {
                buf.version = bytes[2];
                r
            }
            Err(e) => return Err(RecvError::Bad { error: BadRecord::Decode(e), ids: Vec::new() }),
        };
        // `decode` checked the header; for a HANDOFF the declared count must also match the
        // items and what arrived.
        let declared = record::header(bytes).map_or(0, |h| usize::from(h.fds));
        let ids = match &record {
            Record::Handoff(items) | Record::Return(items) => items.iter().map(|i| i.id).collect(),
            _ => Vec::new(),
        };
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(RecvError::Bad {
                error: BadRecord::DescriptorsTruncated { declared, arrived: fds.len() },
                ids,
            });
        }
        if fds.len() != declared || declared != record.fds() {
            return Err(RecvError::Bad { error: BadRecord::DescriptorMismatch { declared, arrived: fds.len() }, ids });
        }
        Ok((record, fds))
    }
}

impl Channel {
    /// The type code and the declared descriptor count of the next record waiting, without
    /// taking it or its descriptors; `None` when nothing is waiting (or the channel failed:
    /// [`Channel::recv`] will say how). Lets a receiver at its descriptor budget leave a record
    /// that carries descriptors in the queue.
    pub(crate) fn peek_header(&self) -> Option<(u8, usize)> {
        let mut head = [0u8; record::HEADER_LEN];
        // No control buffer: a peek installs no descriptor (the kernel sets MSG_CTRUNC and
        // leaves them with the packet).
        match rustix::net::recv(&self.fd, &mut head, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) if n >= record::HEADER_LEN => {
                Some((head[3], usize::from(u16::from_le_bytes([head[6], head[7]]))))
            }
            _ => None,
        }
    }
}

/// `ETOOMANYREFS` (more descriptors in flight than the sender's limit allows) and `ENOBUFS`
/// say "not now", not "this peer is broken": nothing was sent, and the channel is still
/// writable, so the sender retries on a timer rather than on writability.
pub(crate) fn too_many_in_flight(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(Errno::TOOMANYREFS.raw_os_error()) || raw == Some(Errno::NOBUFS.raw_os_error())
}

/// A received descriptor as a stream of the family the socket has, or `None` for a family the
/// transport does not serve. One system call (the family): a socket of another type is not
/// caught here; its first read fails and the transport closes it. The worker's path for each
/// handed-over socket whose record names no family; [`connected_stream`] checks everything.
pub(crate) fn stream_from(fd: OwnedFd) -> Option<baton_transport::Stream> {
    let family = rustix::net::sockopt::socket_domain(&fd).ok()?;
    if family == AddressFamily::INET || family == AddressFamily::INET6 {
        Some(baton_transport::Stream::Tcp(std::net::TcpStream::from(fd)))
    } else if family == AddressFamily::UNIX {
        Some(baton_transport::Stream::Unix(std::os::unix::net::UnixStream::from(fd)))
    } else {
        None
    }
}

/// A descriptor received from a peer, as a connected stream socket of a family the transport
/// serves, or `None` (it is then closed): a listening socket, a datagram or SEQPACKET socket
/// (a channel end, say), an unconnected one, or not a socket at all. Four system calls; for
/// sockets that come back from a worker or a predecessor, never on the per-connection path.
pub(crate) fn connected_stream(fd: OwnedFd) -> Option<baton_transport::Stream> {
    use rustix::net::sockopt;
    if sockopt::socket_type(&fd).ok()? != SocketType::STREAM || sockopt::socket_acceptconn(&fd).ok()? {
        return None;
    }
    rustix::net::getpeername(&fd).ok()?;
    stream_from(fd)
}
