//! The handshake path: what the parent pays for reading a handshake before it hands a socket
//! over, against a baseline measured in the same run, a new connection per request.
//!
//! `cargo bench -p baton-benches --bench handshake`
//!
//! It builds and runs the example binaries themselves (`cargo build --release -p
//! baton-examples --example prefork --example tls_router`, run first from here), so what is
//! measured is what `cargo run --release --example ...` serves.
//!
//! **PROXY v2** (table `proxy`): the `prefork` example, `--workers 2`.
//! - **(a) plain**: `prefork`, our client sending plain HTTP (`GET /`, `Connection: close`).
//! - **(b) PROXY v2**: `prefork --proxy-protocol v2 --trusted 127.0.0.1/32`, our client sending
//!   a fixed PROXY v2 header (TCP4, 28 bytes) in the same write as the request. The parent reads
//!   and checks the header (`baton_handoff::proxy`) before it hands the socket over with the
//!   request as its prelude; b/a is what that costs.
//! - **(c0) HAProxy → plain** and **(c) HAProxy → PROXY v2** (when `haproxy` is on the PATH):
//!   the same two servers behind a real HAProxy (`mode tcp`, one backend server; `send-proxy-v2`
//!   for (c)), our client connecting to HAProxy. c/c0 is the same cost in a realistic setting
//!   (HAProxy's header comes in its own segment, before the request).
//!
//! **TLS by SNI** (tables `tls` and `tls-x25519`): a full TLS handshake per request (no resumption), our client
//! (rustls, 32 threads) alternating between `a.localhost` and `b.localhost`.
//! - **(s) single process**: one process of this binary, 2 threads, each an epoll loop with its
//!   own `SO_REUSEPORT` listener on the same port, rustls `ServerConnection` per connection,
//!   the certificate chosen by SNI.
//! - **(r) tls_router**: the example, 2 names, 1 worker per name (so a parent and 2 worker
//!   processes): the parent reads the ClientHello, routes by SNI, the worker completes TLS.
//!
//! Both serve the same certificates (made once by `tls_router --certs DIR`, then given to every
//! router run with `--cert`/`--key`: ECDSA P-256 leaves signed by one CA), with the same rustls
//! (`ring` provider, its default cipher suites and key exchange groups, TLS 1.3 and 1.2), the
//! same answer (the same length) followed by a `close_notify` and the FIN, and the same
//! listener options (no deferred accept). The client prints the suite and group it negotiated
//! with each.
//!
//! Reported per server: requests/s, p50 and p99 latency, and the server's CPU time (user +
//! system, from `/proc`: the example's processes and their children, HAProxy's too, or the
//! single-process server's two threads) per request; each ratio against the baseline row, of
//! requests/s and of CPU per request.
//!
//! Each run lasts [`RUN`] after a [`WARMUP`]; every server is started afresh for each run and
//! stopped (SIGTERM for the examples) after it; the servers take turns in each round, [`ROUNDS`]
//! rounds, and each ratio is the median of the ratios measured in the same round (this machine's
//! speed drifts by tens of percent within a minute).
//!
//! The TLS table runs twice: `tls` with rustls's default key exchange groups on both sides
//! (ring's list in this rustls starts with secp384r1, so that is what is negotiated), and
//! `tls-x25519` with the client offering X25519 only, as curl and browsers prefer (a cheaper
//! handshake, so the router's fixed cost per connection weighs more).
//!
//! Knobs: `HANDSHAKE_TABLES=proxy,tls,tls-x25519` (all by default), `HANDSHAKE_ROUNDS=N`,
//! `HANDSHAKE_HAPROXY=0` (leave HAProxy out).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// Length of one measured run.
const RUN: Duration = Duration::from_secs(2);
/// Load before each measured run, not counted.
const WARMUP: Duration = Duration::from_millis(500);
/// Interleaved repetitions of every run (`HANDSHAKE_ROUNDS`).
const ROUNDS: usize = 7;
/// Concurrent clients (each a blocking thread, a new connection per request).
const CLIENTS: usize = 32;
/// The names `tls_router` serves by default, each by its own group.
const NAMES: [&str; 2] = ["a.localhost", "b.localhost"];
/// How long a server may take to start or stop.
const WAIT: Duration = Duration::from_secs(20);

