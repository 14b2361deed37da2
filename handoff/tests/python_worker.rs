//! The handoff protocol from another language: `tests/python/worker.py` is a worker written in
//! Python from PROTOCOL.md alone (standard library only). A real baton [`Parent`] spawns it and
//! places sockets on it; for what a parent never sends on purpose (malformed records, handoffs
//! after DRAIN, a channel that simply closes) the test plays the parent by hand over a channel
//! pair, with the library's own encoder and decoder.
//!
//! python3 must be installed: without it these tests fail, they do not skip (`.ci/run` installs
//! it). The tests are independent and start only child processes (no re-executed test binary),
//! so the default harness runs them in parallel.
//!
//! `cargo test -p baton-handoff --test python_worker`

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use baton_handoff::record::{self, Item, Kind, Load, Reason, Record};
use baton_handoff::{Channel, Dispatch, DrainReport, Parent, RecvBuf, RecvError, WorkerCommand};
use baton_runtime::Runtime;
use baton_transport::{Address, ListenOptions, Reactor, Stream};
use common::{fd_count, wait_until, WAIT};

/// The worker under test.
const WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/worker.py");

/// The variable naming the file the worker appends `<pid> <reason>` to as it exits by itself.
const EXIT_FILE: &str = "PY_WORKER_EXIT_FILE";

/// Fails (never skips) when python3 cannot run.
fn require_python3() {
    let out = Command::new("python3").arg("--version").output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "python3 is required by the Python worker tests (.ci/run installs it): {out:?}"
    );
}

/// Where the workers of one test report why they exited.
struct ExitLog {
    path: PathBuf,
}

impl ExitLog {
    fn new(test: &str) -> ExitLog {
        let path = std::env::temp_dir().join(format!("baton-py-{}-{test}.exits", std::process::id()));
        let _ = std::fs::remove_file(&path);
        ExitLog { path }
    }

    /// Why `pid` exited, if it said so.
    fn reason(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(&format!("{pid} ")).map(str::to_string))
    }

    /// Asserts that `pid` exited by itself, for `reason` (a killed worker writes nothing).
    fn assert_reason(&self, pid: u32, reason: &str) {
        assert_eq!(self.reason(pid).as_deref(), Some(reason), "why python worker {pid} exited");
    }
}

impl Drop for ExitLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn alive(pid: u32) -> bool {
    // A reaped process is gone from /proc; a zombie would mean nobody waited for it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

// --- HTTP client ---------------------------------------------------------------------------------

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

/// Reads a whole answer (the worker closes after it) and checks its framing: `200`, a
/// `Content-Length` that matches, `Connection: close`, and the body `python worker <pid>\n`.
/// Returns the pid.
fn read_answer(stream: TcpStream) -> u32 {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    read_answer_from(stream)
}

/// [`read_answer`] from any stream (whose reads time out).
fn read_answer_from(mut stream: impl Read) -> u32 {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("the answer, then end of file");
    let text = String::from_utf8(raw).expect("a text answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"), "{text:?}");
    let headers: Vec<(String, String)> = lines
        .map(|l| l.split_once(':').unwrap_or_else(|| panic!("bad header {l:?}")))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(header("connection"), Some("close"), "{text:?}");
    assert_eq!(header("content-length"), Some(body.len().to_string().as_str()), "{text:?}");
    let pid = body.strip_prefix("python worker ").and_then(|b| b.strip_suffix('\n'));
    pid.and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("body {body:?}"))
}

/// One request on a new connection; the pid of the worker that answered.
fn get(addr: SocketAddr) -> u32 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(REQUEST).expect("request");
    read_answer(stream)
}

// --- A real parent -------------------------------------------------------------------------------

struct Setup {
    runtime: Runtime,
    reactor: Reactor,
    parent: Parent,
    addr: SocketAddr,
    exits: ExitLog,
}

/// A parent spawning `workers` Python workers, accepting on a loopback port.
fn start(workers: usize, test: &str) -> Setup {
    require_python3();
    let exits = ExitLog::new(test);
    let command = WorkerCommand::new("python3").args([WORKER]).env(EXIT_FILE, &exits.path);
    let runtime = Runtime::builder().threads(2).build();
    let reactor = Reactor::start().expect("reactor");
    let parent = Parent::builder().spawn(workers, command).start(&runtime, &reactor).expect("parent");
    let listener = parent.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).expect("listen");
    let addr = match listener.local_addr() {
        Address::Inet(a) => *a,
        other => panic!("unexpected address {other:?}"),
    };
    wait_until("python workers ready", || {
        parent.stats().is_ok_and(|s| s.workers.len() == workers && s.workers.iter().all(|w| w.ready))
    });
    Setup { runtime, reactor, parent, addr, exits }
}

