//! End to end: HTTP over loopback against three servers, measured in the same run by a load
//! client of our own.
//!
//! `cargo bench -p baton-benches --bench e2e`
//!
//! - **(a) baton prefork**: a parent accepts and hands each connection to one of 2 worker
//!   processes (the `prefork` example's shape: `Parent` + `HttpServer` workers), least-loaded.
//! - **(b) SO_REUSEPORT prefork**: 2 processes, each with its own `SO_REUSEPORT` listener on the
//!   same port and a hand-written single-threaded epoll loop (rustix) serving the same HTTP:
//!   the kernel spreads connections, nothing is handed off. The upper bound.
//! - **(b+) the same with baton's TCP options** (new connection per request only): (b) with
//!   its listeners' `TCP_DEFER_ACCEPT` and its last answer written with `MSG_MORE` before the
//!   close, as baton's HTTP server does (`ListenOptions::defer_accept`,
//!   `Connection::write_and_close`): a connection reaches `accept` with its request, and the
//!   answer and the FIN leave in one segment. (b) is the minimal server the issue asks for,
//!   writing then closing like most servers; (b+) takes those two options out of the
//!   comparison and leaves the cost of the handoff itself.
//! - **(a') baton prefork, shared listener**: the parent sends the listening socket to both
//!   workers, which accept by themselves (the nginx shape); no per-connection handoff.
//! - **(a'') baton prefork, steered**: a `SO_REUSEPORT` socket per worker
//!   (`Parent::listen_steered`), the kernel placing each connection by weights the parent sets
//!   from the workers' load; no per-connection handoff.
//! - **(c) single process**: one process, baton's reactor and one `HttpServer` actor.
//!
//! Modes: a new connection per request (`Connection: close`) and keep-alive. Each run lasts
//! [`RUN`]; the runs are interleaved and repeated [`ROUNDS`] times and the medians reported, with
//! p50 and p99 latency. Then the skewed run: a new connection per request, 1 % of requests
//! `/slow?ms=20`, for baton least-loaded, baton round-robin and SO_REUSEPORT.
//!
//! Not a criterion benchmark: the figures are a load generator's (requests/s over a fixed time
//! and a latency histogram), which criterion's per-iteration timing does not give. The table is
//! printed, and `benches/e2e.svg` is written from it.
//!
//! The same binary is the worker of (a) and the processes of (b); `E2E_SERVE=KIND ADDR` runs one
//! server in the foreground for `benches/wrk.sh`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_examples::http::{self, HttpServer, Parsed};
use baton_handoff::{channel_from_env, policy, Parent, PeerCheck, Worker, WorkerCommand, WorkerOptions};
use baton_runtime::Runtime;
use baton_transport::{Address, Reactor};
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Length of one measured run. Short runs, many rounds: this machine's speed drifts by tens of
/// percent within a minute, and runs of one round are seconds apart.
const RUN: Duration = Duration::from_secs(2);
/// Load before each measured run, not counted: the servers' heaps, caches and the kernel's
/// socket tables reach their steady state first.
const WARMUP: Duration = Duration::from_millis(500);
/// Interleaved repetitions of every run.
const ROUNDS: usize = 9;
const WORKERS: usize = 2;
/// Concurrent clients, new connection per request (each a blocking thread).
const CLOSE_CLIENTS: usize = 32;
/// Keep-alive connections (each a blocking thread).
const KEEPALIVE_CLIENTS: usize = 64;

// ---- servers ----------------------------------------------------------------------------------

enum Server {
    Baton { rt: Runtime, reactor: Reactor, parent: Parent },
    Reuseport { children: Vec<Child> },
    Single { rt: Runtime, reactor: Reactor },
}

