//! `ConnOptions::read_first`: a socket adopted on the reactor thread is read at once and
//! registered with the poller only after the owner's turns, if it is still open. What must hold:
//! bytes already waiting arrive first, later bytes and the end of input still arrive (the
//! registration did happen), a socket with nothing waiting is served as usual, and a connection
//! answered and closed in the turn that read it leaves no descriptor and no source behind.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton_runtime::{Actor, Context, Mailbox, Recipient, Runtime};
use baton_transport::*;
use crossbeam_channel::{unbounded, Receiver, Sender};

const WAIT: Duration = Duration::from_secs(10);

/// The tests count this process's descriptors: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

enum Msg {
    Adopt(TcpStream),
    /// Adopt for another actor, pause reading at once, and hand the connection back.
    AdoptPausedFor(TcpStream, Recipient<ConnEvent>, Sender<Connection>),
    Event(ConnEvent),
}
baton_runtime::from_variants!(Msg::Event(ConnEvent));

/// Adopts each socket it is given with `read_first`, on the reactor's event loop, and reports
/// every event. With `answer_and_close`, answers the first bytes and closes in the same turn.
struct Adopter {
    reactor: Reactor,
    events: Sender<ConnEvent>,
    /// Messages waiting in the adopter's own mailbox when `adopt` returned.
    queued_at_adoption: Sender<usize>,
    conns: Vec<Connection>,
    answer_and_close: bool,
}

impl Actor for Adopter {
    type Message = Msg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            Msg::Adopt(stream) => {
                let options = ConnOptions { read_first: true, ..ConnOptions::default() };
                let conn = self.reactor.adopt(Stream::Tcp(stream), options, ctx.address()).expect("adopting");
                let _ = self.queued_at_adoption.send(ctx.address().mailbox_len());
                self.conns.push(conn);
            }
            Msg::AdoptPausedFor(stream, owner, back) => {
                let options = ConnOptions { read_first: true, ..ConnOptions::default() };
                let conn = self.reactor.adopt(Stream::Tcp(stream), options, owner).expect("adopting");
                conn.pause_reading();
                back.send(conn).unwrap();
            }
            Msg::Event(ev) => {
                if let ConnEvent::Data(id, _) = &ev {
                    if self.answer_and_close {
                        let conn = self.conns.iter().find(|c| c.id() == *id).expect("adopted before its data");
                        conn.write(b"bye").unwrap();
                        conn.close();
                    }
                }
                if let ConnEvent::Closed(id, _) = &ev {
                    self.conns.retain(|c| c.id() != *id);
                }
                let _ = self.events.send(ev);
            }
        }
    }
}

struct Fixture {
    rt: Runtime,
    reactor: Reactor,
    adopter: baton_runtime::Addr<Adopter>,
    events: Receiver<ConnEvent>,
    queued_at_adoption: Receiver<usize>,
    listener: TcpListener,
}

fn fixture(answer_and_close: bool) -> Fixture {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, events) = unbounded();
    let (queued_tx, queued_at_adoption) = unbounded();
    let adopter = Adopter {
        reactor: reactor.clone(),
        events: tx,
        queued_at_adoption: queued_tx,
        conns: Vec::new(),
        answer_and_close,
    };
    let adopter = rt.spawn_on(reactor.event_loop(), adopter, Mailbox::Unbounded).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    Fixture { rt, reactor, adopter, events, queued_at_adoption, listener }
}

