//! A small HTTP/1.1 server on baton's transport: keep-alive, `Connection: close`, pipelining
//! (requests answered in order, reading paused while answers pile up), a bounded request head
//! that must arrive within a deadline, and a graceful drain. It serves the `prefork` example's
//! workers and the single-process variant of the end-to-end benchmark.
//!
//! The shape is the one we recommend for protocol code: the server and one actor per
//! connection live on the reactor's [`baton_runtime::EventLoop`], so a request is read, parsed
//! and answered on the reactor thread with no hop to another thread; work that blocks goes to
//! an actor on the pool, and the connection waits for its answer (later pipelined requests wait
//! behind it, in order) while the others keep being served. A handoff worker tells the parent
//! it is busy meanwhile, so new connections go elsewhere.
//!
//! Routes: `GET /` answers `200` with `hello from worker <pid>`; `GET /whoami` answers the
//! client's address as this server sees it (behind a load balancer that sends the PROXY
//! protocol, the client's own, not the balancer's); `GET /slow?ms=N` does the same as `/`
//! after a pool thread has been blocked for `N` milliseconds (at most 10 s: a heavy request);
//! `GET /block?ms=N` does the same after blocking the reactor's own thread, so nothing else in
//! the process moves meanwhile (the shape of a single-threaded worker); anything else is `404`.
//!
//! # What a request head must be
//!
//! This server is meant to sit behind proxies, and a server that reads the length of a request
//! differently from the proxy in front of it invites **request smuggling**: the proxy forwards
//! what it takes for one request, the server reads part of it as a second one (a request the
//! proxy never saw, answered on another client's behalf). So [`parse`] reads heads with
//! [`httparse`] and refuses, with `400 Bad Request` and a closed connection, every head whose
//! framing is ambiguous or that RFC 9112 tells a server to reject:
//!
//! - the request line must be `method SP request-target SP HTTP-version` exactly (§3): a token
//!   for the method, single spaces, `HTTP/1.0` or `HTTP/1.1` (case-sensitive, §2.3); the
//!   request-target must be origin-form (`/path?query`), absolute-form (`http://host/path`,
//!   §3.2.2), `*` for `OPTIONS` (§3.2.4), or authority-form for `CONNECT` (§3.2.3), in the
//!   characters RFC 3986 allows (§3.2: an invalid request-line is answered 400);
//! - lines end in CRLF: a bare CR is invalid (§2.2), and we choose not to take a bare LF as a line
//!   end either (§2.2 allows but does not require it, and proxies disagree about it);
//! - no whitespace between a field name and its colon (§5.1: a server MUST reject it, since
//!   `Content-Length : 5` is a length to some parsers and an unknown field to others); no
//!   obs-fold, a line that continues the previous field (§5.2); field names are tokens and
//!   values hold no control characters but tab (RFC 9110 §5.5);
//! - `Content-Length` is `1*DIGIT` (RFC 9110 §8.6; not `+5`, `-1`, `5 5`, empty, or a number
//!   that overflows), and a request with differing values, in one field or several, is
//!   rejected (§6.3 item 5). Identical repeats (`5, 5`, or two fields of `5`) are taken as one
//!   value, as RFC 9110 §8.6 permits: every reader agrees on that length;
//! - `Transfer-Encoding`: this server does not implement chunked request bodies. A request that
//!   carries both `Transfer-Encoding` and `Content-Length` is rejected (§6.1 lets a server
//!   reject it, and the two lengths are the classic smuggling pair), as is one whose final
//!   coding is not `chunked` (§6.3 item 4: a server MUST answer 400) and an HTTP/1.0 request
//!   with `Transfer-Encoding` (§6.1: its framing is faulty). A well-formed chunked HTTP/1.1
//!   request is answered `501 Not Implemented` (RFC 9110 §15.6.2: the server does not support
//!   what the request needs) and its connection closed, since we cannot find where its body
//!   ends;
//! - an HTTP/1.1 request has exactly one `Host` field (§3.2: 400 when it is missing), no request
//!   has two, and its value is a host and an optional port.
//!
//! After any of these answers, and after `431` (a head over [`MAX_HEAD`] or with more than
//! [`MAX_HEADERS`] fields) or `413` (a body over [`MAX_BODY`]), the connection is closed: what
//! follows on it cannot be trusted to start a request.
//!
//! A head must also arrive in time: [`HttpOptions::head_timeout`] (default [`HEAD_TIMEOUT`],
//! 10 s) runs from its first byte to its blank line and is not extended by further bytes, so a
//! client that trickles a head a byte at a time cannot hold a connection; when it expires the
//! server answers `408 Request Timeout` and closes. A connection between requests, with no
//! partial head, is bounded by [`HttpOptions::idle_timeout`] as before.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use slab::Slab;

