//! Listeners through the public API: accepted sockets reach the owner actor, the listener
//! pauses when the owner cannot keep up, adopted descriptors are validated, nothing leaks.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use baton_runtime::{Mailbox, Runtime};
use baton_transport::*;
use crossbeam_channel::unbounded;

mod common;
use common::{greeted, local_inet, tcp_option, Greeter, WAIT};

#[test]
fn listener_pauses_while_the_owner_is_full_and_loses_no_client() {
    let rt = Runtime::builder().threads(2).build();
    let reactor = Reactor::start().unwrap();
    let (tx, seen) = unbounded();
    let (release_tx, release) = unbounded();
    // Mailbox of one, and the first handler blocks: the listener must stop and wait.
    let owner = rt.try_spawn(Greeter { seen: tx, hold: Some(release) }, Mailbox::Bounded(1)).unwrap();
    let l = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), owner.recipient()).unwrap();
    let addr = local_inet(&l);
    let clients: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    assert!(seen.try_recv().is_err(), "the owner is still blocked");
    assert!(owner.mailbox_len() <= 1, "the listener ignored the mailbox bound");
    release_tx.send(()).unwrap();
    for c in &clients {
        c.set_read_timeout(Some(WAIT)).unwrap();
        greeted(c);
    }
    for _ in 0..clients.len() {
        seen.recv_timeout(WAIT).expect("a client was lost while the listener was paused");
    }
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn explicit_pause_leaves_clients_in_the_backlog_until_resume() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, seen) = unbounded();
    let owner = rt.spawn(Greeter { seen: tx, hold: None });
    let l = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), owner.recipient()).unwrap();
    l.pause();
    let c = TcpStream::connect(local_inet(&l)).unwrap();
    assert!(seen.recv_timeout(Duration::from_millis(150)).is_err(), "accepted while paused");
    l.resume();
    c.set_read_timeout(Some(WAIT)).unwrap();
    greeted(&c);
    seen.recv_timeout(WAIT).unwrap();
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn unix_listener_has_tight_permissions_replaces_stale_files_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("baton-transport-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("listener.sock");
    // A stale file from a dead process.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, seen) = unbounded();
    let owner = rt.spawn(Greeter { seen: tx, hold: None });
    let l = reactor.listen_unix(&path, ListenOptions::default(), owner.recipient()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A live listener is not replaced.
    let err = reactor.listen_unix(&path, ListenOptions::default(), owner.recipient()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    greeted(&c);
    assert!(matches!(seen.recv_timeout(WAIT).unwrap().0, Address::Unix(_)));
    l.close();
    let deadline = Instant::now() + WAIT;
    while path.exists() {
        assert!(Instant::now() < deadline, "socket file not removed on close");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A file that is not a socket is never replaced.
    std::fs::write(&path, b"precious").unwrap();
    let err = reactor.listen_unix(&path, ListenOptions::default(), owner.recipient()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adopting_a_descriptor_validates_it() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, seen) = unbounded();
    let owner = rt.spawn(Greeter { seen: tx, hold: None });
    let opts = ListenOptions::default();

    let (a, _b) = UnixStream::pair().unwrap();
    let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    assert!(matches!(reactor.adopt_listener(file, opts, owner.recipient()), Err(AdoptError::NotASocket)));
    let udp: OwnedFd = UdpSocket::bind("127.0.0.1:0").unwrap().into();
    assert!(matches!(reactor.adopt_listener(udp, opts, owner.recipient()), Err(AdoptError::NotStream)));
    assert!(matches!(reactor.adopt_listener(OwnedFd::from(a), opts, owner.recipient()), Err(AdoptError::NotListening)));

    // A real listening socket, as a parent or systemd would pass it.
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let adopted = reactor.adopt_listener(OwnedFd::from(std_listener), opts, owner.recipient()).unwrap();
    assert_eq!(adopted.local_addr(), &Address::Inet(addr));
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    greeted(&c);
    seen.recv_timeout(WAIT).unwrap();
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
}

/// Hands every accepted connection to the test.
struct Forward(crossbeam_channel::Sender<Accepted>);

impl baton_runtime::Actor for Forward {
    type Message = Accepted;
    fn handle(&mut self, _ctx: &mut baton_runtime::Context<Self>, acc: Accepted) {
        let _ = self.0.send(acc);
    }
}

#[test]
fn deferred_accept_hands_over_a_connection_only_with_its_first_bytes() {
    use std::io::{Read, Write};
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, accepted) = unbounded();
    let owner = rt.spawn(Forward(tx));
    let deferred = ListenOptions { defer_accept: Some(Duration::from_secs(5)), ..ListenOptions::default() };
    let l = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), deferred, owner.recipient()).unwrap();
    let mut client = TcpStream::connect(local_inet(&l)).unwrap();
    assert!(accepted.recv_timeout(Duration::from_millis(300)).is_err(), "accepted before the client said anything");
    client.write_all(b"hello").unwrap();
    let acc = accepted.recv_timeout(WAIT).expect("accepted once the client spoke");
    // The bytes came with the connection: a read of the non-blocking socket finds them at once.
    let Stream::Tcp(mut s) = acc.stream else { panic!("a TCP listener gave a Unix stream") };
    let mut got = [0u8; 5];
    assert_eq!(s.read(&mut got).expect("the first bytes, already there"), 5);
    assert_eq!(&got, b"hello");

    // Without the option the same silent client is accepted at once (what the wait above
    // would have seen, had the option not been applied).
    let plain =
        reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), owner.recipient()).unwrap();
    let _silent = TcpStream::connect(local_inet(&plain)).unwrap();
    accepted.recv_timeout(WAIT).expect("a plain listener accepts a silent client");
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
}

