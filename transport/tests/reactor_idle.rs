//! The reactor stays idle when it has nothing to do. Alone in its own test binary: it measures
//! the whole process's CPU time, which other tests running in parallel would add to.

mod common;
use common::Collect;

use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use baton_runtime::{Mailbox, Runtime};
use baton_transport::*;
use crossbeam_channel::{unbounded, Receiver};

const WAIT: Duration = Duration::from_secs(20);

fn next(rx: &Receiver<ConnEvent>) -> ConnEvent {
    rx.recv_timeout(WAIT).expect("no event")
}

/// A connection adopted from a fresh loopback pair, owned by a `Collect`.
fn pair(rt: &Runtime, reactor: &Reactor) -> (Connection, TcpStream, Receiver<ConnEvent>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let (tx, rx) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    (conn, client, rx)
}

/// CPU time this process has used (user + system), from `/proc/self/stat` (clock ticks of
/// 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn a_reset_after_end_of_input_does_not_make_the_reactor_spin() {
    // Connections register level-triggered; the kernel reports errors and hang-ups whatever the
    // interest, so a connection that wants nothing must not stay registered for them, or every
    // wait would return at once.
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (conn, client, events) = pair(&rt, &reactor);
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(next(&events), ConnEvent::ReadClosed(conn.id()));
    // The peer now resets: the socket is in error, and this connection wants nothing.
    rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO)).unwrap();
    drop(client);
    std::thread::sleep(Duration::from_millis(50));
    let before = cpu_time();
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_time() - before;
    assert!(used < Duration::from_millis(200), "the reactor used {used:?} of CPU in 500 ms while idle");
    // The error surfaces at the next write.
    let _ = conn.write(b"late");
    assert!(matches!(next(&events), ConnEvent::Closed(_, CloseReason::Error(_))));
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}