impl Setup {
    fn pids(&self) -> Vec<u32> {
        self.parent.stats().unwrap().workers.iter().map(|w| w.pid.expect("a ready worker's pid")).collect()
    }

    /// Drains: every worker exits by itself, well before the deadline.
    fn finish(self) {
        let pids = self.pids();
        let report = self.parent.drain(Duration::from_secs(5)).expect("drain");
        assert_eq!(report, DrainReport { unplaced: 0, exited: pids.len(), killed: 0 });
        for pid in pids {
            assert!(!alive(pid), "python worker {pid} outlived the drain");
            self.exits.assert_reason(pid, "drained");
        }
        self.runtime.shutdown(Duration::from_secs(5)).expect("shutdown");
        self.reactor.stop();
    }
}

#[test]
fn two_python_workers_serve_200_requests() {
    const REQUESTS: usize = 200;
    const THREADS: usize = 4;
    let s = start(2, "serve");
    let pids = s.pids();
    let addr = s.addr;
    let served: Vec<u32> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..THREADS)
            .map(|_| scope.spawn(move || (0..REQUESTS / THREADS).map(|_| get(addr)).collect::<Vec<_>>()))
            .collect();
        clients.into_iter().flat_map(|c| c.join().expect("client thread")).collect()
    });
    assert_eq!(served.len(), REQUESTS);
    for pid in &pids {
        let n = served.iter().filter(|p| *p == pid).count();
        assert!(n > 0, "python worker {pid} answered none of {REQUESTS} requests");
    }
    assert!(served.iter().all(|p| pids.contains(p)), "every answer names one of the workers {pids:?}");
    wait_until("every socket adopted, every connection reported closed", || {
        s.parent.stats().is_ok_and(|st| {
            st.adopted == REQUESTS as u64
                && st.in_flight == 0
                && st.waiting == 0
                && st.workers.iter().all(|w| w.open == 0)
        })
    });
    let stats = s.parent.stats().unwrap();
    assert_eq!(stats.dispatched, REQUESTS as u64, "{stats:?}");
    assert_eq!((stats.rejected, stats.replaced, stats.closed_after_retries, stats.restarts), (0, 0, 0, 0), "{stats:?}");
    assert_eq!(stats.workers.iter().map(|w| w.adopted).sum::<u64>(), REQUESTS as u64, "{stats:?}");
    assert!(stats.workers.iter().all(|w| w.in_flight == 0), "{stats:?}");
    s.finish();
}

#[test]
fn prelude_bytes_come_before_the_bytes_on_the_socket() {
    let s = start(1, "prelude");
    let pid = s.pids()[0];
    // Play an application that reads the start of a request before handing the socket over.
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let accept = |front: &TcpListener| {
        let (stream, peer) = front.accept().unwrap();
        let local = stream.local_addr().unwrap();
        (stream, Address::Inet(peer), Address::Inet(local))
    };
    let dispatch = |stream: TcpStream, peer: Address, local: Address, prelude: &[u8]| {
        let d = Dispatch { stream: Stream::Tcp(stream), peer, local, tag: 0, key: None, prelude: prelude.to_vec() };
        s.parent.dispatch(d).expect("dispatch");
    };

    // The application read `GET /`; the rest comes later, after the handoff. A worker that
    // dropped the prelude, or put it after the socket's bytes, reads ` HTTP/1.1...`: not a 200.
    let mut client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    client.write_all(b"GET /").unwrap();
    let (mut stream, peer, local) = accept(&front);
    let mut read = [0u8; 5];
    stream.read_exact(&mut read).unwrap();
    dispatch(stream, peer, local, &read);
    std::thread::sleep(Duration::from_millis(50));
    client.write_all(&REQUEST[5..]).unwrap();
    assert_eq!(read_answer(client), pid);

    // The whole request was read by the application: the socket brings nothing more, so the
    // worker must answer from the prelude alone.
    let mut client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    client.write_all(REQUEST).unwrap();
    let (mut stream, peer, local) = accept(&front);
    let mut read = vec![0u8; REQUEST.len()];
    stream.read_exact(&mut read).unwrap();
    dispatch(stream, peer, local, &read);
    assert_eq!(read_answer(client), pid);

    wait_until("both adopted", || s.parent.stats().is_ok_and(|st| st.adopted == 2 && st.in_flight == 0));
    s.finish();
}