// ---- the example binaries -----------------------------------------------------------------------

/// `target/release/examples`, after building the two examples there.
fn examples_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let mut build = Command::new(cargo);
    // Without the variables `cargo bench` set for this binary: ring's build script watches
    // CARGO_MANIFEST_DIR, and would be built again (and ring's dependents) on every run.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") && !["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&k.as_ref()) {
            build.env_remove(k.as_ref());
        }
    }
    let status = build
        .current_dir(workspace)
        .args(["build", "--release", "-p", "baton-examples", "--example", "prefork", "--example", "tls_router"])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build of the examples failed");
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/release").join("examples");
    assert!(dir.join("prefork").exists(), "{} has no prefork", dir.display());
    dir
}

/// A server process of ours: stopped with SIGTERM, which must end it with status 0.
struct Process {
    child: Child,
    name: String,
}

impl Process {
    /// Starts `cmd` and waits for its `listening on [http://]ADDR` line on stdout.
    fn start(mut cmd: Command, name: &str) -> (Process, SocketAddr) {
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawning a server");
        // Stopped and reaped when dropped, by a panic too.
        let mut p = Process { child, name: name.to_string() };
        let mut out = BufReader::new(p.child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("{name} ended before it listened: {:?}", p.child.try_wait());
            }
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                let addr = addr.trim_start_matches("http://").parse().expect("the listening address");
                // Whatever it prints later goes nowhere, without blocking it.
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return (p, addr);
            }
        }
    }

    /// SIGTERM, then waits (SIGKILL after [`WAIT`]). Anything but a clean exit is reported.
    fn stop(mut self) -> Option<String> {
        self.finish(WAIT)
    }

    fn finish(&mut self, wait: Duration) -> Option<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(format!("{} had exited ({status}) before it was stopped", self.name));
        }
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + wait;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return None,
                Ok(Some(status)) => return Some(format!("{} exited with {status} after SIGTERM", self.name)),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Some(format!("{} did not exit within {wait:?} of SIGTERM (killed)", self.name));
                }
            }
        }
    }
}

/// A server left running by a panic is stopped too.
impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.finish(Duration::from_secs(5));
        }
    }
}

/// A free loopback port (bound, then let go: HAProxy wants a port number).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

enum Server {
    Process(Process),
    Haproxy { haproxy: Process, backend: Process, _dir: TempDir },
    Single { stop: Arc<AtomicBool>, threads: Vec<JoinHandle<()>>, tids: Arc<Mutex<Vec<i32>>> },
}

impl Server {
    fn prefork(examples: &Path, proxy: bool) -> (Server, SocketAddr) {
        let mut cmd = Command::new(examples.join("prefork"));
        cmd.args(["--listen", "127.0.0.1:0", "--workers", "2"]);
        if proxy {
            cmd.args(["--proxy-protocol", "v2", "--trusted", "127.0.0.1/32"]);
        }
        let (p, addr) = Process::start(cmd, if proxy { "prefork --proxy-protocol v2" } else { "prefork" });
        (Server::Process(p), addr)
    }

