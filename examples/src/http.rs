//! A small HTTP/1.1 server on baton's transport: keep-alive, `Connection: close`, pipelining
//! (requests answered in order, reading paused while answers pile up), a bounded request head,
//! and a graceful drain. It serves the `prefork` example's workers and the single-process
//! variant of the end-to-end benchmark.
//!
//! The shape is the one we recommend for protocol code: the server and one actor per
//! connection live on the reactor's [`baton_runtime::EventLoop`], so a request is read, parsed
//! and answered on the reactor thread with no hop to another thread; work that blocks goes to
//! an actor on the pool, and the connection waits for its answer (later pipelined requests wait
//! behind it, in order) while the others keep being served. A handoff worker tells the parent
//! it is busy meanwhile, so new connections go elsewhere.
//!
//! Routes: `GET /` answers `200` with `hello from worker <pid>`; `GET /slow?ms=N` does the same
//! after a pool thread has been blocked for `N` milliseconds (at most 10 s: a heavy request);
//! anything else is `404`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use slab::Slab;

use baton_handoff::WorkerEvent;
use baton_runtime::{Actor, Addr, Context, Mailbox, Recipient, Runtime, SpawnError};
use baton_transport::{Accepted, ConnEvent, ConnOptions, Connection, ListenOptions, Reactor};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (a body is buffered whole before the request is answered).
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest `/slow` sleep honoured.
pub const MAX_SLOW: Duration = Duration::from_secs(10);

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string (after `?`), if any.
    pub query: Option<&'a str>,
    /// The client asked to close after this request (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// Bytes of body that follow (`Content-Length`).
    pub body_len: usize,
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole request head (the body may still be arriving: see `body_len`).
    Request(Request<'a>),
    /// Not a whole head yet.
    Incomplete,
    /// Not HTTP we serve; answer 400 and close.
    Bad(&'static str),
    /// The head is longer than [`MAX_HEAD`]; answer 431 and close.
    TooLarge,
}

/// Parses the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Parsed::TooLarge } else { Parsed::Incomplete };
    };
    if end + 4 > MAX_HEAD {
        return Parsed::TooLarge;
    }
    let Ok(head) = std::str::from_utf8(&buf[..end]) else { return Parsed::Bad("head is not UTF-8") };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad("malformed request line");
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Parsed::Bad("unsupported HTTP version"),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut close = http10;
    let mut body_len = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { return Parsed::Bad("malformed header") };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if n > MAX_BODY => return Parsed::Bad("request body over 1 MiB"),
                Ok(n) => body_len = n,
                Err(_) => return Parsed::Bad("bad Content-Length"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad("chunked request bodies are not supported");
        }
    }
    Parsed::Request(Request { method, path, query, close, head_len: end + 4, body_len })
}

/// A complete response.
pub fn response(status: &str, body: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n{body}", body.len())
        .into_bytes()
}

/// How long a request blocks its handler: `Some` for `GET /slow?ms=N` (capped at
/// [`MAX_SLOW`]), `None` for everything answered at once.
pub fn heavy(req: &Request<'_>) -> Option<Duration> {
    if (req.method, req.path) != ("GET", "/slow") {
        return None;
    }
    let ms = req
        .query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Some(Duration::from_millis(ms).min(MAX_SLOW))
}

/// The answer for one request, without the wait of a heavy one (see [`heavy`]).
pub fn reply(req: &Request<'_>, close: bool) -> Vec<u8> {
    match (req.method, req.path) {
        ("GET", "/") | ("GET", "/slow") => hello(close),
        _ => response("404 Not Found", "not found\n", close),
    }
}

/// `200 OK` with `hello from worker <pid>`.
pub fn hello(close: bool) -> Vec<u8> {
    // The pid, read once per process (a system call per request otherwise).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    response("200 OK", &format!("hello from worker {}\n", PID.get_or_init(std::process::id)), close)
}

/// The answer for one request, blocking the calling thread for a heavy one (for servers that
/// have nowhere else to put the wait: the benchmark's hand-written baseline).
pub fn answer(req: &Request<'_>, close: bool) -> Vec<u8> {
    if let Some(wait) = heavy(req) {
        std::thread::sleep(wait);
    }
    reply(req, close)
}

/// How long the kernel holds a connection whose client has not spoken yet (see
/// [`HttpServer::listen_options`]).
const DEFER_ACCEPT: Duration = Duration::from_secs(1);

/// The HTTP server actor's messages.
#[derive(Debug)]
pub enum HttpMsg {
    /// From the handoff worker: a socket, or the start of a drain.
    Worker(WorkerEvent),
    /// From a listener of this process (the single-process server).
    Accepted(Accepted),
}

