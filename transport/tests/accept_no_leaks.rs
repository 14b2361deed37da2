//! Accepted sockets reach the owner with their addresses, and the process's descriptor count
//! returns to its baseline (alone in this binary, so other tests' sockets do not blur the count).

use std::net::TcpStream;

use baton_runtime::Runtime;
use baton_transport::*;
use crossbeam_channel::unbounded;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

mod common;
use common::{greeted, local_inet, Greeter, WAIT};

#[test]
fn accepted_connections_reach_the_owner_with_their_addresses() {
    let baseline = open_fds();
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, seen) = unbounded();
    let owner = rt.spawn(Greeter { seen: tx, hold: None });
    let v4 = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), owner.recipient()).unwrap();
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
