//! Records: the messages parent and worker exchange, one per SEQPACKET packet.
//!
//! This file is the reference implementation of `PROTOCOL.md`; the two must agree byte for
//! byte. Encoding never fails for values that respect the limits below (the encoder's callers
//! keep to them); decoding takes untrusted bytes and returns a [`DecodeError`] for anything that
//! is not exactly a well-formed record — it never panics and never reads past the input.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;

use baton_transport::Address;

/// The two bytes every record starts with: "BT".
pub const MAGIC: [u8; 2] = *b"BT";
/// The protocol version every peer speaks (HELLO and READY are always sent in it).
pub const VERSION: u8 = 1;
/// Version 2: a HANDOFF or RETURN item carries extensions ([`Ext`]); a peer says it speaks it
/// with a VERSIONS record (PROTOCOL.md §13).
pub const VERSION_2: u8 = 2;
/// Most extension bytes one item carries (its extension block, lengths included).
pub const MAX_EXT: usize = 4096;
/// Bytes in a record header.
pub const HEADER_LEN: usize = 8;
/// Largest record, header included. Receivers use a buffer one byte larger and treat anything
/// longer as oversized.
pub const MAX_RECORD: usize = 64 * 1024;
/// Most descriptors one record carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;
/// Largest routing key.
pub const MAX_KEY: usize = 1024;
/// Largest prelude (bytes read before the handoff) one item carries.
pub const MAX_PRELUDE: usize = 16 * 1024;
/// Most ids in one ADOPTED, REJECTED or CLOSED record.
pub const MAX_IDS: usize = 4096;

/// Record type codes (byte 3 of the header).
pub(crate) mod code {
    pub const HELLO: u8 = 0x01;
    pub const HANDOFF: u8 = 0x02;
    pub const DRAIN: u8 = 0x03;
    pub const STOP: u8 = 0x04;
    pub const READY: u8 = 0x81;
    pub const ADOPTED: u8 = 0x82;
    pub const REJECTED: u8 = 0x83;
    pub const CLOSED: u8 = 0x84;
    pub const LOAD: u8 = 0x85;
    pub const RETURN: u8 = 0x86;
    pub const TAKE: u8 = 0x20;
    pub const SERVING: u8 = 0x21;
    pub const RELEASED: u8 = 0x22;
    pub const VERSIONS: u8 = 0x87;
}

/// Extension kinds of version 2 items (PROTOCOL.md §5.1); a receiver skips kinds it does not
/// know.
pub mod ext {
    /// The address the connection came from when a PROXY protocol header named the client
    /// (the balancer's address); an address as in PROTOCOL.md §6.
    pub const PROXIED_BY: u8 = 1;
    /// The address the client connected to, as the PROXY header says (the balancer's
    /// listening address); an address as in §6.
    pub const DESTINATION: u8 = 2;
    /// The PROXY v2 header's TLVs, raw (type u8, length u16 big-endian, value, as HAProxy's
    /// specification writes them).
    pub const PROXY_TLVS: u8 = 3;
}

/// One extension of a version 2 item: a kind and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    /// What it is ([`ext`]).
    pub kind: u8,
    /// Its bytes.
    pub value: Vec<u8>,
}

impl Ext {
    /// An extension holding an address (as PROTOCOL.md §6 encodes it).
    pub fn address(kind: u8, addr: &Address) -> Ext {
        let mut value = Vec::new();
        encode_addr(addr, &mut value);
        Ext { kind, value }
    }

    /// The address it holds, if it holds exactly one.
    pub fn as_address(&self) -> Option<Address> {
        let mut r = Reader { bytes: &self.value };
        let a = decode_addr(&mut r).ok()?;
        r.bytes.is_empty().then_some(a)
    }
}

/// What a handed-off descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A connected stream socket: the worker serves it.
    Connection,
    /// A listening socket: the worker accepts from it.
    Listener,
}