impl Fixture {
    /// A connected pair: (the client, the server side not yet adopted).
    fn pair(&self) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let (server, _) = self.listener.accept().unwrap();
        (client, server)
    }

    fn next(&self) -> ConnEvent {
        self.events.recv_timeout(WAIT).expect("an event")
    }

    fn stop(self) {
        self.reactor.stop();
        self.rt.shutdown(Duration::from_secs(5)).unwrap();
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn waiting_bytes_arrive_first_then_later_bytes_and_the_end_of_input() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture(false);
    let (mut client, server) = f.pair();
    client.write_all(b"early").unwrap();
    // Let the bytes reach the server's socket before it is adopted.
    std::thread::sleep(Duration::from_millis(20));
    f.adopter.send(Msg::Adopt(server)).unwrap();
    assert_eq!(
        f.queued_at_adoption.recv_timeout(WAIT).unwrap(),
        1,
        "the waiting bytes were read at adoption, before the poller was involved"
    );
    let ConnEvent::Data(id, bytes) = f.next() else { panic!("expected the waiting bytes first") };
    assert_eq!(bytes, b"early");
    // Only a registration (made after the adopting turn) can deliver these.
    client.write_all(b"late").unwrap();
    let ConnEvent::Data(_, bytes) = f.next() else { panic!("later bytes were not delivered") };
    assert_eq!(bytes, b"late");
    client.shutdown(Shutdown::Write).unwrap();
    assert!(matches!(f.next(), ConnEvent::ReadClosed(i) if i == id));
    drop(client);
    f.stop();
}

#[test]
fn a_socket_with_nothing_waiting_is_registered_at_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture(false);
    let (mut client, server) = f.pair();
    f.adopter.send(Msg::Adopt(server)).unwrap();
    assert_eq!(f.queued_at_adoption.recv_timeout(WAIT).unwrap(), 0, "nothing was waiting to be read");
    client.write_all(b"hello").unwrap();
    let ConnEvent::Data(_, bytes) = f.next() else { panic!("bytes sent after adoption were not delivered") };
    assert_eq!(bytes, b"hello");
    f.stop();
}

