//! The README's contract for `cargo run --release --example prefork`, checked against the built
//! example: the ready line with the real address, `GET /` answered by a worker process,
//! keep-alive with pipelining, `/slow`, metrics, usage errors (exit 2), and SIGTERM: in-flight
//! requests finish, exit 0, no worker left behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// `cargo test` builds the examples next to the test binaries (`target/<profile>/examples`).
fn prefork_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("examples").join("prefork");
    assert!(bin.exists(), "{} not built (cargo test builds examples)", bin.display());
    bin
}

struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", extra)
    }

    fn start_on(listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(prefork_binary())
            .process_group(0)
            .args(["--listen", listen, "--workers", "2"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prefork");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("ready line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("a real address");
        let mut metrics = None;
        if extra.contains(&"--metrics") {
            let mut err = BufReader::new(child.stderr.take().unwrap());
            let mut l = String::new();
            while metrics.is_none() && err.read_line(&mut l).unwrap() > 0 {
                if let Some(rest) = l.trim().strip_prefix("prefork: metrics on http://") {
                    metrics = Some(rest.trim_end_matches("/metrics").parse().unwrap());
                }
                l.clear();
            }
            // Keep reading, so the server's later log lines have somewhere to go.
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        }
        Server { child, addr, metrics }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "prefork did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed assertion must not leave the server (or its workers) running.
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

/// Kills every process of the group `leader` started (its workers and successors inherit it).
fn kill_group(leader: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(leader as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kills the group when dropped, also when a test fails half-way.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Removes a file when dropped (a socket file left by a server the test had to kill).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Requests in a loop on a thread of their own until stopped: the answers that were not
/// `200 OK` (a status, or "no answer"), and how long each took.
struct ClientLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<(String, Duration)>)>,
}

impl ClientLoop {
    fn start(request: impl Fn() -> String + Send + std::panic::RefUnwindSafe + 'static) -> ClientLoop {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let began = Instant::now();
                match std::panic::catch_unwind(&request) {
                    Ok(status) if status == "HTTP/1.1 200 OK" => ok += 1,
                    Ok(status) => failed.push((status, began.elapsed())),
                    Err(_) => failed.push(("no answer".to_string(), began.elapsed())),
                }
            }
            (ok, failed)
        });
        ClientLoop { stop, thread }
    }

    /// Stops it: how many were answered, and the failures.
    fn stop(self) -> (usize, Vec<(String, Duration)>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }

    /// Stops it and checks that every request was answered (and that there were some).
    fn stop_with_none_failed(self, what: &str) {
        let (ok, failed) = self.stop();
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed: {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(ok > 50, "{what}: the client kept going ({ok} requests)");
    }
}

/// Waits until process `pid` is gone (or a zombie), or panics with `what`.
fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A prefork started with `--takeover` (and `--probation MS`) in a process group of its own,
/// killed with every generation it starts, its control socket removed, however the test ends.
/// `pids` receives the pid in each stderr line that `pid_in` picks out; `log` keeps every line.
struct Upgradable {
    first: Child,
    addr: SocketAddr,
    path: std::path::PathBuf,
    pids: std::sync::mpsc::Receiver<u32>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _group: GroupGuard,
    _socket: RemoveOnDrop,
}

impl Upgradable {
    fn start(name: &str, probation_ms: u32, pid_in: fn(&str) -> Option<&str>) -> Upgradable {
        Upgradable::start_with(name, probation_ms, &[], pid_in)
    }

    /// [`Upgradable::start`] with more flags (after the defaults, so they win).
    fn start_with(name: &str, probation_ms: u32, extra: &[&str], pid_in: fn(&str) -> Option<&str>) -> Upgradable {
        let path = std::env::temp_dir().join(format!("baton-prefork-{name}-{}.sock", std::process::id()));
        let probation = probation_ms.to_string();
        let mut first = Command::new(prefork_binary())
            .process_group(0)
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--probation", &probation, "--takeover"])
            .arg(&path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prefork");
        // Every generation is in the first one's process group: all killed if the test fails.
        let _group = GroupGuard(first.id());
        // Killed servers cannot remove their control socket; the test does, however it ends.
        let _socket = RemoveOnDrop(path.clone());
        let mut out = BufReader::new(first.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on http://").unwrap().parse().unwrap();
        let (tx, pids) = std::sync::mpsc::channel();
        let err = BufReader::new(first.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_w = log.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                if let Some(pid) = pid_in(&l) {
                    let _ = tx.send(pid.parse::<u32>().unwrap());
                }
                log_w.lock().unwrap().push(l);
            }
        });
        Upgradable { first, addr, path, pids, log, _group, _socket }
    }
}

/// Reads one HTTP response (status line, headers, Content-Length body).
fn read_response(r: &mut BufReader<TcpStream>) -> (String, String) {
    let (status, body, _) = try_read_response(r).unwrap_or_else(|e| panic!("a response: {e:?}"));
    (status, body)
}

/// One HTTP response: its status line (empty when the connection ended first), its
/// Content-Length body and whether it said `Connection: close`; or, when it was cut off or
/// malformed, the status line and what went wrong.
fn try_read_response(r: &mut BufReader<TcpStream>) -> Result<(String, String, bool), String> {
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| format!("no status line: {e}"))?;
    let status = status.trim().to_string();
    let (mut len, mut close) = (0, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|_| format!("{status} (cut in its head)"))?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let h = h.to_ascii_lowercase();
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| format!("{status} (bad Content-Length)"))?;
        }
        close |= h.starts_with("connection:") && h.contains("close");
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|_| format!("{status} (cut in its body)"))?;
    let body = String::from_utf8(body).map_err(|_| format!("{status} (a body not in UTF-8)"))?;
    Ok((status, body, close))
}

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s);
    write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    read_response(&mut r)
}

