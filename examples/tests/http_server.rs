//! The example HTTP server in one process: heavy requests leave the reactor thread free, answers
//! keep their pipelined order, and a client's end of input does not lose answers still owed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use baton_examples::http::HttpServer;
use baton_runtime::Runtime;
use baton_transport::{Address, ListenOptions, Reactor};

const WAIT: Duration = Duration::from_secs(20);

struct Server {
    rt: Runtime,
    reactor: Reactor,
    addr: SocketAddr,
}

fn start() -> Server {
    let rt = Runtime::builder().threads(2).build();
    let reactor = Reactor::start().unwrap();
    let app = HttpServer::spawn(&rt, &reactor).unwrap();
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

/// Statuses of the responses in `all`, in order.
fn statuses(all: &str) -> Vec<&str> {
    all.split("HTTP/1.1 ").skip(1).map(|r| r.lines().next().unwrap_or("")).collect()
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
        c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
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
