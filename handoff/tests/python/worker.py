#!/usr/bin/env python3
"""A baton worker in Python: the handoff protocol's conformance test in another language.

Written from PROTOCOL.md alone (not from the Rust worker), with the standard library only.
Section numbers (§) below refer to PROTOCOL.md.

A baton parent starts this program with its end of the channel in BATON_CHANNEL_FD (§11.2);
it can also connect to a named channel given in BATON_CHANNEL_PATH or BATON_CHANNEL_ABSTRACT
(§11.3). The worker then

- answers HELLO with READY, and sends LOAD every 50 ms: that is its heartbeat (§10.4);
- answers every HANDOFF item with ADOPTED or REJECTED (§9.4, §10.2), and sends CLOSED when a
  connection it adopted has closed;
- serves a tiny HTTP/1.1 on every connection: `GET /` is answered `200` with the body
  `python worker <pid>\\n`, then the connection is closed (`Connection: close`). Bytes the
  parent already read (the item's prelude, §5) come before anything read from the socket;
- accepts connections itself from listening sockets the parent shares (§10.8);
- on DRAIN rejects new handoffs (reason 4), finishes its connections and exits when idle or at
  the deadline (§10.6); on STOP exits at once; at end of file on the channel (the parent is
  gone) finishes its connections and exits.

One thread, one poll() loop over the channel, the connections and the shared listeners.

For tests: when PY_WORKER_EXIT_FILE is set, the worker appends "<pid> <reason>\\n" to that file
as it exits by itself (reasons: stop, drained, orphaned, deadline).
"""

import collections
import errno
import os
import select
import socket
import struct
import sys
import time

# --- The wire format (§2-§8) ----------------------------------------------------------------

MAGIC = b"BT"
VERSION = 1
HEADER = struct.Struct("<2sBBHH")  # magic, version, type, count, fds (§3); little-endian (§2)

# Record types (§4). Parent -> worker:
HELLO, HANDOFF, DRAIN, STOP = 0x01, 0x02, 0x03, 0x04
# Parent <-> parent, takeover only (§12); never meant for a worker:
TAKE, SERVING, RELEASED = 0x20, 0x21, 0x22
# Worker -> parent:
READY, ADOPTED, REJECTED, CLOSED, LOAD, RETURN = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86
NAMES = {
    HELLO: "HELLO", HANDOFF: "HANDOFF", DRAIN: "DRAIN", STOP: "STOP", TAKE: "TAKE",
    SERVING: "SERVING", RELEASED: "RELEASED", READY: "READY", ADOPTED: "ADOPTED",
    REJECTED: "REJECTED", CLOSED: "CLOSED", LOAD: "LOAD", RETURN: "RETURN",
}

# Limits (§7).
MAX_RECORD = 65536
MAX_FDS = 253
MAX_IDS = 4096
MAX_KEY = 1024
MAX_PRELUDE = 16384
MAX_UNIX_PATH = 107

# Handoff item kinds (§5).
CONNECTION, LISTENER = 0, 1

# Rejection reasons (§8).
R_TRUNCATED, R_BUSY, R_MALFORMED, R_DRAINING, R_REFUSED, R_FAILED = 1, 2, 3, 4, 5, 6

# Timing (appendix: reference defaults).
TICK = 0.050  # LOAD heartbeat, and how often deadlines are checked
ORPHAN_DEADLINE = 30.0  # after end of file on the channel

# This worker's own choices, not the protocol's.
LINGER = 2.0  # after answering: how long to wait for the client's end of file
MAX_REQUEST_HEAD = 16384
CONN_READ = 65536

PID = os.getpid()


def log(message):
    print(f"python worker {PID}: {message}", file=sys.stderr, flush=True)


class Malformed(Exception):
    """The bytes are not a record (§9.2)."""