fn worker_pid(body: &str) -> u32 {
    let rest = body.split("worker ").nth(1).unwrap_or_else(|| panic!("no `worker <pid>` in {body:?}"));
    rest.trim().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn the_prefork_example_keeps_its_contract() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let (status, body) = get(server.addr, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let pid = worker_pid(&body);
    assert_ne!(pid, server.child.id(), "served by a worker process, not the parent");

    // Keep-alive with two pipelined requests on one connection, answered in order.
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"GET /slow?ms=20 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let first = read_response(&mut r);
    let second = read_response(&mut r);
    assert_eq!(first.0, "HTTP/1.1 200 OK");
    assert_eq!(second.0, "HTTP/1.1 200 OK");
    assert_eq!(worker_pid(&first.1), worker_pid(&second.1), "one connection, one worker");
    drop(r);

    assert_eq!(get(server.addr, "/nope").0, "HTTP/1.1 404 Not Found");

    // Metrics from the parent, in Prometheus text.
    let (status, text) = get(server.metrics.expect("metrics address"), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(text.contains("baton_handoff_adopted_total"), "{text}");

    // Every worker pid seen, to check none outlives the parent.
    let mut pids: Vec<u32> = (0..10).map(|_| worker_pid(&get(server.addr, "/").1)).collect();
    pids.sort_unstable();
    pids.dedup();

    // A heavy request in flight when SIGTERM arrives still gets its answer.
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/slow?ms=500"));
    std::thread::sleep(Duration::from_millis(150));
    let status = server.terminate();
    let (slow_status, slow_body) = in_flight.join().expect("in-flight request");
    assert_eq!(slow_status, "HTTP/1.1 200 OK");
    assert!(slow_body.contains("worker "));
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived the parent");
    }
}

#[test]
fn listeners_mode_has_the_workers_accept_and_keeps_the_contract() {
    let server = Server::start(&["--mode", "listeners"]);
    let mut pids = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, body) = get(server.addr, "/");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let pid = worker_pid(&body);
        assert_ne!(pid, server.child.id());
        pids.insert(pid);
    }
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived the parent");
    }
}

#[test]
fn bad_flags_are_a_usage_error_with_exit_code_2() {
    for args in [
        &["--workers", "0"][..],
        &["--bogus"],
        &["--listen", "not-an-address"],
        &["--policy", "random"],
        &["--mode", "x"],
    ] {
        let out = Command::new(prefork_binary()).args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("usage: prefork"), "{args:?}: {err}");
    }
}

