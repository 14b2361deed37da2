//! Transport benchmarks for `baton-transport`, each against a hand-written epoll loop.
//!
//! Every criterion group holds two benchmarks doing the same work over loopback TCP:
//!
//! * `baton`: a [`Reactor`] and a [`Runtime`] with [`THREADS`] pool threads; listeners and
//!   connections report to actors;
//! * `epoll_thread`: one thread running a level-triggered `epoll` loop (rustix) written by hand,
//!   with the same socket flags and backlog.
//!
//! Servers, client threads and (for Echo) the client connections are created outside the
//! measured iterations (`iter_custom`). An iteration is one complete round; its end is
//! signalled to the bench thread over a crossbeam channel with a bounded wait, so a hang panics.
//! See `BENCHMARKS.md` at the workspace root.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use baton_benches::{group, timed, wait, ROUND_TIMEOUT};
use baton_runtime::{Actor, Context, Mailbox, Runtime};
use baton_transport::{Accepted, Address, ConnEvent, ConnOptions, Connection, ListenOptions, Reactor};
use criterion::{criterion_group, BenchmarkGroup, Criterion};
use crossbeam_channel::{bounded, Receiver, Sender};
use rustix::event::{epoll, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Pool threads of the runtime: one per core of the 2-vCPU benchmark machine.
const THREADS: usize = 2;
/// Connections accepted per Accept iteration.
const ACCEPT_N: usize = 2000;
/// Keep-alive connections of the Echo group.
const ECHO_CONNS: usize = 64;
/// Client threads of the Echo group; each drives `ECHO_CONNS / ECHO_CLIENTS` connections.
const ECHO_CLIENTS: usize = 2;
/// Request/response round trips per connection per Echo iteration.
const ECHO_ROUNDS: usize = 50;
/// Bytes per echo message.
const MSG: usize = 64;
/// Listen backlog of both servers (baton's default).
const BACKLOG: i32 = 1024;
const SHUTDOWN: Duration = Duration::from_secs(10);
/// How often the baseline loops look at their stop flag.
const POLL_TICK: Timespec = Timespec { tv_sec: 0, tv_nsec: 50_000_000 };

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn inet(addr: &Address) -> SocketAddr {
    match addr {
        Address::Inet(a) => *a,
        Address::Unix(_) => unreachable!("a TCP listener has an inet address"),
    }
}

/// A nonblocking, close-on-exec TCP listener with `SO_REUSEADDR` and [`BACKLOG`], like baton's.
fn raw_listener() -> TcpListener {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    rustix::net::bind(&fd, &loopback()).unwrap();
    rustix::net::listen(&fd, BACKLOG).unwrap();
    TcpListener::from(fd)
}

/// `epoll_wait` into `events` (cleared first), retrying on `EINTR`.
fn epoll_wait(ep: &impl AsFd, events: &mut Vec<epoll::Event>) {
    events.clear();
    loop {
        match epoll::wait(ep, rustix::buffer::spare_capacity(events), Some(&POLL_TICK)) {
            Ok(_) => return,
            Err(Errno::INTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        }
    }
}

/// A baseline server thread with a stop flag.
struct Baseline {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Baseline {
    fn start(body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Baseline {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Baseline { stop, thread: Some(std::thread::spawn(move || body(flag))) }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("baseline thread panicked");
            }
        }
    }
}

// ---- Accept ------------------------------------------------------------------------------

/// A client thread that, on every `go`, connects [`ACCEPT_N`] sockets and drops each at once.
///
/// `SO_LINGER` 0 makes the drop an RST, so the client leaves no `TIME_WAIT` entries behind:
/// otherwise a few hundred thousand connections would exhaust the loopback ephemeral ports.
/// Linux still hands a reset connection that sits in the accept queue to `accept`.
struct Connector {
    go: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Connector {
    fn start(addr: SocketAddr) -> Connector {
        let (go, rx) = bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                for _ in 0..ACCEPT_N {
                    let s = TcpStream::connect(addr).expect("connect");
                    rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).unwrap();
                    drop(s);
                }
            }
        });
        Connector { go: Some(go), thread: Some(thread) }
    }

    fn go(&self) {
        self.go.as_ref().unwrap().send(()).unwrap();
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.go.take();
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("connector thread panicked");
            }
        }
    }
}

