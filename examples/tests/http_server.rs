//! The example HTTP server in one process: heavy requests leave the reactor thread free, answers
//! keep their pipelined order, and a client's end of input does not lose answers still owed;
//! the heads RFC 9112 says to reject (the request-smuggling cases) get one answer and a closed
//! connection, and a head that trickles in gets `408` at its deadline.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use baton_examples::http::{HttpOptions, HttpServer};
use baton_runtime::Runtime;
use baton_transport::{Address, ListenOptions, Reactor};

const WAIT: Duration = Duration::from_secs(20);

struct Server {
    rt: Runtime,
    reactor: Reactor,
    addr: SocketAddr,
}

fn start() -> Server {
    start_with(HttpOptions::default())
}

fn start_with(options: HttpOptions) -> Server {
    let rt = Runtime::builder().threads(2).build();
    let reactor = Reactor::start().unwrap();
    let app = HttpServer::spawn_with(&rt, &reactor, options).unwrap();
    let l = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), app.recipient()).unwrap();
    let Address::Inet(addr) = *l.local_addr() else { unreachable!() };
    Server { rt, reactor, addr }
}

impl Server {
    fn stop(self) {
        self.reactor.stop();
        self.rt.shutdown(Duration::from_secs(5)).unwrap();
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Statuses of the responses in `all`, in order (each skipped by its `Content-Length`: a body
/// may say `HTTP/1.1` too).
fn statuses(mut all: &str) -> Vec<&str> {
    let mut found = Vec::new();
    while let Some(rest) = all.strip_prefix("HTTP/1.1 ") {
        let Some((head, after)) = rest.split_once("\r\n\r\n") else { break };
        found.push(head.lines().next().unwrap_or(""));
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        all = after.get(len..).unwrap_or("");
    }
    assert!(all.is_empty(), "not a response: {all:?}");
    found
}

#[test]
fn pipelined_requests_behind_a_heavy_one_are_answered_in_order_after_the_clients_end_of_input() {
    let s = start();
    let mut c = connect(s.addr);
    c.write_all(b"GET /slow?ms=100 HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The client sends nothing more while the heavy request is still being worked on.
    c.shutdown(Shutdown::Write).unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).expect("answers, then end of file");
    assert_eq!(statuses(&all), ["200 OK", "404 Not Found", "200 OK"], "{all}");
    s.stop();
}

#[test]
fn a_heavy_request_blocks_only_its_own_connection() {
    let s = start();
    let mut heavy = connect(s.addr);
    heavy.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Meanwhile other clients are served at once, on the same reactor.
    let started = Instant::now();
    for _ in 0..20 {
        let mut c = connect(s.addr);
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert_eq!(statuses(&all), ["200 OK"]);
    }
    assert!(started.elapsed() < Duration::from_millis(1400), "the others waited for the heavy request");
    let mut buf = [0u8; 512];
    let n = heavy.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    s.stop();
}

/// The regression the listeners mode's "hundreds of milliseconds" came from: a worker that
/// accepts faster than its pool runs heavy requests queued them without end, each waiting for
/// all those before it. Past `max_heavy` a heavy request is answered 503 at once.
#[test]
fn heavy_requests_past_the_bound_are_refused_at_once_not_queued_without_end() {
    let s = start_with(HttpOptions { max_heavy: 2, ..HttpOptions::default() });
    let mut running = Vec::new();
    for _ in 0..2 {
        let mut c = connect(s.addr);
        c.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        running.push(c);
    }
    std::thread::sleep(Duration::from_millis(100));
    // Both running (two pool threads): the next three are refused while they run, and the
    // refusals say when to come back.
    for _ in 0..3 {
        let all = exchange(s.addr, b"GET /slow?ms=3000 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(statuses(&all), ["503 Service Unavailable"], "{all}");
        assert!(all.contains("Retry-After: 1\r\n"), "{all}");
    }
    // Ordinary requests are served meanwhile.
    assert_eq!(statuses(&exchange(s.addr, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")), ["200 OK"]);
    for mut c in running {
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert_eq!(statuses(&all), ["200 OK"], "{all}");
    }
    // Their places are free again.
    let all = exchange(s.addr, b"GET /slow?ms=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&all), ["200 OK"], "{all}");
    s.stop();
}

/// Sends `request` in one write, then reads until the server closes: everything it answered.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = connect(addr);
    c.write_all(request).unwrap();
    let mut all = Vec::new();
    // An end of file, not a read timeout: the server closed the connection.
    c.read_to_end(&mut all).expect("answers, then the server's end of file");
    String::from_utf8_lossy(&all).into_owned()
}

/// The request smuggled behind a head we refuse: if the server took the head's framing the way
/// the old parser did, it would answer this one too (a 404).
const SMUGGLED: &str = "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n";

/// Asserts that `head` followed by [`SMUGGLED`] gets exactly one answer, `status`, that it says
/// `Connection: close`, and that the server then closes.
#[track_caller]
fn assert_refused_and_closed(addr: SocketAddr, head: &str, status: &str) {
    let all = exchange(addr, format!("{head}{SMUGGLED}").as_bytes());
    assert_eq!(statuses(&all), [status], "{head:?} got {all:?}");
    assert!(all.contains("\r\nConnection: close\r\n"), "{all}");
}

#[test]
fn conflicting_content_lengths_get_400_and_a_closed_connection() {
    let s = start();
    // The old parser took the last one (0): the body was read as the next request.
    let head = format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nContent-Length: 0\r\n\r\n", SMUGGLED.len());
    assert_refused_and_closed(s.addr, &head, "400 Bad Request");
    s.stop();
}

#[test]
fn identical_duplicate_content_lengths_are_served_as_one() {
    let s = start();
    let all = exchange(
        s.addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(statuses(&all), ["404 Not Found"], "{all}");
    s.stop();
}

#[test]
fn a_signed_content_length_gets_400_and_a_closed_connection() {
    let s = start();
    // The old parser read `+5` as 5 (`usize::from_str`); a proxy that refuses the field
    // forwards no body, and the next request's first bytes would have been taken as this body.
    assert_refused_and_closed(s.addr, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\n", "400 Bad Request");
    assert_refused_and_closed(s.addr, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", "400 Bad Request");
    assert_refused_and_closed(s.addr, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5 5\r\n\r\n", "400 Bad Request");
    s.stop();
}

#[test]
fn whitespace_before_the_colon_gets_400_and_a_closed_connection() {
    let s = start();
    // The old parser ignored `Content-Length : N` (its name is not `content-length`) and read
    // the body, here a whole request, as the next request.
    let head = format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length : {}\r\n\r\n", SMUGGLED.len());
    assert_refused_and_closed(s.addr, &head, "400 Bad Request");
    s.stop();
}

#[test]
fn an_empty_method_gets_400_and_a_closed_connection() {
    let s = start();
    assert_refused_and_closed(s.addr, " / HTTP/1.1\r\nHost: t\r\n\r\n", "400 Bad Request");
    s.stop();
}

#[test]
fn transfer_encoding_gets_501_or_400_and_a_closed_connection() {
    let s = start();
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    // Chunked alone: we do not read chunked bodies.
    let head = format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}");
    assert_refused_and_closed(s.addr, &head, "501 Not Implemented");
    // With a Content-Length beside it: the smuggling pair.
    let head = format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}");
    assert_refused_and_closed(s.addr, &head, "400 Bad Request");
    let head = "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n";
    assert_refused_and_closed(s.addr, head, "400 Bad Request");
    s.stop();
}

#[test]
fn malformed_fields_and_a_missing_host_get_400_and_a_closed_connection() {
    let s = start();
    assert_refused_and_closed(s.addr, "GET / HTTP/1.1\r\n\r\n", "400 Bad Request");
    assert_refused_and_closed(s.addr, "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", "400 Bad Request");
    assert_refused_and_closed(s.addr, "GET / HTTP/1.1\r\nHost: t\rX-A: a\r\n\r\n", "400 Bad Request");
    assert_refused_and_closed(s.addr, "GET / HTTP/1.1\nHost: t\n\n", "400 Bad Request");
    assert_refused_and_closed(s.addr, "GET /a#b HTTP/1.1\r\nHost: t\r\n\r\n", "400 Bad Request");
    assert_refused_and_closed(s.addr, "GET / HTTP/1.2\r\nHost: t\r\n\r\n", "400 Bad Request");
    s.stop();
}

#[test]
fn a_request_refused_after_good_ones_on_the_same_connection_closes_it() {
    let s = start();
    let all = exchange(s.addr, format!("GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\n\r\n{SMUGGLED}").as_bytes());
    assert_eq!(statuses(&all), ["200 OK", "400 Bad Request"], "{all}");
    s.stop();
}

/// A short head deadline, so the tests are fast; the idle timeout well above it.
const HEAD: Duration = Duration::from_millis(500);

#[test]
fn a_head_trickled_a_byte_at_a_time_gets_408_at_its_deadline() {
    // The old server reset its only timer (60 s idle) at every byte: a client sending one
    // byte every 45 s held a connection with an incomplete head for as long as it liked.
    let s =
        start_with(HttpOptions { head_timeout: HEAD, idle_timeout: Duration::from_secs(60), ..HttpOptions::default() });
    let mut c = connect(s.addr);
    c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let head = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {}", "a".repeat(200));
    let started = Instant::now();
    let (mut sent, mut got) = (0, Vec::new());
    let mut buf = [0u8; 512];
    // One byte every 100 ms (the read's timeout), until the server answers and closes; bounded.
    while started.elapsed() < WAIT {
        if sent < head.len() && c.write_all(&head.as_bytes()[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("after {sent} bytes and {:?}: {e}", started.elapsed()),
        }
    }
    let elapsed = started.elapsed();
    let got = String::from_utf8_lossy(&got);
    assert_eq!(statuses(&got), ["408 Request Timeout"], "{got}");
    assert!(got.contains("\r\nConnection: close\r\n"), "{got}");
    assert!(elapsed >= HEAD, "answered after {elapsed:?}, before the deadline");
    assert!(elapsed < HEAD * 4, "held for {elapsed:?}: the deadline moved with the bytes");
    assert!(sent >= 3, "only {sent} bytes sent: the test did not trickle");
    s.stop();
}

#[test]
fn a_head_whole_in_time_is_served_and_its_deadline_forgotten() {
    let s =
        start_with(HttpOptions { head_timeout: HEAD, idle_timeout: Duration::from_secs(60), ..HttpOptions::default() });
    let mut c = connect(s.addr);
    // A head in two parts, well within the deadline.
    c.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(HEAD / 5);
    c.write_all(b"st: t\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    // Past the first head's deadline: the next request, sent whole, is served too (no 408).
    std::thread::sleep(HEAD * 2);
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert_eq!(statuses(&rest), ["200 OK"], "{rest}");
    s.stop();
}

#[test]
fn an_idle_keep_alive_connection_is_bounded_by_the_idle_timeout_not_the_head_deadline() {
    let idle = Duration::from_millis(1500);
    let s = start_with(HttpOptions {
        head_timeout: Duration::from_millis(200),
        idle_timeout: idle,
        ..HttpOptions::default()
    });
    let mut c = connect(s.addr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    let answered = Instant::now();
    // No partial head: nothing comes (no 408), and the connection closes, silently, at the idle
    // timeout.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("the server's end of file");
    let elapsed = answered.elapsed();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(elapsed >= idle - Duration::from_millis(100), "closed after {elapsed:?}, before the idle timeout");
    s.stop();
}
