//! The prefork example under a fake systemd: `NOTIFY_SOCKET` names a datagram socket this test
//! binds (a path under a temporary directory, or an abstract name), and the test checks what
//! arrives there, with the sender of each message from its `SCM_CREDENTIALS`: `READY=1` and
//! `STATUS=` once serving; on SIGUSR2 `RELOADING=1` with a `MONOTONIC_USEC=` between the
//! signal and its receipt; `MAINPID=` and `READY=1` from the successor once it serves; nothing
//! more from the predecessor (it was taken over: a `STOPPING=1` from it would stop the unit);
//! `STOPPING=1` from the successor on SIGTERM. Only the parents ever send, never a worker, and
//! workers do not see `NOTIFY_SOCKET`. A successor killed on probation: the old parent says
//! `MAINPID=` its own pid and `READY=1` again.
//!
//! Build the example first (`cargo build -p baton-examples --examples`): the test runs
//! `target/<profile>/examples/prefork`.

use std::io::{BufRead, BufReader, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_handoff::systemd::monotonic_usec;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

const WAIT: Duration = Duration::from_secs(20);

fn prefork_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("examples").join("prefork");
    assert!(bin.exists(), "{} not built (cargo build -p baton-examples --examples)", bin.display());
    bin
}

/// Kills the whole process group when dropped (the parent, its workers, its successors).
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Removes a directory (the notify socket, the takeover socket) when dropped.
struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One notification: its text and the sender's pid, as the kernel vouches for it.
#[derive(Debug, Clone)]
struct Note {
    pid: u32,
    text: String,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The fake service manager: the socket, everything received so far, and the servers' log.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<Note>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Manager {
    fn new(socket: UnixDatagram) -> Manager {
        rustix::net::sockopt::set_socket_passcred(&socket, true).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Manager { socket, seen: Vec::new(), log: Arc::default() }
    }

    /// The next message, if one arrives within about 50 ms.
    fn recv(&mut self) -> Option<Note> {
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = match rustix::net::recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::empty(),
        ) {
            Ok(m) => m,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return None,
            Err(e) => panic!("recvmsg: {e}"),
        };
        let pid = control
            .drain()
            .find_map(|m| match m {
                RecvAncillaryMessage::ScmCredentials(c) => Some(rustix::process::Pid::as_raw(Some(c.pid)) as u32),
                _ => None,
            })
            .expect("SCM_CREDENTIALS with every message");
        let note = Note { pid, text: String::from_utf8(buf[..msg.bytes].to_vec()).expect("UTF-8") };
        self.seen.push(note.clone());
        Some(note)
    }

    /// The first message from now on that satisfies `want`; a panic with everything seen and
    /// the servers' log after [`WAIT`].
    fn wait_for(&mut self, what: &str, want: impl Fn(&Note) -> bool) -> Note {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(n) = self.recv() {
                if want(&n) {
                    return n;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; received {:#?}; the servers said:\n{}",
                self.seen,
                self.log.lock().unwrap().join("\n")
            );
        }
    }

    /// Whatever else arrives within `quiet`.
    fn settle(&mut self, quiet: Duration) {
        let until = Instant::now() + quiet;
        while Instant::now() < until {
            self.recv();
        }
    }

    /// Starts prefork with `NOTIFY_SOCKET=notify_socket`, in its own process group; returns it
    /// and its HTTP address. The successors it starts log "started successor <pid>".
    fn start(&self, notify_socket: &str, takeover: &Path, probation_ms: u32) -> (Child, SocketAddr) {
        let mut child = Command::new(prefork_binary())
            .process_group(0)
            .env("NOTIFY_SOCKET", notify_socket)
            .args(["--listen", "127.0.0.1:0", "--workers", "2", "--probation", &probation_ms.to_string()])
            .arg("--takeover")
            .arg(takeover)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prefork");
        let err = BufReader::new(child.stderr.take().unwrap());
        let log = self.log.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                log.lock().unwrap().push(l);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("ready line");
        let addr = line.trim().strip_prefix("listening on http://").expect("the ready line").parse().unwrap();
        (child, addr)
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The worker that answered `GET /` (its body says `hello from worker <pid>`).
fn worker_pid(addr: SocketAddr) -> u32 {
    let body = get(addr, "/");
    body.split("worker ").nth(1).unwrap_or_else(|| panic!("no worker pid in {body:?}")).trim().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.split(' ').nth(1).unwrap().parse().unwrap()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig).unwrap();
}

fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} ({pid}) did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_no_notify_socket_in(worker: u32) {
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(
        !environ.split(|b| *b == 0).any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
        "worker {worker} inherited NOTIFY_SOCKET"
    );
}