use baton_handoff::WorkerEvent;
use baton_runtime::{Actor, Addr, Context, Mailbox, Runtime, SpawnError, TimerHandle};
use baton_transport::{Accepted, ConnEvent, ConnOptions, Connection, ListenOptions, Reactor};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a request head (more is answered `431`, like a head over
/// [`MAX_HEAD`]).
pub const MAX_HEADERS: usize = 100;
/// Largest request body accepted (a body is buffered whole before the request is answered).
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest `/slow` sleep honoured.
pub const MAX_SLOW: Duration = Duration::from_secs(10);
/// How long a request head may take to arrive, from its first byte to its end, by default
/// (see [`HttpOptions::head_timeout`]).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent, by default (see [`HttpOptions::idle_timeout`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, without the query (for an absolute-form target, without the scheme and
    /// authority too; `*` for `OPTIONS *`, the authority for `CONNECT`).
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
    /// The `Host` field's value, as sent (an HTTP/1.0 request may have none); see
    /// [`Request::host_name`].
    pub host: Option<&'a str>,
}

impl Request<'_> {
    /// The host the request names, without its port (`[v6]` keeps its brackets), as sent.
    pub fn host_name(&self) -> Option<&str> {
        let value = self.host?;
        Some(match value.rfind(':') {
            Some(i) if !value[i..].contains(']') => &value[..i],
            _ => value,
        })
    }
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole request head (the body may still be arriving: see `body_len`).
    Request(Request<'a>),
    /// Not a whole head yet.
    Incomplete,
    /// Not HTTP we serve, or framing RFC 9112 says to reject (see the module docs); answer
    /// 400 and close.
    Bad(&'static str),
    /// The head is longer than [`MAX_HEAD`], or has more than [`MAX_HEADERS`] fields; answer
    /// 431 and close.
    TooLarge,
    /// `Content-Length` is over [`MAX_BODY`]; answer 413 and close.
    BodyTooLarge,
    /// A chunked request body, which this server does not read; answer 501 and close.
    NotImplemented(&'static str),
}

impl Parsed<'_> {
    /// The answer to a head refused (`400`, `413`, `431` or `501`, always with
    /// `Connection: close`: the connection must be closed after it); `None` for a request and
    /// for an incomplete head.
    pub fn rejection(&self) -> Option<Vec<u8>> {
        let (status, why) = match self {
            Parsed::Request(_) | Parsed::Incomplete => return None,
            Parsed::Bad(why) => ("400 Bad Request", *why),
            Parsed::TooLarge => ("431 Request Header Fields Too Large", "request head too large"),
            Parsed::BodyTooLarge => ("413 Content Too Large", "request body over 1 MiB"),
            Parsed::NotImplemented(why) => ("501 Not Implemented", *why),
        };
        Some(response(status, &format!("{why}\n"), true))
    }
}

/// `503 Service Unavailable` with `Retry-After: 1`, and the connection closed: too many heavy
/// requests already (see [`HttpOptions::max_heavy`]).
pub fn overloaded() -> Vec<u8> {
    let body = "too many heavy requests; retry\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to a head that did not arrive within its deadline: `408`, `Connection: close`.
pub fn head_timeout_response() -> Vec<u8> {
    response("408 Request Timeout", "request head not received in time\n", true)
}

/// Parses the request head at the start of `buf`, enforcing RFC 9112's rules (see the module
/// docs). Looks at no more than [`MAX_HEAD`] bytes.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD { Parsed::TooLarge } else { Parsed::Incomplete }
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge,
        Err(httparse::Error::Token) if req.method.is_none() => return Parsed::Bad("invalid method"),
        Err(httparse::Error::Token) => return Parsed::Bad("invalid request-target"),
        Err(httparse::Error::Version) => return Parsed::Bad("unsupported HTTP version"),
        Err(httparse::Error::HeaderName) => return Parsed::Bad("invalid header field name"),
        Err(httparse::Error::HeaderValue) => return Parsed::Bad("invalid header field value"),
        Err(_) => return Parsed::Bad("invalid line ending"),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Bad("malformed request line");
    };
    // httparse takes a bare LF for a line end (RFC 9112 §2.2 allows it); we do not.
    let head = &buf[..head_len];
    if head.first() == Some(&b'\n') || head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
        return Parsed::Bad("line ending without CR");
    }
    let http10 = version == 0;
    let Some((path, query)) = request_target(method, target) else { return Parsed::Bad("invalid request-target") };

    let (mut close_token, mut keep_alive_token) = (false, false);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut final_coding: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut host = None;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            // `5, 5` (or two fields of 5) is one length; `5, 6` is two, and so is an empty one.
            for element in field.value.split(|&b| b == b',') {
                let n = match decimal(trim_ows(element)) {
                    Ok(n) => n,
                    Err(why) => return Parsed::Bad(why),
                };
                match content_length {
                    Some(m) if m != n => return Parsed::Bad("conflicting Content-Length values"),
                    _ => content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for element in field.value.split(|&b| b == b',').map(trim_ows).filter(|e| !e.is_empty()) {
                final_coding = Some(element);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|&b| b == b',').map(trim_ows) {
                close_token |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !valid_host(field.value) {
                return Parsed::Bad("invalid Host");
            }
            // Valid: ASCII only.
            host = std::str::from_utf8(field.value).ok().map(|v| v.trim_matches([' ', '\t']));
        }
    }
    if hosts > 1 {
        return Parsed::Bad("more than one Host");
    }
    if hosts == 0 && !http10 {
        return Parsed::Bad("HTTP/1.1 request without Host");
    }
    if transfer_encoding {
        if content_length.is_some() {
            return Parsed::Bad("both Transfer-Encoding and Content-Length");
        }
        if http10 {
            return Parsed::Bad("Transfer-Encoding in an HTTP/1.0 request");
        }
        let last = final_coding.map(|c| trim_ows(c.split(|&b| b == b';').next().unwrap_or(c)));
        if !last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
            return Parsed::Bad("Transfer-Encoding whose final coding is not chunked");
        }
        return Parsed::NotImplemented("chunked request bodies are not supported");
    }
    let body_len = match content_length {
        None => 0,
        Some(n) if n > MAX_BODY as u64 => return Parsed::BodyTooLarge,
        Some(n) => n as usize,
    };
    // `close` wins over `keep-alive`; an HTTP/1.0 connection persists only if asked to.
    let close = close_token || (http10 && !keep_alive_token);
    Parsed::Request(Request { method, path, query, close, head_len, body_len, host })
}