impl From<Accepted> for HttpMsg {
    fn from(a: Accepted) -> HttpMsg {
        HttpMsg::Accepted(a)
    }
}

/// One connection's actor, on the reactor's event loop: a heavy request is handed to a
/// [`HeavyRequest`] on the pool and blocks only its own connection, and the parent hears about
/// it through `Status::busy`.
struct HttpConn {
    /// Where the server finds this actor for a drain; its entry goes when the actor is dropped.
    registry: Registry,
    slot: usize,
    conn: Option<Connection>,
    buf: Vec<u8>,
    /// A heavy request is being worked on: answer nothing more (and read nothing more, so the
    /// client's TCP window holds what it pipelines) until it is done. Holds the worker's busy
    /// announcement (when there is a parent to tell), and whether the client asked to close.
    heavy: Option<(Option<baton_handoff::Busy>, bool)>,
    /// Responses written: a connection that has not had one is not idle, only new (its first
    /// request may be on the wire), and a drain must not close it.
    answered: u32,
    /// A response with `Connection: close` went out: ignore what follows.
    closing: bool,
    /// The client will send no more; close once what it sent is answered.
    read_eof: bool,
    /// Reading paused because answers pile up unread (`HighWater`).
    write_backlog: bool,
    draining: bool,
    status: Option<baton_handoff::Status>,
    /// The socket, until the actor adopts it in its first turn (`started`): its events then
    /// queue behind that turn, and no message carries the socket in.
    socket: Option<Socket>,
}

/// A connection's socket, before its actor adopts it.
enum Socket {
    /// From the worker.
    Incoming(baton_handoff::Incoming),
    /// Accepted in this process.
    Accepted(Accepted, Reactor),
}

/// What a connection's actor hears.
#[derive(Debug)]
enum ConnMsg {
    /// The connection's events.
    Event(ConnEvent),
    /// The worker drains: close when idle.
    Drain,
    /// A heavy request's work, done on a pool thread, is over: answer it.
    HeavyDone,
}

/// Does a heavy request's blocking work on a pool thread, tells its connection's actor, and
/// stops.
struct HeavyRequest {
    wait: Duration,
    to: Addr<HttpConn>,
}

impl Actor for HeavyRequest {
    type Message = ();
    fn handle(&mut self, ctx: &mut Context<Self>, _: ()) {
        std::thread::sleep(self.wait);
        // The connection reads nothing while it waits for us, so its mailbox has room unless
        // events queued just before; it may also have closed, and then nobody needs the answer.
        let deadline = std::time::Instant::now() + MAX_SLOW;
        while let Err(baton_runtime::TrySendError::Full(_)) = self.to.try_send(ConnMsg::HeavyDone) {
            if std::time::Instant::now() >= deadline {
                log::warn!("http: a connection's mailbox stayed full; its heavy answer is lost");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        ctx.stop();
    }
}

impl HttpConn {
    fn serve(&mut self, ctx: &mut Context<Self>) {
        while !self.closing && self.heavy.is_none() {
            let (reply, used, close) = match parse(&self.buf) {
                Parsed::Incomplete => break,
                Parsed::Request(req) => {
                    if self.buf.len() < req.head_len + req.body_len {
                        break; // the body is still arriving
                    }
                    let close = req.close || self.draining;
                    if let Some(wait) = heavy(&req) {
                        let (used, asked_close) = (req.head_len + req.body_len, req.close);
                        let job = HeavyRequest { wait, to: ctx.address() };
                        // A fresh actor's mailbox takes its one message.
                        match ctx.spawn(job, Mailbox::Bounded(1)).map(|job| job.try_send(())) {
                            Ok(Ok(())) => {
                                self.buf.drain(..used);
                                // The parent sends new connections elsewhere meanwhile.
                                self.heavy = Some((self.status.as_ref().map(|s| s.busy()), asked_close));
                                self.update_reading();
                                break;
                            }
                            _ => (response("503 Service Unavailable", "shutting down\n", true), used, true),
                        }
                    } else {
                        (reply(&req, close), req.head_len + req.body_len, close)
                    }
                }
                Parsed::Bad(why) => (response("400 Bad Request", &format!("{why}\n"), true), self.buf.len(), true),
                Parsed::TooLarge => (response("431 Request Header Fields Too Large", "", true), self.buf.len(), true),
            };
            self.buf.drain(..used);
            if !self.send(&reply, close) {
                break;
            }
        }
    }

    /// Writes one response; false once the connection is closing.
    fn send(&mut self, reply: &[u8], close: bool) -> bool {
        let Some(conn) = self.conn.as_ref() else { return false };
        self.answered += 1;
        // The last answer and the end of stream leave in one segment.
        let written = if close { conn.write_and_close(reply) } else { conn.write(reply) };
        if written.is_err() {
            // Closed under us, or a client that pipelines without reading: drop it.
            conn.abort();
            self.closing = true;
            return false;
        }
        self.closing |= close;
        !self.closing
    }

    /// Closes after the answers already written (once).
    fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            if let Some(conn) = self.conn.as_ref() {
                conn.close();
            }
        }
    }