#[test]
fn help_names_every_flag_on_stdout_and_exits_0() {
    let out = Command::new(prefork_binary()).arg("--help").stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--workers",
        "--policy",
        "--mode",
        "--takeover",
        "--probation",
        "--proxy-protocol",
        "--trusted",
        "--agent",
        "--drain-grace",
        "--route-by-host",
        "--metrics",
        "steered",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn socket_activated_by_systemd_socket_activate_when_it_is_installed() {
    let Some(tool) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("systemd-socket-activate")).find(|p| p.exists())
    }) else {
        eprintln!("skipped: systemd-socket-activate is not installed (handoff's processes test covers the variables)");
        return;
    };
    // A free port (released again for the tool to bind).
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = Command::new(tool)
        .process_group(0)
        .args(["-l", &addr.to_string(), "--fdname=http"])
        .arg(prefork_binary())
        .args(["--workers", "2", "--listen", "127.0.0.1:1"]) // --listen ignored: activated
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate");
    let _group = GroupGuard(child.id());
    // The tool starts the server at the first connection, which the server then serves.
    let deadline = Instant::now() + WAIT;
    let (status, body) = loop {
        if TcpStream::connect(addr).is_ok() {
            break get(addr, "/");
        }
        assert!(Instant::now() < deadline, "the activation socket never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("listening on http://{addr}"), "the activated socket, not --listen");
    let worker = worker_pid(&body);
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("LISTEN_"),
        "socket-activation variables must not reach the workers"
    );
    signal(child.id(), rustix::process::Signal::TERM);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(!alive(worker));
}

#[test]
fn sigusr2_upgrades_ten_times_without_a_failed_request() {
    let path = upgrades_fail_no_request("takeover", &[], Client::Close, 10, Duration::from_millis(100));
    assert!(!path.exists(), "the control socket is removed at the end");
}

/// The new binary of an upgrade most often fails right after it starts. Before: the old
/// generation let go as soon as the successor said SERVING, so a successor that died 20 ms
/// later left no server at all (605 refused requests in 4 s), and each failed successor stayed
/// a zombie. Now the old generation keeps its sockets and workers through the probation and
/// serves again, and nothing queued in the sockets is lost. What a SIGKILL can still cost is
/// the one request the successor process itself held at that instant (accepted, not yet
/// handed to its worker: tens of microseconds per request), which no process can hand on
/// after SIGKILL; with one client request in flight that is at most one per kill, and it ends
/// at once (a reset), never a hang.
#[test]
fn a_successor_killed_20_ms_200_ms_or_2_s_after_it_starts_leaves_a_server_and_no_zombie() {
    let mut u = Upgradable::start("probation", 5000, |l| l.strip_prefix("prefork: SIGUSR2: started successor "));
    let (addr, parent, log) = (u.addr, u.first.id(), u.log.clone());
    let load = ClientLoop::start(move || get(addr, "/").0);
    for after in [Duration::from_millis(20), Duration::from_millis(200), Duration::from_secs(2)] {
        std::thread::sleep(Duration::from_millis(200));
        signal(parent, rustix::process::Signal::USR2);
        let successor = u.pids.recv_timeout(WAIT).expect("a successor started");
        std::thread::sleep(after);
        signal(successor, rustix::process::Signal::KILL);
        // Reaped by the parent that started it (a zombie still has its /proc entry).
        let deadline = Instant::now() + WAIT;
        while std::path::Path::new(&format!("/proc/{successor}")).exists() {
            assert!(
                Instant::now() < deadline,
                "successor {successor} not reaped; the servers said:\n{}",
                log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(alive(parent), "the old parent serves on");
    }
    // The old parent offers the takeover again after each rollback: the next upgrade works.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.stop();
    signal(parent, rustix::process::Signal::TERM);
    let _ = u.first.wait();
    eprintln!("{ok} requests served, {} failed: {failed:?}", failed.len());
    assert!(
        failed.len() <= 3 && failed.iter().all(|(_, took)| *took < Duration::from_secs(1)),
        "{} of {} requests failed: {:?}; the servers said:\n{}",
        failed.len(),
        ok + failed.len(),
        failed,
        log.lock().unwrap().join("\n")
    );
    assert!(ok > 100, "the client kept going ({ok} requests)");
}

/// Sends `GET path` from the local address `from` to `to` and reads the answer.
fn get_from(from: std::net::Ipv4Addr, to: SocketAddr, path: &str) -> (String, String, SocketAddr) {
    use rustix::net::{AddressFamily, SocketAddrV4, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &SocketAddrV4::new(from, 0)).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    let s = TcpStream::from(fd);
    let me = s.local_addr().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s);
    write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut r);
    (status, body, me)
}

