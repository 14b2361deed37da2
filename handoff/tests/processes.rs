//! End-to-end tests with real worker processes (this test binary re-executed in the worker
//! role), on loopback. A custom runner (`harness = false`): `main` first checks whether this
//! process is a worker, then runs the tests one after another, since each starts processes.
//!
//! `cargo test -p baton-handoff --test processes [NAME-FILTER]`

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use baton_handoff::{
    channel_from_env, Dispatch, Endpoint, Parent, ParentBuilder, PeerCheck, RoundRobin, WorkerCommand,
};
use baton_runtime::Runtime;
use baton_transport::{Address, ListenOptions, Reactor, Stream};
use common::{fd_count, wait_until, Client, InProcessWorker, WAIT};

fn main() {
    if let Some(channel) = channel_from_env(PeerCheck::SameUid) {
        let channel = channel.expect("worker channel");
        let w = InProcessWorker::start(channel);
        let slot = std::env::var(baton_handoff::ENV_SLOT).unwrap_or_default();
        let mut hoard = Vec::new();
        if std::env::var("TEST_FULL_SLOT").ok() == Some(slot) {
            fill_descriptor_table(&mut hoard);
        }
        let why = w.worker.wait();
        drop(hoard);
        w.stop();
        eprintln!("test worker {} exiting: {why:?}", std::process::id());
        std::process::exit(0);
    }
    if std::env::var_os("TEST_SYSTEMD_ROLE").is_some() {
        // Socket-activated: report what we were given.
        let fds = baton_handoff::systemd::listen_fds().expect("listen_fds");
        let cloexec =
            fds.iter().all(|a| rustix::io::fcntl_getfd(&a.fd).is_ok_and(|f| f.contains(rustix::io::FdFlags::CLOEXEC)));
        let env_gone = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"].iter().all(|v| std::env::var_os(v).is_none());
        let listening = fds.iter().all(|a| rustix::net::sockopt::socket_acceptconn(&a.fd).unwrap_or(false));
        let names: Vec<String> = fds.iter().map(|a| a.name.clone().unwrap_or_default()).collect();
        println!("{} {} {cloexec} {env_gone} {listening}", fds.len(), names.join(","));
        std::process::exit(0);
    }
    if std::env::var_os("TEST_PARENT_ROLE").is_some() {
        // A parent in a process of its own, for the test that kills it.
        let s = start(1, |b| b);
        println!("{} {}", s.addr, s.pids()[0]);
        // Lives until killed, or until the test process is gone (its end of stdin closes).
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    }
    common::raise_nofile();
    let tests: &[(&str, fn())] = &[
        ("handed_off_socket_is_served_and_sees_eof_only_when_the_worker_closes", served_and_eof_from_worker_only),
        ("prelude_bytes_arrive_before_bytes_read_later", prelude_first),
        ("ten_thousand_connections_through_two_workers_round_robin", ten_thousand_connections),
        ("least_loaded_steers_new_connections_away_from_a_busy_worker", least_loaded_avoids_busy_worker),
        ("sigstopped_worker_then_killed_loses_no_queued_connection", stopped_then_killed_worker),
        ("worker_at_descriptor_limit_rejects_and_parent_places_elsewhere", worker_at_fd_limit),
        ("dead_worker_is_restarted_within_intensity", dead_worker_restarted),
        ("a_busy_worker_past_the_adoption_deadline_is_not_killed", busy_worker_not_killed),
        ("drain_lets_open_connections_finish_then_workers_exit", drain_waits_for_connections),
        ("a_worker_whose_parent_dies_finishes_its_connections_and_exits", orphaned_worker_exits),
        ("shared_listener_workers_accept_themselves_and_get_it_again_after_a_restart", shared_listener),
        ("socket_activation_variables_are_taken_cloexec_and_removed", socket_activation),
        ("ten_consecutive_takeovers_fail_no_request", ten_takeovers),
        ("a_successor_that_dies_before_serving_changes_nothing", takeover_rollback),
        ("keep_alive_clients_survive_their_worker_being_retired", live_migration),
        ("worker_connects_by_socket_path", bootstrap_by_path),
        ("worker_connects_by_abstract_name", bootstrap_by_abstract_name),
    ];
    common::run(tests);
}

/// Opens descriptors until the table is full, after lowering the limit to just above what is
/// open (so it takes a few files, not thousands).
fn fill_descriptor_table(hoard: &mut Vec<std::fs::File>) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = Some(fd_count(None) as u64 + 8);
    setrlimit(Resource::Nofile, lim).expect("lower RLIMIT_NOFILE");
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
}