/// Why a worker refused a handoff. The parent places the socket elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not every descriptor arrived (`MSG_CTRUNC`: the worker is at its descriptor limit).
    Truncated,
    /// The application had no room for another connection.
    Busy,
    /// The record named the item but was malformed (descriptor count mismatch, bad socket).
    Malformed,
    /// The worker is draining or stopping and takes no new work.
    Draining,
    /// The application declined the connection.
    Refused,
    /// Registering the socket failed in the worker.
    Failed,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::Truncated => 1,
            Reason::Busy => 2,
            Reason::Malformed => 3,
            Reason::Draining => 4,
            Reason::Refused => 5,
            Reason::Failed => 6,
        }
    }

    fn from_code(c: u8) -> Option<Reason> {
        Some(match c {
            1 => Reason::Truncated,
            2 => Reason::Busy,
            3 => Reason::Malformed,
            4 => Reason::Draining,
            5 => Reason::Refused,
            6 => Reason::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Truncated => "descriptors truncated",
            Reason::Busy => "worker busy",
            Reason::Malformed => "malformed record",
            Reason::Draining => "worker draining",
            Reason::Refused => "refused by the application",
            Reason::Failed => "adoption failed",
        })
    }
}

/// A connection's *tag*: a `u32` label the worker's application receives with the socket
/// ([`Incoming::tag`](crate::Incoming::tag)), to tell apart where a connection came from
/// without looking at addresses. Who sets it:
///
/// - a connection a listener of the parent accepted: that listener's index among those
///   attached to the parent ([`Parent::listen_tcp`](crate::Parent::listen_tcp)'s is 0, then
///   each [`Parent::attach`](crate::Parent::attach) in order), or
///   [`UNATTACHED_TAG`](crate::UNATTACHED_TAG) for a listener never attached;
/// - a handshake may choose another ([`Route::tag`](crate::handshake::Route::tag));
/// - a socket the application dispatches: the [`Dispatch::tag`](crate::Dispatch::tag) it chose;
/// - a connection a worker accepted on a shared listener: the tag given to
///   [`Parent::share_listener`](crate::Parent::share_listener); on a steered one, the tag given
///   to [`Parent::listen_steered`](crate::Parent::listen_steered) (also when the parent accepted
///   it for a busy or absent worker);
/// - a migrated connection: the tag given to [`Migrator::migrate`](crate::Migrator::migrate).
///
/// On the wire it is the item's `tag` field (`PROTOCOL.md` §5).
pub type Tag = u32;

/// One handed-off socket's description. The descriptor itself travels beside the record, in
/// the same position among the record's descriptors as the item among its items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The parent's id for this handoff, echoed in ADOPTED / REJECTED / CLOSED.
    pub id: u64,
    /// Connection or listener.
    pub kind: Kind,
    /// The socket's [`Tag`].
    pub tag: Tag,
    /// The client's address (for a listener: its own address).
    pub peer: Address,
    /// The local address.
    pub local: Address,
    /// The routing key the parent placed the socket by, if any.
    pub key: Option<Vec<u8>>,
    /// Bytes the parent already read from the socket; the worker delivers them first.
    pub prelude: Vec<u8>,
    /// Extensions (version 2 only: a version 1 record cannot carry them, and they are left
    /// out when one is sent to a peer that speaks only version 1).
    pub ext: Vec<Ext>,
}

/// A worker's load report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Load {
    /// Connections the worker owns now.
    pub open: u32,
    /// Work waiting in the worker (the application's own measure, e.g. queued requests).
    pub queued: u32,
    /// Handlers busy with heavy work right now (the application says so with
    /// [`Incoming::status`](crate::Incoming::status)): new connections would wait behind them.
    pub busy: u32,
}