    fn close_if_idle(&mut self) {
        if self.conn.is_some() && self.buf.is_empty() && self.answered > 0 && self.heavy.is_none() {
            self.close();
        }
    }

    /// Reads while nothing holds it back: neither unread answers nor a heavy request.
    fn update_reading(&self) {
        if let Some(conn) = self.conn.as_ref() {
            if self.write_backlog || self.heavy.is_some() {
                conn.pause_reading();
            } else {
                conn.resume_reading();
            }
        }
    }

    /// After the client's end of input: close once nothing it sent waits for an answer (a
    /// heavy request's answer, or requests pipelined behind it).
    fn close_after_input(&mut self) {
        if self.read_eof && self.heavy.is_none() {
            self.close();
        }
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        // Whatever ended the actor (a stop, a panic in a handler, a spawn refused at shutdown).
        self.registry.lock().try_remove(self.slot);
    }
}

impl Actor for HttpConn {
    type Message = ConnMsg;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let events = ctx.address().recipient_map(ConnMsg::Event, |m| match m {
            ConnMsg::Event(e) => Some(e),
            _ => None,
        });
        let adopted = match self.socket.take() {
            Some(Socket::Incoming(inc)) => inc.adopt(events, HttpServer::options()),
            Some(Socket::Accepted(acc, reactor)) => {
                reactor.adopt(acc.stream, HttpServer::options(), events).inspect(|conn| drop(conn.set_nodelay(true)))
            }
            None => return,
        };
        match adopted {
            Ok(conn) => self.conn = Some(conn),
            Err(_) => ctx.stop(),
        }
    }

    fn handle(&mut self, ctx: &mut Context<Self>, msg: ConnMsg) {
        match msg {
            ConnMsg::Drain => {
                self.draining = true;
                self.close_if_idle();
            }
            ConnMsg::Event(ConnEvent::Data(_, bytes)) => {
                if !self.closing {
                    if self.buf.is_empty() {
                        self.buf = bytes; // the common case: a whole request in one read, no copy
                    } else {
                        self.buf.extend_from_slice(&bytes);
                    }
                }
                self.serve(ctx);
            }
            ConnMsg::HeavyDone => {
                let Some((_busy, asked_close)) = self.heavy.take() else { return };
                // Decided now, not when the request came: a drain may have begun meanwhile.
                if !self.closing && self.send(&hello(asked_close || self.draining), asked_close || self.draining) {
                    self.update_reading();
                    self.serve(ctx);
                    if self.draining {
                        self.close_if_idle();
                    }
                }
                self.close_after_input();
            }
            ConnMsg::Event(ConnEvent::ReadClosed(_)) => {
                self.read_eof = true;
                self.close_after_input();
            }
            // Pipelined answers piling up: stop reading until the client catches up.
            ConnMsg::Event(ConnEvent::HighWater(_)) => {
                self.write_backlog = true;
                self.update_reading();
            }
            ConnMsg::Event(ConnEvent::LowWater(_)) => {
                self.write_backlog = false;
                self.update_reading();
            }
            ConnMsg::Event(ConnEvent::Closed(..)) => ctx.stop(),
        }
    }
}

/// The live connections' actors, shared by the server (which tells them about a drain) and the
/// actors themselves (each removes its entry when it is dropped: stopped, crashed, or never
/// started): constant work per connection, and no stopped actor kept alive. All of them run on
/// the reactor's thread, so the lock is never contended. An entry is `None` from the moment
/// its slot is reserved until the actor's address is known.
type Registry = Arc<Mutex<Slab<Option<Addr<HttpConn>>>>>;

/// Serves HTTP: gives every connection (handed over by the worker, or accepted here) an actor
/// of its own, and passes a drain on to them.
pub struct HttpServer {
    reactor: Reactor,
    conns: Registry,
    /// Tells the parent when a heavy request is running (handoff workers only).
    status: Option<baton_handoff::Status>,
    draining: bool,
}

impl HttpServer {
    /// Starts a server on `reactor`'s event loop; its connections register with `reactor` and
    /// their actors run on its thread too.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] when the runtime is shutting down.
    pub fn spawn(rt: &Runtime, reactor: &Reactor) -> Result<Addr<HttpServer>, SpawnError> {
        let server = HttpServer { reactor: reactor.clone(), conns: Registry::default(), status: None, draining: false };
        rt.spawn_on(reactor.event_loop(), server, Mailbox::DEFAULT)
    }