struct Setup {
    runtime: Runtime,
    reactor: Reactor,
    parent: Parent,
    addr: SocketAddr,
}

fn start(workers: usize, configure: impl FnOnce(ParentBuilder) -> ParentBuilder) -> Setup {
    start_with(workers, WorkerCommand::current_exe().expect("exe"), configure)
}

fn start_with(workers: usize, command: WorkerCommand, configure: impl FnOnce(ParentBuilder) -> ParentBuilder) -> Setup {
    let runtime = Runtime::builder().threads(2).build();
    let reactor = Reactor::start().expect("reactor");
    let parent = configure(Parent::builder().spawn(workers, command)).start(&runtime, &reactor).expect("parent");
    let listener = parent.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).expect("listen");
    let addr = match listener.local_addr() {
        Address::Inet(a) => *a,
        other => panic!("unexpected address {other:?}"),
    };
    wait_until("workers ready", || {
        parent.stats().is_ok_and(|s| s.workers.len() == workers && s.workers.iter().all(|w| w.ready))
    });
    Setup { runtime, reactor, parent, addr }
}

impl Setup {
    fn pids(&self) -> Vec<u32> {
        self.parent.stats().unwrap().workers.iter().map(|w| w.pid.unwrap()).collect()
    }

    /// Drains (every worker must exit by itself) and stops everything.
    fn finish(self) {
        let pids = self.pids();
        let report = self.parent.drain(Duration::from_secs(5)).expect("drain");
        assert_eq!(report.killed, 0, "every worker exits by itself: {report:?}");
        assert_eq!(report.unplaced, 0, "{report:?}");
        for pid in pids {
            assert!(!alive(pid), "worker {pid} outlived the drain");
        }
        self.runtime.shutdown(Duration::from_secs(5)).expect("shutdown");
        self.reactor.stop();
    }
}

fn alive(pid: u32) -> bool {
    // A reaped process is gone from /proc; a zombie would mean nobody waited for it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

fn served_and_eof_from_worker_only() {
    let s = start(1, |b| b);
    let worker_pid = s.pids()[0];
    let mut client = Client::connect(s.addr);
    assert_eq!(client.pid, worker_pid);
    assert_ne!(client.pid, std::process::id());
    assert_eq!(client.echo(b"hello\n"), b"hello\n");
    wait_until("adoption acknowledged", || s.parent.stats().is_ok_and(|st| st.in_flight == 0 && st.adopted == 1));
    // The parent closed its copy: the connection must stay open (no EOF, no reset)...
    client.reader.get_ref().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut byte = [0u8; 1];
    match client.reader.get_mut().read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("the connection must stay open after the parent closed its copy: {other:?}"),
    }
    // ...and end exactly when the worker closes it: a copy left open anywhere would hold it.
    client.reader.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    client.reader.get_mut().write_all(b"quit\n").unwrap();
    let mut rest = Vec::new();
    client.reader.read_to_end(&mut rest).expect("EOF after the worker closes");
    assert!(rest.is_empty(), "{rest:?}");
    s.finish();
}

fn prelude_first() {
    let s = start(1, |b| b);
    // Play an application that reads a handshake before handing the socket over.
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"HELLO\nworld\n").unwrap();
    let (mut accepted, peer) = front.accept().unwrap();
    let mut hello = [0u8; 6];
    accepted.read_exact(&mut hello).unwrap();
    let local = accepted.local_addr().unwrap();
    let socket = Dispatch {
        stream: Stream::Tcp(accepted),
        peer: Address::Inet(peer),
        local: Address::Inet(local),
        tag: 7,
        key: None,
        prelude: hello.to_vec(),
    };
    s.parent.dispatch(socket).expect("dispatch");
    client.write_all(b"more\n").unwrap();
    let mut reader = std::io::BufReader::new(client);
    let mut pid = String::new();
    std::io::BufRead::read_line(&mut reader, &mut pid).unwrap();
    let mut got = vec![0u8; 17];
    reader.read_exact(&mut got).unwrap();
    assert_eq!(got, b"HELLO\nworld\nmore\n", "prelude first, then the bytes read later, in order");
    drop(reader);
    s.finish();
}