/// One record. Parent → worker: `Hello`, `Handoff`, `Drain`, `Stop`. Worker → parent: `Ready`,
/// `Adopted`, `Rejected`, `Closed`, `Load`, `Return`. Between parents, for a takeover: `Take`, `Serving`
/// (new → old), `Handoff` and `Released` (old → new).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// First record on a channel: the parent's number for this worker.
    Hello {
        /// The worker's slot in the parent.
        worker: u32,
    },
    /// Sockets for the worker, one descriptor per item.
    Handoff(Vec<Item>),
    /// Take no new work; finish open connections within the deadline, then exit.
    Drain {
        /// Milliseconds the worker has.
        deadline_ms: u32,
    },
    /// Exit now.
    Stop,
    /// The worker answers `Hello`: it is serving.
    Ready {
        /// The worker's process id.
        pid: u32,
    },
    /// These handoffs are the worker's now; the parent closes its copies.
    Adopted(Vec<u64>),
    /// These handoffs were refused; the parent places them elsewhere.
    Rejected(Vec<(u64, Reason)>),
    /// These adopted connections have closed.
    Closed(Vec<u64>),
    /// The worker's current load.
    Load(Load),
    /// Live connections the worker hands back (migration), one descriptor per item, laid out
    /// as in HANDOFF: the parent places each on another worker.
    Return(Vec<Item>),
    /// Takeover, new parent → old: send me your listening sockets (answered with a HANDOFF of
    /// listener items, each named by its key).
    Take,
    /// Takeover, new parent → old: I am serving; stop accepting and send me what you accepted
    /// and did not place.
    Serving,
    /// Takeover, old parent → new: done; everything accepted is yours, I am draining.
    Released,
    /// Worker → parent, version 2 only: the versions this worker speaks (sent right after
    /// READY; a version 1 parent discards it as malformed).
    Versions(Vec<u8>),
}

impl Record {
    /// Descriptors that travel with this record (and that its header declares).
    pub fn fds(&self) -> usize {
        match self {
            Record::Handoff(items) | Record::Return(items) => items.len(),
            _ => 0,
        }
    }
}

/// Why bytes are not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header.
    TooShort,
    /// Longer than [`MAX_RECORD`].
    Oversized,
    /// The first two bytes are not "BT".
    BadMagic,
    /// A version this crate does not speak.
    UnsupportedVersion(u8),
    /// An unknown record type.
    UnknownType(u8),
    /// The body ends before its fields do.
    Truncated,
    /// Bytes left after the last field.
    TrailingBytes,
    /// A field holds a value the format does not allow.
    BadField(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort => f.write_str("record shorter than its header"),
            DecodeError::Oversized => write!(f, "record longer than {MAX_RECORD} bytes"),
            DecodeError::BadMagic => f.write_str("bad magic (not a baton record)"),
            DecodeError::UnsupportedVersion(v) => {
                write!(f, "unsupported protocol version {v} (this side speaks {VERSION})")
            }
            DecodeError::UnknownType(t) => write!(f, "unknown record type {t:#04x}"),
            DecodeError::Truncated => f.write_str("record body truncated"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes after the record"),
            DecodeError::BadField(what) => write!(f, "bad field: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The header fields, readable before the body is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The version the record is written in (1 or 2).
    pub version: u8,
    /// Record type code.
    pub kind: u8,
    /// Items (or ids) in the body.
    pub count: u16,
    /// Descriptors the sender attached.
    pub fds: u16,
}

/// Reads and checks a header.
///
/// # Errors
///
/// [`DecodeError`] for short input, bad magic, or an unsupported version.
pub fn header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort);
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[2] != VERSION && bytes[2] != VERSION_2 {
        return Err(DecodeError::UnsupportedVersion(bytes[2]));
    }
    Ok(Header {
        version: bytes[2],
        kind: bytes[3],
        count: u16::from_le_bytes([bytes[4], bytes[5]]),
        fds: u16::from_le_bytes([bytes[6], bytes[7]]),
    })
}

/// Appends `record` to `out`.
///
/// The caller keeps to the limits ([`MAX_FDS`] items, [`MAX_IDS`] ids, [`MAX_KEY`],
/// [`MAX_PRELUDE`], [`MAX_RECORD`] in all); [`encoded_len`] tells the size beforehand.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    encode_as(record, VERSION, out)
}

