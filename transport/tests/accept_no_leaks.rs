//! Accepted sockets reach the owner with their addresses, and the process's descriptor count
//! returns to its baseline (alone in this binary, so other tests' sockets do not blur the count).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use baton_runtime::{Actor, Context, Runtime};
use baton_transport::*;
use crossbeam_channel::{unbounded, Receiver, Sender};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

const WAIT: Duration = Duration::from_secs(5);

/// Greets each accepted client with one byte and reports what it saw.
struct Greeter {
    seen: Sender<(Address, ListenerId)>,
    hold: Option<Receiver<()>>,
}

impl Actor for Greeter {
    type Message = Accepted;
    fn handle(&mut self, _ctx: &mut Context<Self>, acc: Accepted) {
        if let Some(hold) = self.hold.take() {
            let _ = hold.recv_timeout(WAIT);
        }
        match acc.stream {
            Stream::Tcp(mut s) => {
                let _ = s.write_all(b"!");
            }
            Stream::Unix(mut s) => {
                let _ = s.write_all(b"!");
            }
        }
        self.seen.send((acc.peer, acc.listener)).unwrap();
    }
}

fn greeted(mut s: impl Read) {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("no greeting");
    assert_eq!(&b, b"!");
}

fn local_inet(l: &Listener) -> SocketAddr {
    match l.local_addr() {
        Address::Inet(a) => *a,
        other => panic!("not inet: {other:?}"),
    }
}

#[test]
fn accepted_connections_reach_the_owner_with_their_addresses() {
    let baseline = open_fds();
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, seen) = unbounded();
    let owner = rt.spawn(Greeter { seen: tx, hold: None });
    let v4 = reactor
        .listen_tcp(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            owner.recipient(),
        )
        .unwrap();
    let addr = local_inet(&v4);
    assert_ne!(addr.port(), 0);
    let mut clients = Vec::new();
    for _ in 0..200 {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        clients.push(c);
    }
    for c in &clients {
        greeted(c);
    }
    for c in &clients {
        let (peer, id) = seen.recv_timeout(WAIT).unwrap();
        assert_eq!(id, v4.id());
        assert!(matches!(peer, Address::Inet(a) if a.ip().is_loopback()));
        let _ = c;
    }
    // IPv6, where the machine has it.
    if let Ok(v6) = reactor.listen_tcp("[::1]:0".parse().unwrap(), ListenOptions::default(), owner.recipient()) {
        let c = TcpStream::connect(local_inet(&v6)).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        greeted(&c);
        v6.close();
    }
    drop(clients);
    v4.close();
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
    assert_eq!(reactor.sources(), 0);
    drop((v4, reactor, owner, rt));
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}