fn ten_thousand_connections() {
    const CONNS: usize = 10_000;
    const THREADS: usize = 8;
    let s = start(2, |b| b.policy(RoundRobin::default()));
    let pids = s.pids();
    let parent_fds = fd_count(None);
    let worker_fds: Vec<usize> = pids.iter().map(|&p| fd_count(Some(p))).collect();
    let addr = s.addr;
    let served: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    (0..CONNS / THREADS)
                        .map(|i| {
                            let mut c = Client::connect(addr);
                            let msg = format!("conn {t}/{i}: {}\n", "x".repeat(i % 200));
                            c.reader.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            let back =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.echo(msg.as_bytes())));
                            assert!(
                                back.as_deref().ok() == Some(msg.as_bytes()),
                                "echo failed on {t}/{i} served by {}",
                                c.pid
                            );
                            c.pid
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let served: Vec<u32> = served.into_iter().flatten().collect();
    assert_eq!(served.len(), CONNS);
    let per: Vec<usize> = pids.iter().map(|p| served.iter().filter(|&s| s == p).count()).collect();
    assert_eq!(per.iter().sum::<usize>(), CONNS, "every connection served by one of the workers");
    for n in &per {
        // Round robin alternates; re-placements are the only reason to stray.
        assert!(n.abs_diff(CONNS / 2) <= CONNS / 100, "round robin split {per:?}");
    }
    wait_until("workers report every connection closed", || {
        s.parent.stats().is_ok_and(|st| st.in_flight == 0 && st.workers.iter().all(|w| w.open == 0))
    });
    let stats = s.parent.stats().unwrap();
    assert_eq!(stats.adopted, CONNS as u64);
    assert_eq!(stats.closed_after_retries, 0);
    wait_until("parent descriptors back to baseline", || fd_count(None) <= parent_fds);
    for (pid, base) in pids.iter().zip(worker_fds) {
        wait_until("worker descriptors back to baseline", || fd_count(Some(*pid)) <= base);
    }
    s.finish();
}