/// Appends `record` to `out` in `version` ([`VERSION`] or [`VERSION_2`]): items carry their
/// extensions in version 2 and leave them out in version 1.
pub fn encode_as(record: &Record, version: u8, out: &mut Vec<u8>) {
    let (kind, count) = match record {
        Record::Hello { .. } => (code::HELLO, 0),
        Record::Handoff(items) => (code::HANDOFF, items.len()),
        Record::Return(items) => (code::RETURN, items.len()),
        Record::Drain { .. } => (code::DRAIN, 0),
        Record::Stop => (code::STOP, 0),
        Record::Ready { .. } => (code::READY, 0),
        Record::Adopted(ids) => (code::ADOPTED, ids.len()),
        Record::Rejected(ids) => (code::REJECTED, ids.len()),
        Record::Closed(ids) => (code::CLOSED, ids.len()),
        Record::Load(_) => (code::LOAD, 0),
        Record::Take => (code::TAKE, 0),
        Record::Serving => (code::SERVING, 0),
        Record::Released => (code::RELEASED, 0),
        Record::Versions(v) => (code::VERSIONS, v.len()),
    };
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.push(kind);
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&(record.fds() as u16).to_le_bytes());
    match record {
        Record::Hello { worker } => out.extend_from_slice(&worker.to_le_bytes()),
        Record::Handoff(items) | Record::Return(items) => items.iter().for_each(|item| encode_item(item, version, out)),
        Record::Versions(v) => out.extend_from_slice(v),
        Record::Drain { deadline_ms } => out.extend_from_slice(&deadline_ms.to_le_bytes()),
        Record::Stop | Record::Take | Record::Serving | Record::Released => {}
        Record::Ready { pid } => out.extend_from_slice(&pid.to_le_bytes()),
        Record::Adopted(ids) | Record::Closed(ids) => {
            ids.iter().for_each(|id| out.extend_from_slice(&id.to_le_bytes()))
        }
        Record::Rejected(ids) => {
            for (id, reason) in ids {
                out.extend_from_slice(&id.to_le_bytes());
                out.push(reason.code());
            }
        }
        Record::Load(load) => {
            out.extend_from_slice(&load.open.to_le_bytes());
            out.extend_from_slice(&load.queued.to_le_bytes());
            out.extend_from_slice(&load.busy.to_le_bytes());
        }
    }
}

/// How many items, of the lengths `lens` in order ([`item_len`]), go in the next HANDOFF or
/// RETURN record: at most `max_items` (itself at most [`MAX_FDS`]) and at most [`MAX_RECORD`]
/// bytes with the header. At least one when `lens` is not empty: a single item always fits
/// (its limits keep it under 17 648 bytes). Every sender of items packs its records with this.
pub fn fits(lens: impl IntoIterator<Item = usize>, max_items: usize) -> usize {
    let max_items = max_items.clamp(1, MAX_FDS);
    let mut size = HEADER_LEN;
    let mut n = 0;
    for len in lens {
        if n == max_items || (n > 0 && size + len > MAX_RECORD) {
            break;
        }
        size += len;
        n += 1;
    }
    n
}

/// Bytes `item` takes in a HANDOFF record of `version`.
pub fn item_len_as(item: &Item, version: u8) -> usize {
    let ext = if version >= VERSION_2 { 2 + item.ext.iter().map(|e| 3 + e.value.len()).sum::<usize>() } else { 0 };
    item_len(item) + ext
}

/// Bytes `item` takes in a version 1 HANDOFF record.
pub fn item_len(item: &Item) -> usize {
    8 + 1
        + 1
        + 4
        + addr_len(&item.peer)
        + addr_len(&item.local)
        + item.key.as_ref().map_or(0, |k| 2 + k.len())
        + 4
        + item.prelude.len()
}