class Reader:
    """Reads a record's fields in order; running past the end makes it malformed."""

    def __init__(self, data, pos):
        self.data = data
        self.pos = pos

    def take(self, n):
        if self.pos + n > len(self.data):
            raise Malformed("truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack("<H", self.take(2))[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]


def read_address(r):
    """An address (§6), as (family, details)."""
    family = r.u8()
    if family == 0:  # unnamed Unix socket, or unknown
        return (0, None)
    if family == 1:  # IPv4: 4 octets in network order, then the port in little-endian
        host = socket.inet_ntop(socket.AF_INET, r.take(4))
        return (1, (host, r.u16()))
    if family == 2:  # IPv6: 16 octets, port, flowinfo, scope id
        host = socket.inet_ntop(socket.AF_INET6, r.take(16))
        port, flowinfo, scope_id = r.u16(), r.u32(), r.u32()
        return (2, (host, port, flowinfo, scope_id))
    if family == 3:  # Unix path: u16 length, 1..=107 bytes, no NUL
        n = r.u16()
        if not 1 <= n <= MAX_UNIX_PATH:
            raise Malformed(f"unix path of {n} bytes")
        path = r.take(n)
        if 0 in path:
            raise Malformed("NUL in a unix path")
        return (3, path)
    raise Malformed(f"address family {family}")


class Item:
    """One handed-off socket's description (§5). Its descriptor travels beside the record."""

    def __init__(self, r):
        self.id = r.u64()
        self.kind = r.u8()
        if self.kind not in (CONNECTION, LISTENER):
            raise Malformed(f"item kind {self.kind}")
        flags = r.u8()
        if flags & 0xFE:
            raise Malformed(f"reserved item flags {flags:#x}")
        self.tag = r.u32()
        self.peer = read_address(r)
        self.local = read_address(r)
        self.key = None
        if flags & 1:
            key_len = r.u16()
            if key_len > MAX_KEY:
                raise Malformed(f"key of {key_len} bytes")
            self.key = r.take(key_len)
        prelude_len = r.u32()
        if prelude_len > MAX_PRELUDE:
            raise Malformed(f"prelude of {prelude_len} bytes")
        self.prelude = r.take(prelude_len)


class Record:
    def __init__(self, rtype, fds_declared, body):
        self.type = rtype
        self.fds_declared = fds_declared  # the header's fds field
        self.body = body  # items, ids, (id, reason) pairs or a tuple of integers, by type

    @property
    def name(self):
        return NAMES[self.type]


def decode(data):
    """Decodes one record, every check of §9.2, or raises Malformed."""
    if len(data) < HEADER.size:
        raise Malformed(f"{len(data)} bytes, shorter than a header")
    if len(data) > MAX_RECORD:
        raise Malformed("oversized")
    magic, version, rtype, count, fds = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Malformed(f"magic {magic!r}")
    if version != VERSION:
        raise Malformed(f"version {version}")  # §13: a version we do not speak
    if rtype not in NAMES:
        raise Malformed(f"unknown type {rtype:#04x}")
    if rtype not in (HANDOFF, RETURN) and fds != 0:
        raise Malformed(f"{NAMES[rtype]} declares {fds} descriptors")
    r = Reader(data, HEADER.size)
    if rtype in (HANDOFF, RETURN):
        if not 1 <= count <= MAX_FDS:
            raise Malformed(f"{NAMES[rtype]} with {count} items")
        body = [Item(r) for _ in range(count)]
    elif rtype in (ADOPTED, CLOSED, REJECTED):
        if not 1 <= count <= MAX_IDS:
            raise Malformed(f"{NAMES[rtype]} with {count} ids")
        if rtype == REJECTED:
            body = [(r.u64(), r.u8()) for _ in range(count)]
            if any(not R_TRUNCATED <= reason <= R_FAILED for _, reason in body):
                raise Malformed("rejection reason out of range")
        else:
            body = [r.u64() for _ in range(count)]
    else:
        if count != 0:
            raise Malformed(f"{NAMES[rtype]} with count {count}")
        # HELLO {worker}, DRAIN {deadline_ms}, READY {pid}: one u32; LOAD: three; others none.
        words = {HELLO: 1, DRAIN: 1, READY: 1, LOAD: 3}.get(rtype, 0)
        body = tuple(r.u32() for _ in range(words))
    if r.pos != len(data):
        raise Malformed(f"{len(data) - r.pos} trailing bytes")
    return Record(rtype, fds, body)


def encode(rtype, count=0, body=b""):
    """A worker record: header (never with descriptors: a worker sends only RETURN with
    descriptors, and this one never migrates) and body."""
    return HEADER.pack(MAGIC, VERSION, rtype, count, 0) + body


def encode_ids(rtype, entries):
    """ADOPTED / CLOSED (ids) or REJECTED ((id, reason) pairs), at most MAX_IDS per record."""
    records = []
    for start in range(0, len(entries), MAX_IDS):
        chunk = entries[start:start + MAX_IDS]
        if rtype == REJECTED:
            body = b"".join(struct.pack("<QB", i, reason) for i, reason in chunk)
        else:
            body = b"".join(struct.pack("<Q", i) for i in chunk)
        records.append(encode(rtype, len(chunk), body))
    return records


# --- The channel (§1, §9.1, §11) --------------------------------------------------------------

ENV_FD, ENV_PATH, ENV_ABSTRACT = "BATON_CHANNEL_FD", "BATON_CHANNEL_PATH", "BATON_CHANNEL_ABSTRACT"

# Outcomes of one receive (§9.1).
NOTHING, END, MALFORMED, TRUNCATED, MISMATCH, GOOD = "nothing", "end", "malformed", "truncated", \
    "mismatch", "good"

CONTROL_LEN = socket.CMSG_SPACE(MAX_FDS * 4)  # room for 253 descriptors (§1 Receive)


class EndOfChannel(Exception):
    """The parent is gone, or the channel failed."""


def close_all(fds):
    for fd in fds:
        os.close(fd)


class Channel:
    """The worker's end of the SEQPACKET channel: one record per packet, in order."""

    def __init__(self, sock):
        self.sock = sock
        self.outbox = collections.deque()  # encoded records a full channel refused, in order
        self.retry_at = None  # when the kernel refused for lack of buffers (ENOBUFS)

    def fileno(self):
        return self.sock.fileno()

    def send(self, record):
        """Queues a record behind any still unsent, and sends what the channel takes now."""
        self.outbox.append(record)
        self.flush()

    def flush(self):
        """Sends queued records in order until the channel is full (§1 Send)."""
        if self.retry_at is not None and time.monotonic() < self.retry_at:
            return
        self.retry_at = None
        while self.outbox:
            try:
                # EINTR is retried by Python itself (PEP 475).
                self.sock.sendmsg([self.outbox[0]], [], socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return  # nothing was sent; wait until writable
            except OSError as e:
                if e.errno in (errno.ENOBUFS, errno.ETOOMANYREFS):
                    # Nothing sent, peer not at fault, and the channel is still writable:
                    # retry on the next tick rather than spin on writability.
                    self.retry_at = time.monotonic() + TICK
                    return
                # EPIPE / ECONNRESET: the parent is gone; anything else: the channel failed.
                raise EndOfChannel(os.strerror(e.errno)) from e
            self.outbox.popleft()

    def wants_write(self):
        return bool(self.outbox) and self.retry_at is None

    def hung_up(self):
        """End of channel, as opposed to an empty packet (§1 Empty packet)."""
        p = select.poll()
        p.register(self.sock, select.POLLIN | select.POLLRDHUP)
        hang_up = select.POLLRDHUP | select.POLLHUP | select.POLLERR
        return any(events & hang_up for _, events in p.poll(0))

    def receive(self):
        """One recvmsg, classified as §9.1 says: (outcome, record or None, descriptors).

        Descriptors of anything but a good record are closed here already."""
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                MAX_RECORD + 1, CONTROL_LEN, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return NOTHING, None, []
        except (ConnectionResetError, BrokenPipeError):
            return END, None, []
        fds = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(payload) // 4
                fds.extend(struct.unpack(f"{n}i", payload[:4 * n]))
        if not data and not fds:
            if self.hung_up():
                return END, None, []
            log("malformed record ignored: empty packet")
            return MALFORMED, None, []
        if flags & socket.MSG_TRUNC or len(data) > MAX_RECORD:
            log("malformed record ignored: oversized")
            close_all(fds)
            return MALFORMED, None, []
        try:
            record = decode(data)
        except Malformed as e:
            log(f"malformed record ignored: {e}")
            close_all(fds)
            return MALFORMED, None, []
        if flags & socket.MSG_CTRUNC:
            close_all(fds)
            return TRUNCATED, record, []
        expected = len(record.body) if record.type in (HANDOFF, RETURN) else 0
        if record.fds_declared != len(fds) or record.fds_declared != expected:
            close_all(fds)
            return MISMATCH, record, []
        return GOOD, record, fds


def peer_is_same_user(sock):
    """The credential check on a named channel's parent (§11.4, default setting: same uid)."""
    ucred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    _pid, uid, _gid = struct.unpack("iII", ucred)
    return uid == os.geteuid()


def channel_from_env():
    """Finds the channel (§11.1): the first variable present wins, a bad value is an error.
    Returns None when this process was not started as a worker."""
    fd_text, path, abstract = (os.environ.get(v) for v in (ENV_FD, ENV_PATH, ENV_ABSTRACT))
    # Read once, then removed, so that our own children never take themselves for workers.
    for v in (ENV_FD, ENV_PATH, ENV_ABSTRACT):
        os.environ.pop(v, None)
    if fd_text is not None:
        # §11.2: an inherited end of a socket pair.
        if not (fd_text.isascii() and fd_text.isdigit()):
            raise SystemExit(f"{ENV_FD}={fd_text!r} is not a descriptor number")
        fd = int(fd_text)
        try:
            os.get_inheritable(fd)  # F_GETFD: fails (EBADF) when the descriptor is not open
            sock = socket.socket(fileno=fd)  # takes family and type from the descriptor
        except OSError as e:
            raise SystemExit(f"{ENV_FD}={fd}: {e}") from e  # (the descriptor is left alone)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            sock.detach()  # not ours to close
            raise SystemExit(f"descriptor {fd} is not an AF_UNIX SOCK_SEQPACKET socket")
        os.set_inheritable(fd, False)  # close-on-exec again, for our own children
    elif path is not None or abstract is not None:
        # §11.3: connect to the parent's named socket, then check who it is.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # close-on-exec (PEP 446)
        if path is not None:
            address = os.fsencode(path)
        else:
            address = b"\0" + os.fsencode(abstract)  # Python passes the exact length, no padding
        try:
            sock.connect(address)  # (EINTR is retried by Python itself)
        except OSError as e:
            raise SystemExit(f"cannot reach the parent at {path or abstract!r}: {e}") from e
        if not peer_is_same_user(sock):
            sock.close()
            raise SystemExit("the channel's peer runs as another user")
    else:
        return None
    sock.setblocking(False)
    return Channel(sock)


# --- The application: a tiny HTTP/1.1 server ----------------------------------------------------

READING, WRITING, LINGERING = "reading", "writing", "lingering"

STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
          431: "Request Header Fields Too Large"}


def http_response(head):
    """The answer to one request head (the bytes before the blank line)."""
    request_line = head.split(b"\r\n", 1)[0]
    parts = request_line.split(b" ")
    method = parts[0]
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return answer(400, b"bad request\n")
    if method not in (b"GET", b"HEAD"):
        return answer(405, b"only GET\n")
    if parts[1] != b"/":
        return answer(404, b"not found\n")
    return answer(200, f"python worker {PID}\n".encode(), with_body=method == b"GET")


def answer(status, body, with_body=True):
    head = (f"HTTP/1.1 {status} {STATUS[status]}\r\n"
            "Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head + (body if with_body else b"")


class Conn:
    """One connection: read a request head, write the answer, shut down, wait for the client's
    end of file (so that closing never resets an unread answer), close."""

    def __init__(self, sock, handoff_id, prelude):
        self.sock = sock
        self.id = handoff_id  # None for a connection accepted from a shared listener
        self.inbuf = bytearray(prelude)  # §5: the prelude comes before anything read here
        self.outbuf = bytearray()
        self.state = READING
        self.linger_until = None

    def events(self):
        return select.POLLOUT if self.state == WRITING else select.POLLIN


# --- The worker: the conversation (§10) ---------------------------------------------------------

SERVING_STATE, DRAINING_STATE, ORPHANED_STATE = "serving", "draining", "orphaned"


class Worker:
    def __init__(self, channel):
        self.channel = channel  # None once orphaned
        self.state = SERVING_STATE
        self.deadline = None  # exit by then at the latest (draining or orphaned)
        self.conns = {}  # fd -> Conn
        self.listeners = {}  # fd -> (listening socket, tag)
        self.adopted, self.rejected, self.closed = [], [], []  # reports for this round
        self.next_load = time.monotonic() + TICK  # the first LOAD on the first tick (§10.1)
        self.exit_reason = None

    # The loop.

    def run(self):
        while self.exit_reason is None:
            self.poll_once()
            if self.exit_reason is None:
                self.report()
                self.check_done()
        return self.exit_reason

    def poll_once(self):
        p = select.poll()
        if self.channel is not None:
            p.register(self.channel, select.POLLIN | (select.POLLOUT if self.channel.wants_write() else 0))
        for fd, conn in self.conns.items():
            p.register(fd, conn.events())
        for fd in self.listeners:
            p.register(fd, select.POLLIN)
        now = time.monotonic()
        wake = [self.next_load]
        if self.deadline is not None:
            wake.append(self.deadline)
        wake += [c.linger_until for c in self.conns.values() if c.linger_until is not None]
        if self.channel is not None and self.channel.retry_at is not None:
            wake.append(self.channel.retry_at)
        timeout_ms = max(0, int((min(wake) - now) * 1000) + 1)
        for fd, events in p.poll(timeout_ms):
            if self.exit_reason is not None:
                return
            if self.channel is not None and fd == self.channel.fileno():
                self.on_channel(events)
            elif fd in self.listeners:
                self.accept_from(fd)
            elif fd in self.conns:
                self.on_conn(self.conns[fd], events)
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.linger_until is not None and now >= conn.linger_until:
                self.finish(conn)

    # The channel.

    def on_channel(self, events):
        if events & select.POLLOUT:
            self.flush()
        # Read what is there (the hang-up, if any, shows up as a receive of end of channel),
        # a bounded number of records per round so connections get their turn.
        for _ in range(64):
            if self.channel is None or self.exit_reason is not None:
                return
            outcome, record, fds = self.channel.receive()
            if outcome == NOTHING:
                return
            if outcome == END:
                self.orphan("end of file on the channel")
                return
            if outcome == MALFORMED:
                continue  # descriptors closed, no reply, the channel stays open (§9.3)
            if outcome in (TRUNCATED, MISMATCH):
                # §9.3: a HANDOFF's items are all rejected; any other record is discarded.
                if record.type == HANDOFF:
                    reason = R_TRUNCATED if outcome == TRUNCATED else R_MALFORMED
                    self.rejected += [(item.id, reason) for item in record.body]
                log(f"{record.name} with {outcome} descriptors")
                continue
            self.on_record(record, fds)

    def on_record(self, record, fds):
        if record.type == HELLO:
            self.send(encode(READY, 0, struct.pack("<I", PID)))
        elif record.type == HANDOFF:
            for item, fd in zip(record.body, fds):
                self.on_item(item, fd)
        elif record.type == DRAIN:
            self.drain(record.body[0])
        elif record.type == STOP:
            self.exit_reason = "stop"
        else:
            # A good record not meant for a worker (§9.3): close what it carried, ignore it.
            close_all(fds)
            log(f"ignored a {record.name} record")

    def on_item(self, item, fd):
        """Answers one HANDOFF item (§9.4), in the order the checks are listed there."""
        if self.state != SERVING_STATE:
            os.close(fd)
            self.rejected.append((item.id, R_DRAINING))
            return
        try:
            sock = socket.socket(fileno=fd)  # asks the descriptor its family and type
        except OSError:  # not a socket at all (ENOTSOCK)
            os.close(fd)
            self.rejected.append((item.id, R_MALFORMED))
            return
        if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            sock.close()
            self.rejected.append((item.id, R_MALFORMED))
        elif item.kind == LISTENER:
            self.share(item, sock)
        elif sock.type != socket.SOCK_STREAM:
            sock.close()  # our application serves byte streams only: it declines (§8)
            self.rejected.append((item.id, R_REFUSED))
        else:
            sock.setblocking(False)
            conn = Conn(sock, item.id, item.prelude)
            self.conns[sock.fileno()] = conn
            self.adopted.append(item.id)
            self.serve(conn)  # the prelude may already hold a whole request

    def share(self, item, sock):
        """A listening socket to accept from (§10.8)."""
        try:
            listening = sock.type == socket.SOCK_STREAM and \
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        except OSError:
            listening = False
        if not listening:
            sock.close()
            self.rejected.append((item.id, R_MALFORMED))
            return
        sock.setblocking(False)  # (shared by every copy of this socket, as §10.8 notes)
        self.listeners[sock.fileno()] = (sock, item.tag)
        self.adopted.append(item.id)

    def accept_from(self, fd):
        sock, _tag = self.listeners[fd]
        for _ in range(16):
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another process took it, or nothing left
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                log(f"accept: {e}")  # e.g. out of descriptors: try again next round
                return
            client.setblocking(False)
            # No id: never in ADOPTED or CLOSED, only in LOAD's open count.
            conn = Conn(client, None, b"")
            self.conns[client.fileno()] = conn

    def send(self, record):
        if self.channel is None:
            return  # orphaned: nothing is sent any more
        try:
            self.channel.send(record)
        except EndOfChannel as e:
            self.orphan(f"channel: {e}")

    def flush(self):
        if self.channel is not None:
            try:
                self.channel.flush()
            except EndOfChannel as e:
                self.orphan(f"channel: {e}")

    def report(self):
        """This round's answers, then (on the tick) LOAD, so that a LOAD never counts a
        connection the parent has not heard of (§10.2)."""
        adopted, rejected, closed = self.adopted, self.rejected, self.closed
        self.adopted, self.rejected, self.closed = [], [], []
        if self.channel is None:
            return
        for rtype, entries in ((ADOPTED, adopted), (REJECTED, rejected), (CLOSED, closed)):
            for record in encode_ids(rtype, entries):
                self.send(record)
        now = time.monotonic()
        if now >= self.next_load:
            self.next_load = now + TICK
            # While older records still wait for room, a LOAD would only queue behind them.
            if self.channel is not None and not self.channel.outbox:
                self.send(encode(LOAD, 0, struct.pack("<III", len(self.conns), 0, 0)))
        self.flush()

    # Drain, stop, end of file (§10.6).

    def set_deadline(self, seconds):
        deadline = time.monotonic() + seconds
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)

    def drain(self, deadline_ms):
        self.set_deadline(deadline_ms / 1000)
        self.close_listeners()
        if self.state == SERVING_STATE:
            self.state = DRAINING_STATE

    def orphan(self, why):
        """The parent is gone (or the channel failed): stop reading and sending, finish what we
        own, exit."""
        log(f"{why}: finishing {len(self.conns)} connections")
        self.state = ORPHANED_STATE
        channel, self.channel = self.channel, None
        try:
            channel.sock.shutdown(socket.SHUT_RDWR)  # a parent still there sees end of file
        except OSError:
            pass
        channel.sock.close()
        self.close_listeners()
        self.set_deadline(ORPHAN_DEADLINE)

    def close_listeners(self):
        for sock, _tag in self.listeners.values():
            sock.close()  # close, never shutdown: other processes accept from it too
        self.listeners.clear()

    def check_done(self):
        if self.state == SERVING_STATE:
            return
        unsent = self.channel is not None and self.channel.outbox
        if not self.conns and not unsent:
            self.exit_reason = "drained" if self.state == DRAINING_STATE else "orphaned"
        elif time.monotonic() >= self.deadline:
            for conn in list(self.conns.values()):
                self.finish(conn)
            self.report()
            self.exit_reason = "deadline"

    # Connections.

    def on_conn(self, conn, events):
        if conn.state == WRITING:
            if events & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                self.write(conn)
            return
        try:
            data = conn.sock.recv(CONN_READ)
        except BlockingIOError:
            return
        except OSError:
            self.finish(conn)  # reset by the client
            return
        if conn.state == LINGERING:
            if not data:
                self.finish(conn)  # the client has read our answer and closed
            return  # anything else the client sends now is discarded
        if not data:
            self.finish(conn)  # end of file before a whole request
            return
        conn.inbuf += data
        self.serve(conn)

    def serve(self, conn):
        """Answers the request once its head is complete."""
        end = conn.inbuf.find(b"\r\n\r\n")
        if end >= 0:
            conn.outbuf = bytearray(http_response(bytes(conn.inbuf[:end])))
        elif len(conn.inbuf) > MAX_REQUEST_HEAD:
            conn.outbuf = bytearray(answer(431, b"request head too long\n"))
        else:
            return
        conn.inbuf.clear()
        conn.state = WRITING
        self.write(conn)

    def write(self, conn):
        try:
            sent = conn.sock.send(conn.outbuf, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return
        except OSError:
            self.finish(conn)
            return
        del conn.outbuf[:sent]
        if not conn.outbuf:
            # Answered: our end of file now (§9.4: shutdown, so the client sees it at once
            # even if the parent still holds a copy), then wait for the client's.
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.finish(conn)
                return
            conn.state = LINGERING
            conn.linger_until = time.monotonic() + LINGER

    def finish(self, conn):
        """Closes a connection: shutdown first (§9.4), then close; CLOSED for a handed one."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        fd = conn.sock.fileno()
        conn.sock.close()
        del self.conns[fd]
        if conn.id is not None:
            self.closed.append(conn.id)


def main():
    channel = channel_from_env()
    if channel is None:
        raise SystemExit(f"not started as a baton worker: set {ENV_FD} (or {ENV_PATH}, {ENV_ABSTRACT})")
    reason = Worker(channel).run()
    log(f"exiting: {reason}")
    exit_file = os.environ.get("PY_WORKER_EXIT_FILE")
    if exit_file:
        with open(exit_file, "a") as f:
            f.write(f"{PID} {reason}\n")


if __name__ == "__main__":
    main()