#[test]
fn drain_lets_a_half_sent_request_finish_then_the_worker_exits() {
    let s = start(1, "drain");
    let pid = s.pids()[0];
    let mut client = TcpStream::connect(s.addr).unwrap();
    client.write_all(&REQUEST[..10]).unwrap();
    wait_until("the worker adopted the connection", || s.parent.stats().is_ok_and(|st| st.adopted == 1));
    let parent = s.parent.clone();
    let started = Instant::now();
    let drain = std::thread::spawn(move || parent.drain(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "the worker still has a request to finish");
    assert!(!drain.is_finished(), "the drain waits for the worker");
    client.write_all(&REQUEST[10..]).unwrap();
    assert_eq!(read_answer(client), pid, "the request begun before the drain is answered");
    let report = drain.join().unwrap().expect("drain");
    assert_eq!(report, DrainReport { unplaced: 0, exited: 1, killed: 0 });
    assert!(started.elapsed() < Duration::from_secs(4), "the worker exited by itself when idle, not at the deadline");
    assert!(!alive(pid));
    s.exits.assert_reason(pid, "drained");
    s.runtime.shutdown(Duration::from_secs(5)).unwrap();
    s.reactor.stop();
}

#[test]
fn stopping_the_parent_makes_the_python_workers_exit() {
    let s = start(2, "stop");
    let pids = s.pids();
    // One of them holds a connection in the middle of a request: STOP means now anyway.
    let mut client = TcpStream::connect(s.addr).unwrap();
    client.write_all(&REQUEST[..10]).unwrap();
    wait_until("adopted", || s.parent.stats().is_ok_and(|st| st.adopted == 1));
    s.parent.stop();
    wait_until("no python worker left", || pids.iter().all(|&p| !alive(p)));
    for &pid in &pids {
        // A worker that ignored STOP would have been killed after a second, saying nothing.
        s.exits.assert_reason(pid, "stop");
    }
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest); // end of file or reset: the connection is gone
    assert!(rest.is_empty(), "{rest:?}");
    s.runtime.shutdown(Duration::from_secs(5)).unwrap();
    s.reactor.stop();
}

#[test]
fn a_python_worker_connects_by_socket_path() {
    // §11.3: the worker finds a named channel in BATON_CHANNEL_PATH and checks the parent's uid.
    let s = start(0, "by-path");
    let path = std::env::temp_dir().join(format!("baton-py-{}.sock", std::process::id()));
    s.parent.accept_workers(&baton_handoff::Endpoint::Path(path.clone()), baton_handoff::PeerCheck::SameUid).unwrap();
    let mut child = Command::new("python3")
        .arg(WORKER)
        .env(baton_handoff::bootstrap::ENV_PATH, &path)
        .env(EXIT_FILE, &s.exits.path)
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    wait_until("the connected worker is ready", || {
        s.parent.stats().is_ok_and(|st| st.workers.len() == 1 && st.workers[0].ready)
    });
    assert_eq!(s.parent.stats().unwrap().workers[0].pid, Some(child.id()), "READY carries the pid");
    assert_eq!(get(s.addr), child.id());
    let report = s.parent.drain(Duration::from_secs(5)).expect("drain");
    assert_eq!(report.killed, 0, "{report:?}");
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    s.exits.assert_reason(child.id(), "drained");
    s.parent.stop();
    s.runtime.shutdown(Duration::from_secs(5)).unwrap();
    s.reactor.stop();
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "python worker {} did not exit", child.id());
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- The parent played by hand -------------------------------------------------------------------

/// A Python worker spawned as a parent would (§11.2), whose channel the test drives record by
/// record.
struct HandPlayed {
    channel: Option<Channel>,
    child: Child,
    buf: RecvBuf,
    scratch: Vec<u8>,
    exits: ExitLog,
    /// LOADs seen, with when they arrived.
    loads: Vec<(Instant, Load)>,
}

enum Next {
    Record(Record, Vec<OwnedFd>),
    Closed,
    Nothing,
}