/// Behind a real HAProxy sending the PROXY protocol (v2) to two prefork instances on 127.0.0.2
/// and 127.0.0.3: `/whoami` answers the client's own address, and a SIGUSR2 upgrade of one
/// instance under a client loop through HAProxy fails no request.
#[test]
fn behind_haproxy_whoami_is_the_client_and_an_upgrade_fails_no_request() {
    let path = std::env::temp_dir().join(format!("baton-prefork-haproxy-{}.sock", std::process::id()));
    let _socket = RemoveOnDrop(path.clone());
    let proxied = ["--proxy-protocol", "v2", "--trusted", "127.0.0.1/32"];
    let mut takeover = proxied.to_vec();
    takeover.extend(["--takeover", path.to_str().unwrap(), "--probation", "200"]);
    let a = Server::start_on("127.0.0.2:0", &takeover);
    let b = Server::start_on("127.0.0.3:0", &proxied);
    let _guards = (GroupGuard(a.child.id()), GroupGuard(b.child.id()));
    let front = SocketAddr::from((
        [127, 0, 0, 1],
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
    ));
    let dir = std::env::temp_dir().join(format!("baton-prefork-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 512\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend f\n  bind {front}\n  default_backend b\nbackend b\n  balance roundrobin\n  retries 3\n  option redispatch\n\
             server a {} send-proxy-v2 source 127.0.0.1\n  server b {} send-proxy-v2 source 127.0.0.1\n",
            a.addr, b.addr
        ),
    )
    .unwrap();
    let haproxy = Haproxy::start(&config);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(front).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..4 {
        let (status, body, me) = get_from([127, 0, 0, 9].into(), front, "/whoami");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body.trim(), me.to_string(), "the worker sees the client, not HAProxy");
    }
    let load = ClientLoop::start(move || get_from([127, 0, 0, 9].into(), front, "/").0);
    std::thread::sleep(Duration::from_millis(300));
    signal(a.child.id(), rustix::process::Signal::USR2);
    // The old parent exits once the successor has lasted its probation and it has drained.
    wait_gone(a.child.id(), "the old instance did not hand over");
    std::thread::sleep(Duration::from_millis(300));
    load.stop_with_none_failed("through HAProxy, across an upgrade");
    drop(haproxy);
    let _ = std::fs::remove_dir_all(&dir);
    drop(b);
}

/// HAProxy's view of backend `b`'s servers: (name, user weight, admin state) from its runtime
/// API's `show servers state`.
fn haproxy_servers(admin: &std::path::Path) -> Vec<(String, u32, u32)> {
    let mut s = std::os::unix::net::UnixStream::connect(admin).expect("haproxy's admin socket");
    s.write_all(b"show servers state b\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 8)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3].to_string(), f[7].parse().unwrap_or(0), f[6].parse().unwrap_or(0))
        })
        .collect()
}

fn free_port(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((ip, 0))).unwrap().local_addr().unwrap().port()
}