    /// HAProxy (`mode tcp`) in front of a `prefork`, `send-proxy-v2` when `proxy`.
    fn haproxy(examples: &Path, proxy: bool) -> (Server, SocketAddr) {
        let (backend, backend_addr) = match Server::prefork(examples, proxy) {
            (Server::Process(p), a) => (p, a),
            _ => unreachable!(),
        };
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let config = format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
             timeout server 30s\nfrontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  \
             server s {backend_addr}{}\n",
            if proxy { " send-proxy-v2" } else { "" }
        );
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning haproxy");
        let mut haproxy = Process { child, name: "haproxy".into() };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited ({status}): try haproxy -c -f {}", path.display());
            }
            assert!(Instant::now() < deadline, "haproxy did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(10));
        }
        (Server::Haproxy { haproxy, backend, _dir: dir }, addr)
    }

    fn tls_router(examples: &Path, certs: &Path) -> (Server, SocketAddr) {
        let mut cmd = Command::new(examples.join("tls_router"));
        cmd.args(["--listen", "127.0.0.1:0", "--workers", "1"]);
        for name in NAMES {
            cmd.arg("--cert").arg(format!("{name}={}", certs.join(format!("{name}.pem")).display()));
            cmd.arg("--key").arg(format!("{name}={}", certs.join(format!("{name}-key.pem")).display()));
        }
        let (p, addr) = Process::start(cmd, "tls_router");
        (Server::Process(p), addr)
    }

    /// CPU time (user and system) the server has used so far: its processes and their
    /// children's (HAProxy's too), or the single-process server's threads.
    fn cpu(&self) -> Duration {
        match self {
            Server::Process(p) => tree_cpu(p.child.id() as i32),
            Server::Haproxy { haproxy, backend, .. } => {
                tree_cpu(haproxy.child.id() as i32) + tree_cpu(backend.child.id() as i32)
            }
            Server::Single { tids, .. } => {
                let me = std::process::id();
                tids.lock().unwrap().iter().map(|t| stat_cpu(&format!("/proc/{me}/task/{t}/stat"))).sum()
            }
        }
    }

    /// Problems on the way out (`None`: a clean stop).
    fn stop(self) -> Option<String> {
        match self {
            Server::Process(p) => p.stop(),
            Server::Haproxy { haproxy, backend, _dir } => {
                // HAProxy exits 0 or 143 on SIGTERM depending on its version: not ours to judge.
                let _ = haproxy.stop();
                backend.stop()
            }
            Server::Single { stop, threads, .. } => {
                stop.store(true, Relaxed);
                for t in threads {
                    let _ = t.join();
                }
                None
            }
        }
    }
}

/// utime + stime from a `/proc/.../stat` file (zero if it is gone).
fn stat_cpu(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else { return Duration::ZERO };
    // After the command name's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs_f64(f.iter().sum::<u64>() as f64 / ticks as f64)
}

/// CPU time of process `pid` (all its threads) and of its descendants still running.
fn tree_cpu(pid: i32) -> Duration {
    let mut total = stat_cpu(&format!("/proc/{pid}/stat"));
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            total += children.split_whitespace().filter_map(|c| c.parse().ok()).map(tree_cpu).sum::<Duration>();
        }
    }
    total
}

/// A directory under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("baton-handshake-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- the single-process rustls server -------------------------------------------------------------

fn reuseport_listener(addr: SocketAddr) -> TcpListener {
    let fd = rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::sockopt::set_socket_reuseport(&fd, true).unwrap();
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    rustix::net::bind(&fd, &addr).unwrap();
    rustix::net::listen(&fd, 1024).unwrap();
    TcpListener::from(fd)
}

