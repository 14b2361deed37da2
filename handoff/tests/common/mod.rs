//! Shared by the handoff tests: an echo application for workers, a parent played by hand, and
//! descriptor counting.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use baton_handoff::record::{Item, Kind, Record};
use baton_handoff::{Channel, RecvBuf, RecvError, Worker, WorkerEvent, WorkerExit, WorkerOptions};
use baton_runtime::{Actor, Context, Runtime};
use baton_transport::{Address, ConnEvent, ConnId, ConnOptions, Connection, Reactor};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

pub enum Msg {
    Worker(WorkerEvent),
    Conn(ConnEvent),
    /// Hand this connection back to the parent (reading was paused a turn earlier).
    Migrate(ConnId),
    /// The worker's migrator, sent once `Worker::serve` returned: it is at hand at `Drain`
    /// even when no socket ever arrived.
    Migrator(baton_handoff::Migrator),
}
baton_runtime::from_variants!(Msg::Worker(WorkerEvent), Msg::Conn(ConnEvent));

/// The tag a migrated connection carries: the new worker does not greet it again.
pub const MIGRATED: u32 = 77;

/// The test workers' protocol: on adoption, write this process's pid and a newline; then echo
/// every byte; `quit\n` anywhere in a read closes the connection from the worker's side;
/// a read that starts with `sleep MS` blocks the application for that long first (a heavy
/// request).
pub struct EchoApp {
    conns: HashMap<ConnId, Connection>,
    migrator: Option<baton_handoff::Migrator>,
    /// On drain, hand connections back (TEST_MIGRATE_ON_DRAIN) instead of finishing them.
    migrate_on_drain: bool,
}

impl EchoApp {
    pub fn new() -> EchoApp {
        EchoApp {
            conns: HashMap::new(),
            migrator: None,
            migrate_on_drain: std::env::var_os("TEST_MIGRATE_ON_DRAIN").is_some(),
        }
    }
}

impl Actor for EchoApp {
    type Message = Msg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            Msg::Worker(WorkerEvent::Incoming(inc)) => {
                let greet = inc.tag != MIGRATED;
                // TEST_GREET_PROXY: say also what the parent said of the balancer.
                let line = if std::env::var_os("TEST_GREET_PROXY").is_some() {
                    let show = |a: Option<baton_transport::Address>| a.map_or("-".to_string(), |a| format!("{a:?}"));
                    format!(
                        "{} peer {:?} via {} to {}\n",
                        std::process::id(),
                        inc.peer,
                        show(inc.proxied_by()),
                        show(inc.destination())
                    )
                } else {
                    format!("{}\n", std::process::id())
                };
                if let Ok(conn) = inc.adopt(ctx.address(), ConnOptions::default()) {
                    if greet {
                        let _ = conn.write(line.as_bytes());
                    }
                    self.conns.insert(conn.id(), conn);
                }
            }
            Msg::Worker(WorkerEvent::Drain { .. }) if self.migrate_on_drain => {
                // Quiescent points: stop reading now, hand back in a later turn, after every
                // Data already queued.
                for (&id, conn) in &self.conns {
                    conn.pause_reading();
                    let _ = ctx.address().try_send(Msg::Migrate(id));
                }
            }
            Msg::Migrator(m) => self.migrator = Some(m),
            Msg::Migrate(id) => {
                let (Some(conn), Some(m)) = (self.conns.get(&id), self.migrator.as_ref()) else { return };
                match m.migrate(conn, MIGRATED, None) {
                    Ok(()) => {
                        self.conns.remove(&id);
                    }
                    Err(baton_handoff::MigrateError::Unflushed) => {
                        ctx.send_after(Duration::from_millis(5), Msg::Migrate(id));
                    }
                    // The client went away meanwhile: nothing to move.
                    Err(baton_handoff::MigrateError::Closed) => {
                        self.conns.remove(&id);
                    }
                    Err(e) => panic!("migrate: {e}"),
                }
            }
            Msg::Conn(ConnEvent::Data(id, bytes)) => {
                if let Some(conn) = self.conns.get(&id) {
                    if bytes.windows(5).any(|w| w == b"quit\n") {
                        conn.close();
                    } else {
                        if let Some(ms) = bytes.strip_prefix(b"sleep ") {
                            let ms: u64 = String::from_utf8_lossy(ms).trim().parse().unwrap_or(0);
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                        let _ = conn.write(&bytes);
                    }
                }
            }
            Msg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some(conn) = self.conns.get(&id) {
                    conn.close();
                }
            }
            Msg::Conn(ConnEvent::Closed(id, _)) => {
                self.conns.remove(&id);
            }
            Msg::Conn(_) | Msg::Worker(WorkerEvent::Drain { .. }) => {}
        }
    }
}

/// A running echo worker in this process (for tests that play the parent by hand).
pub struct InProcessWorker {
    pub runtime: Runtime,
    pub reactor: Reactor,
    pub worker: Worker,
}