impl Server {
    fn baton(policy_name: &str) -> (Server, SocketAddr) {
        let rt = Runtime::builder().threads(2).build();
        let reactor = Reactor::start().unwrap();
        let parent = Parent::builder()
            .spawn(WORKERS, WorkerCommand::current_exe().unwrap().args(Vec::<String>::new()))
            .boxed_policy(
                policy::by_name(policy_name).unwrap_or_else(|_| Box::new(baton_handoff::LeastLoaded::default())),
            )
            .start(&rt, &reactor)
            .unwrap();
        assert!(parent.wait_ready(Duration::from_secs(20)), "workers not ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = if policy_name == "listeners" {
            // The nginx shape: the workers accept from the listener the parent shares.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            HttpServer::defer_accept(&l).unwrap();
            inet(&parent.share_listener(l.into(), 0).unwrap())
        } else if policy_name == "steered" {
            // A SO_REUSEPORT socket per worker, the kernel placing by the parent's weights.
            inet(&parent.listen_steered("127.0.0.1:0".parse().unwrap(), &HttpServer::listen_options(), 0).unwrap())
        } else {
            inet(parent.listen_tcp("127.0.0.1:0".parse().unwrap(), HttpServer::listen_options()).unwrap().local_addr())
        };
        // A worker has the listener once it answers.
        while policy_name == "listeners" && TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "shared listener not served");
            std::thread::sleep(Duration::from_millis(5));
        }
        (Server::Baton { rt, reactor, parent }, addr)
    }

    /// `fin_with_answer`: (b+), with baton's TCP options (deferred accept, the last answer and
    /// the FIN in one segment).
    fn reuseport(fin_with_answer: bool) -> (Server, SocketAddr) {
        // Reserve a port with a listener of the same group, then let it go once the workers
        // have theirs (a listener nobody accepts on would take its share of the connections).
        let probe = reuseport_listener("127.0.0.1:0".parse().unwrap());
        let addr = probe.local_addr().unwrap();
        let mut children = Vec::new();
        for _ in 0..WORKERS {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .env("E2E_REUSEPORT_CHILD", addr.to_string())
                .env("E2E_REUSEPORT_FIN", if fin_with_answer { "1" } else { "0" })
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut ready = [0u8; 6];
            child.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
            children.push(child);
        }
        drop(probe);
        (Server::Reuseport { children }, addr)
    }

    fn single() -> (Server, SocketAddr) {
        let rt = Runtime::builder().threads(2).build();
        let reactor = Reactor::start().unwrap();
        let app = HttpServer::spawn(&rt, &reactor).expect("spawning the HTTP server");
        let l =
            reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), HttpServer::listen_options(), app.recipient()).unwrap();
        (Server::Single { rt, reactor }, inet(l.local_addr()))
    }

    fn stop(self) {
        match self {
            Server::Baton { rt, reactor, parent } => {
                let _ = parent.drain(Duration::from_secs(5));
                let _ = rt.shutdown(Duration::from_secs(5));
                reactor.stop();
            }
            Server::Reuseport { children } => {
                for mut c in children {
                    drop(c.stdin.take()); // end of stdin: the child exits
                    let _ = c.wait();
                }
            }
            Server::Single { rt, reactor } => {
                reactor.stop();
                let _ = rt.shutdown(Duration::from_secs(5));
            }
        }
    }
}

fn inet(a: &Address) -> SocketAddr {
    match a {
        Address::Inet(a) => *a,
        other => panic!("unexpected {other:?}"),
    }
}

fn reuseport_listener(addr: SocketAddr) -> TcpListener {
    let fd = rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::sockopt::set_socket_reuseport(&fd, true).unwrap();
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    rustix::net::bind(&fd, &addr).unwrap();
    rustix::net::listen(&fd, 1024).unwrap();
    TcpListener::from(fd)
}