fn least_loaded_avoids_busy_worker() {
    let s = start(2, |b| b);
    let pids = s.pids();
    // Held connections: least-loaded keeps the two workers level.
    let mut held: Vec<Client> = (0..20).map(|_| Client::connect(s.addr)).collect();
    let on_first = held.iter().filter(|c| c.pid == pids[0]).count();
    assert!(on_first.abs_diff(10) <= 1, "least-loaded split 20 held connections {on_first}/{}", 20 - on_first);
    // Now one worker is stuck in a heavy request: what it is handed waits unadopted, which
    // counts as load, so new connections go to the other one.
    let busy = held[0].pid;
    let idle = if busy == pids[0] { pids[1] } else { pids[0] };
    held[0].reader.get_mut().write_all(b"sleep 1500\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = s.parent.stats().unwrap();
    // Short requests, a new connection each (the client does not wait for the answer).
    for _ in 0..10 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(b"short\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = s.parent.stats().unwrap();
    let slot_of = |pid| during.workers.iter().position(|w| w.pid == Some(pid)).unwrap();
    let to_idle = during.workers[slot_of(idle)].adopted - before.workers[slot_of(idle)].adopted;
    let waiting_on_busy = during.workers[slot_of(busy)].in_flight;
    assert!(
        to_idle >= 8 && waiting_on_busy <= 2,
        "new connections must avoid the busy worker: {to_idle} to the idle one, {waiting_on_busy} waiting on the busy one"
    );
    drop(held);
    s.finish();
}

fn stopped_then_killed_worker() {
    let s = start(2, |b| b.policy(RoundRobin::default()).adopt_timeout(Duration::from_secs(60)));
    let pids = s.pids();
    signal(pids[0], rustix::process::Signal::STOP);
    // The stop is asynchronous: wait until every thread of it has stopped (state T).
    wait_until("the worker stopped", || {
        std::fs::read_dir(format!("/proc/{}/task", pids[0])).is_ok_and(|tasks| {
            tasks.flatten().all(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| st.contains(") T ")))
        })
    });
    let addr = s.addr;
    let clients: Vec<_> = (0..20).map(|_| std::thread::spawn(move || Client::connect(addr))).collect();
    wait_until("handoffs queued to the stopped worker", || {
        s.parent.stats().is_ok_and(|st| st.workers[0].in_flight >= 5)
    });
    signal(pids[0], rustix::process::Signal::KILL);
    for c in clients {
        let mut c = c.join().expect("every queued connection is served");
        assert_eq!(c.pid, pids[1], "served by the surviving worker");
        assert_eq!(c.echo(b"still here\n"), b"still here\n");
    }
    let stats = s.parent.stats().unwrap();
    assert!(stats.replaced >= 5, "{stats:?}");
    assert_eq!(stats.closed_after_retries, 0);
    wait_until("the killed worker restarted", || {
        s.parent.stats().is_ok_and(|st| st.restarts == 1 && st.workers[0].ready && st.workers[0].pid != Some(pids[0]))
    });
    s.finish();
}

fn worker_at_fd_limit() {
    let command = WorkerCommand::current_exe().unwrap().env("TEST_FULL_SLOT", "0");
    let s = start_with(2, command, |b| b.policy(RoundRobin::default()));
    let pids = s.pids();
    for _ in 0..10 {
        let mut c = Client::connect(s.addr);
        assert_eq!(c.pid, pids[1], "the full worker cannot take it; the other one does");
        assert_eq!(c.echo(b"ok\n"), b"ok\n");
    }
    let stats = s.parent.stats().unwrap();
    assert!(stats.rejected >= 1, "{stats:?}");
    assert_eq!(stats.closed_after_retries, 0);
    assert_eq!(stats.restarts, 0, "the full worker keeps running");
    assert!(alive(pids[0]));
    assert!(stats.workers[0].ready);
    s.finish();
}

fn dead_worker_restarted() {
    let s = start(1, |b| b);
    let old = s.pids()[0];
    signal(old, rustix::process::Signal::KILL);
    wait_until("a new worker in the slot", || {
        s.parent.stats().is_ok_and(|st| st.restarts == 1 && st.workers[0].ready && st.workers[0].pid != Some(old))
    });
    let mut c = Client::connect(s.addr);
    assert_ne!(c.pid, old);
    assert_eq!(c.echo(b"again\n"), b"again\n");
    drop(c);
    wait_until("the killed worker was reaped", || !alive(old));
    s.finish();
}

fn busy_worker_not_killed() {
    // Regression: the parent took "no ADOPTED within the deadline" for a hung worker and killed
    // it, with every connection it served. A busy worker still reports its load.
    let s = start(1, |b| b.adopt_timeout(Duration::from_millis(300)));
    let pid = s.pids()[0];
    let mut heavy = Client::connect(s.addr);
    heavy.reader.get_mut().write_all(b"sleep 1200\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Handed over while the application is stuck: adopted only after the heavy request.
    let mut waiting = Client::connect(s.addr);
    assert_eq!(waiting.pid, pid);
    assert_eq!(waiting.echo(b"late but served\n"), b"late but served\n");
    let mut rest = vec![0u8; b"sleep 1200\n".len()];
    heavy.reader.read_exact(&mut rest).unwrap();
    let stats = s.parent.stats().unwrap();
    assert_eq!(stats.restarts, 0, "{stats:?}");
    assert!(alive(pid));
    drop((heavy, waiting));
    s.finish();
}

fn drain_waits_for_connections() {
    let s = start(1, |b| b);
    let pid = s.pids()[0];
    let mut c = Client::connect(s.addr);
    let parent = s.parent.clone();
    let drain = std::thread::spawn(move || parent.drain(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    // The open connection keeps working while the worker drains...
    assert_eq!(c.echo(b"during drain\n"), b"during drain\n");
    assert!(alive(pid));
    // ...and the worker exits once it closes.
    drop(c);
    let report = drain.join().unwrap().expect("drain");
    assert_eq!(report, baton_handoff::DrainReport { unplaced: 0, exited: 1, killed: 0 });
    assert!(!alive(pid));
    s.runtime.shutdown(Duration::from_secs(5)).unwrap();
    s.reactor.stop();
}

fn orphaned_worker_exits() {
    use std::io::BufRead;
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .env("TEST_PARENT_ROLE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("parent process");
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().unwrap()).read_line(&mut line).expect("parent's address");
    let mut words = line.split_whitespace();
    let addr: SocketAddr = words.next().unwrap().parse().unwrap();
    let worker: u32 = words.next().unwrap().parse().unwrap();
    let mut c = Client::connect(addr);
    assert_eq!(c.pid, worker);
    parent.kill().unwrap();
    parent.wait().unwrap();
    // The worker keeps serving what it owns...
    assert_eq!(c.echo(b"parent is gone\n"), b"parent is gone\n");
    assert!(alive(worker));
    // ...and exits once that is done.
    drop(c);
    wait_until("the orphaned worker exits", || !alive(worker));
}

fn shared_listener() {
    let s = start(2, |b| b);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    s.parent.share_listener(listener.into(), 9).expect("share");
    let pids = s.pids();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let mut c = Client::connect(addr);
        assert!(pids.contains(&c.pid), "accepted by a worker, not the parent");
        assert_eq!(c.echo(b"shared\n"), b"shared\n");
        seen.insert(c.pid);
    }
    assert_eq!(s.parent.stats().unwrap().adopted, 0, "nothing went through the parent");
    // A restarted worker is given the listener again.
    signal(pids[0], rustix::process::Signal::KILL);
    wait_until("the killed worker restarted", || {
        s.parent.stats().is_ok_and(|st| st.restarts == 1 && st.workers.iter().all(|w| w.ready))
    });
    let new_pids = s.pids();
    wait_until("the new worker accepts too", || {
        let c = Client::connect(addr);
        c.pid == new_pids[0]
    });
    s.finish();
    // After the drain nobody listens any more.
    assert!(TcpStream::connect(addr).is_err(), "the shared listener is closed everywhere");
}

fn socket_activation() {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let raw = listener.as_raw_fd();
    // The manager's part: the socket at descriptor 3 of the started process, LISTEN_PID set to
    // that process (the shell's `$$` survives its `exec`). This runner is single-threaded while
    // the descriptor is inheritable.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let script = format!("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" 3<&{raw}");
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .arg(std::env::current_exe().unwrap())
        .env("TEST_SYSTEMD_ROLE", "1")
        .output()
        .expect("run the activated child");
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::CLOEXEC).unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.trim(), "1 http true true true", "count, names, close-on-exec, variables removed, listening");
    // Variables meant for another process are left alone (and still removed).
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("TEST_SYSTEMD_ROLE", "1")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0  true true true");
}

fn live_migration() {
    let command = WorkerCommand::current_exe().unwrap().env("TEST_MIGRATE_ON_DRAIN", "1");
    let s = start_with(2, command, |b| b);
    let pids = s.pids();
    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(s.addr)).collect();
    let on_first = clients.iter().filter(|c| c.pid == pids[0]).count();
    assert!(on_first >= 3, "least-loaded put {on_first} of 10 on worker 0");
    for c in &mut clients {
        assert_eq!(c.echo(b"before\n"), b"before\n");
    }
    // Retire worker 0 while the clients keep talking: its connections move to worker 1.
    s.parent.retire_worker(0, Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut round = 0;
    while alive(pids[0]) {
        assert!(Instant::now() < deadline, "the retired worker did not exit");
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = format!("round {round} client {i}\n");
            assert_eq!(c.echo(msg.as_bytes()), msg.as_bytes(), "no error and nothing lost while migrating");
        }
        round += 1;
    }
    let stats = s.parent.stats().unwrap();
    assert_eq!(stats.migrated, on_first as u64, "{stats:?}");
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("after client {i}\n");
        assert_eq!(c.echo(msg.as_bytes()), msg.as_bytes());
    }
    wait_until("the retired slot restarted", || {
        s.parent.stats().is_ok_and(|st| st.workers[0].ready && st.workers[0].pid != Some(pids[0]))
    });
    drop(clients);
    s.finish();
}