impl InProcessWorker {
    pub fn start(channel: Channel) -> InProcessWorker {
        let runtime = Runtime::builder().threads(2).build();
        let reactor = Reactor::start().expect("reactor");
        let app = runtime.spawn(EchoApp::new());
        let worker = Worker::serve(channel, &runtime, &reactor, app.clone(), WorkerOptions::default()).expect("serve");
        app.send(Msg::Migrator(worker.migrator())).expect("the app is running");
        InProcessWorker { runtime, reactor, worker }
    }

    pub fn stop(self) {
        self.runtime.shutdown(Duration::from_secs(5)).expect("shutdown");
        self.reactor.stop();
    }
}

/// The body of a worker process: serve the channel with the echo app until told to exit.
pub fn worker_main(channel: Channel) -> WorkerExit {
    let w = InProcessWorker::start(channel);
    let why = w.worker.wait();
    w.stop();
    why
}

/// A worker in this process, served through a channel whose other end the test writes to by
/// hand, as a hostile or broken parent would.
pub struct HandParent {
    pub ours: Channel,
    pub worker: InProcessWorker,
    pub buf: RecvBuf,
}

impl HandParent {
    /// A worker serving a fresh channel, told nothing yet.
    pub fn connect() -> HandParent {
        let (ours, theirs) = Channel::pair().unwrap();
        let worker = InProcessWorker::start(theirs);
        HandParent { ours, worker, buf: RecvBuf::default() }
    }

    /// A worker that has said READY to our HELLO.
    pub fn start() -> HandParent {
        let mut p = HandParent::connect();
        p.send(&Record::Hello { worker: 0 }, &[]);
        assert!(matches!(p.recv_until(|r| matches!(r, Record::Ready { .. })), Record::Ready { .. }));
        p
    }

    pub fn send(&self, rec: &Record, fds: &[BorrowedFd<'_>]) {
        self.ours.send(rec, fds, &mut Vec::new()).unwrap();
    }

    /// The next record matching `want` (skipping LOAD reports and others).
    pub fn recv_until(&mut self, mut want: impl FnMut(&Record) -> bool) -> Record {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match self.ours.recv(&mut self.buf) {
                Ok((rec, _)) if want(&rec) => return rec,
                Ok(_) => {}
                Err(RecvError::WouldBlock) => {
                    assert!(std::time::Instant::now() < deadline, "no answer from the worker");
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("channel: {e}"),
            }
        }
    }

    /// Hands one connection over properly and checks it is served.
    pub fn check_still_serving(&mut self, id: u64) {
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = front.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            c.echo(b"alive\n")
        });
        let (sock, peer) = front.accept().unwrap();
        self.send(&handoff(id, peer, addr), &[sock.as_fd()]);
        drop(sock);
        assert_eq!(self.recv_until(|r| matches!(r, Record::Adopted(_))), Record::Adopted(vec![id]));
        assert_eq!(t.join().unwrap(), b"alive\n");
    }
}

pub fn handoff(id: u64, peer: SocketAddr, local: SocketAddr) -> Record {
    Record::Handoff(vec![Item {
        id,
        kind: Kind::Connection,
        tag: 0,
        peer: Address::Inet(peer),
        local: Address::Inet(local),
        key: None,
        prelude: Vec::new(),
        ext: Vec::new(),
    }])
}

/// A throwaway socket to attach to hostile records.
pub fn spare_socket() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

/// Descriptors open in process `pid` (`None`: this one).
pub fn fd_count(pid: Option<u32>) -> usize {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/fd"),
        None => "/proc/self/fd".to_string(),
    };
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Waits until `f` holds (polling every 10 ms), or panics with `what` after [`WAIT`].
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Raises the soft descriptor limit to the hard one (10k connections need it).
pub fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}

/// A client of the echo protocol: connects, reads the serving worker's pid line.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub pid: u32,
}

impl Client {
    pub fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("pid line");
        let pid = line.trim().parse().unwrap_or_else(|_| panic!("bad pid line {line:?}"));
        Client { reader, pid }
    }

    /// Sends `data` and reads exactly as many bytes back.
    pub fn echo(&mut self, data: &[u8]) -> Vec<u8> {
        self.reader.get_mut().write_all(data).expect("write");
        let mut back = vec![0; data.len()];
        self.reader.read_exact(&mut back).expect("echo");
        back
    }
}

/// The runner of the test binaries that start processes (`harness = false`): runs `tests` one
/// after another (each starts processes; in parallel they would skew each other's deadlines),
/// those whose name contains the first argument that is not a flag, and exits non-zero if any
/// failed, after a `N passed, N failed` line.
pub fn run(tests: &[(&str, fn())]) {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        let result = std::panic::catch_unwind(test);
        let status = if result.is_ok() { "ok" } else { "FAILED" };
        println!("test {name} ... {status} ({:.2} s)", start.elapsed().as_secs_f64());
        if result.is_err() {
            failed.push(*name);
        }
    }
    println!("{} passed, {} failed", ran - failed.len(), failed.len());
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}