/// Bytes `record` takes when encoded.
pub fn encoded_len(record: &Record) -> usize {
    HEADER_LEN
        + match record {
            Record::Hello { .. } | Record::Drain { .. } | Record::Ready { .. } => 4,
            Record::Handoff(items) | Record::Return(items) => items.iter().map(item_len).sum(),
            Record::Stop | Record::Take | Record::Serving | Record::Released => 0,
            Record::Versions(v) => v.len(),
            Record::Adopted(ids) | Record::Closed(ids) => 8 * ids.len(),
            Record::Rejected(ids) => 9 * ids.len(),
            Record::Load(_) => 12,
        }
}

fn encode_item(item: &Item, version: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&item.id.to_le_bytes());
    out.push(match item.kind {
        Kind::Connection => 0,
        Kind::Listener => 1,
    });
    out.push(u8::from(item.key.is_some()));
    out.extend_from_slice(&item.tag.to_le_bytes());
    encode_addr(&item.peer, out);
    encode_addr(&item.local, out);
    if let Some(key) = &item.key {
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key);
    }
    out.extend_from_slice(&(item.prelude.len() as u32).to_le_bytes());
    out.extend_from_slice(&item.prelude);
    if version >= VERSION_2 {
        let len: usize = item.ext.iter().map(|e| 3 + e.value.len()).sum();
        out.extend_from_slice(&(len as u16).to_le_bytes());
        for e in &item.ext {
            out.push(e.kind);
            out.extend_from_slice(&(e.value.len() as u16).to_le_bytes());
            out.extend_from_slice(&e.value);
        }
    }
}

fn addr_len(addr: &Address) -> usize {
    match addr {
        Address::Inet(SocketAddr::V4(_)) => 1 + 4 + 2,
        Address::Inet(SocketAddr::V6(_)) => 1 + 16 + 2 + 4 + 4,
        Address::Unix(None) => 1,
        Address::Unix(Some(path)) => 1 + 2 + path.as_os_str().len(),
    }
}