/// `s` without the optional whitespace (spaces, tabs) around it.
fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    &s[start..end]
}

/// A `Content-Length` value: `1*DIGIT` and nothing else (no sign, no inner space).
fn decimal(s: &[u8]) -> Result<u64, &'static str> {
    if s.is_empty() {
        return Err("empty Content-Length");
    }
    s.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err("Content-Length is not a decimal number");
        }
        n.checked_mul(10).and_then(|n| n.checked_add(u64::from(b - b'0'))).ok_or("Content-Length overflows")
    })
}

/// Whether `s` is made of the bytes in `allowed` and well-formed percent-encodings (`%HH`).
fn uri_chars(s: &[u8], allowed: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            if !(i + 2 < s.len() && s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || allowed.contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

// Besides letters, digits and `%HH`, RFC 3986 allows its unreserved and sub-delims
// punctuation (`-._~` and `!$&'()*+,;=`) everywhere we look, and:
/// in a path and query, `:@` (pchar), `/` and `?`;
const PATH_PUNCT: &[u8] = b"-._~!$&'()*+,;=:@/?";
/// in an authority, `:@` (userinfo, port) and `[]` (IP literals);
const AUTHORITY_PUNCT: &[u8] = b"-._~!$&'()*+,;=:@[]";
/// in a `Host` field, an authority without userinfo.
const HOST_PUNCT: &[u8] = b"-._~!$&'()*+,;=:[]";

/// The path and query of a request-target, if it is valid in one of RFC 9112 §3.2's forms for
/// this method.
fn request_target<'a>(method: &str, target: &'a str) -> Option<(&'a str, Option<&'a str>)> {
    let split = |t: &'a str| match t.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t, None),
    };
    if method == "CONNECT" {
        // authority-form, and only for CONNECT (§3.2.3)
        let ok = !target.is_empty() && uri_chars(target.as_bytes(), AUTHORITY_PUNCT);
        return ok.then_some((target, None));
    }
    if target.starts_with('/') {
        // origin-form (§3.2.1)
        return uri_chars(target.as_bytes(), PATH_PUNCT).then(|| split(target));
    }
    if target == "*" {
        // asterisk-form, only for OPTIONS (§3.2.4)
        return (method == "OPTIONS").then_some(("*", None));
    }
    // absolute-form (§3.2.2): scheme "://" authority path-abempty [ "?" query ]
    let (scheme, rest) = target.split_once("://")?;
    let mut s = scheme.bytes();
    if !s.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !s.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let (authority, path_query) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if authority.is_empty() || !uri_chars(authority.as_bytes(), AUTHORITY_PUNCT) {
        return None;
    }
    if !uri_chars(path_query.as_bytes(), PATH_PUNCT) {
        return None;
    }
    let (path, query) = split(path_query);
    Some((if path.is_empty() { "/" } else { path }, query))
}

