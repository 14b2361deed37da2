//! Memory per idle keep-alive HTTP connection in the example HTTP server (the `prefork`
//! workers' server), beside the transport's own cost per connection, in the same run.
//!
//! `cargo bench -p baton-benches --bench idle_http`
//!
//! Each measurement opens `CONNS` TCP connections over loopback to a server in this process,
//! sends one request on each and reads the answer, then leaves them open and idle, and reads
//! the heap's growth (a counting global allocator: user-space bytes, not the kernel's socket
//! buffers). Then it closes them all and reads what the server still holds. Servers:
//!
//! - **transport only**: the listener's connections adopted by the reactor, all owned by one
//!   actor that ignores their events (the least any baton server can hold per connection);
//! - **HTTP server**: `baton_examples::http::HttpServer`, an actor per connection on the
//!   reactor's loop, as in the `prefork` workers.
//!
//! Target: at most 1 KiB per idle HTTP connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use baton_examples::http::HttpServer;
use baton_runtime::{Actor, Context, Mailbox, Runtime};
use baton_transport::{Accepted, Address, ConnEvent, ConnOptions, Connection, Reactor};

#[global_allocator]
static GLOBAL: baton_benches::CountingAlloc = baton_benches::CountingAlloc;

/// Idle connections (both ends live in this process: two descriptors each).
const CONNS: usize = 9_000;

/// Owns every connection the listener accepts and ignores their events.
struct Holder {
    reactor: Reactor,
    conns: std::collections::HashMap<baton_transport::ConnId, Connection>,
}

enum HolderMsg {
    Accepted(Accepted),
    Conn(ConnEvent),
}

baton_runtime::from_variants!(HolderMsg::Accepted(Accepted), HolderMsg::Conn(ConnEvent));

impl Actor for Holder {
    type Message = HolderMsg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: HolderMsg) {
        match msg {
            HolderMsg::Accepted(a) => {
                if let Ok(c) = self.reactor.adopt(a.stream, ConnOptions::default(), ctx.address()) {
                    self.conns.insert(c.id(), c);
                }
            }
            HolderMsg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some(c) = self.conns.get(&id) {
                    c.close();
                }
            }
            HolderMsg::Conn(ConnEvent::Closed(id, _)) => {
                self.conns.remove(&id);
            }
            HolderMsg::Conn(_) => {}
        }
    }
}

/// Raises the descriptor limit as far as allowed; how many connections fit.
fn room() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let want = (2 * CONNS + 256) as u64;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < want) {
        let raised =
            Rlimit { current: limit.maximum.map_or(Some(want), |m| Some(m.min(want))), maximum: limit.maximum };
        let _ = setrlimit(Resource::Nofile, raised);
    }
    let room = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX).saturating_sub(256) as usize / 2;
    CONNS.min(room)
}

/// Opens `n` connections to `addr`, one request each when `http`, and returns them open.
fn open(addr: std::net::SocketAddr, n: usize, http: bool, out: &mut Vec<TcpStream>) {
    let mut buf = [0u8; 1024];
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect");
        if http {
            s.write_all(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n").expect("request");
            let mut got = 0;
            // The answer is one short segment: head and a body of `hello from worker <pid>`.
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") || !buf[..got].ends_with(b"\n") {
                got += s.read(&mut buf[got..]).expect("answer");
            }
        }
        out.push(s);
    }
}

/// Heap bytes per idle connection held, and bytes still held once they closed.
fn measure(http: bool, n: usize) -> (f64, i64) {
    let rt = Runtime::builder().threads(2).build();
    let reactor = Reactor::start().expect("reactor");
    let options = HttpServer::listen_options();
    let l = if http {
        let app = HttpServer::spawn(&rt, &reactor).expect("http server");
        reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), options, &app)
    } else {
        let holder = rt
            .try_spawn(Holder { reactor: reactor.clone(), conns: Default::default() }, Mailbox::Unbounded)
            .expect("spawn");
        reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), options, &holder)
    }
    .expect("listen");
    let Address::Inet(addr) = *l.local_addr() else { unreachable!() };
    // Warm up: the server's first connections allocate what every later one reuses.
    let mut warm = Vec::new();
    open(addr, 200, http, &mut warm);
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let mut clients = Vec::with_capacity(n);
    baton_benches::set_counting(true);
    let before = baton_benches::live_bytes();
    open(addr, n, http, &mut clients);
    // Every connection adopted and answered: its events handled, its buffers at rest.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = baton_benches::live_bytes() - before;
    drop(clients);
    std::thread::sleep(Duration::from_millis(500));
    let after = baton_benches::live_bytes() - before;
    baton_benches::set_counting(false);
    l.close();
    reactor.stop();
    let _ = rt.shutdown(Duration::from_secs(10));
    (held as f64 / n as f64, after as i64)
}

fn main() {
    let n = room();
    let (transport, transport_after) = measure(false, n);
    let (http, http_after) = measure(true, n);
    println!("== Memory per idle keep-alive connection ({n} connections, heap bytes) ==");
    println!(
        "transport only (one owner actor): {transport:.1} B per connection, {transport_after} B held after closing"
    );
    println!("HTTP server (an actor per connection): {http:.1} B per connection, {http_after} B held after closing");
    println!("HTTP over transport: {:.2}x; target: HTTP <= 1024 B", http / transport);
}