#[allow(deprecated)] // ring's provider, as the example's (see examples/tls_router.rs)
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's configuration: both names' certificates, chosen by SNI; what the router's
/// workers have, one name each.
fn single_config(certs: &Path) -> Arc<ServerConfig> {
    let provider = ring();
    let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
    for name in NAMES {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certs.join(format!("{name}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(certs.join(format!("{name}-key.pem"))).unwrap();
        let key = provider.key_provider.load_private_key(key).unwrap();
        resolver.add(name, rustls::sign::CertifiedKey::new(chain, key)).unwrap();
    }
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Arc::new(config)
}

/// One process, 2 threads, each an epoll loop on its own `SO_REUSEPORT` listener.
fn single(certs: &Path) -> (Server, SocketAddr) {
    let config = single_config(certs);
    let probe = reuseport_listener("127.0.0.1:0".parse().unwrap());
    let addr = probe.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tids = Arc::new(Mutex::new(Vec::new()));
    let threads = (0..2)
        .map(|_| {
            let listener = reuseport_listener(addr);
            let (config, stop, tids) = (config.clone(), stop.clone(), tids.clone());
            std::thread::spawn(move || {
                tids.lock().unwrap().push(rustix::thread::gettid().as_raw_nonzero().get());
                tls_loop(listener, config, &stop)
            })
        })
        .collect();
    drop(probe);
    (Server::Single { stop, threads, tids }, addr)
}

struct Session {
    fd: OwnedFd,
    tls: ServerConnection,
    request: Vec<u8>,
}

/// A level-triggered epoll loop serving TLS: what the router's worker does with its reactor
/// (`examples/tls_router.rs`), with the same answer, `close_notify`, and the last records and
/// the FIN sent together (`MSG_MORE`, then a shutdown).
fn tls_loop(listener: TcpListener, config: Arc<ServerConfig>, stop: &AtomicBool) {
    rustix::io::ioctl_fionbio(&listener, true).unwrap();
    const LISTENER: u64 = u64::MAX;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    epoll::add(&ep, &listener, epoll::EventData::new_u64(LISTENER), epoll::EventFlags::IN).unwrap();
    let mut sessions: std::collections::HashMap<u64, Session> = Default::default();
    let mut next = 0u64;
    let mut events = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let pid = std::process::id();
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
                            let tls = ServerConnection::new(config.clone()).unwrap();
                            sessions.insert(next, Session { fd, tls, request: Vec::new() });
                            next += 1;
                        }
                        Err(Errno::AGAIN) => break,
                        Err(Errno::INTR | Errno::CONNABORTED) => continue,
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                continue;
            }
            let Some(s) = sessions.get_mut(&token) else { continue };
            // Some(true): answered, close after the last records; Some(false): close now.
            let close = match rustix::io::read(&s.fd, &mut scratch) {
                Ok(0) => Some(false),
                Ok(n) => serve(s, &scratch[..n], pid),
                Err(Errno::AGAIN | Errno::INTR) => None,
                Err(_) => Some(false),
            };
            let out = pending_tls(&mut s.tls);
            let last = close == Some(true);
            let flags = if last { SendFlags::NOSIGNAL | SendFlags::MORE } else { SendFlags::NOSIGNAL };
            let failed = !out.is_empty() && write_all(&s.fd, &out, flags).is_err();
            if close.is_some() || failed {
                let s = sessions.remove(&token).unwrap();
                let _ = epoll::delete(&ep, &s.fd);
                let _ = rustix::net::shutdown(&s.fd, rustix::net::Shutdown::Write);
            }
        }
    }
}

/// Bytes in: through rustls; the answer once the request head is in.
fn serve(s: &mut Session, mut bytes: &[u8], pid: u32) -> Option<bool> {
    while !bytes.is_empty() {
        match s.tls.read_tls(&mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(false),
        }
        if s.tls.process_new_packets().is_err() {
            return Some(true); // the alert rustls queued goes out, then the FIN
        }
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.tls.reader().read(&mut buf) {
            s.request.extend_from_slice(&buf[..n]);
        }
    }
    if !s.request.windows(4).any(|w| w == b"\r\n\r\n") {
        return None;
    }
    let name = s.tls.server_name().unwrap_or("-").to_string();
    // The router's answer, with "group" the name as there (same length).
    let body = format!("group {name} name {name} worker {pid}\n");
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.tls.writer().write_all(answer.as_bytes());
    s.tls.send_close_notify();
    Some(true)
}

