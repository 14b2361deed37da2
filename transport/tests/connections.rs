//! Connections through the public API: echo at scale, half-close both ways, abort, exactly one
//! Closed, backpressure at the high-water mark, detach and adopt with unread bytes.

mod common;
use common::Collect;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use baton_runtime::{Actor, Addr, Context, Mailbox, Runtime};
use baton_transport::*;
use crossbeam_channel::{unbounded, Receiver, Sender};

const WAIT: Duration = Duration::from_secs(20);

/// Adopts every accepted socket and echoes its bytes back; reports every Closed.
struct Echo {
    reactor: Reactor,
    /// Spawn the relays on the reactor's event loop rather than the pool.
    on_loop: bool,
    me: Option<Addr<Echo>>,
    conns: std::collections::HashMap<ConnId, Connection>,
    closed: Sender<(ConnId, CloseReason)>,
}

enum EchoMsg {
    Accepted(Accepted),
    Conn(ConnEvent),
}

impl From<Accepted> for EchoMsg {
    fn from(a: Accepted) -> Self {
        EchoMsg::Accepted(a)
    }
}

/// Forwards connection events into the echo actor's own message type.
struct Relay(Addr<Echo>);
impl Actor for Relay {
    type Message = ConnEvent;
    fn handle(&mut self, _ctx: &mut Context<Self>, ev: ConnEvent) {
        let _ = self.0.send(EchoMsg::Conn(ev));
    }
}

impl Actor for Echo {
    type Message = EchoMsg;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
    }
    fn handle(&mut self, ctx: &mut Context<Self>, msg: EchoMsg) {
        match msg {
            EchoMsg::Accepted(acc) => {
                let relay = Relay(self.me.clone().unwrap());
                let relay = if self.on_loop {
                    ctx.spawn_on(self.reactor.event_loop(), relay, Mailbox::Unbounded).unwrap()
                } else {
                    ctx.spawn(relay, Mailbox::Unbounded).unwrap()
                };
                let conn = self.reactor.adopt(acc.stream, ConnOptions::default(), relay.recipient()).unwrap();
                self.conns.insert(conn.id(), conn);
            }
            EchoMsg::Conn(ConnEvent::Data(id, bytes)) => {
                if let Some(c) = self.conns.get(&id) {
                    c.write(&bytes).unwrap();
                }
            }
            EchoMsg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some(c) = self.conns.get(&id) {
                    c.close();
                }
            }
            EchoMsg::Conn(ConnEvent::Closed(id, reason)) => {
                self.conns.remove(&id);
                self.closed.send((id, reason)).unwrap();
            }
            EchoMsg::Conn(_) => {}
        }
    }
}

/// An echo server whose actors run on the pool, or (`on_loop`) all on the reactor's loop.
fn echo_server(rt: &Runtime, reactor: &Reactor, on_loop: bool) -> (SocketAddr, Receiver<(ConnId, CloseReason)>) {
    let (tx, closed) = unbounded();
    let echo = Echo { reactor: reactor.clone(), on_loop, me: None, conns: Default::default(), closed: tx };
    let echo = if on_loop {
        rt.spawn_on(reactor.event_loop(), echo, Mailbox::Unbounded).unwrap()
    } else {
        rt.try_spawn(echo, Mailbox::Unbounded).unwrap()
    };
    let l = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), echo.recipient()).unwrap();
    let Address::Inet(addr) = *l.local_addr() else { unreachable!() };
    (addr, closed)
}

#[test]
fn echo_with_a_thousand_concurrent_connections_returns_every_byte_in_order() {
    echo_a_thousand(false);
}

#[test]
fn echo_with_every_actor_on_the_reactor_event_loop_returns_every_byte_in_order() {
    echo_a_thousand(true);
}