impl HandPlayed {
    fn spawn(test: &str) -> HandPlayed {
        require_python3();
        let exits = ExitLog::new(test);
        let (ours, theirs) = Channel::pair().expect("channel pair");
        let raw = theirs.as_fd().as_raw_fd();
        let mut command = Command::new("python3");
        command
            .arg(WORKER)
            .env(baton_handoff::bootstrap::ENV_FD, raw.to_string())
            .env(baton_handoff::ENV_SLOT, "0")
            .env(EXIT_FILE, &exits.path)
            .stdin(Stdio::null());
        // SAFETY: runs in the child between fork and exec; one fcntl on a descriptor that is
        // open there, no allocation.
        unsafe {
            command.pre_exec(move || {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(raw), rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
        let child = command.spawn().expect("python3");
        drop(theirs);
        HandPlayed {
            channel: Some(ours),
            child,
            buf: RecvBuf::default(),
            scratch: Vec::new(),
            exits,
            loads: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn channel(&self) -> &Channel {
        self.channel.as_ref().expect("the channel is open")
    }

    fn send(&mut self, record: &Record, fds: &[BorrowedFd<'_>]) {
        let channel = self.channel.as_ref().expect("the channel is open");
        channel.send(record, fds, &mut self.scratch).expect("send");
    }

    fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        self.channel().send_bytes(bytes, fds).expect("send raw bytes");
    }

    /// The next record within `within`, LOADs included. A record our decoder refuses fails the
    /// test: the worker must only send well-formed records.
    fn next(&mut self, within: Duration) -> Next {
        let deadline = Instant::now() + within;
        loop {
            let channel = self.channel.as_ref().expect("the channel is open");
            match channel.recv(&mut self.buf) {
                Ok((record, fds)) => {
                    if let Record::Load(load) = record {
                        self.loads.push((Instant::now(), load));
                    }
                    return Next::Record(record, fds);
                }
                Err(RecvError::Closed) => return Next::Closed,
                Err(RecvError::WouldBlock) => {}
                Err(e) => panic!("the python worker sent a bad record: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Nothing;
            }
            let mut fds = [rustix::event::PollFd::new(self.channel(), rustix::event::PollFlags::IN)];
            let timeout = rustix::event::Timespec::try_from(left.min(Duration::from_millis(50))).unwrap();
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
        }
    }

    /// The next record that is not a LOAD.
    fn answer(&mut self) -> Record {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Next::Record(Record::Load(_), _) => {}
                Next::Record(record, fds) => {
                    assert!(fds.is_empty(), "{record:?} came with descriptors");
                    return record;
                }
                Next::Closed => panic!("the python worker closed its channel"),
                Next::Nothing => panic!("no answer from the python worker"),
            }
        }
    }

    /// Asserts that nothing but LOAD arrives for `time`.
    fn only_loads_for(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Next::Record(Record::Load(_), _) => {}
                Next::Record(record, _) => panic!("expected silence (LOAD aside), got {record:?}"),
                Next::Closed => panic!("the python worker closed its channel"),
                Next::Nothing => return,
            }
        }
    }

    /// ADOPTED / REJECTED answers until every id in `ids` has one (they may come batched and
    /// in any order); returns the rejections' reasons, `None` for an adoption.
    fn answers_for(&mut self, ids: &[u64]) -> Vec<(u64, Option<Reason>)> {
        let mut got: Vec<(u64, Option<Reason>)> = Vec::new();
        while !ids.iter().all(|id| got.iter().any(|(g, _)| g == id)) {
            match self.answer() {
                Record::Adopted(adopted) => got.extend(adopted.into_iter().map(|id| (id, None))),
                Record::Rejected(rejected) => got.extend(rejected.into_iter().map(|(id, r)| (id, Some(r)))),
                other => panic!("expected answers for {ids:?}, got {other:?}"),
            }
        }
        got.sort_by_key(|(id, _)| *id);
        let mut expected = ids.to_vec();
        expected.sort_unstable();
        assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected, "each id answered exactly once");
        got
    }

    /// HELLO, answered by READY with the worker's pid.
    fn hello(&mut self) {
        self.send(&Record::Hello { worker: 0 }, &[]);
        let pid = self.pid();
        match self.answer() {
            Record::Ready { pid: got } => assert_eq!(got, pid),
            other => panic!("expected READY, got {other:?}"),
        }
    }

    /// Hands over a connection; asserts it is adopted.
    fn hand_connection(&mut self, id: u64, conn: &Handed, prelude: &[u8]) {
        let item = conn.item(id, prelude);
        self.send(&Record::Handoff(vec![item]), &[conn.server.as_fd()]);
        assert_eq!(self.answers_for(&[id]), [(id, None)], "adopted");
    }

    /// Waits until the channel reaches end of file and the process exits; returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        while self.channel.is_some() {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Next::Record(..) => {}
                Next::Closed => break,
                Next::Nothing => panic!("the python worker's channel did not close"),
            }
        }
        wait_exit(&mut self.child)
    }
}