/// HAProxy's agent check: each instance's weight follows its workers' load (one loaded with
/// heavy requests drops), and a SIGTERM says `drain` first, so HAProxy stops sending it clients
/// before it stops accepting: a client loop through HAProxy fails no request.
#[test]
fn haproxy_agent_check_weights_follow_load_and_a_drain_is_announced_first() {
    let (pa, pb) = (free_port([127, 0, 0, 2]), free_port([127, 0, 0, 3]));
    let agent_a = format!("127.0.0.2:{pa}");
    let agent_b = format!("127.0.0.3:{pb}");
    let a = Server::start_on("127.0.0.2:0", &["--agent", &agent_a]);
    let b = Server::start_on("127.0.0.3:0", &["--agent", &agent_b, "--drain-grace", "1500"]);
    let _guards = (GroupGuard(a.child.id()), GroupGuard(b.child.id()));
    let front = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let dir = std::env::temp_dir().join(format!("baton-prefork-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let admin = dir.join("admin.sock");
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 512\n  stats socket {} level admin\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend f\n  bind {front}\n  default_backend b\nbackend b\n  balance roundrobin\n\
             server a {} weight 100 check inter 100ms agent-check agent-addr 127.0.0.2 agent-port {pa} agent-inter 100ms\n\
             server b {} weight 100 check inter 100ms agent-check agent-addr 127.0.0.3 agent-port {pb} agent-inter 100ms\n",
            admin.display(),
            a.addr,
            b.addr
        ),
    )
    .unwrap();
    let haproxy = Haproxy::start(&config);
    let weight = |name: &str| haproxy_servers(&admin).into_iter().find(|s| s.0 == name).map(|s| s.1);
    let deadline = Instant::now() + WAIT;
    while !admin.exists() || weight("a") != Some(100) || weight("b") != Some(100) {
        assert!(
            Instant::now() < deadline,
            "both instances at full weight: {:?}",
            admin.exists().then(|| haproxy_servers(&admin))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Load `a` with heavy requests (one per worker): its weight drops, `b`'s does not.
    let heavy: Vec<_> = (0..2)
        .map(|_| {
            let addr = a.addr;
            std::thread::spawn(move || get(addr, "/slow?ms=2500"))
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while weight("a").is_none_or(|w| w > 20) {
        assert!(Instant::now() < deadline, "a's weight did not drop: {:?}", haproxy_servers(&admin));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(weight("b"), Some(100));
    for h in heavy {
        assert_eq!(h.join().unwrap().0, "HTTP/1.1 200 OK");
    }
    // A client loop through HAProxy while `b` stops.
    let load = ClientLoop::start(move || get(front, "/").0);
    std::thread::sleep(Duration::from_millis(300));
    let b_pid = b.child.id();
    signal(b_pid, rustix::process::Signal::TERM);
    // HAProxy hears `drain` while `b` still accepts: its admin state says drain (0x08, forced
    // drain, which is what an agent's `drain` sets), or its weight is 0.
    let drained = || haproxy_servers(&admin).into_iter().any(|(n, w, admin)| n == "b" && (w == 0 || admin & 0x18 != 0));
    let deadline = Instant::now() + Duration::from_millis(1200);
    while !drained() {
        assert!(Instant::now() < deadline, "b was not drained in HAProxy in time: {:?}", haproxy_servers(&admin));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(alive(b_pid), "b still accepts while HAProxy drains it");
    wait_gone(b_pid, "b did not stop");
    std::thread::sleep(Duration::from_millis(300));
    load.stop_with_none_failed("through HAProxy, while b drains");
    drop(haproxy);
    let _ = std::fs::remove_dir_all(&dir);
    drop(a);
    drop(b);
}

/// A HAProxy in the foreground, killed when dropped (also when a test fails half-way).
struct Haproxy(Child);

impl Haproxy {
    fn start(config: &std::path::Path) -> Haproxy {
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy (installed by .ci/run; apt-get install haproxy)");
        Haproxy(child)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--route-by-host`: the parent reads each connection's first request head and places it by
/// its host, so one host's connections reach the same worker; a head the workers would refuse
/// the parent refuses the same way.
#[test]
fn route_by_host_sends_each_host_to_its_own_worker_and_refuses_bad_heads() {
    let server = Server::start(&["--route-by-host"]);
    let ask = |host: &str| {
        let s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut r = BufReader::new(s);
        write!(r.get_mut(), "GET / HTTP/1.1\r\nHost: {host}:8080\r\nConnection: close\r\n\r\n").unwrap();
        let (status, body) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 200 OK");
        worker_pid(&body)
    };
    let mut seen = std::collections::HashSet::new();
    for i in 0..8 {
        let host = format!("h{i}.example");
        let first = ask(&host);
        for _ in 0..3 {
            assert_eq!(ask(&host.to_uppercase()), first, "{host} stays on its worker");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "hosts spread over both workers");
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n").unwrap();
    let (status, _) = read_response(&mut r);
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "refused by the parent as a worker would");
    assert!(server.terminate().success());
}

/// The worker processes of `parent` now.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: the comm may hold spaces, so count from its end.
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig).unwrap();
}

/// A worker that blocks its own loop (`/block`, the shape of a single-threaded worker) says so,
/// and the parent steers every new connection to the other one meanwhile.
#[test]
fn steered_mode_sends_nothing_to_a_worker_that_blocks_its_loop() {
    let server = Server::start(&["--mode", "steered", "--metrics", "127.0.0.1:0"]);
    let addr = server.addr;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let (status, body) = get(addr, "/");
        assert_eq!(status, "HTTP/1.1 200 OK");
        seen.insert(worker_pid(&body));
    }
    assert_eq!(seen.len(), 2, "both workers accept from their sockets: {seen:?}");
    let blocked = std::thread::spawn(move || get(addr, "/block?ms=2000"));
    std::thread::sleep(Duration::from_millis(300));
    let during: Vec<u32> = (0..40).map(|_| worker_pid(&get(addr, "/").1)).collect();
    let (status, body) = blocked.join().unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let blocker = worker_pid(&body);
    assert!(during.iter().all(|&p| p != blocker), "a connection went to worker {blocker} while it blocked: {during:?}");
    // Steered, not handed off: the workers accepted these themselves.
    let (_, text) = get(server.metrics.expect("metrics address"), "/metrics");
    assert!(text.contains("baton_handoff_steering_changes_total"), "{text}");
    assert_eq!(server.terminate().code(), Some(0));
}

/// Plain SO_REUSEPORT resets the connections queued on a worker that dies (each process owns
/// its socket). Here the parent holds every socket of the group: what waited for a stopped,
/// then killed, worker is served by the other.
#[test]
fn steered_mode_serves_the_queue_of_a_worker_that_died() {
    let server = Server::start(&["--mode", "steered"]);
    let addr = server.addr;
    // Both serving before the test begins.
    let deadline = Instant::now() + WAIT;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "both workers serving: {seen:?}");
        seen.insert(worker_pid(&get(addr, "/").1));
    }
    let workers = children(server.child.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let victim = workers[0];
    signal(victim, rustix::process::Signal::STOP);
    // The signal takes effect when the kernel next schedules it: wait until it is stopped.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(format!("/proc/{victim}/stat")).is_ok_and(|s| s.contains(") T ")) {
        assert!(Instant::now() < deadline, "worker {victim} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Half of these land in the stopped worker's queue (it reported no load change: it weighs
    // what it weighed) and wait there.
    let clients: Vec<_> = (0..16).map(|_| std::thread::spawn(move || get(addr, "/"))).collect();
    std::thread::sleep(Duration::from_millis(300));
    signal(victim, rustix::process::Signal::KILL);
    for c in clients {
        let (status, body) = c.join().expect("an answer, not a reset");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_ne!(worker_pid(&body), victim);
    }
    assert_eq!(server.terminate().code(), Some(0));
}

/// A successor takes the whole group over (its members in order): upgrades fail no request.
#[test]
fn steered_mode_upgrades_without_a_failed_request() {
    upgrades_fail_no_request(
        "steered",
        &["--workers", "2", "--mode", "steered"],
        Client::Close,
        3,
        Duration::from_millis(200),
    );
}

/// The regression: a worker told to drain closed its shared listeners and, once it had nothing
/// open, exited, while a connection its listener had accepted just before the close was still in
/// its mailbox: that client saw a reset (3 upgrade runs in 8 failed a request). Now the worker is
/// not drained until every connection its listeners accepted has been served.
#[test]
fn a_draining_worker_serves_what_its_shared_listener_accepted_before_it_closed() {
    upgrades_fail_no_request(
        "listeners",
        &["--workers", "2", "--mode", "listeners"],
        Client::Close,
        3,
        Duration::from_millis(200),
    );
}

/// The regression: a draining worker closed its idle keep-alive connections at once, so a
/// client whose next request was already on its way saw the connection close under it (wrk,
/// keep-alive: one read error per connection at every upgrade). Now an idle connection gets a
/// grace for that request, which is answered with `Connection: close`. The metrics endpoint
/// comes through the upgrades too (it was lost at every other one: the successor could not
/// bind the port its predecessor held).
#[test]
fn keep_alive_clients_and_metrics_come_through_upgrades() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let flag = metrics.to_string();
    for mode in ["handoff", "listeners", "steered"] {
        upgrades_fail_no_request(
            &format!("keep-alive-{mode}"),
            &["--workers", "2", "--mode", mode, "--metrics", &flag],
            Client::KeepAlive,
            2,
            Duration::from_millis(300),
        );
    }
}

/// The regression: a client that opened a connection and sent nothing held its worker's drain
/// to the deadline (5 s, then `DeadlineExpired { open: 1 }`): a new connection was never closed
/// by a drain, nor was one holding part of a request head (its own deadline is 10 s). Now both
/// get the same grace as an idle one; then the silent one is closed, the partial head answered
/// `408`, and the worker exits drained.
#[test]
fn a_silent_new_connection_does_not_hold_a_drain_to_its_deadline() {
    let mut child = Command::new(prefork_binary())
        .process_group(0)
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--metrics", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prefork");
    let _group = GroupGuard(child.id());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().strip_prefix("listening on http://").unwrap().parse().unwrap();
    let (found, metrics) = std::sync::mpsc::channel();
    let err = BufReader::new(child.stderr.take().unwrap());
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for l in err.lines().map_while(Result::ok) {
            if let Some(m) = l.strip_prefix("prefork: metrics on http://") {
                let _ = found.send(m.trim_end_matches("/metrics").parse::<SocketAddr>().unwrap());
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let metrics = metrics.recv_timeout(WAIT).expect("the metrics line");
    // The worker's load, as the parent last heard it (reports come every 50 ms or so).
    let load_is = |n: u32| {
        let deadline = Instant::now() + WAIT;
        let want = format!(" {n}");
        while !get(metrics, "/metrics")
            .1
            .lines()
            .any(|l| l.starts_with("baton_handoff_worker_load") && l.ends_with(&want))
        {
            assert!(Instant::now() < deadline, "the worker's load never read {n}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(get(addr, "/").0, "HTTP/1.1 200 OK");
    load_is(0);
    // One that says nothing: the kernel holds it for the deferred accept (about a second),
    // then the parent accepts it and the worker adopts it, which its load says.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    load_is(1);
    // One that sends part of a head.
    let mut partial = TcpStream::connect(addr).unwrap();
    partial.set_read_timeout(Some(WAIT)).unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHost").unwrap();
    load_is(2);
    signal(child.id(), rustix::process::Signal::TERM);
    assert_eq!(silent.read(&mut [0u8; 16]).unwrap(), 0, "closed by the drain, not left open");
    let mut answer = String::new();
    partial.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "prefork did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = log.join().unwrap();
    assert!(log.contains("exiting: Drained"), "{log}");
    assert!(!log.contains("DeadlineExpired"), "{log}");
}

/// How the client loop of [`upgrades_fail_no_request`] talks.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// A new connection per request (`Connection: close`).
    Close,
    /// One connection, kept alive until the server says `Connection: close`, then a new one.
    KeepAlive,
}

/// A request on the kept-alive connection in `conn` (made first if there is none): its
/// status line, or "" when the connection ended without an answer.
fn keep_alive_get(conn: &std::sync::Mutex<Option<BufReader<TcpStream>>>, addr: SocketAddr) -> String {
    let mut slot = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut r = match slot.take() {
        Some(r) => r,
        None => match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(WAIT));
                BufReader::new(s)
            }
            Err(e) => return format!("connect: {e}"),
        },
    };
    if write!(r.get_mut(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
        return String::new();
    }
    match try_read_response(&mut r) {
        Ok((status, _, close)) => {
            if !close && !status.is_empty() {
                *slot = Some(r);
            }
            status
        }
        Err(e) => e,
    }
}

/// `times` SIGUSR2 upgrades, `pause` apart, of a prefork started with `extra` (every generation
/// logs "prefork: parent <pid> serving" on the shared stderr), under a client loop talking as `client` says: none
/// fails, and each old parent exits. Returns the control socket's path.
fn upgrades_fail_no_request(
    name: &str,
    extra: &[&str],
    client: Client,
    times: usize,
    pause: Duration,
) -> std::path::PathBuf {
    let mut u =
        Upgradable::start_with(name, 100, extra, |l| l.strip_prefix("prefork: parent ")?.strip_suffix(" serving"));
    let (addr, path) = (u.addr, u.path.clone());
    let log = u.log.clone();
    let next_serving = |what: &str| {
        u.pids
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{what}; the servers said:\n{}", log.lock().unwrap().join("\n")))
    };
    let mut parent = next_serving("first parent serving");
    let metrics = extra.iter().position(|f| *f == "--metrics").map(|i| extra[i + 1].parse::<SocketAddr>().unwrap());
    let load = match client {
        Client::Close => ClientLoop::start(move || get(addr, "/").0),
        Client::KeepAlive => {
            let conn = std::sync::Mutex::new(None);
            ClientLoop::start(move || keep_alive_get(&conn, addr))
        }
    };
    for _ in 0..times {
        std::thread::sleep(pause);
        signal(parent, rustix::process::Signal::USR2);
        let next = next_serving("the successor serves");
        assert_ne!(next, parent);
        wait_gone(parent, "the old parent did not exit after the takeover");
        parent = next;
        if let Some(m) = metrics {
            let (status, body) = get(m, "/metrics");
            assert_eq!(status, "HTTP/1.1 200 OK", "{name}: metrics after an upgrade");
            assert!(body.contains("baton_handoff_"), "{name}: the successor's metrics: {body}");
        }
    }
    std::thread::sleep(pause);
    let (ok, failed) = load.stop();
    signal(parent, rustix::process::Signal::TERM);
    wait_gone(parent, "the last parent did not exit");
    let _ = u.first.wait();
    assert!(
        failed.is_empty(),
        "{name}: {} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 50 * times, "{name}: the client kept going ({ok} requests)");
    path
}

/// Socket activation in the steered mode: the socket systemd passes (a unit with
/// `ReusePort=yes`) starts the group, and the parent binds the others beside it. Without
/// `SO_REUSEPORT` on it the parent says what is missing and exits.
#[test]
fn steered_mode_under_socket_activation_starts_its_group_from_the_socket_passed() {
    use std::os::fd::AsRawFd;
    for reuse_port in [true, false] {
        let fd = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None).unwrap();
        rustix::net::sockopt::set_socket_reuseport(&fd, reuse_port).unwrap();
        rustix::net::bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        rustix::net::listen(&fd, 64).unwrap();
        let addr = SocketAddr::try_from(rustix::net::getsockname(&fd).unwrap()).unwrap();
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
        // Inherited (no close-on-exec), moved to descriptor 3 by the shell, which then becomes
        // the server with the variables systemd sets, LISTEN_PID its own pid.
        let moved = match fd.as_raw_fd() {
            3 => String::new(),
            n => format!(" 3<&{n} {n}<&-"),
        };
        let script = format!("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" \"$@\"{moved}");
        let mut child = Command::new("sh")
            .process_group(0)
            .args(["-c", &script])
            .arg(prefork_binary())
            .args(["--workers", "2", "--mode", "steered", "--listen", "127.0.0.1:1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _group = GroupGuard(child.id());
        drop(fd); // ours; the child has its copy
        if !reuse_port {
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("SO_REUSEPORT") && err.contains("ReusePort=yes"), "{err}");
            continue;
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("listening on http://{addr}"), "the activated socket's address");
        let mut seen = std::collections::HashSet::new();
        let deadline = Instant::now() + WAIT;
        while seen.len() < 2 {
            assert!(Instant::now() < deadline, "both workers serve: {seen:?}");
            let (status, body) = get(addr, "/");
            assert_eq!(status, "HTTP/1.1 200 OK");
            seen.insert(worker_pid(&body));
        }
        signal(child.id(), rustix::process::Signal::TERM);
        assert_eq!(child.wait().unwrap().code(), Some(0));
    }
}