/// Start, SIGUSR2 upgrade, SIGTERM, with `NOTIFY_SOCKET=notify_socket` (bound as `manager`).
fn upgrade_under_a_fake_systemd(mut manager: Manager, notify_socket: &str, dir: &Path) {
    let (mut first, addr) = manager.start(notify_socket, &dir.join("takeover.sock"), 200);
    let _group = GroupGuard(first.id());
    let old = first.id();

    let ready = manager.wait_for("READY=1", |n| n.has("READY=1"));
    assert_eq!(ready.pid, old, "READY=1 from the parent: {ready:?}");
    let status = ready.value("STATUS").expect("STATUS= with READY=1");
    assert!(status.contains("2/2 workers ready"), "{status:?}");
    assert_no_notify_socket_in(worker_pid(addr));

    // SIGUSR2: RELOADING=1 with the time of the reload, before the successor exists.
    let before = monotonic_usec();
    signal(old, rustix::process::Signal::USR2);
    let reloading = manager.wait_for("RELOADING=1", |n| n.has("RELOADING=1"));
    let after = monotonic_usec();
    assert_eq!(reloading.pid, old);
    let at: u64 = reloading.value("MONOTONIC_USEC").expect("MONOTONIC_USEC= with RELOADING=1").parse().unwrap();
    assert!(before <= at && at <= after, "MONOTONIC_USEC={at} not within [{before}, {after}]");

    // The successor, once it serves: MAINPID= itself, READY=1.
    let main = manager.wait_for("MAINPID=", |n| n.value("MAINPID").is_some());
    let new: u32 = main.value("MAINPID").unwrap().parse().unwrap();
    assert_ne!(new, old);
    assert_eq!(main.pid, new, "MAINPID= sent by the successor itself: {main:?}");
    assert!(main.has("READY=1"), "{main:?}");
    assert!(main.value("STATUS").is_some_and(|s| s.starts_with("serving")), "{main:?}");
    assert_eq!(parent_of(new), old, "the successor is the one the old parent started");

    // The old parent lets go after the probation and exits 0, saying nothing more.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        manager.recv();
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the old parent did not exit after the takeover");
    };
    assert_eq!(status.code(), Some(0));
    assert_no_notify_socket_in(worker_pid(addr));

    // SIGTERM to the new main process: STOPPING=1 from it.
    signal(new, rustix::process::Signal::TERM);
    let stopping = manager.wait_for("STOPPING=1", |n| n.has("STOPPING=1"));
    assert_eq!(stopping.pid, new);
    wait_gone(new, "the successor after SIGTERM");
    manager.settle(Duration::from_millis(100));

    // Only the two parents ever spoke, and the old one not after the reload.
    for n in &manager.seen {
        assert!(n.pid == old || n.pid == new, "a message from {} (not a parent): {n:?}", n.pid);
    }
    let reload_at = manager.seen.iter().position(|n| n.has("RELOADING=1")).unwrap();
    let late: Vec<_> = manager.seen[reload_at + 1..].iter().filter(|n| n.pid == old).collect();
    assert!(late.is_empty(), "the old parent spoke after the reload: {late:?}");
    assert!(!manager.seen.iter().any(|n| n.pid == old && n.has("STOPPING=1")));
}

fn temp_dir(what: &str) -> (PathBuf, RemoveDirOnDrop) {
    let dir = std::env::temp_dir().join(format!("baton-notify-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (dir.clone(), RemoveDirOnDrop(dir))
}

#[test]
fn notify_socket_at_a_path() {
    let (dir, _cleanup) = temp_dir("path");
    let path = dir.join("notify.sock");
    let manager = Manager::new(UnixDatagram::bind(&path).unwrap());
    upgrade_under_a_fake_systemd(manager, path.to_str().unwrap(), &dir);
}

#[test]
fn notify_socket_with_an_abstract_name() {
    use std::os::linux::net::SocketAddrExt;
    let (dir, _cleanup) = temp_dir("abstract");
    let name = format!("baton-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let manager = Manager::new(UnixDatagram::bind_addr(&addr).unwrap());
    upgrade_under_a_fake_systemd(manager, &format!("@{name}"), &dir);
}

#[test]
fn a_rollback_makes_the_old_parent_the_main_process_again() {
    let (dir, _cleanup) = temp_dir("rollback");
    let path = dir.join("notify.sock");
    let mut manager = Manager::new(UnixDatagram::bind(&path).unwrap());
    let (mut first, addr) = manager.start(path.to_str().unwrap(), &dir.join("takeover.sock"), 5000);
    let _group = GroupGuard(first.id());
    let old = first.id();
    manager.wait_for("READY=1", |n| n.has("READY=1"));

    signal(old, rustix::process::Signal::USR2);
    manager.wait_for("RELOADING=1", |n| n.has("RELOADING=1"));
    let main = manager.wait_for("MAINPID= from the successor", |n| n.value("MAINPID").is_some());
    let new: u32 = main.value("MAINPID").unwrap().parse().unwrap();
    assert_eq!(main.pid, new);

    // The successor dies on probation: the old parent serves again and says so.
    signal(new, rustix::process::Signal::KILL);
    let back = manager.wait_for("MAINPID= from the old parent", |n| n.pid == old && n.value("MAINPID").is_some());
    assert_eq!(back.value("MAINPID"), Some(old.to_string().as_str()), "{back:?}");
    assert!(back.has("READY=1"), "{back:?}");
    wait_gone(new, "the killed successor");
    // Heard through `Parent::rolled_back` (not only from reaping its child).
    let deadline = Instant::now() + WAIT;
    while !manager.log.lock().unwrap().iter().any(|l| l.contains("died on probation; serving again")) {
        assert!(
            Instant::now() < deadline,
            "no rollback heard; the servers said:\n{}",
            manager.log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(get(addr, "/").starts_with("HTTP/1.1 200 OK"), "the old parent serves");

    signal(old, rustix::process::Signal::TERM);
    let stopping = manager.wait_for("STOPPING=1", |n| n.has("STOPPING=1"));
    assert_eq!(stopping.pid, old);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the old parent did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    manager.settle(Duration::from_millis(100));
    for n in &manager.seen {
        assert!(n.pid == old || n.pid == new, "a message from {} (not a parent): {n:?}", n.pid);
    }
}