impl Drop for HandPlayed {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback TCP connection: the client's end, and the server's end to hand over.
struct Handed {
    client: TcpStream,
    server: TcpStream,
}

impl Handed {
    fn new() -> Handed {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        Handed { client, server }
    }

    fn item(&self, id: u64, prelude: &[u8]) -> Item {
        Item {
            id,
            kind: Kind::Connection,
            tag: 0,
            peer: Address::Inet(self.server.peer_addr().unwrap()),
            local: Address::Inet(self.server.local_addr().unwrap()),
            key: None,
            prelude: prelude.to_vec(),
            ext: Vec::new(),
        }
    }
}

fn encoded(record: &Record) -> Vec<u8> {
    let mut bytes = Vec::new();
    record::encode(record, &mut bytes);
    bytes
}

#[test]
fn hand_played_ready_heartbeat_handoff_closed_and_stop() {
    let mut w = HandPlayed::spawn("basics");
    w.hello();
    // LOAD is the heartbeat: regularly, well under the parent's 2 s adoption deadline.
    w.only_loads_for(Duration::from_millis(500));
    let times: Vec<Instant> = w.loads.iter().map(|(t, _)| *t).collect();
    assert!(times.len() >= 5, "{} LOADs in half a second", times.len());
    let longest = times.windows(2).map(|p| p[1] - p[0]).max().unwrap();
    assert!(longest < Duration::from_millis(300), "LOAD gap {longest:?}");
    // Every HELLO is answered.
    w.hello();

    // A connection whose prelude is the whole request: answered, then CLOSED once the client
    // has read the answer and closed its end. The test keeps its copy of the socket meanwhile,
    // as a parent that has not read the ADOPTED yet does: the client still sees the end of the
    // answer, because the worker shuts the connection down before closing it (§9.4).
    let conn = Handed::new();
    w.hand_connection(7, &conn, REQUEST);
    let Handed { client, server } = conn;
    let asked = Instant::now();
    assert_eq!(read_answer(client), w.pid());
    assert!(asked.elapsed() < Duration::from_secs(1), "the answer's end came late: {:?}", asked.elapsed());
    assert_eq!(w.answer(), Record::Closed(vec![7]));
    drop(server);

    // A Unix stream socket (address family 0) is served the same way.
    let (client, server) = UnixStream::pair().unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let item = Item {
        id: 9,
        kind: Kind::Connection,
        tag: 0,
        peer: Address::Unix(None),
        local: Address::Unix(None),
        key: None,
        prelude: REQUEST.to_vec(),
        ext: Vec::new(),
    };
    w.send(&Record::Handoff(vec![item]), &[server.as_fd()]);
    assert_eq!(w.answers_for(&[9]), [(9, None)]);
    drop(server);
    assert_eq!(read_answer_from(&client), w.pid());
    drop(client);
    assert_eq!(w.answer(), Record::Closed(vec![9]));
    w.loads.clear();
    w.only_loads_for(Duration::from_millis(120));
    assert!(w.loads.iter().all(|(_, l)| l.open == 0), "{:?}", w.loads);

    // STOP with a connection open in the middle of a request: exit now.
    let conn = Handed::new();
    w.hand_connection(8, &conn, b"GET / HT");
    w.loads.clear();
    w.only_loads_for(Duration::from_millis(120));
    assert!(w.loads.iter().any(|(_, l)| l.open == 1), "LOAD counts the open connection: {:?}", w.loads);
    let stopped = Instant::now();
    w.send(&Record::Stop, &[]);
    let status = w.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(stopped.elapsed() < Duration::from_secs(2), "STOP means now: {:?}", stopped.elapsed());
    w.exits.assert_reason(w.pid(), "stop");
}

#[test]
fn hand_played_bad_records_are_dropped_and_the_channel_stays_open() {
    let mut w = HandPlayed::spawn("bad-records");
    w.hello();
    let pid = w.pid();
    wait_until("the worker's descriptors settle", || fd_count(Some(pid)) > 0);
    let baseline = fd_count(Some(pid));
    let hello = encoded(&Record::Hello { worker: 0 });
    let conn = Handed::new();
    let handoff = encoded(&Record::Handoff(vec![conn.item(1, b"")]));
    let fd = [conn.server.as_fd()];
    let with = |at: usize, byte: u8, bytes: &[u8]| {
        let mut b = bytes.to_vec();
        b[at] = byte;
        b
    };

    // Malformed (§9.2): no answer, descriptors closed, channel open.
    w.send_raw(&with(0, b'X', &hello), &[]); // magic
    w.send_raw(&with(2, 2, &hello), &[]); // version 2 (§13)
    w.send_raw(&with(3, 0x30, &hello), &[]); // unknown type
    w.send_raw(&[hello.as_slice(), &[0]].concat(), &[]); // trailing byte
    w.send_raw(&hello[..11], &[]); // truncated body
    w.send_raw(&with(4, 1, &hello), &[]); // count on a HELLO
    w.send_raw(&[], &[]); // empty packet: not end of file, since the channel is still there
    w.send_raw(&vec![0x42; record::MAX_RECORD + 1], &[]); // oversized
    w.send_raw(&with(16, 2, &handoff), &fd); // item kind 2, with a descriptor
    w.send_raw(&with(17, 2, &handoff), &fd); // reserved flag bit
    w.send_raw(&with(22, 4, &handoff), &fd); // address family 4
    w.send_raw(&handoff[..handoff.len() - 1], &fd); // item cut short
                                                    // Good records not meant for a worker (§9.3): ignored, descriptors closed.
    w.send(&Record::Ready { pid: 1 }, &[]);
    w.send(&Record::Take, &[]);
    w.send(&Record::Load(Load { open: 1, queued: 2, busy: 3 }), &[]);
    w.send(&Record::Return(vec![conn.item(2, b"")]), &fd);
    // Descriptor mismatch on a record that is not a HANDOFF: discarded (no READY).
    w.send_raw(&hello, &fd);
    w.only_loads_for(Duration::from_millis(300));
    wait_until("the worker closed every descriptor it was sent", || fd_count(Some(pid)) <= baseline);

    // A HANDOFF whose descriptors do not match: every item rejected as malformed (3).
    let other = Handed::new();
    let two = encoded(&Record::Handoff(vec![conn.item(3, b""), other.item(4, b"")]));
    w.send_raw(&two, &fd);
    assert_eq!(w.answers_for(&[3, 4]), [(3, Some(Reason::Malformed)), (4, Some(Reason::Malformed))]);
    // A descriptor that is not a socket: rejected as malformed (3).
    let file = std::fs::File::open("/dev/null").unwrap();
    w.send(&Record::Handoff(vec![conn.item(5, b"")]), &[file.as_fd()]);
    assert_eq!(w.answers_for(&[5]), [(5, Some(Reason::Malformed))]);
    wait_until("rejected descriptors closed", || fd_count(Some(pid)) <= baseline);

    // Still in step: HELLO is answered, and a good HANDOFF served.
    w.hello();
    w.hand_connection(6, &conn, b"");
    let Handed { mut client, server } = conn;
    drop(server);
    client.write_all(REQUEST).unwrap();
    assert_eq!(read_answer(client), pid);
    assert_eq!(w.answer(), Record::Closed(vec![6]));
    w.send(&Record::Stop, &[]);
    assert!(w.wait_exit().success());
}

#[test]
fn hand_played_drain_rejects_new_handoffs_and_finishes_open_ones() {
    let mut w = HandPlayed::spawn("drain");
    w.hello();
    let open = Handed::new();
    w.hand_connection(1, &open, b"");
    let Handed { client: mut open_client, server } = open;
    drop(server);
    open_client.write_all(&REQUEST[..10]).unwrap();

    w.send(&Record::Drain { deadline_ms: 5000 }, &[]);
    // Handed over after DRAIN: rejected with reason 4, and the descriptor closed, not shut down:
    // the client sees no end of file while the parent still holds its copy...
    let late = Handed::new();
    w.send(&Record::Handoff(vec![late.item(2, REQUEST)]), &[late.server.as_fd()]);
    assert_eq!(w.answers_for(&[2]), [(2, Some(Reason::Draining))]);
    let Handed { client: mut late_client, server: late_server } = late;
    late_client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut byte = [0u8; 1];
    let early = late_client.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a rejected socket must be closed, never shut down: {early:?}"
    );
    // ...and reaches the client once the parent closes its copy too (the worker kept none).
    drop(late_server);
    late_client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(late_client.read(&mut byte).unwrap(), 0);