#[test]
fn connections_answered_and_closed_in_the_turn_that_read_them_leave_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture(true);
    let baseline = open_fds();
    for round in 0..200 {
        let (mut client, server) = f.pair();
        client.write_all(b"hi").unwrap();
        std::thread::sleep(Duration::from_micros(200));
        f.adopter.send(Msg::Adopt(server)).unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(answer, b"bye", "round {round}: the answer, then the end of the connection");
        assert!(matches!(f.next(), ConnEvent::Data(..)));
        assert!(matches!(f.next(), ConnEvent::Closed(_, CloseReason::Closed)));
    }
    // A peer that resets before its socket is adopted: the first read reports it.
    let (client, server) = f.pair();
    rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO)).unwrap();
    drop(client);
    std::thread::sleep(Duration::from_millis(20));
    f.adopter.send(Msg::Adopt(server)).unwrap();
    loop {
        match f.next() {
            ConnEvent::Closed(_, reason) => {
                assert_ne!(reason, CloseReason::Closed, "a reset is an error, not a close");
                break;
            }
            ConnEvent::ReadClosed(_) | ConnEvent::Data(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let deadline = Instant::now() + WAIT;
    while (open_fds() > baseline || f.reactor.sources() > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(open_fds(), baseline, "a descriptor was left open");
    assert_eq!(f.reactor.sources(), 0, "a source was left in the reactor");
    f.stop();
}

/// Forwards one connection's events to the test.
struct Forward(Sender<ConnEvent>);
impl Actor for Forward {
    type Message = ConnEvent;
    fn handle(&mut self, _ctx: &mut Context<Self>, ev: ConnEvent) {
        let _ = self.0.send(ev);
    }
}

#[test]
fn a_socket_adopted_for_another_actor_is_not_read_before_the_adopter_can_pause_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture(false);
    let (tx, events) = unbounded();
    let owner = f.rt.try_spawn(Forward(tx), Mailbox::Unbounded).unwrap();
    let (mut client, server) = f.pair();
    client.write_all(b"early").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let (back, conn) = unbounded();
    f.adopter.send(Msg::AdoptPausedFor(server, owner.recipient(), back)).unwrap();
    let conn = conn.recv_timeout(WAIT).expect("the connection");
    assert!(
        events.recv_timeout(Duration::from_millis(200)).is_err(),
        "read at adoption although the owner was another actor, and paused"
    );
    conn.resume_reading();
    let ConnEvent::Data(_, bytes) = events.recv_timeout(WAIT).expect("Data after resume") else {
        panic!("expected the waiting bytes")
    };
    assert_eq!(bytes, b"early");
    f.stop();
}

/// Accepts and gives each connection an actor of its own on the reactor's loop: the actor
/// adopts its socket in its first turn, answers the first bytes, and closes. With
/// `in_started`, the actor is spawned holding its socket and adopts it in `started` (the HTTP
/// example's shape); else the socket comes as its first message.
struct Spawner {
    reactor: Reactor,
    in_started: bool,
}

impl Actor for Spawner {
    type Message = Accepted;
    fn handle(&mut self, ctx: &mut Context<Self>, acc: Accepted) {
        let (stream, first) = if self.in_started { (Some(acc.stream), None) } else { (None, Some(acc.stream)) };
        let conn = OneShot { reactor: self.reactor.clone(), conn: None, stream };
        let conn = ctx.spawn_on(self.reactor.event_loop(), conn, Mailbox::Bounded(8)).unwrap();
        if let Some(stream) = first {
            let _ = conn.try_send(OneShotMsg::Adopt(stream));
        }
    }
}

enum OneShotMsg {
    Adopt(Stream),
    Event(ConnEvent),
}
baton_runtime::from_variants!(OneShotMsg::Event(ConnEvent));

struct OneShot {
    reactor: Reactor,
    conn: Option<Connection>,
    /// The socket it adopts in `started`, when it was spawned with one.
    stream: Option<Stream>,
}

impl OneShot {
    fn adopt(&mut self, ctx: &mut Context<Self>, stream: Stream) {
        match self.reactor.adopt(stream, ConnOptions::default(), ctx.address()) {
            Ok(conn) => self.conn = Some(conn),
            Err(_) => ctx.stop(),
        }
    }
}

impl Actor for OneShot {
    type Message = OneShotMsg;
    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(stream) = self.stream.take() {
            self.adopt(ctx, stream);
        }
    }
    fn handle(&mut self, ctx: &mut Context<Self>, msg: OneShotMsg) {
        match msg {
            OneShotMsg::Adopt(stream) => self.adopt(ctx, stream),
            OneShotMsg::Event(ConnEvent::Data(..)) => {
                if let Some(conn) = self.conn.as_ref() {
                    let _ = conn.write(b"bye");
                    conn.close();
                }
            }
            OneShotMsg::Event(ConnEvent::Closed(..)) => ctx.stop(),
            OneShotMsg::Event(_) => {}
        }
    }
}

#[test]
fn many_short_connections_each_with_an_actor_of_its_own_are_all_answered() {
    // Guards the deferred registration against slab keys reused within one pass: a closed
    // connection's late arm once removed the source that had taken its key, and that client
    // waited forever.
    // Both ways of giving the actor its socket: as its first message, and held for `started`.
    for in_started in [false, true] {
        short_connections_each_with_an_actor_of_its_own(in_started);
    }
}

fn short_connections_each_with_an_actor_of_its_own(in_started: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let spawner = Spawner { reactor: reactor.clone(), in_started };
    let spawner = rt.spawn_on(reactor.event_loop(), spawner, Mailbox::DEFAULT).unwrap();
    let listener =
        reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), spawner.recipient()).unwrap();
    let Address::Inet(addr) = *listener.local_addr() else { unreachable!() };
    let clients: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..150 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    if (t + i) % 3 == 0 {
                        std::thread::sleep(Duration::from_micros(100)); // sometimes after adoption
                    }
                    s.write_all(b"hi").unwrap();
                    let mut answer = Vec::new();
                    s.read_to_end(&mut answer).unwrap_or_else(|e| {
                        panic!("client {t}, connection {i} (adopted in started: {in_started}): {e}")
                    });
                    assert_eq!(answer, b"bye");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client was not answered");
    }
    reactor.stop();
    rt.shutdown(Duration::from_secs(5)).unwrap();
}