fn pending_tls(tls: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while tls.wants_write() {
        if tls.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8], flags: SendFlags) -> Result<(), Errno> {
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

struct Load {
    /// The server's CPU time over the measured run.
    cpu: Duration,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
    /// Server CPU time per request.
    fn cpu_per_request(&self) -> Duration {
        self.cpu / self.latencies.len().max(1) as u32
    }
    fn percentile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        l.get(((l.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
    }
}

/// [`CLIENTS`] threads for [`WARMUP`] then [`RUN`], each calling `request(thread, i)` in a loop
/// (one new connection each); the measured calls' latencies and failures, and `server`'s CPU
/// time over the measured run.
fn load<F>(server: &Server, request: F) -> Load
where
    F: Fn(usize, usize) -> std::io::Result<()> + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let start = Instant::now() + WARMUP;
    let end = start + RUN;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let request = request.clone();
            std::thread::spawn(move || {
                let (mut lat, mut failed) = (Vec::new(), 0);
                let mut i = t;
                while Instant::now() < end {
                    i += 1;
                    let t0 = Instant::now();
                    match request(t, i) {
                        Ok(()) if t0 >= start => lat.push(t0.elapsed()),
                        Ok(()) => {}
                        Err(_) => failed += usize::from(t0 >= start),
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let cpu0 = server.cpu();
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu = server.cpu().saturating_sub(cpu0);
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for t in threads {
        let (l, f) = t.join().unwrap();
        latencies.extend(l);
        failed += f;
    }
    Load { cpu, failed, elapsed: start.elapsed(), latencies }
}

/// Reads an HTTP answer (head and `Content-Length` body) into `buf`; an error unless `200`.
fn read_response(s: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
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
                return if buf.starts_with(b"HTTP/1.1 200") { Ok(()) } else { Err(ErrorKind::InvalidData.into()) };
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A fixed PROXY v2 header: PROXY command, TCP over IPv4, from 192.0.2.1:40000 to `to`.
fn proxy_v2_header(to: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(to) = to else { panic!("an IPv4 server") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&[192, 0, 2, 1]);
    h.extend_from_slice(&to.ip().octets());
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&to.port().to_be_bytes());
    h
}

/// One plain HTTP request on a new connection, `prefix` (a PROXY header, or nothing) written
/// with it.
fn http_once(addr: SocketAddr, bytes: &[u8], buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(bytes)?;
    read_response(&mut s, buf)
}

fn http_load(server: &Server, addr: SocketAddr, proxy_header: bool) -> Load {
    let mut bytes = if proxy_header { proxy_v2_header(addr) } else { Vec::new() };
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    load(server, move |_, _| http_once(addr, &bytes, &mut Vec::with_capacity(512)))
}

/// The client's configuration; `x25519`: offering X25519 only (as curl and browsers put it
/// first), else rustls's defaults with ring (whose first key exchange group, in this rustls,
/// is secp384r1).
fn client_config(certs: &Path, x25519: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let mut provider = (*ring()).clone();
    if x25519 {
        provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A full handshake every time.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One HTTPS request on a new connection to `name`; the connection, once done.
fn tls_once(addr: SocketAddr, config: &Arc<ClientConfig>, name: &'static str) -> std::io::Result<ClientConnection> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn =
        ClientConnection::new(config.clone(), ServerName::try_from(name).unwrap()).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut buf = Vec::with_capacity(512);
    read_response(&mut s, &mut buf)?;
    let expected = format!("name {name} ");
    if !buf.windows(expected.len()).any(|w| w == expected.as_bytes()) {
        return Err(std::io::Error::other(format!("answered for another name: {}", String::from_utf8_lossy(&buf))));
    }
    Ok(s.conn)
}

fn tls_load(server: &Server, addr: SocketAddr, config: Arc<ClientConfig>) -> Load {
    load(server, move |_, i| tls_once(addr, &config, NAMES[i % 2]).map(|_| ()))
}

/// Stops `server`, noting any problem.
fn stopped(server: Server, problems: &mut Vec<String>) {
    if let Some(p) = server.stop() {
        eprintln!("  problem: {p}");
        problems.push(p);
    }
}

// ---- the runs -----------------------------------------------------------------------------------

struct Row {
    name: &'static str,
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
    /// Requests/s over `base`'s, round by round, and their median.
    fn round_ratios(&self, base: &Row) -> (f64, Vec<f64>) {
        let ratios: Vec<f64> = self.runs.iter().zip(&base.runs).map(|(a, b)| a.rate() / b.rate()).collect();
        (middle(ratios.clone()), ratios)
    }
    /// The median over rounds of server CPU per request over `base`'s in the same round.
    fn cpu_ratio(&self, base: &Row) -> f64 {
        middle(
            self.runs
                .iter()
                .zip(&base.runs)
                .map(|(a, b)| a.cpu_per_request().as_secs_f64() / b.cpu_per_request().as_secs_f64().max(1e-12))
                .collect(),
        )
    }
}

/// Prints `rows`, each row's ratio against row `base[i]`.
fn print_table(title: &str, rows: &[Row], base: &[usize], rounds: usize) {
    println!("== {title} (medians of {rounds} interleaved runs of {RUN:?}, {CLIENTS} clients) ==");
    println!(
        "{:<40} {:>11} {:>10} {:>10} {:>12} {:>7} {:>8} {:>9} {:>8}   ratio in each round",
        "server", "requests/s", "p50", "p99", "CPU/request", "failed", "ratio", "CPU ratio", "against"
    );
    for (i, r) in rows.iter().enumerate() {
        let b = &rows[base[i]];
        let (median, rounds) = r.round_ratios(b);
        println!(
            "{:<40} {:>11.0} {:>10.2?} {:>10.2?} {:>12.2?} {:>7} {:>8.3} {:>9.3} {:>8}   {}",
            r.name,
            r.median(Load::rate),
            r.median(|l| l.percentile(0.5)),
            r.median(|l| l.percentile(0.99)),
            r.median(Load::cpu_per_request),
            r.runs.iter().map(|l| l.failed).sum::<usize>(),
            median,
            r.cpu_ratio(b),
            b.name.split(' ').next().unwrap_or(""),
            rounds.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ")
        );
    }
    println!(
        "(ratio: the median over rounds of requests/s against the named row's in the same round; \
         CPU/request: the server's processes, or threads, user + system; CPU ratio: the median over \
         rounds of CPU/request against the named row's)"
    );
    println!();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let tables = std::env::var("HANDSHAKE_TABLES").unwrap_or_else(|_| "proxy,tls,tls-x25519".into());
    let wanted = |name: &str| tables.split(',').any(|t| t.trim() == name);
    let rounds = std::env::var("HANDSHAKE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS).max(1);
    let examples = examples_dir();
    let mut problems: Vec<String> = Vec::new();
    let verbose = std::env::var_os("HANDSHAKE_VERBOSE").is_some();

    if wanted("proxy") {
        let haproxy = std::env::var("HANDSHAKE_HAPROXY").map_or(true, |v| v != "0")
            && Command::new("haproxy").arg("-v").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        // (label, haproxy, proxy header)
        let mut variants =
            vec![("(a) prefork, plain HTTP", false, false), ("(b) prefork, PROXY v2 header", false, true)];
        if haproxy {
            variants.push(("(c0) HAProxy -> prefork, plain", true, false));
            variants.push(("(c) HAProxy -> prefork, send-proxy-v2", true, true));
        } else {
            println!("(no haproxy on the PATH, or HANDSHAKE_HAPROXY=0: rows (c0) and (c) left out)");
        }
        // A check first: the PROXY server sees the address in the header.
        let (server, addr) = Server::prefork(&examples, true);
        let mut req = proxy_v2_header(addr);
        req.extend_from_slice(b"GET /whoami HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
        let mut buf = Vec::new();
        http_once(addr, &req, &mut buf).expect("a request with a PROXY v2 header");
        assert!(buf.ends_with(b"192.0.2.1:40000\n"), "whoami: {}", String::from_utf8_lossy(&buf));
        stopped(server, &mut problems);
        let mut rows: Vec<Row> = variants.iter().map(|v| Row { name: v.0, runs: Vec::new() }).collect();
        for round in 0..rounds {
            for (i, &(name, via_haproxy, proxy)) in variants.iter().enumerate() {
                let (server, addr) =
                    if via_haproxy { Server::haproxy(&examples, proxy) } else { Server::prefork(&examples, proxy) };
                // Through HAProxy the client speaks plain HTTP: HAProxy adds the header.
                let l = http_load(&server, addr, proxy && !via_haproxy);
                if verbose {
                    eprintln!(
                        "  round {round} {name}: {:.0} requests/s, {:.1?} CPU/request, {} failed",
                        l.rate(),
                        l.cpu_per_request(),
                        l.failed
                    );
                }
                rows[i].runs.push(l);
                stopped(server, &mut problems);
            }
        }
        let base: Vec<usize> = (0..rows.len()).map(|i| if i < 2 { 0 } else { 2 }).collect();
        print_table("PROXY v2 in the parent, new connection per request", &rows, &base, rounds);
    }

    let tls_tables = [("tls", false), ("tls-x25519", true)];
    for (_, x25519) in tls_tables.into_iter().filter(|(t, _)| wanted(t)) {
        // Certificates: made once by the router, then given to every server.
        let dir = TempDir::new("certs");
        let mut cmd = Command::new(examples.join("tls_router"));
        cmd.args(["--listen", "127.0.0.1:0"]).arg("--certs").arg(&dir.0);
        let (p, _) = Process::start(cmd, "tls_router (making certificates)");
        if let Some(p) = p.stop() {
            problems.push(p);
        }
        let config = client_config(&dir.0, x25519);
        let variants = ["(s) single-process rustls, 2 threads", "(r) tls_router, 2 groups x 1 worker"];
        for (i, name) in variants.iter().enumerate() {
            let (server, addr) = if i == 0 { single(&dir.0) } else { Server::tls_router(&examples, &dir.0) };
            for host in NAMES {
                let c = tls_once(addr, &config, host).expect("a TLS request");
                println!(
                    "{name}, {host}: {:?}, {:?}, {:?}",
                    c.protocol_version().unwrap(),
                    c.negotiated_cipher_suite().unwrap().suite(),
                    c.negotiated_key_exchange_group().map(|g| g.name()),
                );
            }
            stopped(server, &mut problems);
        }
        let mut rows: Vec<Row> = variants.iter().map(|v| Row { name: v, runs: Vec::new() }).collect();
        for round in 0..rounds {
            for (i, row) in rows.iter_mut().enumerate() {
                let (server, addr) = if i == 0 { single(&dir.0) } else { Server::tls_router(&examples, &dir.0) };
                let l = tls_load(&server, addr, config.clone());
                if verbose {
                    eprintln!(
                        "  round {round} {}: {:.0} requests/s, {:.1?} CPU/request, {} failed",
                        row.name,
                        l.rate(),
                        l.cpu_per_request(),
                        l.failed
                    );
                }
                row.runs.push(l);
                stopped(server, &mut problems);
            }
        }
        let title = if x25519 {
            "TLS by SNI, a full handshake per request, the client offering X25519 only"
        } else {
            "TLS by SNI, a full handshake per request, rustls's default groups"
        };
        print_table(title, &rows, &[0, 0], rounds);
    }
    if problems.is_empty() {
        println!("every server stopped cleanly (exit 0 on SIGTERM)");
    } else {
        println!("{} problem(s) stopping servers:", problems.len());
        for p in &problems {
            println!("  {p}");
        }
    }
}