    /// The recipient a handoff worker delivers to.
    pub fn worker_recipient(addr: &Addr<HttpServer>) -> Recipient<WorkerEvent> {
        addr.recipient_map(HttpMsg::Worker, |m| match m {
            HttpMsg::Worker(e) => Some(e),
            _ => None,
        })
    }

    /// How to set up a listener for HTTP: clients speak first, so the kernel hands a
    /// connection over only once its request has arrived ([`ListenOptions::defer_accept`],
    /// nginx's `deferred`), or after about a second without one.
    pub fn listen_options() -> ListenOptions {
        ListenOptions { defer_accept: Some(DEFER_ACCEPT), ..ListenOptions::default() }
    }

    /// Sets up a TCP listening socket bound elsewhere (to be shared with workers, say) as
    /// [`HttpServer::listen_options`] sets up ours: deferred accept.
    ///
    /// # Errors
    ///
    /// From [`baton_transport::set_defer_accept`]: a socket that is not TCP (a Unix one).
    pub fn defer_accept(listener: impl std::os::fd::AsFd) -> std::io::Result<()> {
        baton_transport::set_defer_accept(listener, DEFER_ACCEPT)
    }

    fn options() -> ConnOptions {
        // A client that opens a connection and sends nothing does not hold it forever.
        ConnOptions { idle_timeout: Some(Duration::from_secs(60)), ..ConnOptions::default() }
    }

    fn start(&mut self, ctx: &mut Context<Self>, socket: Socket) {
        // Reserved first, filled after the spawn: the lock is not held while the actor is
        // created, since a failed spawn drops it, and its `Drop` takes the lock.
        let slot = self.conns.lock().insert(None);
        let actor = HttpConn {
            registry: self.conns.clone(),
            slot,
            conn: None,
            buf: Vec::new(),
            heavy: None,
            read_eof: false,
            write_backlog: false,
            answered: 0,
            closing: false,
            draining: self.draining,
            status: self.status.clone(),
            socket: Some(socket),
        };
        // A refused spawn drops the actor, and the socket with it (closed).
        let Ok(addr) = ctx.spawn_on(self.reactor.event_loop(), actor, Mailbox::Bounded(64)) else { return };
        // Gone already only if the actor ran and stopped meanwhile (on the pool, after the
        // reactor's loop closed); then its slot is free, and nothing is kept.
        if let Some(entry) = self.conns.lock().get_mut(slot) {
            *entry = Some(addr);
        }
    }
}

impl Actor for HttpServer {
    type Message = HttpMsg;

    fn handle(&mut self, ctx: &mut Context<Self>, msg: HttpMsg) {
        match msg {
            HttpMsg::Worker(WorkerEvent::Incoming(inc)) => {
                self.status.get_or_insert_with(|| inc.status());
                self.start(ctx, Socket::Incoming(inc));
            }
            HttpMsg::Accepted(acc) => {
                let reactor = self.reactor.clone();
                self.start(ctx, Socket::Accepted(acc, reactor));
            }
            HttpMsg::Worker(WorkerEvent::Drain { .. }) => {
                // Idle keep-alive connections close now; busy and new ones after their next
                // answer (which says `Connection: close`).
                self.draining = true;
                for (_, c) in self.conns.lock().iter() {
                    if let Some(c) = c {
                        let _ = c.try_send(ConnMsg::Drain);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keep_alive_close_and_pipelined_heads() {
        let buf = b"GET /slow?ms=5 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        let Parsed::Request(first) = parse(buf) else { panic!() };
        assert_eq!((first.method, first.path, first.query, first.close), ("GET", "/slow", Some("ms=5"), false));
        let Parsed::Request(second) = parse(&buf[first.head_len..]) else { panic!() };
        assert!(second.close);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost"), Parsed::Incomplete);
        assert!(matches!(parse(b"GET / HTTP/1.0\r\n\r\n"), Parsed::Request(Request { close: true, .. })));
        assert!(matches!(parse(b"BLAH\r\n\r\n"), Parsed::Bad(_)));
        assert_eq!(parse(&vec![b'a'; MAX_HEAD + 1]), Parsed::TooLarge);
        // A body that would be buffered whole must fit the limit (and its length cannot
        // overflow the head's when they are added).
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert!(matches!(parse(huge), Parsed::Bad(_)));
        let over = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(matches!(parse(over.as_bytes()), Parsed::Bad(_)));
    }
}