/// One generation of parent for the takeover tests: its own runtime, reactor, one worker.
struct Generation {
    runtime: Runtime,
    reactor: Reactor,
    parent: Parent,
}

impl Generation {
    fn start() -> Generation {
        let runtime = Runtime::builder().threads(2).build();
        let reactor = Reactor::start().unwrap();
        // Successors here live in this process (never die): no probation to wait out.
        let parent = Parent::builder()
            .spawn(1, WorkerCommand::current_exe().unwrap())
            .takeover_probation(Duration::ZERO)
            .start(&runtime, &reactor)
            .unwrap();
        wait_until("worker ready", || parent.stats().is_ok_and(|s| s.workers.iter().all(|w| w.ready)));
        Generation { runtime, reactor, parent }
    }

    fn stop(self) {
        let report = self.parent.drain(Duration::from_secs(5)).unwrap();
        assert_eq!(report.killed, 0, "{report:?}");
        self.runtime.shutdown(Duration::from_secs(5)).unwrap();
        self.reactor.stop();
    }
}

fn takeover_path() -> Endpoint {
    Endpoint::Path(std::env::temp_dir().join(format!("baton-takeover-{}.sock", std::process::id())))
}

fn ten_takeovers() {
    let endpoint = takeover_path();
    let mut current = Generation::start();
    let listener = current.parent.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = match listener.local_addr() {
        Address::Inet(a) => *a,
        other => panic!("{other:?}"),
    };
    current.parent.offer_takeover(&endpoint, PeerCheck::SameUid).unwrap();
    // Clients keep coming the whole time, a new connection per request.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut pids) = (0u32, Vec::new(), std::collections::HashSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let attempt = std::panic::catch_unwind(|| {
                    let mut c = Client::connect(addr);
                    assert_eq!(c.echo(b"upgrade\n"), b"upgrade\n");
                    c.pid
                });
                match attempt {
                    Ok(pid) => {
                        ok += 1;
                        pids.insert(pid);
                    }
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed, pids)
        })
    };
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        let next = Generation::start();
        let mut takeover = baton_handoff::takeover::take_over(&endpoint, PeerCheck::SameUid, WAIT).expect("take over");
        let fd = takeover.listener("main").expect("the listener, by name");
        let l = next.reactor.adopt_listener(fd, ListenOptions::default(), next.parent.recipient()).unwrap();
        next.parent.attach(l, "main").unwrap();
        takeover.serving(&next.parent, WAIT).expect("released");
        current.parent.taken_over().recv_timeout(WAIT).expect("the old parent hears it was taken over");
        next.parent.offer_takeover(&endpoint, PeerCheck::SameUid).unwrap();
        current.stop();
        current = next;
        eprintln!("takeover {} done", round + 1);
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, pids) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests of {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(pids.len() >= 11, "every generation's worker served some requests: {} workers seen", pids.len());
    current.stop();
    if let Endpoint::Path(p) = &endpoint {
        assert!(!p.exists());
    }
}