fn encode_addr(addr: &Address, out: &mut Vec<u8>) {
    use std::os::unix::ffi::OsStrExt;
    match addr {
        Address::Unix(None) => out.push(0),
        Address::Inet(SocketAddr::V4(a)) => {
            out.push(1);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
        }
        Address::Inet(SocketAddr::V6(a)) => {
            out.push(2);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
            out.extend_from_slice(&a.flowinfo().to_le_bytes());
            out.extend_from_slice(&a.scope_id().to_le_bytes());
        }
        Address::Unix(Some(path)) => {
            let bytes = path.as_os_str().as_bytes();
            out.push(3);
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// Decodes one whole record.
///
/// # Errors
///
/// [`DecodeError`] unless `bytes` is exactly one well-formed record of this version.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() > MAX_RECORD {
        return Err(DecodeError::Oversized);
    }
    let head = header(bytes)?;
    let mut r = Reader { bytes: &bytes[HEADER_LEN..] };
    let count = usize::from(head.count);
    let no_items = |head: Header| {
        if head.count != 0 {
            Err(DecodeError::BadField("count must be 0 for this record type"))
        } else {
            Ok(())
        }
    };
    // A HANDOFF's descriptor field is checked by the receiver against the items *and* the
    // descriptors that arrived (a mismatch is answered by rejecting the items by id, so the
    // items must still be read); every other record carries none.
    if head.kind != code::HANDOFF && head.kind != code::RETURN && head.fds != 0 {
        return Err(DecodeError::BadField("descriptors on a record that carries none"));
    }
    let record = match head.kind {
        code::HELLO => {
            no_items(head)?;
            Record::Hello { worker: r.u32()? }
        }
        code::HANDOFF | code::RETURN => {
            if count == 0 || count > MAX_FDS {
                return Err(DecodeError::BadField("handoff item count out of range"));
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(decode_item(&mut r, head.version)?);
            }
            if head.kind == code::HANDOFF {
                Record::Handoff(items)
            } else {
                Record::Return(items)
            }
        }
        code::DRAIN => {
            no_items(head)?;
            Record::Drain { deadline_ms: r.u32()? }
        }
        code::STOP => {
            no_items(head)?;
            Record::Stop
        }
        code::READY => {
            no_items(head)?;
            Record::Ready { pid: r.u32()? }
        }
        code::ADOPTED | code::CLOSED => {
            if count == 0 || count > MAX_IDS {
                return Err(DecodeError::BadField("id count out of range"));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(r.u64()?);
            }
            if head.kind == code::ADOPTED {
                Record::Adopted(ids)
            } else {
                Record::Closed(ids)
            }
        }
        code::REJECTED => {
            if count == 0 || count > MAX_IDS {
                return Err(DecodeError::BadField("id count out of range"));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                let id = r.u64()?;
                let reason = Reason::from_code(r.u8()?).ok_or(DecodeError::BadField("unknown rejection reason"))?;
                ids.push((id, reason));
            }
            Record::Rejected(ids)
        }
        code::LOAD => {
            no_items(head)?;
            Record::Load(Load { open: r.u32()?, queued: r.u32()?, busy: r.u32()? })
        }
        code::TAKE | code::SERVING | code::RELEASED => {
            no_items(head)?;
            match head.kind {
                code::TAKE => Record::Take,
                code::SERVING => Record::Serving,
                _ => Record::Released,
            }
        }
        code::VERSIONS if head.version >= VERSION_2 => {
            if count == 0 || count > 255 {
                return Err(DecodeError::BadField("versions count out of range"));
            }
            Record::Versions(r.take(count)?.to_vec())
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    if !r.bytes.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(record)
}

fn decode_item(r: &mut Reader<'_>, version: u8) -> Result<Item, DecodeError> {
    let id = r.u64()?;
    let kind = match r.u8()? {
        0 => Kind::Connection,
        1 => Kind::Listener,
        _ => return Err(DecodeError::BadField("unknown item kind")),
    };
    let flags = r.u8()?;
    if flags & !1 != 0 {
        return Err(DecodeError::BadField("reserved item flags set"));
    }
    let tag = r.u32()?;
    let peer = decode_addr(r)?;
    let local = decode_addr(r)?;
    let key = if flags & 1 != 0 {
        let len = usize::from(r.u16()?);
        if len > MAX_KEY {
            return Err(DecodeError::BadField("routing key too long"));
        }
        Some(r.take(len)?.to_vec())
    } else {
        None
    };
    let len = r.u32()? as usize;
    if len > MAX_PRELUDE {
        return Err(DecodeError::BadField("prelude too long"));
    }
    let prelude = r.take(len)?.to_vec();
    let mut ext = Vec::new();
    if version >= VERSION_2 {
        let len = usize::from(r.u16()?);
        if len > MAX_EXT {
            return Err(DecodeError::BadField("extensions too long"));
        }
        let mut block = Reader { bytes: r.take(len)? };
        while !block.bytes.is_empty() {
            let kind = block.u8()?;
            let n = usize::from(block.u16()?);
            ext.push(Ext { kind, value: block.take(n)?.to_vec() });
        }
    }
    Ok(Item { id, kind, tag, peer, local, key, prelude, ext })
}

fn decode_addr(r: &mut Reader<'_>) -> Result<Address, DecodeError> {
    use std::os::unix::ffi::OsStrExt;
    Ok(match r.u8()? {
        0 => Address::Unix(None),
        1 => {
            let ip: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
            let port = r.u16()?;
            Address::Inet(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        2 => {
            let ip: [u8; 16] = r.take(16)?.try_into().expect("16 bytes");
            let port = r.u16()?;
            let flowinfo = r.u32()?;
            let scope = r.u32()?;
            Address::Inet(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope)))
        }
        3 => {
            let len = usize::from(r.u16()?);
            // sun_path holds 108 bytes including the terminating NUL.
            if len == 0 || len > 107 {
                return Err(DecodeError::BadField("unix path length out of range"));
            }
            let bytes = r.take(len)?;
            if bytes.contains(&0) {
                return Err(DecodeError::BadField("unix path contains NUL"));
            }
            Address::Unix(Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes))))
        }
        _ => return Err(DecodeError::BadField("unknown address family")),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}
