//! Handoff: sockets through the Handoff actor to a worker process, acknowledgements included,
//! against a raw `sendmsg`/`recvmsg` loop between two processes in the same run.
//!
//! `cargo bench -p baton-benches --bench handoff`
//!
//! - **Handoff/baton-1** — [`Parent`] with one worker process, one socket per HANDOFF record
//!   (`batch(1)`): the parent sends each socket, the worker's application takes it
//!   (`Incoming::take`) and closes it, the worker reports ADOPTED and CLOSED, the parent closes
//!   its copy. The same work as the raw loop below, through baton's machinery.
//! - **Handoff/baton-1-known** — the same through `Parent::dispatch_read`: the application
//!   gives each socket's history (nothing read or written, true of these), so the parent does
//!   not ask the kernel for it (two system calls per socket that `dispatch` makes).
//! - **Handoff/baton-1-reactor** — the same, but the application adopts each socket into the
//!   worker's reactor (`Incoming::adopt`: epoll registration and removal)
//!   before closing it, as a server on baton's transport does. Not comparable to raw: more work.
//! - **Handoff/raw-1** — the baseline: a parent process `sendmsg`s one descriptor per packet
//!   over a SEQPACKET socket to a child process (up to 256 in flight), which `recvmsg`s it,
//!   closes it and sends a one-byte acknowledgement; the parent closes its copy on each
//!   acknowledgement. No placement, no records, no reactor: the floor for the same work.
//! - **Handoff/baton-64** and **Handoff/raw-64** — the same with up to 64 sockets per record
//!   (the parent's default) and 64 descriptors per `sendmsg`.
//!
//! Before the criterion groups, the accept-to-adopted latency: sequential clients connect to a
//! parent's listener; the parent's `Stats` gives the median and 99th percentile.
//!
//! This binary is also the worker (started by the parent with its channel in the environment)
//! and the raw child (started with `BATON_BENCH_RAW_CHILD`).

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use baton_benches::{group, ROUND_TIMEOUT};
use baton_handoff::{channel_from_env, Dispatch, Parent, PeerCheck, Worker, WorkerCommand, WorkerEvent, WorkerOptions};
use baton_runtime::{Actor, Context, Runtime};
use baton_transport::{Address, ConnEvent, ConnId, ConnOptions, Connection, ListenOptions, Reactor, Stream};
use criterion::{criterion_group, BenchmarkGroup, Criterion};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketType,
};

/// Sockets per criterion iteration.
const N: usize = 2_000;
/// Descriptors the raw parent keeps in flight.
const WINDOW: usize = 256;
const RAW_ENV: &str = "BATON_BENCH_RAW_CHILD";

// ---- the worker role ---------------------------------------------------------------------

enum Msg {
    Worker(WorkerEvent),
    Conn(ConnEvent),
}
baton_runtime::from_variants!(Msg::Worker(WorkerEvent), Msg::Conn(ConnEvent));

/// Takes every socket and closes it at once, as the raw child does (`BENCH_ADOPT` set: adopts
/// it into the worker's reactor first, as a server on the transport would).
struct AdoptAndClose {
    conns: HashMap<ConnId, Connection>,
    into_reactor: bool,
}

impl Actor for AdoptAndClose {
    type Message = Msg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            Msg::Worker(WorkerEvent::Incoming(inc)) if !self.into_reactor => drop(inc.take().ok()),
            Msg::Worker(WorkerEvent::Incoming(inc)) => {
                if let Ok(conn) = inc.adopt(ctx.address(), ConnOptions::default()) {
                    conn.close();
                    self.conns.insert(conn.id(), conn);
                }
            }
            Msg::Conn(ConnEvent::Closed(id, _)) => {
                self.conns.remove(&id);
            }
            Msg::Conn(_) | Msg::Worker(WorkerEvent::Drain { .. }) => {}
        }
    }
}

fn worker(channel: baton_handoff::Channel) {
    let rt = Runtime::builder().threads(1).build();
    let reactor = Reactor::start().expect("reactor");
    let into_reactor = std::env::var_os("BENCH_ADOPT").is_some();
    let app = rt.spawn(AdoptAndClose { conns: HashMap::new(), into_reactor });
    let w = Worker::serve(channel, &rt, &reactor, app, WorkerOptions::default()).expect("serve");
    w.wait();
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
}

// ---- the raw baseline ----------------------------------------------------------------------

fn abstract_addr(name: &str) -> SocketAddrUnix {
    SocketAddrUnix::new_abstract_name(name.as_bytes()).expect("abstract name")
}

fn seqpacket() -> OwnedFd {
    rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).expect("socket")
}

/// The raw child: receive descriptors, close them, acknowledge each packet with one byte.
fn raw_child(name: &str) {
    let fd = seqpacket();
    rustix::net::connect(&fd, &abstract_addr(name)).expect("connect");
    let mut data = [0u8; 16];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(253))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = match rustix::net::recvmsg(&fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(_) => return,
        };
        if msg.bytes == 0 {
            return;
        }
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                fds.for_each(drop);
            }
        }
        if rustix::net::send(&fd, b"a", SendFlags::NOSIGNAL).is_err() {
            return;
        }
    }
}

struct RawPeer {
    fd: OwnedFd,
    child: std::process::Child,
}

impl RawPeer {
    fn start() -> RawPeer {
        let name = format!("baton-bench-raw-{}", std::process::id());
        let listener = seqpacket();
        rustix::net::bind(&listener, &abstract_addr(&name)).expect("bind");
        rustix::net::listen(&listener, 1).expect("listen");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(RAW_ENV, &name)
            .spawn()
            .expect("raw child");
        let fd = rustix::net::accept(&listener).expect("accept");
        RawPeer { fd, child }
    }