fn echo_a_thousand(on_loop: bool) {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (addr, closed) = echo_server(&rt, &reactor, on_loop);
    let mut clients: Vec<TcpStream> = (0..1000).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let msg = format!("hello {i:05} ").repeat(20);
        c.write_all(msg.as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let expected = format!("hello {i:05} ").repeat(20);
        let mut got = vec![0u8; expected.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, expected.as_bytes());
        c.shutdown(Shutdown::Write).unwrap();
    }
    for _ in 0..clients.len() {
        let (_, reason) = closed.recv_timeout(WAIT).expect("a Closed is missing");
        assert_eq!(reason, CloseReason::Closed);
    }
    assert!(closed.recv_timeout(Duration::from_millis(100)).is_err(), "a Closed came twice");
    for c in &mut clients {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

fn pair(rt: &Runtime, reactor: &Reactor, opts: ConnOptions) -> (Connection, TcpStream, Receiver<ConnEvent>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let (tx, rx) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let conn = reactor.adopt(Stream::Tcp(server), opts, owner.recipient()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    (conn, client, rx)
}

fn next(rx: &Receiver<ConnEvent>) -> ConnEvent {
    rx.recv_timeout(WAIT).expect("no event")
}

#[test]
fn half_close_both_ways_and_closed_exactly_once() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (conn, mut client, events) = pair(&rt, &reactor, ConnOptions::default());
    let id = conn.id();
    // The peer half-closes: we see its data, then ReadClosed, and can still write.
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    loop {
        match next(&events) {
            ConnEvent::Data(_, b) => got.extend(b),
            ConnEvent::ReadClosed(i) => {
                assert_eq!(i, id);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, b"last words");
    conn.write(b"reply after your EOF").unwrap();
    // We half-close: the peer reads our bytes then EOF; both directions done means Closed.
    conn.shutdown_write();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"reply after your EOF");
    assert_eq!(next(&events), ConnEvent::Closed(id, CloseReason::Closed));
    assert!(events.recv_timeout(Duration::from_millis(100)).is_err(), "more than one Closed");
    assert_eq!(conn.write(b"x"), Err(WriteError::Closed));
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn abort_sends_a_reset() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (conn, mut client, events) = pair(&rt, &reactor, ConnOptions::default());
    conn.abort();
    assert_eq!(next(&events), ConnEvent::Closed(conn.id(), CloseReason::Aborted));
    let mut b = [0u8; 8];
    match client.read(&mut b) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    conn.abort(); // again: no second Closed
    assert!(events.recv_timeout(Duration::from_millis(100)).is_err());
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_slow_reader_pauses_the_writer_at_the_high_water_mark_with_bounded_memory() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let opts = ConnOptions { high_water: 64 * 1024, low_water: 16 * 1024, ..ConnOptions::default() };
    let (conn, mut client, events) = pair(&rt, &reactor, opts);
    let chunk = vec![7u8; 16 * 1024];
    let mut written = 0usize;
    // A producer that ignores HighWater (the peer reads nothing yet) is refused before memory
    // grows without bound.
    loop {
        match conn.write(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(WriteError::BufferFull) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(written < 64 * 1024 * 1024, "no BufferFull after 64 MiB");
    }
    assert!(conn.buffered() > opts.high_water);
    assert!(conn.buffered() <= 4 * opts.high_water);
    assert_eq!(next(&events), ConnEvent::HighWater(conn.id()), "HighWater is sent once");
    // The reader catches up: LowWater, and every byte arrives.
    let mut got = vec![0u8; written];
    client.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 7));
    assert_eq!(next(&events), ConnEvent::LowWater(conn.id()));
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn detach_then_adopt_in_another_reactor_keeps_unread_bytes_in_order() {
    let rt = Runtime::new();
    let first = Reactor::start().unwrap();
    let second = Reactor::start().unwrap();
    // The first owner has a mailbox of one and is never drained while we fill it, so bytes
    // pile up as undelivered events inside the connection.
    let (hold_tx, hold) = unbounded::<()>();
    struct Stuck(Option<Receiver<()>>);
    impl Actor for Stuck {
        type Message = ConnEvent;
        fn handle(&mut self, _ctx: &mut Context<Self>, _ev: ConnEvent) {
            if let Some(hold) = self.0.take() {
                let _ = hold.recv_timeout(WAIT);
            }
        }
    }
    let stuck = rt.try_spawn(Stuck(Some(hold)), Mailbox::Bounded(1)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let conn = first
        .adopt(Stream::Tcp(server), ConnOptions { read_size: 4, ..Default::default() }, stuck.recipient())
        .unwrap();
    for i in 0..10u8 {
        client.write_all(&[b'a' + i; 4]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let detached = conn.detach().unwrap();
    hold_tx.send(()).unwrap();
    // The first owner took two chunks (one in its handler, one in its mailbox); the chunk it
    // could not take comes back as `unread`; reading had paused, so the rest is still in the
    // socket and the new reactor reads it, in order, before "after".
    let (tx, events) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let adopted = second.adopt(detached.stream, ConnOptions::default(), owner.recipient()).unwrap();
    client.write_all(b"after").unwrap();
    let mut later = Vec::new();
    while !later.ends_with(b"after") {
        match next(&events) {
            ConnEvent::Data(_, b) => later.extend(b),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut all = detached.unread.clone();
    all.extend(&later);
    let total = b"aaaabbbbccccddddeeeeffffgggghhhhiiiijjjjafter";
    assert!(total.ends_with(&all), "unread + later {:?} is not the tail of the stream", String::from_utf8_lossy(&all));
    assert_eq!(detached.unread, b"cccc", "the undelivered chunk travels with the socket");
    assert_eq!(all, &total[8..], "nothing lost or reordered across the move");
    adopted.close();
    first.stop();
    second.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn idle_timeout_closes_quiet_connections_but_not_busy_ones() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let opts = ConnOptions { idle_timeout: Some(Duration::from_millis(150)), ..ConnOptions::default() };
    let (quiet, mut quiet_client, quiet_events) = pair(&rt, &reactor, opts);
    let (busy, mut busy_client, busy_events) = pair(&rt, &reactor, opts);
    assert!(matches!(busy.peer_addr().unwrap(), Address::Inet(a) if a.ip().is_loopback()));
    assert!(matches!(busy.local_addr().unwrap(), Address::Inet(_)));
    busy.set_keepalive(true).unwrap();
    busy.set_nodelay(true).unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(50));
        busy_client.write_all(b"ping").unwrap();
    }
    assert_eq!(next(&quiet_events), ConnEvent::Closed(quiet.id(), CloseReason::IdleTimeout));
    let mut b = [0u8; 1];
    assert_eq!(quiet_client.read(&mut b).unwrap(), 0, "the quiet client sees EOF");
    // The busy one is still open: all its events are data.
    while let Ok(ev) = busy_events.try_recv() {
        assert!(matches!(ev, ConnEvent::Data(..)), "busy connection got {ev:?}");
    }
    busy.write(b"still here").unwrap();
    let mut got = [0u8; 10];
    busy_client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_client_connection_buffers_until_connected_and_reports_refusal() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    // A plain echo peer on a thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let (tx, events) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let conn = reactor.connect_tcp(addr, ConnOptions::default(), owner.recipient()).unwrap();
    conn.write(b"hello").unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        match next(&events) {
            ConnEvent::Data(_, b) => got.extend(b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, b"hello");
    peer.join().unwrap();
    conn.close();

    // Nothing listens on a port we just released: the connection reports the refusal.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (tx, events) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let refused = reactor.connect_tcp(free, ConnOptions::default(), owner.recipient()).unwrap();
    assert_eq!(next(&events), ConnEvent::Closed(refused.id(), CloseReason::Error(ErrorKind::ConnectionRefused)));
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn read_timeout_closes_a_silent_peer_even_while_we_write() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let opts = ConnOptions { read_timeout: Some(Duration::from_millis(150)), ..ConnOptions::default() };
    let (conn, mut client, events) = pair(&rt, &reactor, opts);
    // We keep writing (so the connection is not idle), the peer never sends.
    let mut closed = None;
    for _ in 0..40 {
        if conn.write(b"tick").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        if let Ok(ev) = events.try_recv() {
            closed = Some(ev);
            break;
        }
    }
    let ev = closed.unwrap_or_else(|| next(&events));
    assert_eq!(ev, ConnEvent::Closed(conn.id(), CloseReason::ReadTimeout));
    let mut all = Vec::new();
    client.read_to_end(&mut all).unwrap();
    assert!(all.starts_with(b"tick"));
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn connection_ids_are_never_reused_even_when_the_reactor_reuses_the_slot() {
    // An owner of many connections keys them by id; a late `Closed` for an old connection
    // must not name a new one that took its place in the reactor.
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let (conn, client, rx) = pair(&rt, &reactor, ConnOptions::default());
        assert!(seen.insert(conn.id()), "id {:?} reused", conn.id());
        conn.abort();
        assert!(matches!(next(&rx), ConnEvent::Closed(_, CloseReason::Aborted)));
        drop(client);
        assert_eq!(reactor.sources(), 0, "the slot is free for the next connection");
    }
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn unread_bytes_given_to_adopt_with_arrive_first_and_the_close_hook_runs_once() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.write_all(b"later").unwrap();
    let (tx, rx) = unbounded();
    let sink = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let (hook_tx, hook_rx) = unbounded();
    let conn = reactor
        .adopt_with(
            Stream::Tcp(server),
            b"first-".to_vec(),
            Some(Box::new(move |reason: &CloseReason| hook_tx.send(reason.clone()).unwrap())),
            ConnOptions::default(),
            sink.recipient(),
        )
        .unwrap();
    let mut got = Vec::new();
    while got.len() < b"first-later".len() {
        match next(&rx) {
            ConnEvent::Data(_, bytes) => got.extend(bytes),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, b"first-later");
    conn.close();
    assert_eq!(hook_rx.recv_timeout(WAIT).unwrap(), CloseReason::Closed);
    assert!(matches!(next(&rx), ConnEvent::Closed(_, CloseReason::Closed)));
    assert!(hook_rx.recv_timeout(Duration::from_millis(100)).is_err(), "the hook runs once");
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn owners_on_the_event_loop_still_get_closed_when_the_reactor_stops() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, events) = unbounded();
    let owner = rt.spawn_on(reactor.event_loop(), Collect(tx), Mailbox::Unbounded).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    client.write_all(b"ping").unwrap();
    assert_eq!(next(&events), ConnEvent::Data(conn.id(), b"ping".to_vec()));
    reactor.stop();
    // The reactor thread is gone; the owner's last turn runs on the pool.
    assert_eq!(next(&events), ConnEvent::Closed(conn.id(), CloseReason::Closed));
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

enum CloserMsg {
    Hold(Listener),
    Accepted(Accepted),
}

impl From<Accepted> for CloserMsg {
    fn from(a: Accepted) -> Self {
        CloserMsg::Accepted(a)
    }
}

/// Holds its listener; on the first connection, closes it and waits for the close, on the
/// reactor thread (it lives on the reactor's loop), then reports whether a new connection is
/// refused at once, as `close_and_wait` promises.
struct Closer(Option<Listener>, Sender<bool>);
impl Actor for Closer {
    type Message = CloserMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: CloserMsg) {
        match msg {
            CloserMsg::Hold(l) => self.0 = Some(l),
            CloserMsg::Accepted(acc) => {
                drop(acc);
                if let Some(l) = self.0.take() {
                    let Address::Inet(addr) = *l.local_addr() else { unreachable!() };
                    l.close_and_wait();
                    self.1.send(TcpStream::connect(addr).is_err()).unwrap();
                }
            }
        }
    }
}

#[test]
fn close_and_wait_from_an_actor_on_the_reactor_thread_does_not_deadlock() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, done) = unbounded();
    let closer = rt.spawn_on(reactor.event_loop(), Closer(None, tx), Mailbox::Unbounded).unwrap();
    let l = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), closer.recipient()).unwrap();
    let Address::Inet(addr) = *l.local_addr() else { unreachable!() };
    closer.send(CloserMsg::Hold(l)).unwrap();
    let _client = TcpStream::connect(addr).unwrap();
    let refused = done.recv_timeout(WAIT).expect("close_and_wait on the reactor thread hung");
    assert!(refused, "close_and_wait returned before the listener was closed");
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_graceful_close_reaches_the_peer_while_another_descriptor_still_holds_the_socket() {
    // A handoff parent keeps its copy of a socket until the worker's ADOPTED arrives; only the
    // last close of a descriptor sends FIN, so the worker's close must not wait for it.
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (server, _) = listener.accept().unwrap();
    let other_holder = server.try_clone().unwrap();
    let (tx, events) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    conn.write(b"bye").unwrap();
    conn.close();
    assert_eq!(next(&events), ConnEvent::Closed(conn.id(), CloseReason::Closed));
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("end of file while the other descriptor is open");
    assert_eq!(got, b"bye");
    drop(other_holder);
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn idle_timeouts_fire_in_order_after_thousands_of_closed_connections_left_theirs_behind() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let long = ConnOptions { idle_timeout: Some(Duration::from_secs(60)), ..ConnOptions::default() };
    let (tx, _events) = unbounded();
    let owner = rt.try_spawn(Collect(tx), Mailbox::Unbounded).unwrap();
    // Each of these leaves a 60 s deadline behind when it closes.
    for _ in 0..3000 {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = reactor.adopt(Stream::Unix(a), long, owner.recipient()).unwrap();
        conn.abort();
    }
    let short = ConnOptions { idle_timeout: Some(Duration::from_millis(100)), ..ConnOptions::default() };
    let (quiet, _client, quiet_events) = pair(&rt, &reactor, short);
    assert_eq!(next(&quiet_events), ConnEvent::Closed(quiet.id(), CloseReason::IdleTimeout));
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn closed_waits_for_room_in_a_full_mailbox_and_is_never_lost() {
    // The owner holds its first event, so the second fills its mailbox of one; the abort's
    // Closed then finds no room, waits for it, and still comes last, once.
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (hold_tx, hold) = unbounded::<()>();
    let (tx, events) = unbounded();
    struct HeldCollect(Option<Receiver<()>>, Sender<ConnEvent>);
    impl Actor for HeldCollect {
        type Message = ConnEvent;
        fn handle(&mut self, _ctx: &mut Context<Self>, ev: ConnEvent) {
            if let Some(hold) = self.0.take() {
                let _ = hold.recv_timeout(WAIT);
            }
            let _ = self.1.send(ev);
        }
    }
    let owner = rt.try_spawn(HeldCollect(Some(hold), tx), Mailbox::Bounded(1)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let before = reactor.sources();
    let conn = reactor.adopt(Stream::Tcp(server), ConnOptions::default(), owner.recipient()).unwrap();
    client.write_all(b"one").unwrap();
    std::thread::sleep(Duration::from_millis(50)); // in the held handler
    client.write_all(b"two").unwrap();
    std::thread::sleep(Duration::from_millis(50)); // in the mailbox, which is now full
    conn.abort();
    hold_tx.send(()).unwrap();
    let mut got = Vec::new();
    loop {
        match next(&events) {
            ConnEvent::Data(_, b) => got.extend(b),
            ConnEvent::Closed(id, reason) => {
                assert_eq!((id, reason), (conn.id(), CloseReason::Aborted));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, b"onetwo", "the events before the close arrive before it");
    assert!(events.recv_timeout(Duration::from_millis(100)).is_err(), "more than one Closed");
    let deadline = std::time::Instant::now() + WAIT;
    while reactor.sources() != before {
        assert!(std::time::Instant::now() < deadline, "the closed connection stayed in the reactor");
        std::thread::sleep(Duration::from_millis(5));
    }
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_conn_id_displays_as_conn_and_its_number_and_events_carry_it() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (first, _c1, _e1) = pair(&rt, &reactor, ConnOptions::default());
    let (second, mut client, events) = pair(&rt, &reactor, ConnOptions::default());
    let shown = second.id().to_string();
    let _: u64 = shown.strip_prefix("conn#").expect("conn#N").parse().expect("a number");
    assert_ne!(first.id().to_string(), shown, "two connections, two ids");
    client.write_all(b"x").unwrap();
    match next(&events) {
        ConnEvent::Data(id, _) => assert_eq!(format!("{id}"), shown),
        other => panic!("unexpected {other:?}"),
    }
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

/// Adopting leaves a socket's file status flags alone (every send and receive says
/// `MSG_DONTWAIT`): a blocking socket read to the end of what waits, or a peer that reads
/// nothing while megabytes wait to be written, must not hold the reactor, and a detached
/// socket leaves non-blocking as `Detached` promises.
#[test]
fn a_blocking_socket_adopted_never_holds_the_reactor_and_is_detached_non_blocking() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    // `pair` adopts what a std listener accepted: a blocking socket. Reads of one byte: the
    // reactor reads again after a full read, and that read finds nothing.
    let (drained, mut drained_client, drained_events) =
        pair(&rt, &reactor, ConnOptions { read_size: 1, ..Default::default() });
    drained_client.write_all(b"x").unwrap();
    assert_eq!(next(&drained_events), ConnEvent::Data(drained.id(), b"x".to_vec()));
    let (stuffed, _stuffed_client, _stuffed_events) =
        pair(&rt, &reactor, ConnOptions { high_water: 64 << 20, ..Default::default() });
    // More than the kernel's buffers on both ends hold: the rest waits in the connection, and
    // the write returns at once (on a thread of its own, so that a write that blocks fails
    // this test rather than hanging it).
    let (wrote, written) = unbounded();
    let writer = stuffed.clone();
    std::thread::spawn(move || wrote.send(writer.write(&vec![b'x'; 16 << 20])));
    written.recv_timeout(WAIT).expect("a write to a peer that reads nothing returns at once").unwrap();
    let (conn, mut client, events) = pair(&rt, &reactor, ConnOptions::default());
    for round in 0..3u8 {
        client.write_all(&[round]).unwrap();
        assert_eq!(next(&events), ConnEvent::Data(conn.id(), vec![round]), "the reactor is not held");
    }
    let detached = drained.detach().unwrap();
    let flags = rustix::fs::fcntl_getfl(&detached.stream).unwrap();
    assert!(flags.contains(rustix::fs::OFlags::NONBLOCK), "detached non-blocking: {flags:?}");
    stuffed.close();
    conn.close();
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}