/// The listener's owner: counts connections, drops them, signals every [`ACCEPT_N`]th.
struct AcceptCounter {
    n: usize,
    done: Sender<()>,
}

struct Acc(Accepted);

impl From<Accepted> for Acc {
    fn from(a: Accepted) -> Self {
        Acc(a)
    }
}

impl Actor for AcceptCounter {
    type Message = Acc;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: Acc) {
        drop(msg.0.stream);
        self.n += 1;
        if self.n == ACCEPT_N {
            self.n = 0;
            self.done.send(()).unwrap();
        }
    }
}

fn accept_baton(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.bench_function("baton", |b| {
        let rt = Runtime::builder().threads(THREADS).build();
        let reactor = Reactor::start().unwrap();
        let (tx, done) = bounded(1);
        let owner = rt.try_spawn(AcceptCounter { n: 0, done: tx }, Mailbox::Unbounded).unwrap();
        let listener = reactor.listen_tcp(loopback(), ListenOptions::default(), owner.recipient()).unwrap();
        let client = Connector::start(inet(listener.local_addr()));
        b.iter_custom(|iters| {
            timed(iters, || {
                client.go();
                wait(&done, "Accept/baton");
            })
        });
        drop(client);
        listener.close();
        reactor.stop();
        rt.shutdown(SHUTDOWN).unwrap();
    });
}