    // The open connection is finished, then the worker exits by itself.
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(w.pid()));
    open_client.write_all(&REQUEST[10..]).unwrap();
    assert_eq!(read_answer(open_client), w.pid());
    assert_eq!(w.answer(), Record::Closed(vec![1]));
    let status = w.wait_exit();
    assert!(status.success(), "{status:?}");
    w.exits.assert_reason(w.pid(), "drained");
}

#[test]
fn hand_played_drain_deadline_is_kept() {
    let mut w = HandPlayed::spawn("drain-deadline");
    w.hello();
    let conn = Handed::new();
    w.hand_connection(1, &conn, b"GET / HT");
    let started = Instant::now();
    w.send(&Record::Drain { deadline_ms: 300 }, &[]);
    // The request never completes: the worker closes it at the deadline and exits. It shuts the
    // connection down first, so the client sees the end though the test still holds a copy.
    assert_eq!(w.answer(), Record::Closed(vec![1]));
    let mut client = &conn.client;
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(client.read(&mut [0u8; 16]).expect("end of file"), 0);
    assert!(w.wait_exit().success());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "exited after {took:?}");
    w.exits.assert_reason(w.pid(), "deadline");
}

#[test]
fn hand_played_shared_listener() {
    let mut w = HandPlayed::spawn("shared");
    w.hello();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let item = Item {
        id: 11,
        kind: Kind::Listener,
        tag: 9,
        peer: Address::Inet(addr),
        local: Address::Inet(addr),
        key: None,
        prelude: Vec::new(),
        ext: Vec::new(),
    };
    w.send(&Record::Handoff(vec![item]), &[listener.as_fd()]);
    assert_eq!(w.answers_for(&[11]), [(11, None)]);
    // The test keeps no copy: from now on only the worker listens.
    drop(listener);
    for _ in 0..5 {
        assert_eq!(get(addr), w.pid());
    }
    // A connection the worker accepted itself counts in LOAD only: never ADOPTED or CLOSED.
    let mut held = TcpStream::connect(addr).unwrap();
    let mut seen = false;
    let deadline = Instant::now() + WAIT;
    while !seen {
        assert!(Instant::now() < deadline, "no LOAD counted the accepted connection");
        w.loads.clear();
        w.only_loads_for(Duration::from_millis(60));
        seen = w.loads.iter().any(|(_, l)| l.open == 1);
    }
    // DRAIN closes the worker's copy of the listener at once, while it still finishes the
    // connection it holds: nobody listens any more.
    w.send(&Record::Drain { deadline_ms: 5000 }, &[]);
    wait_until("the draining worker closed the shared listener", || TcpStream::connect(addr).is_err());
    assert!(alive(w.pid()));
    held.write_all(REQUEST).unwrap();
    assert_eq!(read_answer(held), w.pid());
    assert!(w.wait_exit().success());
    w.exits.assert_reason(w.pid(), "drained");
}

#[test]
fn hand_played_end_of_file_orphans_the_worker_which_finishes_then_exits() {
    let mut w = HandPlayed::spawn("orphan");
    w.hello();
    let conn = Handed::new();
    w.hand_connection(1, &conn, b"GET /");
    let Handed { mut client, server } = conn;
    drop(server);
    // The parent goes away.
    w.channel = None;
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(w.pid()), "the orphan still has a request to finish");
    client.write_all(&REQUEST[5..]).unwrap();
    assert_eq!(read_answer(client), w.pid());
    let status = wait_exit(&mut w.child);
    assert!(status.success(), "{status:?}");
    w.exits.assert_reason(w.pid(), "orphaned");

    // With nothing open, end of file means exit at once.
    let mut idle = HandPlayed::spawn("orphan-idle");
    idle.hello();
    idle.channel = None;
    assert!(wait_exit(&mut idle.child).success());
    idle.exits.assert_reason(idle.pid(), "orphaned");
}