/// One SO_REUSEPORT process: a level-triggered epoll loop serving the same HTTP as
/// `HttpServer`, until its stdin closes.
fn reuseport_child(addr: SocketAddr, fin_with_answer: bool) {
    let listener = reuseport_listener(addr);
    if fin_with_answer {
        // (b+): connections reach accept with their request.
        HttpServer::defer_accept(&listener).unwrap();
    }
    rustix::io::ioctl_fionbio(&listener, true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        s.store(true, Relaxed);
    });
    std::io::stdout().write_all(b"ready\n").unwrap();
    std::io::stdout().flush().unwrap();
    const LISTENER: u64 = u64::MAX;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    epoll::add(&ep, &listener, epoll::EventData::new_u64(LISTENER), epoll::EventFlags::IN).unwrap();
    struct Conn {
        fd: OwnedFd,
        buf: Vec<u8>,
    }
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next = 0u64;
    let mut events = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    while !stop.load(Relaxed) {
        events.clear();
        match epoll::wait(
            &ep,
            rustix::buffer::spare_capacity(&mut events),
            Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 100_000_000 }),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => panic!("epoll_wait: {e}"),
        }
        for ev in &events {
            let token = ev.data.u64();
            if token == LISTENER {
                loop {
                    match rustix::net::accept_with(&listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                        Ok(fd) => {
                            let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                            epoll::add(&ep, &fd, epoll::EventData::new_u64(next), epoll::EventFlags::IN).unwrap();
                            conns.insert(next, Conn { fd, buf: Vec::new() });
                            next += 1;
                        }
                        Err(Errno::AGAIN) => break,
                        Err(Errno::INTR | Errno::CONNABORTED) => continue,
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                continue;
            }
            let Some(c) = conns.get_mut(&token) else { continue };
            let close = match rustix::io::read(&c.fd, &mut scratch) {
                Ok(0) => true,
                Ok(n) => {
                    c.buf.extend_from_slice(&scratch[..n]);
                    let mut close = false;
                    loop {
                        let req = match http::parse(&c.buf) {
                            Parsed::Request(req) => req,
                            Parsed::Incomplete => break,
                            refused => {
                                // Answered, and the connection closed.
                                let _ =
                                    write_all(&c.fd, &refused.rejection().unwrap(), rustix::net::SendFlags::NOSIGNAL);
                                close = true;
                                break;
                            }
                        };
                        let reply = http::answer(&req, req.close);
                        // (b+): MSG_MORE holds the answer back until the close, whose FIN
                        // goes out with it.
                        let flags = if req.close && fin_with_answer {
                            rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::MORE
                        } else {
                            rustix::net::SendFlags::NOSIGNAL
                        };
                        // A small answer into an empty socket buffer: written whole, or the
                        // client is gone.
                        if write_all(&c.fd, &reply, flags).is_err() || req.close {
                            close = true;
                            break;
                        }
                        let used = req.head_len + req.body_len;
                        c.buf.drain(..used.min(c.buf.len()));
                    }
                    close
                }
                Err(Errno::AGAIN | Errno::INTR) => false,
                Err(_) => true,
            };
            if close {
                let c = conns.remove(&token).unwrap();
                let _ = epoll::delete(&ep, &c.fd);
                if fin_with_answer {
                    // As baton's transport: the shutdown pushes the held answer with the FIN
                    // even if the client sent more (a bare close would then reset).
                    let _ = rustix::net::shutdown(&c.fd, rustix::net::Shutdown::Write);
                }
            }
        }
    }
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8], flags: rustix::net::SendFlags) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::net::send(fd, bytes, flags) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---- the load client ----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Close,
    KeepAlive,
}

struct Load {
    requests: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Latencies of the ordinary requests only (all of them when nothing is slow): what
    /// placement can protect from the heavy ones.
    fast: Vec<Duration>,
    /// Latencies of the heavy requests.
    heavy: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }
    fn fast_percentile(&self, q: f64) -> Duration {
        percentile(&self.fast, q)
    }
}