fn accept_loop(listener: TcpListener, done: Sender<()>, stop: Arc<AtomicBool>) {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    epoll::add(&ep, &listener, epoll::EventData::new_u64(0), epoll::EventFlags::IN).unwrap();
    let mut events = Vec::with_capacity(8);
    let mut n = 0;
    while !stop.load(Relaxed) {
        epoll_wait(&ep, &mut events);
        if events.is_empty() {
            continue;
        }
        loop {
            match rustix::net::accept_with(&listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(fd) => {
                    drop(fd);
                    n += 1;
                    if n == ACCEPT_N {
                        n = 0;
                        done.send(()).unwrap();
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

fn accept_epoll(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.bench_function("epoll_thread", |b| {
        let listener = raw_listener();
        let addr = listener.local_addr().unwrap();
        let (tx, done) = bounded(1);
        let server = Baseline::start(move |stop| accept_loop(listener, tx, stop));
        let client = Connector::start(addr);
        b.iter_custom(|iters| {
            timed(iters, || {
                client.go();
                wait(&done, "Accept/epoll_thread");
            })
        });
        drop(client);
        drop(server);
    });
}

fn bench_accept(c: &mut Criterion) {
    let mut g = group(c, "Accept", ACCEPT_N as u64);
    accept_baton(&mut g);
    accept_epoll(&mut g);
    g.finish();
}

// ---- Echo --------------------------------------------------------------------------------

/// [`ECHO_CLIENTS`] client threads with blocking sockets, connected once.
///
/// On every `go`, each thread does [`ECHO_ROUNDS`] rounds over its connections: it writes one
/// [`MSG`]-byte request on each connection in turn, then reads and checks each response in
/// turn. So every connection has one request in flight at a time, and a thread has up to
/// `ECHO_CONNS / ECHO_CLIENTS` in flight across its connections.
struct EchoClients {
    go: Vec<Sender<()>>,
    done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoClients {
    fn start(addr: SocketAddr) -> EchoClients {
        let (done_tx, done) = bounded(ECHO_CLIENTS);
        let mut go = Vec::new();
        let mut threads = Vec::new();
        for t in 0..ECHO_CLIENTS {
            let conns: Vec<TcpStream> = (0..ECHO_CONNS / ECHO_CLIENTS)
                .map(|_| {
                    let s = TcpStream::connect(addr).expect("connect");
                    s.set_nodelay(true).unwrap();
                    s.set_read_timeout(Some(ROUND_TIMEOUT)).unwrap();
                    s
                })
                .collect();
            let (go_tx, go_rx) = bounded::<()>(1);
            let done_tx = done_tx.clone();
            go.push(go_tx);
            threads.push(std::thread::spawn(move || {
                let mut conns = conns;
                let mut buf = [0u8; MSG];
                while go_rx.recv().is_ok() {
                    for r in 0..ECHO_ROUNDS {
                        let msg = [(t * 31 + r) as u8; MSG];
                        for c in &mut conns {
                            c.write_all(&msg).expect("echo client write");
                        }
                        for c in &mut conns {
                            c.read_exact(&mut buf).expect("echo client read");
                            assert_eq!(buf, msg, "echo returned other bytes");
                        }
                    }
                    done_tx.send(()).unwrap();
                }
            }));
        }
        EchoClients { go, done, threads }
    }

    fn round(&self, what: &str) {
        for g in &self.go {
            g.send(()).unwrap();
        }
        for _ in 0..ECHO_CLIENTS {
            wait(&self.done, what);
        }
    }

    fn stop(self) {
        drop(self.go);
        for t in self.threads {
            t.join().expect("echo client thread panicked");
        }
    }
}

/// Adopts every accepted stream into a fresh [`EchoConn`] actor, on the pool or (with
/// `on_reactor`) on the reactor thread's event loop.
struct EchoAcceptor {
    reactor: Reactor,
    on_reactor: bool,
}

impl Actor for EchoAcceptor {
    type Message = Acc;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Acc) {
        let slot = Arc::new(OnceLock::new());
        let echo = EchoConn { conn: slot.clone() };
        let echo = if self.on_reactor {
            ctx.spawn_on(self.reactor.event_loop(), echo, Mailbox::Unbounded).unwrap()
        } else {
            ctx.spawn(echo, Mailbox::Unbounded).unwrap()
        };
        let conn = self.reactor.adopt(msg.0.stream, ConnOptions::default(), echo.recipient()).unwrap();
        assert!(slot.set(conn).is_ok());
    }
}

/// One per connection: writes every `Data` back.
struct EchoConn {
    /// Set by the acceptor right after `adopt` returns.
    conn: Arc<OnceLock<Connection>>,
}

impl EchoConn {
    fn conn(&self) -> &Connection {
        // `Data` can in principle arrive before the acceptor stores the handle; it is at most a
        // few instructions away.
        loop {
            if let Some(c) = self.conn.get() {
                return c;
            }
            std::thread::yield_now();
        }
    }
}

impl Actor for EchoConn {
    type Message = ConnEvent;
    fn handle(&mut self, _ctx: &mut Context<Self>, ev: ConnEvent) {
        match ev {
            ConnEvent::Data(_, bytes) => self.conn().write(&bytes).expect("echo write"),
            ConnEvent::ReadClosed(_) => self.conn().close(),
            _ => {}
        }
    }
}

fn echo_baton(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, on_reactor: bool) {
    g.bench_function(name, |b| {
        let rt = Runtime::builder().threads(THREADS).build();
        let reactor = Reactor::start().unwrap();
        let acceptor = rt.try_spawn(EchoAcceptor { reactor: reactor.clone(), on_reactor }, Mailbox::Unbounded).unwrap();
        let listener = reactor.listen_tcp(loopback(), ListenOptions::default(), acceptor.recipient()).unwrap();
        let clients = EchoClients::start(inet(listener.local_addr()));
        b.iter_custom(|iters| timed(iters, || clients.round("Echo/baton")));
        clients.stop();
        listener.close();
        reactor.stop();
        rt.shutdown(SHUTDOWN).unwrap();
    });
}

fn echo_loop(listener: TcpListener, stop: Arc<AtomicBool>) {
    const LISTENER: u64 = u64::MAX;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    epoll::add(&ep, &listener, epoll::EventData::new_u64(LISTENER), epoll::EventFlags::IN).unwrap();
    let mut conns: Vec<Option<TcpStream>> = Vec::new();
    let mut events = Vec::with_capacity(ECHO_CONNS + 1);
    let mut buf = [0u8; 4096];
    while !stop.load(Relaxed) {
        epoll_wait(&ep, &mut events);
        for ev in &events {
            let token = ev.data.u64();
            if token == LISTENER {
                loop {
                    match rustix::net::accept_with(&listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                        Ok(fd) => {
                            let token = conns.len() as u64;
                            epoll::add(&ep, &fd, epoll::EventData::new_u64(token), epoll::EventFlags::IN).unwrap();
                            conns.push(Some(TcpStream::from(fd)));
                        }
                        Err(Errno::AGAIN) => break,
                        Err(Errno::INTR | Errno::CONNABORTED) => continue,
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                continue;
            }
            let slot = &mut conns[token as usize];
            let Some(s) = slot.as_mut() else { continue };
            // One read per readiness event: level-triggered epoll reports the rest.
            match s.read(&mut buf) {
                Ok(0) => {
                    epoll::delete(&ep, &*s).unwrap();
                    *slot = None;
                }
                // One 64-byte reply per request: the socket buffer cannot be full here.
                Ok(k) => s.write_all(&buf[..k]).expect("echo write"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => {
                    epoll::delete(&ep, &*s).unwrap();
                    *slot = None;
                }
            }
        }
    }
}

fn echo_epoll(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.bench_function("epoll_thread", |b| {
        let listener = raw_listener();
        let addr = listener.local_addr().unwrap();
        let server = Baseline::start(move |stop| echo_loop(listener, stop));
        let clients = EchoClients::start(addr);
        b.iter_custom(|iters| timed(iters, || clients.round("Echo/epoll_thread")));
        clients.stop();
        drop(server);
    });
}

fn bench_echo(c: &mut Criterion) {
    let mut g = group(c, "Echo", (ECHO_CONNS * ECHO_ROUNDS) as u64);
    echo_baton(&mut g, "baton", false);
    echo_baton(&mut g, "baton_event_loop", true);
    echo_epoll(&mut g);
    g.finish();
}

criterion_group!(benches, bench_accept, bench_echo);

#[global_allocator]
static GLOBAL: baton_benches::CountingAlloc = baton_benches::CountingAlloc;

/// Idle connections for the memory measurement. Each takes two descriptors here (both ends
/// of a Unix socket pair live in this process).
const IDLE_CONNS: usize = 10_000;

/// User-space bytes per idle connection: heap growth from adopting `IDLE_CONNS` idle sockets,
/// all owned by one actor (the usual shape: one owner per worker, not one per connection).
fn memory_per_idle_connection() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = (2 * IDLE_CONNS + 256) as u64;
    if limit.current.is_some_and(|c| c < want) {
        let raised =
            Rlimit { current: limit.maximum.map_or(Some(want), |m| Some(m.min(want))), maximum: limit.maximum };
        let _ = setrlimit(Resource::Nofile, raised);
    }
    let room = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX).saturating_sub(256) as usize / 2;
    let conns = IDLE_CONNS.min(room);

    struct Sink;
    impl Actor for Sink {
        type Message = ConnEvent;
        fn handle(&mut self, _ctx: &mut Context<Self>, _ev: ConnEvent) {}
    }
    let rt = Runtime::builder().threads(2).build();
    let reactor = Reactor::start().expect("reactor");
    let owner = rt.try_spawn(Sink, Mailbox::Unbounded).expect("spawn");
    let recipient = owner.recipient();
    let mut peers = Vec::with_capacity(conns);
    let mut handles = Vec::with_capacity(conns);
    let pairs: Vec<_> = (0..conns).map(|_| std::os::unix::net::UnixStream::pair().expect("socketpair")).collect();
    baton_benches::set_counting(true);
    let before = baton_benches::live_bytes();
    for (ours, theirs) in pairs {
        let conn = reactor
            .adopt(baton_transport::Stream::Unix(ours), ConnOptions::default(), recipient.clone())
            .expect("adopt");
        handles.push(conn);
        peers.push(theirs);
    }
    std::thread::sleep(Duration::from_millis(100));
    let grown = baton_benches::live_bytes() - before;
    baton_benches::set_counting(false);
    // The handle and peer Vecs were allocated before counting began, so `grown` is baton's.
    let per_conn = grown as f64 / conns as f64;
    println!("== Memory per idle connection ({conns} connections, one owner actor) ==");
    println!("heap growth: {grown} bytes");
    println!("user-space bytes per idle connection: {per_conn:.1} (target <= 1024)");
    println!();
    drop(handles);
    drop(peers);
    reactor.stop();
    let _ = rt.shutdown(Duration::from_secs(10));
}

fn main() {
    memory_per_idle_connection();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