/// A `Host` value: `uri-host [ ":" port ]`, or empty (§3.2). Checked for its characters only
/// (no `/`, `@`, spaces, ...), not for a well-formed IP literal or port.
fn valid_host(value: &[u8]) -> bool {
    uri_chars(value, HOST_PUNCT)
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
    ((req.method, req.path) == ("GET", "/slow")).then(|| wait(req))
}

/// How long a request blocks the thread that reads it: `Some` for `GET /block?ms=N` (capped
/// at [`MAX_SLOW`]). The shape of a single-threaded worker (Python, Ruby, Node): nothing else
/// in the worker moves meanwhile, not even its accepting. The worker says it is busy first.
pub fn blocking(req: &Request<'_>) -> Option<Duration> {
    ((req.method, req.path) == ("GET", "/block")).then(|| wait(req))
}

/// The `ms=N` of a request's query, capped at [`MAX_SLOW`].
fn wait(req: &Request<'_>) -> Duration {
    let ms = req
        .query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(ms).min(MAX_SLOW)
}

/// The answer for one request, without the wait of a heavy one (see [`heavy`]).
pub fn reply(req: &Request<'_>, close: bool) -> Cow<'static, [u8]> {
    match (req.method, req.path) {
        ("GET", "/") | ("GET", "/slow") | ("GET", "/block") => hello(close),
        _ => response("404 Not Found", "not found\n", close).into(),
    }
}

/// `200 OK` with the client's address (`GET /whoami`): `ip:port`, or `unknown`.
pub fn whoami(peer: Option<&baton_transport::Address>, close: bool) -> Vec<u8> {
    let who = match peer {
        Some(baton_transport::Address::Inet(a)) => a.to_string(),
        _ => "unknown".to_string(),
    };
    response("200 OK", &format!("{who}\n"), close)
}

/// `200 OK` with `hello from worker <pid>`.
pub fn hello(close: bool) -> Cow<'static, [u8]> {
    // Made once per process: the pid does not change, and formatting the answer for every
    // request was a few percent of a worker's time under keep-alive load.
    static HELLO: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
    let both = HELLO.get_or_init(|| {
        let body = format!("hello from worker {}\n", std::process::id());
        [response("200 OK", &body, false), response("200 OK", &body, true)]
    });
    Cow::Borrowed(&both[usize::from(close)])
}