fn percentile(latencies: &[Duration], q: f64) -> Duration {
    let mut l = latencies.to_vec();
    l.sort_unstable();
    l.get(((l.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
}

impl Load {}

fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `clients` threads for `RUN`; every `slow_every`-th request of a thread is `/slow?ms=20`.
fn load(addr: SocketAddr, mode: Mode, clients: usize, slow_every: Option<usize>) -> Load {
    load_at(addr, mode, clients, slow_every, None, RUN)
}

/// [`load`], open-loop when `rate` is given: each client sends on a fixed schedule (`rate`
/// requests/s over all of them) and a latency counts from when the request was due, not from
/// when a late client got round to it, so a stalled server is charged for every request it
/// delayed (as wrk2 measures).
fn load_at(
    addr: SocketAddr,
    mode: Mode,
    clients: usize,
    slow_every: Option<usize>,
    rate: Option<f64>,
    run: Duration,
) -> Load {
    let start = Instant::now() + WARMUP;
    let end = start + run;
    let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
    // `E2E_SLOW_PATH` replaces the heavy request (`/block?ms=20`: one that blocks the worker).
    let slow_path = std::env::var("E2E_SLOW_PATH").unwrap_or_else(|_| "/slow?ms=20".into());
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let slow_path = slow_path.clone();
            // Every n-th request of all the clients' is heavy (not every n-th of each: at a low
            // rate a client sends too few for its own count to reach n).
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut fast = Vec::new();
                let mut heavy = Vec::new();
                let mut failed = 0;
                let mut buf = Vec::new();
                let mut conn: Option<TcpStream> = None;
                // Open loop: this client's schedule, staggered across clients.
                let mut due = interval.map(|d| Instant::now() + d.mul_f64(t as f64 / clients as f64));
                while Instant::now() < end {
                    let i = sent.fetch_add(1, Relaxed) + 1;
                    let slow = slow_every.is_some_and(|n| i.is_multiple_of(n));
                    let path = if slow { slow_path.as_str() } else { "/" };
                    let req = match mode {
                        Mode::Close => format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"),
                        Mode::KeepAlive => format!("GET {path} HTTP/1.1\r\nHost: b\r\n\r\n"),
                    };
                    let t0 = match due.as_mut() {
                        Some(due) => {
                            let at = *due;
                            *due += interval.expect("open loop");
                            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            at
                        }
                        None => Instant::now(),
                    };
                    let result = (|| -> std::io::Result<()> {
                        if conn.is_none() {
                            let s = TcpStream::connect(addr)?;
                            s.set_nodelay(true)?;
                            s.set_read_timeout(Some(Duration::from_secs(10)))?;
                            conn = Some(s);
                        }
                        let s = conn.as_mut().unwrap();
                        s.write_all(req.as_bytes())?;
                        read_response(s, &mut buf)
                    })();
                    match result {
                        Ok(()) if t0 < start => {}
                        Ok(()) => {
                            lat.push(t0.elapsed());
                            if slow {
                                heavy.push(t0.elapsed());
                            } else {
                                fast.push(t0.elapsed());
                            }
                        }
                        Err(_) => {
                            failed += usize::from(t0 >= start);
                            conn = None;
                        }
                    }
                    if mode == Mode::Close {
                        conn = None;
                    }
                }
                (lat, fast, heavy, failed)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut fast_all = Vec::new();
    let mut heavy_all = Vec::new();
    let mut failed = 0;
    for t in threads {
        let (l, fast, heavy, f) = t.join().unwrap();
        latencies.extend(l);
        fast_all.extend(fast);
        heavy_all.extend(heavy);
        failed += f;
    }
    Load { requests: latencies.len(), failed, elapsed: start.elapsed(), latencies, fast: fast_all, heavy: heavy_all }
}

// ---- the runs -----------------------------------------------------------------------------------

struct Row {
    name: String,
    runs: Vec<Load>,
}

/// The median (the upper one of an even count).
fn middle<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

impl Row {
    fn median<T: PartialOrd + Copy>(&self, f: impl Fn(&Load) -> T) -> T {
        middle(self.runs.iter().map(f).collect())
    }
    fn rate(&self) -> f64 {
        self.median(Load::rate)
    }
    fn p50(&self) -> Duration {
        self.median(|l| l.percentile(0.5))
    }
    fn p99(&self) -> Duration {
        self.median(|l| l.percentile(0.99))
    }
    fn p99_fast(&self) -> Duration {
        self.median(|l| l.fast_percentile(0.99))
    }
    /// This row's requests/s over `base`'s, round by round (runs of one round are seconds
    /// apart, so a drift in the machine's speed cancels), and their median.
    fn round_ratios(&self, base: &Row) -> (f64, Vec<f64>) {
        let ratios: Vec<f64> = self.runs.iter().zip(&base.runs).map(|(a, b)| a.rate() / b.rate()).collect();
        (middle(ratios.clone()), ratios)
    }
    fn failed(&self) -> usize {
        self.runs.iter().map(|l| l.failed).sum()
    }
}

fn measure(kind: &str, policy: &str, mode: Mode, slow_every: Option<usize>) -> Load {
    let (server, addr) = match kind {
        "baton" => Server::baton(policy),
        "reuseport" => Server::reuseport(false),
        "reuseport-fin" => Server::reuseport(true),
        _ => Server::single(),
    };
    let clients = if mode == Mode::Close { CLOSE_CLIENTS } else { KEEPALIVE_CLIENTS };
    let result = load(addr, mode, clients, slow_every);
    if std::env::var_os("E2E_VERBOSE").is_some() {
        eprintln!("  {kind} {policy}: {:.0} requests/s", result.rate());
    }
    server.stop();
    result
}

fn print_table(title: &str, rows: &[Row], base: usize) {
    println!("== {title} (medians of {ROUNDS} interleaved runs of {RUN:?}) ==");
    println!(
        "{:<34} {:>11} {:>10} {:>10} {:>12} {:>8} {:>8} {:>7}   ratio in each round",
        "variant", "requests/s", "p50", "p99", "p99 (fast)", "ratio", "of med.", "failed"
    );
    for r in rows {
        let (median, rounds) = r.round_ratios(&rows[base]);
        println!(
            "{:<34} {:>11.0} {:>10.2?} {:>10.2?} {:>12.2?} {:>8.3} {:>8.3} {:>7}   {}",
            r.name,
            r.rate(),
            r.p50(),
            r.p99(),
            r.p99_fast(),
            median,
            r.rate() / rows[base].rate(),
            r.failed(),
            rounds.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ")
        );
    }
    println!(
        "(ratio: the median over rounds of requests/s against the first row's in the same round; \
         of med.: median requests/s over the first row's)"
    );
    println!();
}

fn main() {
    if let Some(channel) = channel_from_env(PeerCheck::SameUid) {
        let rt = Runtime::builder().threads(2).build();
        let reactor = Reactor::start().unwrap();
        let app = HttpServer::spawn(&rt, &reactor).expect("spawning the HTTP server");
        let w = Worker::serve(channel.unwrap(), &rt, &reactor, &app, WorkerOptions::default()).unwrap();
        w.wait();
        let _ = rt.shutdown(Duration::from_secs(5));
        reactor.stop();
        return;
    }
    if let Ok(addr) = std::env::var("E2E_REUSEPORT_CHILD") {
        reuseport_child(addr.parse().unwrap(), std::env::var("E2E_REUSEPORT_FIN").is_ok_and(|v| v == "1"));
        return;
    }
    if let Ok(spec) = std::env::var("E2E_SERVE") {
        return serve_foreground(&spec);
    }
    if let Ok(spec) = std::env::var("E2E_LOAD") {
        return load_foreground(&spec);
    }
    // E2E_TABLES=close,keepalive,skew (all by default): a shorter run while working on one.
    let tables_wanted = std::env::var("E2E_TABLES").unwrap_or_else(|_| "close,keepalive,skew".into());
    let wanted = |name: &str| tables_wanted.split(',').any(|t| t.trim() == name);
    // (kind, policy, label)
    let variants = [
        ("reuseport", "", "(b) SO_REUSEPORT prefork"),
        ("baton", "least-loaded", "(a) baton prefork, least-loaded"),
        ("baton", "listeners", "(a') baton prefork, shared listener"),
        ("baton", "steered", "(a'') baton prefork, steered"),
        ("single", "", "(c) baton single process"),
        ("reuseport-fin", "", "(b+) SO_REUSEPORT, baton's TCP opts"),
    ];
    let mut tables = Vec::new();
    for (mode, title, name) in
        [(Mode::Close, "new connection per request", "close"), (Mode::KeepAlive, "keep-alive", "keepalive")]
    {
        if !wanted(name) {
            continue;
        }
        // (b+) differs from (b) only in how a connection starts and ends.
        let variants = if mode == Mode::Close { &variants[..] } else { &variants[..5] };
        let mut rows: Vec<Row> = variants.iter().map(|v| Row { name: v.2.to_string(), runs: Vec::new() }).collect();
        for _ in 0..ROUNDS {
            for (i, (kind, policy, _)) in variants.iter().enumerate() {
                rows[i].runs.push(measure(kind, policy, mode, None));
            }
        }
        print_table(title, &rows, 0);
        tables.push((title, rows));
    }
    if !wanted("skew") {
        return;
    }
    let skew = [
        ("reuseport", "", "SO_REUSEPORT prefork"),
        ("baton", "least-loaded", "baton least-loaded"),
        ("baton", "round-robin", "baton round-robin"),
    ];
    let mut rows: Vec<Row> = skew.iter().map(|v| Row { name: v.2.to_string(), runs: Vec::new() }).collect();
    for _ in 0..ROUNDS {
        for (i, (kind, policy, _)) in skew.iter().enumerate() {
            rows[i].runs.push(measure(kind, policy, Mode::Close, Some(100)));
        }
    }
    print_table("skewed: new connection per request, 1 % /slow?ms=20", &rows, 0);
    tables.push(("skewed (1 % /slow?ms=20)", rows));
    if tables.len() < 3 {
        return; // the plot shows every table or none
    }
    let svg = plot(&tables);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e.svg");
    match std::fs::write(&path, svg) {
        Ok(()) => println!("plot written to {}", path.display()),
        Err(e) => println!("plot not written: {e}"),
    }
}

/// Runs one server until stdin closes (for `benches/wrk.sh`): `E2E_SERVE="baton ADDR"` etc.
fn serve_foreground(spec: &str) {
    let (kind, _) = spec.split_once(' ').unwrap_or((spec, ""));
    let (server, addr) = match kind {
        "baton" => Server::baton("least-loaded"),
        "listeners" => Server::baton("listeners"),
        "steered" => Server::baton("steered"),
        "reuseport" => Server::reuseport(false),
        "reuseport-fin" => Server::reuseport(true),
        _ => Server::single(),
    };
    println!("listening on http://{addr}");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    server.stop();
}

/// Our load client alone against a server started elsewhere (for profiling one with `perf`):
/// `E2E_LOAD="close ADDR"`, `E2E_LOAD="keepalive ADDR"` or `E2E_LOAD="skew ADDR"` (a new
/// connection per request, 64 clients, every 200th request heavy: see `E2E_SLOW_PATH`); one
/// run of [`RUN`]. Percentiles are of the ordinary requests.
fn load_foreground(spec: &str) {
    let (mode, addr) = spec.split_once(' ').expect("E2E_LOAD=\"close|keepalive|skew ADDR\"");
    let (mode, clients, slow_every) = match mode {
        "close" => (Mode::Close, CLOSE_CLIENTS, None),
        "skew" => (Mode::Close, 64, Some(200)),
        _ => (Mode::KeepAlive, KEEPALIVE_CLIENTS, None),
    };
    // E2E_RATE=N: open loop at N requests/s; E2E_SECS: the run's length.
    let rate = std::env::var("E2E_RATE").ok().and_then(|r| r.parse().ok());
    let run = std::env::var("E2E_SECS").ok().and_then(|r| r.parse().ok()).map_or(RUN, Duration::from_secs_f64);
    let load = load_at(addr.trim().parse().expect("E2E_LOAD: ADDR"), mode, clients, slow_every, rate, run);
    println!(
        "{:.0} requests/s, p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}, {} failed; {} heavy: p50 {:.2?}, max {:.2?}",
        load.rate(),
        load.fast_percentile(0.5),
        load.fast_percentile(0.9),
        load.fast_percentile(0.99),
        load.fast_percentile(1.0),
        load.failed,
        load.heavy.len(),
        percentile(&load.heavy, 0.5),
        percentile(&load.heavy, 1.0),
    );
}

/// Two bar charts per table, requests/s and p99, as a self-contained SVG.
fn plot(tables: &[(&str, Vec<Row>)]) -> String {
    let (w, panel_h, bar_h) = (900.0, 40.0, 22.0);
    let mut y = 40.0;
    let mut body = String::new();
    let colors = ["#4c72b0", "#dd8452", "#55a868"];
    for (title, rows) in tables {
        for (metric, unit, value) in [
            ("requests/s", "", Box::new(|r: &Row| r.rate()) as Box<dyn Fn(&Row) -> f64>),
            ("p99 latency of ordinary requests", "ms", Box::new(|r: &Row| r.p99_fast().as_secs_f64() * 1e3)),
        ] {
            body += &format!("<text x='10' y='{y}' font-size='14' font-weight='bold'>{title}: {metric}</text>\n");
            y += 10.0;
            let max = rows.iter().map(&value).fold(0.0, f64::max).max(1e-9);
            for (i, r) in rows.iter().enumerate() {
                let v = value(r);
                let len = (w - 330.0) * v / max;
                body += &format!(
                    "<text x='10' y='{:.0}' font-size='12'>{}</text><rect x='260' y='{:.0}' width='{len:.0}' height='{bar_h}' fill='{}'/><text x='{:.0}' y='{:.0}' font-size='12'>{v:.1} {unit}</text>\n",
                    y + 16.0,
                    r.name,
                    y,
                    colors[i % colors.len()],
                    265.0 + len,
                    y + 16.0
                );
                y += bar_h + 4.0;
            }
            y += panel_h - 10.0;
        }
    }
    format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{y:.0}' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n{body}</svg>\n"
    )
}