    /// Sends `n` descriptors (dups of `source`), `per` per packet, and waits for every
    /// acknowledgement, closing each copy when its packet is acknowledged.
    fn round(&self, source: &TcpStream, n: usize, per: usize) {
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut in_flight: VecDeque<Vec<OwnedFd>> = VecDeque::new();
        let (mut sent, mut acked) = (0, 0);
        let mut ack = [0u8; 4];
        while acked < n {
            while sent < n && sent - acked < WINDOW {
                let k = per.min(n - sent);
                let copies: Vec<OwnedFd> = (0..k).map(|_| source.as_fd().try_clone_to_owned().unwrap()).collect();
                let borrowed: Vec<BorrowedFd<'_>> = copies.iter().map(|f| f.as_fd()).collect();
                let mut control = SendAncillaryBuffer::new(&mut space);
                assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
                rustix::net::sendmsg(&self.fd, &[IoSlice::new(b"h")], &mut control, SendFlags::NOSIGNAL)
                    .expect("sendmsg");
                drop(borrowed);
                in_flight.push_back(copies);
                sent += k;
            }
            rustix::net::recv(&self.fd, &mut ack, RecvFlags::empty()).expect("ack");
            acked += in_flight.pop_front().expect("a packet in flight").len();
        }
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

// ---- baton ----------------------------------------------------------------------------------

struct BatonPeer {
    rt: Runtime,
    reactor: Reactor,
    parent: Parent,
}

impl BatonPeer {
    fn start(batch: usize, into_reactor: bool) -> BatonPeer {
        let rt = Runtime::builder().threads(1).build();
        let reactor = Reactor::start().expect("reactor");
        let parent = Parent::builder()
            .spawn(1, {
                let cmd = WorkerCommand::current_exe().unwrap().args(Vec::<String>::new());
                if into_reactor {
                    cmd.env("BENCH_ADOPT", "1")
                } else {
                    cmd
                }
            })
            .batch(batch)
            .max_in_flight(N)
            .max_per_worker(N as u32)
            .start(&rt, &reactor)
            .expect("parent");
        assert!(parent.wait_ready(ROUND_TIMEOUT), "worker never became ready");
        BatonPeer { rt, reactor, parent }
    }

    /// `known`: with `Parent::dispatch_read` (the socket's history given: nothing read or
    /// written, which is true of these), else `Parent::dispatch` (the parent measures it).
    fn round(&self, source: &TcpStream, peer: &Address, local: &Address, n: usize, known: bool) {
        let target = self.parent.adopted() + n as u64;
        for _ in 0..n {
            let socket = Dispatch {
                stream: Stream::Tcp(source.try_clone().unwrap()),
                peer: peer.clone(),
                local: local.clone(),
                tag: 0,
                key: None,
                prelude: Vec::new(),
            };
            if known {
                self.parent.dispatch_read(socket, 0).expect("dispatch");
            } else {
                self.parent.dispatch(socket).expect("dispatch");
            }
        }
        let deadline = Instant::now() + ROUND_TIMEOUT;
        while self.parent.adopted() < target {
            assert!(Instant::now() < deadline, "handoffs not adopted: {:?}", self.parent.stats());
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn stop(self) {
        let _ = self.parent.drain(Duration::from_secs(5));
        let _ = self.rt.shutdown(Duration::from_secs(5));
        self.reactor.stop();
    }
}

/// A connected TCP socket to hand over again and again (as duplicates).
fn source() -> (TcpStream, TcpStream, Address, Address) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, peer) = l.accept().unwrap();
    let local = server.local_addr().unwrap();
    (client, server, Address::Inet(peer), Address::Inet(local))
}

fn bench_pair(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, per: usize) {
    let (_client, server, peer, local) = source();
    for (suffix, into_reactor, known) in [("", false, false), ("-known", false, true), ("-reactor", true, false)] {
        let baton = BatonPeer::start(per, into_reactor);
        g.bench_function(format!("baton-{per}{suffix}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    baton.round(&server, &peer, &local, N, known);
                }
                start.elapsed()
            })
        });
        baton.stop();
    }
    let raw = RawPeer::start();
    g.bench_function(format!("raw-{per}"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                raw.round(&server, N, per);
            }
            start.elapsed()
        })
    });
}

fn bench_handoff(c: &mut Criterion) {
    let mut g = group(c, "Handoff", N as u64);
    bench_pair(&mut g, 1);
    bench_pair(&mut g, 64);
    g.finish();
}

criterion_group!(benches, bench_handoff);

/// Accept-to-adopted latency with sequential clients (one connection at a time).
fn latency() {
    const CLIENTS: usize = 2_000;
    let baton = BatonPeer::start(64, true);
    let listener = baton.parent.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).expect("listen");
    let Address::Inet(addr) = *listener.local_addr() else { unreachable!() };
    let start = Instant::now();
    for _ in 0..CLIENTS {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(ROUND_TIMEOUT)).unwrap();
        // The worker closes at once: end of file means it was adopted.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("EOF from the worker");
    }
    let elapsed = start.elapsed();
    let stats = baton.parent.stats().expect("stats");
    println!("== Handoff latency, accept to adopted ({CLIENTS} sequential connections, one worker) ==");
    println!("p50 {:?}, p99 {:?}", stats.latency_p50.unwrap(), stats.latency_p99.unwrap());
    println!(
        "client round trip (connect .. EOF): {:.1} us per connection",
        elapsed.as_secs_f64() * 1e6 / CLIENTS as f64
    );
    println!();
    baton.stop();
}

fn main() {
    if let Some(channel) = channel_from_env(PeerCheck::SameUid) {
        worker(channel.expect("channel"));
        return;
    }
    if let Ok(name) = std::env::var(RAW_ENV) {
        raw_child(&name);
        return;
    }
    latency();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