/// The answer for one request, blocking the calling thread for a heavy one (for servers that
/// have nowhere else to put the wait: the benchmark's hand-written baseline).
pub fn answer(req: &Request<'_>, close: bool) -> Cow<'static, [u8]> {
    if let Some(wait) = heavy(req).or_else(|| blocking(req)) {
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

impl From<WorkerEvent> for HttpMsg {
    fn from(e: WorkerEvent) -> HttpMsg {
        HttpMsg::Worker(e)
    }
}

/// One connection's actor, on the reactor's event loop: a heavy request is handed to a
/// [`HeavyRequest`] on the pool and blocks only its own connection, and the parent hears about
/// it through `Status::busy`.
struct HttpConn {
    /// The server's: where it finds this actor for a drain (the entry goes when the actor is
    /// dropped), the options, the heavy requests' count.
    shared: Arc<Shared>,
    slot: usize,
    conn: Option<Connection>,
    buf: Vec<u8>,
    /// A heavy request is being worked on: answer nothing more (and read nothing more, so the
    /// client's TCP window holds what it pipelines) until it is done. Holds the worker's busy
    /// announcement (when there is a parent to tell), and whether the client asked to close.
    heavy: Option<(Option<baton_handoff::Busy>, bool)>,
    /// Responses written: a connection that has not had one is not idle, only new (its first
    /// request may be on the wire): a drain closes it only after its grace.
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
    /// (Boxed: an idle connection's actor is smaller by the size of a `Socket` once adopted.)
    socket: Option<Box<Socket>>,
    /// The deadline of the partial request head in `buf`, if there is one: set when a head's
    /// first bytes are found incomplete, not moved by the bytes that follow, dropped when the
    /// head is whole. Its message carries `head_deadlines`, so a timer that fires after it was
    /// dropped (a cancel does not stop a send under way) is recognised as stale.
    head_timer: Option<TimerHandle>,
    /// Head deadlines set so far on this connection.
    head_deadlines: u64,
    /// The client's address, as given with the socket (for `/whoami`).
    peer: Option<baton_transport::Address>,
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
    /// The worker drains (its grace is in what the server shares): a wake-up for a
    /// connection that has nothing else to hear.
    Drain,
    /// A drain's grace for an idle connection is over.
    DrainIdle,
    /// A heavy request's work, done on a pool thread, is over: answer it.
    HeavyDone,
    /// The deadline of a request head (the `n`th set on this connection) has come.
    HeadTimeout(u64),
}

impl From<ConnEvent> for ConnMsg {
    fn from(e: ConnEvent) -> ConnMsg {
        ConnMsg::Event(e)
    }
}

/// Does a heavy request's blocking work on a pool thread, tells its connection's actor, and
/// stops.
struct HeavyRequest {
    wait: Duration,
    to: Addr<HttpConn>,
    /// Its place among the server's heavy requests, given up when the actor ends.
    _slot: HeavySlot,
}

/// One of the [`HttpOptions::max_heavy`] heavy requests a server runs or queues at a time.
struct HeavySlot(Arc<Shared>);

impl HeavySlot {
    fn take(shared: &Arc<Shared>) -> Option<HeavySlot> {
        use std::sync::atomic::Ordering::Relaxed;
        let max = shared.options.max_heavy;
        shared.heavy.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        Some(HeavySlot(shared.clone()))
    }
}

impl Drop for HeavySlot {
    fn drop(&mut self) {
        self.0.heavy.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
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
        // A head was found whole (its deadline no longer applies), and the buffer ends in part
        // of one (which needs a deadline of its own).
        let (mut head_done, mut partial_head) = (false, false);
        while !self.closing && self.heavy.is_none() {
            let parsed = parse(&self.buf);
            if parsed == Parsed::Incomplete {
                partial_head = !self.buf.is_empty();
                break;
            }
            head_done = true;
            let (reply, used, close) = match parsed {
                Parsed::Incomplete => unreachable!("handled above"),
                Parsed::Request(req) => {
                    if self.buf.len() < req.head_len + req.body_len {
                        break; // the body is still arriving
                    }
                    let close = req.close || self.draining;
                    if let Some(wait) = blocking(&req) {
                        let _busy = self.status.as_ref().map(|s| s.busy());
                        std::thread::sleep(wait);
                    }
                    let heavy_slot = heavy(&req).map(|wait| (wait, HeavySlot::take(&self.shared)));
                    if let Some((_, None)) = heavy_slot {
                        // As many heavy requests as the server takes are running or waiting
                        // for a thread: say so now rather than queue without bound.
                        metrics::counter!("baton_http_heavy_refused_total").increment(1);
                        let used = req.head_len + req.body_len;
                        (overloaded().into(), used, true)
                    } else if let Some((wait, Some(slot))) = heavy_slot {
                        let (used, asked_close) = (req.head_len + req.body_len, req.close);
                        let job = HeavyRequest { wait, to: ctx.address(), _slot: slot };
                        // A fresh actor's mailbox takes its one message.
                        match ctx.spawn(job, Mailbox::Bounded(1)).map(|job| job.try_send(())) {
                            Ok(Ok(())) => {
                                self.buf.drain(..used);
                                // The parent sends new connections elsewhere meanwhile.
                                self.heavy = Some((self.status.as_ref().map(|s| s.busy()), asked_close));
                                self.update_reading();
                                break;
                            }
                            _ => (response("503 Service Unavailable", "shutting down\n", true).into(), used, true),
                        }
                    } else if (req.method, req.path) == ("GET", "/whoami") {
                        (whoami(self.peer.as_ref(), close).into(), req.head_len + req.body_len, close)
                    } else {
                        (reply(&req, close), req.head_len + req.body_len, close)
                    }
                }
                // Refused: answered, and the connection closed (what follows cannot be trusted
                // to start a request).
                refused => (refused.rejection().expect("a refusal").into(), self.buf.len(), true),
            };
            self.buf.drain(..used);
            if !self.send(&reply, close) {
                break;
            }
        }
        if head_done {
            if let Some(timer) = self.head_timer.take() {
                timer.cancel();
            }
        }
        if self.buf.is_empty() {
            // An idle keep-alive connection holds no buffer (the next read brings its own).
            self.buf = Vec::new();
        }
        if partial_head && self.head_timer.is_none() {
            self.head_deadlines += 1;
            self.head_timer =
                Some(ctx.send_after(self.shared.options.head_timeout, ConnMsg::HeadTimeout(self.head_deadlines)));
        }
    }

    /// A request head's deadline has come: if that head is still partial, answer 408 and close.
    fn head_timeout(&mut self, ctx: &mut Context<Self>, n: u64) {
        if n != self.head_deadlines || self.head_timer.take().is_none() || self.closing {
            return; // stale: that head was whole in time
        }
        if self.write_backlog {
            // We stopped reading (the client does not read its answers): the rest of the
            // head may be waiting in the socket. Give it another period; meanwhile nothing is
            // read or written, so the idle timeout bounds such a client.
            self.head_deadlines += 1;
            self.head_timer =
                Some(ctx.send_after(self.shared.options.head_timeout, ConnMsg::HeadTimeout(self.head_deadlines)));
            return;
        }
        self.buf.clear();
        self.send(&head_timeout_response(), true);
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

    /// The worker drains: every answer from now on says `Connection: close`. A connection with
    /// no request under way gets `grace` for one to arrive or be completed: an idle keep-alive
    /// one (its client's next request may be on the wire: closed at once, it would be lost), a
    /// new one that has said nothing (likewise its first), one holding part of a head. After
    /// the grace the first two are closed and the last is answered `408`: none of them holds
    /// the drain to its deadline. A zero grace closes idle ones at once and leaves the others
    /// to their own timeouts.
    fn drain(&mut self, ctx: &mut Context<Self>, grace: Duration) {
        self.draining = true;
        if grace.is_zero() {
            self.close_if_idle();
        } else if self.conn.is_some() && self.heavy.is_none() {
            ctx.send_after(grace, ConnMsg::DrainIdle);
        }
    }

    fn drain_grace_over(&mut self) {
        if self.conn.is_none() || self.heavy.is_some() || self.closing {
            return; // closed, or a heavy request's answer will close it
        }
        if self.buf.is_empty() {
            self.close();
        } else {
            // Part of a head: what its own deadline would answer, sooner.
            self.head_timer = None;
            self.buf.clear();
            self.send(&head_timeout_response(), true);
        }
    }

    /// Drains once the server does (see `drain`).
    fn follow_drain(&mut self, ctx: &mut Context<Self>) {
        if !self.draining {
            if let Some(&grace) = self.shared.drain_grace.get() {
                self.drain(ctx, grace);
            }
        }
    }

    /// Between requests: answered at least once, and quiet.
    fn is_idle(&self) -> bool {
        self.answered > 0 && self.is_quiet()
    }

    /// Nothing read and unanswered, no heavy request under way: idle, or new and silent.
    fn is_quiet(&self) -> bool {
        self.conn.is_some() && self.buf.is_empty() && self.heavy.is_none()
    }

    fn close_if_idle(&mut self) {
        if self.is_idle() {
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
        self.shared.conns.lock().try_remove(self.slot);
    }
}

impl Actor for HttpConn {
    type Message = ConnMsg;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let events = ctx.address();
        let adopted = match self.socket.take().map(|s| *s) {
            Some(Socket::Incoming(inc)) => inc.adopt(events, self.shared.options.conn_options()),
            Some(Socket::Accepted(acc, reactor)) => reactor
                .adopt(acc.stream, self.shared.options.conn_options(), events)
                .inspect(|conn| drop(conn.set_nodelay(true))),
            None => return,
        };
        match adopted {
            Ok(conn) => self.conn = Some(conn),
            Err(_) => ctx.stop(),
        }
        // Started after the drain began (a connection the worker's listener accepted just
        // before it closed): it drains from its start.
        self.follow_drain(ctx);
    }

    fn handle(&mut self, ctx: &mut Context<Self>, msg: ConnMsg) {
        // Read at every message (an atomic load), not only at `Drain`: a `Drain` that found
        // this mailbox full was not delivered.
        self.follow_drain(ctx);
        match msg {
            ConnMsg::Drain => {} // followed above
            ConnMsg::DrainIdle => self.drain_grace_over(),
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
            ConnMsg::HeadTimeout(n) => self.head_timeout(ctx, n),
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

/// What a server shares with its connections' actors, behind one pointer each (an idle
/// connection's actor is smaller by what it does not copy).
struct Shared {
    /// The live connections' actors, shared by the server (which tells them about a drain) and
    /// the actors themselves (each removes its entry when it is dropped: stopped, crashed, or
    /// never started): constant work per connection, and no stopped actor kept alive. All of
    /// them run on the reactor's thread, so the lock is never contended. An entry is `None` from
    /// the moment its slot is reserved until the actor's address is known.
    conns: Mutex<Slab<Option<Addr<HttpConn>>>>,
    options: HttpOptions,
    /// Heavy requests running or waiting for a pool thread (at most `options.max_heavy`).
    heavy: std::sync::atomic::AtomicUsize,
    /// The grace of the drain under way, once one began: a connection that starts after it
    /// (one the worker's listener accepted just before it closed) drains from its start.
    drain_grace: std::sync::OnceLock<Duration>,
}

/// How an [`HttpServer`] bounds its connections' time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// How long a request head may take to arrive, from its first byte to its blank line
    /// (bytes arriving meanwhile do not extend it); then the server answers
    /// `408 Request Timeout` and closes. Default [`HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// How long a connection may go without a byte read or written (one that opened and sent
    /// nothing, or a keep-alive one between requests) before it is closed without an answer.
    /// Default [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Heavy requests (`/slow`) running or waiting for a pool thread at once; one more is
    /// answered `503 Service Unavailable` with `Retry-After: 1` at once, so a burst of heavy
    /// work waits a bounded time instead of queueing without end (a server that accepts
    /// faster than its pool works would otherwise make each heavy request wait for all those
    /// before it). Default [`MAX_HEAVY`].
    pub max_heavy: usize,
    /// When the worker drains (an upgrade, a stop), how long an idle keep-alive connection
    /// (or a new one that has not sent its first request) stays open for its client's next
    /// request, which is answered with `Connection: close` (at most half the time the drain
    /// has). A client that sends without pause (a load
    /// generator, a proxy's connection pool) then never has a request cut off by the close;
    /// one that sends later finds the connection closed, which HTTP clients retry. Zero closes
    /// idle connections at once. Default [`DRAIN_IDLE_GRACE`].
    pub drain_idle_grace: Duration,
}

/// How long a draining server keeps an idle keep-alive connection open, by default.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Heavy requests a server runs or queues at once, by default: with the example's two pool
/// threads, a heavy request waits for at most three others ahead of it on each.
pub const MAX_HEAVY: usize = 8;

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            head_timeout: HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_heavy: MAX_HEAVY,
            drain_idle_grace: DRAIN_IDLE_GRACE,
        }
    }
}

impl HttpOptions {
    fn conn_options(&self) -> ConnOptions {
        // A client that opens a connection and sends nothing does not hold it forever.
        ConnOptions { idle_timeout: Some(self.idle_timeout), ..ConnOptions::default() }
    }
}

/// Serves HTTP: gives every connection (handed over by the worker, or accepted here) an actor
/// of its own, and passes a drain on to them.
pub struct HttpServer {
    reactor: Reactor,
    shared: Arc<Shared>,
    /// Tells the parent when a heavy request is running (handoff workers only).
    status: Option<baton_handoff::Status>,
}

impl HttpServer {
    /// Starts a server on `reactor`'s event loop; its connections register with `reactor` and
    /// their actors run on its thread too.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] when the runtime is shutting down.
    pub fn spawn(rt: &Runtime, reactor: &Reactor) -> Result<Addr<HttpServer>, SpawnError> {
        HttpServer::spawn_with(rt, reactor, HttpOptions::default())
    }

    /// [`HttpServer::spawn`] with other timeouts than the defaults.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] when the runtime is shutting down.
    pub fn spawn_with(rt: &Runtime, reactor: &Reactor, options: HttpOptions) -> Result<Addr<HttpServer>, SpawnError> {
        let shared = Arc::new(Shared {
            conns: Mutex::default(),
            options,
            heavy: Default::default(),
            drain_grace: std::sync::OnceLock::new(),
        });
        let server = HttpServer { reactor: reactor.clone(), shared, status: None };
        rt.spawn_on(reactor.event_loop(), server, Mailbox::DEFAULT)
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

    fn start(&mut self, ctx: &mut Context<Self>, socket: Socket) {
        // Reserved first, filled after the spawn: the lock is not held while the actor is
        // created, since a failed spawn drops it, and its `Drop` takes the lock.
        let slot = self.shared.conns.lock().insert(None);
        let peer = Some(match &socket {
            Socket::Incoming(inc) => inc.peer.clone(),
            Socket::Accepted(acc, _) => acc.peer.clone(),
        });
        let actor = HttpConn {
            shared: self.shared.clone(),
            slot,
            conn: None,
            buf: Vec::new(),
            heavy: None,
            read_eof: false,
            write_backlog: false,
            answered: 0,
            closing: false,
            draining: false, // until `started` or a message finds the server's drain
            status: self.status.clone(),
            socket: Some(Box::new(socket)),
            head_timer: None,
            head_deadlines: 0,
            peer,
        };
        // A refused spawn drops the actor, and the socket with it (closed).
        let Ok(addr) = ctx.spawn_on(self.reactor.event_loop(), actor, Mailbox::Bounded(64)) else { return };
        // Gone already only if the actor ran and stopped meanwhile (on the pool, after the
        // reactor's loop closed); then its slot is free, and nothing is kept.
        if let Some(entry) = self.shared.conns.lock().get_mut(slot) {
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
            HttpMsg::Worker(WorkerEvent::Drain { deadline }) => {
                // Busy and new connections close after their next answer (which says
                // `Connection: close`); idle keep-alive ones too if a request comes within the
                // grace (at most half the time left), else when it ends.
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                self.shared.drain_grace.get_or_init(|| self.shared.options.drain_idle_grace.min(left / 2));
                for (_, c) in self.shared.conns.lock().iter() {
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
        let buf = b"GET /slow?ms=5 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
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
        let huge = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert_eq!(parse(huge), Parsed::BodyTooLarge);
        let over = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse(over.as_bytes()), Parsed::BodyTooLarge);
    }
}