/// The socket's `TCP_DEFER_ACCEPT`, in seconds as the kernel keeps it.
fn defer_accept_of(fd: &impl std::os::fd::AsRawFd) -> i32 {
    tcp_option(fd, libc::TCP_DEFER_ACCEPT)
}

#[test]
fn deferred_accept_takes_any_timeout_and_is_refused_on_a_socket_that_is_not_tcp() {
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(set_defer_accept(&a, Duration::from_secs(1)).is_err());
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    set_defer_accept(&tcp, Duration::from_millis(1500)).expect("a TCP listener takes it");
    assert!(defer_accept_of(&tcp) >= 2, "1.5 s is at least 2 s once rounded up");
    // "Forever" is the kernel's longest, not an overflow to zero (which means off).
    set_defer_accept(&tcp, Duration::MAX).unwrap();
    assert!(defer_accept_of(&tcp) > 3600, "Duration::MAX gave {} s", defer_accept_of(&tcp));
    set_defer_accept(&tcp, Duration::ZERO).unwrap();
    assert_eq!(defer_accept_of(&tcp), 0, "zero turns it off");
}

#[test]
fn deferred_accept_applies_to_adopted_listeners_and_is_ignored_for_unix_ones() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let (tx, accepted) = unbounded();
    let owner = rt.spawn(Forward(tx));
    let deferred = ListenOptions { defer_accept: Some(Duration::from_secs(5)), ..ListenOptions::default() };
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = std_listener.try_clone().unwrap(); // the same socket, to read its option back
    assert_eq!(defer_accept_of(&probe), 0);
    let fd: OwnedFd = std_listener.into();
    let _adopted = reactor.adopt_listener(fd, deferred, owner.recipient()).expect("adopting");
    assert!(defer_accept_of(&probe) >= 5, "the adopted listener did not get the option");

    let dir = std::env::temp_dir().join(format!("baton-defer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s");
    let unix = reactor.listen_unix(&path, deferred, owner.recipient()).expect("a Unix listener ignores it");
    let _client = UnixStream::connect(&path).unwrap();
    accepted.recv_timeout(WAIT).expect("a silent Unix client is accepted at once");
    unix.close();
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