fn takeover_rollback() {
    let endpoint = takeover_path();
    let current = Generation::start();
    let listener = current.parent.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
    let addr = match listener.local_addr() {
        Address::Inet(a) => *a,
        other => panic!("{other:?}"),
    };
    current.parent.offer_takeover(&endpoint, PeerCheck::SameUid).unwrap();
    {
        let mut takeover = baton_handoff::takeover::take_over(&endpoint, PeerCheck::SameUid, WAIT).expect("take over");
        assert!(takeover.listener("main").is_some());
        // The successor dies here, before confirming: its copy of the listener and the control
        // connection close with it.
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut c = Client::connect(addr);
    assert_eq!(c.echo(b"still the old parent\n"), b"still the old parent\n");
    assert!(current.parent.taken_over().try_recv().is_err());
    // Nothing to roll back: it never served.
    assert!(current.parent.rolled_back().try_recv().is_err());
    // And a later successor can still take over.
    let mut again = baton_handoff::takeover::take_over(&endpoint, PeerCheck::SameUid, WAIT).expect("second try");
    assert!(again.listener("main").is_some());
    drop(again);
    drop(c);
    current.stop();
}

/// Starts this binary as a worker that connects by name, serves through it, drains it.
fn bootstrap_by_name(endpoint: Endpoint, env: (&str, std::ffi::OsString)) {
    let s = start(0, |b| b);
    s.parent.accept_workers(&endpoint, PeerCheck::SameUid).expect("channel listener");
    if let Endpoint::Path(p) = &endpoint {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "socket file is private from the start");
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn worker");
    wait_until("the connected worker is ready", || {
        s.parent.stats().is_ok_and(|st| st.workers.len() == 1 && st.workers[0].ready)
    });
    let mut c = Client::connect(s.addr);
    assert_eq!(c.pid, child.id());
    assert_eq!(c.echo(b"by name\n"), b"by name\n");
    drop(c);
    let report = s.parent.drain(Duration::from_secs(5)).expect("drain");
    assert_eq!(report.killed, 0);
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the connected worker must exit on drain");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.parent.stop();
    s.runtime.shutdown(Duration::from_secs(5)).unwrap();
    s.reactor.stop();
    if let Endpoint::Path(p) = &endpoint {
        assert!(!p.exists(), "socket file removed on exit");
    }
}

fn bootstrap_by_path() {
    let path = std::env::temp_dir().join(format!("baton-test-{}.sock", std::process::id()));
    bootstrap_by_name(Endpoint::Path(path.clone()), (baton_handoff::bootstrap::ENV_PATH, path.into()));
}

fn bootstrap_by_abstract_name() {
    let name = format!("baton-test-{}", std::process::id());
    bootstrap_by_name(
        Endpoint::Abstract(name.clone().into_bytes()),
        (baton_handoff::bootstrap::ENV_ABSTRACT, name.into()),
    );
}
