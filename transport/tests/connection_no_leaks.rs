//! No descriptor leaks in any of a connection's ways to end: after each one the process's
//! descriptor count is back at its baseline. Alone in this binary (one test), so other tests'
//! sockets do not blur the count.

mod common;
use common::Collect;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{Actor, Context, Mailbox, Runtime};
use baton_transport::*;
use crossbeam_channel::{unbounded, Receiver};

const WAIT: Duration = Duration::from_secs(10);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (bounded) for the descriptor count to come back to `baseline`.
fn back_to(baseline: usize, after: &str) {
    let deadline = Instant::now() + WAIT;
    while open_fds() > baseline {
        assert!(Instant::now() < deadline, "descriptors leaked after {after}: {} > {baseline}", open_fds());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn closed(rx: &Receiver<ConnEvent>) -> CloseReason {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline).expect("no Closed") {
            ConnEvent::Closed(_, reason) => return reason,
            _ => continue,
        }
    }
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    (client, server)
}

#[test]
fn every_way_a_connection_ends_returns_the_descriptor_count_to_baseline() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let other = Reactor::start().unwrap();
    let (tx, rx) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let baseline = open_fds();

    // Closed by us after writing.
    let (mut client, server) = tcp_pair();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    conn.write(b"bye").unwrap();
    conn.close();
    assert_eq!(closed(&rx), CloseReason::Closed);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    drop((client, conn));
    back_to(baseline, "close");

    // Aborted.
    let (client, server) = tcp_pair();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    conn.abort();
    assert_eq!(closed(&rx), CloseReason::Aborted);
    drop((client, conn));
    back_to(baseline, "abort");

    // Half-closed both ways.
    let (client, server) = tcp_pair();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    conn.shutdown_write();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(closed(&rx), CloseReason::Closed);
    drop((client, conn));
    back_to(baseline, "half-close both ways");

    // The peer resets.
    let (client, server) = tcp_pair();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO)).unwrap();
    drop(client);
    assert!(matches!(closed(&rx), CloseReason::Error(_) | CloseReason::Closed));
    drop(conn);
    back_to(baseline, "peer reset");

    // Idle timeout.
    let (client, server) = tcp_pair();
    let options = ConnOptions { idle_timeout: Some(Duration::from_millis(50)), ..ConnOptions::default() };
    let conn = reactor.adopt(Stream::Tcp(server), options, owner.recipient()).unwrap();
    assert_eq!(closed(&rx), CloseReason::IdleTimeout);
    drop((client, conn));
    back_to(baseline, "idle timeout");

    // Detached, adopted by another reactor with its unread bytes, closed there.
    let (mut client, server) = tcp_pair();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    conn.pause_reading();
    client.write_all(b"moved").unwrap();
    let detached = conn.detach().unwrap();
    assert_eq!(closed(&rx), CloseReason::Detached);
    let moved =
        other.adopt_with(detached.stream, detached.unread, None, ConnOptions::default(), owner.recipient()).unwrap();
    moved.close();
    assert_eq!(closed(&rx), CloseReason::Closed);
    drop((client, conn, moved));
    back_to(baseline, "detach and adopt");

    // A refused connect.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let conn = reactor.connect_tcp(port, ConnOptions::default(), owner.recipient()).unwrap();
    assert!(matches!(closed(&rx), CloseReason::Error(_)));
    drop(conn);
    back_to(baseline, "refused connect");

    // A watch, closed.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let watched = Arc::new(a);
    let watch = reactor.watch(watched.clone(), Interest::READ, rt.spawn(Ignore).recipient()).unwrap();
    watch.close();
    drop((watch, watched, b));
    back_to(baseline, "watch");

    reactor.stop();
    other.stop();
    rt.shutdown(WAIT).unwrap();
}

struct Ignore;
impl Actor for Ignore {
    type Message = Readiness;
    fn handle(&mut self, _ctx: &mut Context<Self>, _r: Readiness) {}
}
