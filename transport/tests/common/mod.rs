//! Helpers shared by the transport's test binaries.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use baton_runtime::{Actor, Context};
use baton_transport::*;
use crossbeam_channel::{Receiver, Sender};

pub const WAIT: Duration = Duration::from_secs(5);

/// Greets each accepted client with one byte and reports what it saw.
pub struct Greeter {
    pub seen: Sender<(Address, ListenerId)>,
    pub hold: Option<Receiver<()>>,
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

pub fn greeted(mut s: impl Read) {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("no greeting");
    assert_eq!(&b, b"!");
}

pub fn local_inet(l: &Listener) -> SocketAddr {
    match l.local_addr() {
        Address::Inet(a) => *a,
        other => panic!("not inet: {other:?}"),
    }
}

/// Collects one connection's events in a channel the test reads.
pub struct Collect(pub Sender<ConnEvent>);

impl Actor for Collect {
    type Message = ConnEvent;
    fn handle(&mut self, _ctx: &mut Context<Self>, ev: ConnEvent) {
        let _ = self.0.send(ev);
    }
}

/// C types for which every bit pattern is a valid value: what `getsockopt` may write.
pub trait Plain: Copy {}
impl Plain for libc::c_int {}
impl Plain for libc::tcp_info {}

/// A TCP-level socket option as the kernel reports it (`getsockopt(IPPROTO_TCP, name)`); the
/// tests read what rustix has no getter for (`TCP_INFO`, `TCP_DEFER_ACCEPT`).
pub fn tcp_option<T: Plain>(fd: &impl AsRawFd, name: libc::c_int) -> T {
    // SAFETY: `T: Plain`: all zeroes is a valid value.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes and outlives the call, any bytes the kernel
    // writes make a valid `T`, and the descriptor is borrowed from a live socket.
    let rc =
        unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, name, (&mut value as *mut T).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockopt(IPPROTO_TCP, {name}): {}", std::io::Error::last_os_error());
    value
}
