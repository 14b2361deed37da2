//! Asking the kernel whether anyone but the parent touched a socket.
//!
//! When a worker is lost with sockets it was sent and never answered for, the parent must know
//! whether the worker read or wrote any of them: a worker may read and answer before it reports
//! ADOPTED (PROTOCOL.md §9.4). The kernel keeps the answer for TCP sockets, and asking costs a
//! `getsockopt(TCP_INFO)`, an `ioctl` and a `poll`, only on that rare path:
//!
//! - bytes **consumed** = `tcpi_bytes_received − SIOCINQ` (received minus still queued), less
//!   one for a received FIN, which both count;
//! - bytes **written** = `tcpi_bytes_sent − tcpi_bytes_retrans + tcpi_notsent_bytes` (sent
//!   once, plus still waiting to be sent), all from `TCP_INFO` (Linux 4.19 and later; before
//!   that, `tcpi_bytes_acked + SIOCOUTQ`, at the cost of a second `ioctl`). An accepted
//!   socket's SYN-ACK is not counted: 0 on a fresh one, measured on Linux 6.18. The kernel
//!   counts a retransmission in `tcpi_bytes_retrans` before it sends it, even when sending
//!   fails, so this sum can fall without anyone reading or writing: a socket whose
//!   `tcpi_bytes_retrans` moved since its baseline is therefore judged touched, whatever the
//!   sum says (a cautious answer: retransmissions need bytes written, and a fresh socket has
//!   none);
//! - a socket whose receiving side was shut down (`POLLRDHUP` while the client has not closed)
//!   or that left `ESTABLISHED`/`CLOSE_WAIT` (a FIN sent by `shutdown`, say) was touched too.
//!
//! A socket the parent accepted itself has consumed and written nothing when it is admitted, so
//! that path pays nothing. A socket that reaches the parent any other way (an application's
//! [`Parent::dispatch`](crate::Parent::dispatch) after reading a handshake, a migration, a
//! takeover) is measured once when admitted, and compared with that: a `getsockopt` and an
//! `ioctl` per socket, not the four system calls of a verdict (the `poll` for a shut-down
//! receiving side is left to the verdict, which then finds the socket touched: a cautious
//! answer for a socket that came in that state). A Unix socket has no such counters: its
//! verdict is [`Touch::Unknown`], and the ledger treats that as touched.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::ledger::Touch;

/// The counters a verdict compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    consumed: u64,
    written: u64,
    /// `tcpi_bytes_retrans` (0 where the kernel does not count it).
    retrans: u64,
}

/// What a socket looked like when the parent admitted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Baseline {
    /// Accepted by the parent and never read: nothing consumed, nothing written.
    Fresh,
    /// Measured at admission.
    Measured(Counters),
    /// Not a TCP socket, or the counters could not be read.
    Unknown,
}

impl Baseline {
    /// A socket the parent accepted and read `n` bytes from itself (a handshake), writing
    /// nothing: no system call needed.
    pub(crate) fn read_by_parent(n: usize) -> Baseline {
        Baseline::Measured(Counters { consumed: n as u64, written: 0, retrans: 0 })
    }

    /// Measures `fd` now.
    pub(crate) fn measure(fd: BorrowedFd<'_>) -> Baseline {
        match read(fd, false) {
            Some(Reading { counters, open: true }) => Baseline::Measured(counters),
            _ => Baseline::Unknown,
        }
    }

    /// Compares `fd` now with this baseline.
    pub(crate) fn touched(self, fd: BorrowedFd<'_>) -> Touch {
        let base = match self {
            Baseline::Fresh => Counters::default(),
            Baseline::Measured(c) => c,
            Baseline::Unknown => return Touch::Unknown,
        };
        match read(fd, true) {
            None => Touch::Unknown,
            Some(now) => compare(base, &now),
        }
    }
}

/// The verdict: anything read, written or retransmitted since the baseline, or a socket shut
/// down, is a touch.
fn compare(base: Counters, now: &Reading) -> Touch {
    let c = now.counters;
    if !now.open || c.consumed > base.consumed || c.written > base.written || c.retrans != base.retrans {
        Touch::Touched
    } else {
        Touch::Untouched
    }
}

struct Reading {
    counters: Counters,
    /// Nobody shut it down: still `ESTABLISHED` or `CLOSE_WAIT` (the client's FIN), and no
    /// `SHUT_RD` on our side.
    open: bool,
}

// From include/net/tcp_states.h.
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;
const TCP_TIME_WAIT: u8 = 6;

/// The socket's counters; with `shut_read`, also whether its receiving side was shut down (a
/// `poll`), else only what `TCP_INFO` says of its state.
fn read(fd: BorrowedFd<'_>, shut_read: bool) -> Option<Reading> {
    let raw = fd.as_fd().as_raw_fd();
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `raw` is a descriptor borrowed for the call; `info` is writable for `len` bytes
    // and zeroed, so a kernel that fills fewer bytes leaves valid (zero) fields.
    let rc = unsafe { libc::getsockopt(raw, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) };
    if rc != 0 || (len as usize) < std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8 {
        return None; // not TCP (a Unix socket: EOPNOTSUPP), or a kernel without the counters
    }
    // SAFETY: zero-initialised, then filled by the kernel; every field is a plain integer.
    let info = unsafe { info.assume_init() };
    let inq = ioctl_int(raw, libc::FIONREAD)?; // SIOCINQ
    let fin_in = matches!(info.tcpi_state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_TIME_WAIT);
    let consumed = info.tcpi_bytes_received.saturating_sub(inq).saturating_sub(u64::from(fin_in));
    let (written, retrans) = if has_bytes_sent(len) {
        (written_from_info(&info), info.tcpi_bytes_retrans)
    } else {
        (info.tcpi_bytes_acked + ioctl_int(raw, libc::TIOCOUTQ)?, 0) // SIOCOUTQ
    };
    let mut open = matches!(info.tcpi_state, TCP_ESTABLISHED | TCP_CLOSE_WAIT);
    if shut_read && info.tcpi_state == TCP_ESTABLISHED && read_shut(fd) {
        open = false; // SHUT_RD by someone: the client has sent no FIN
    }
    Some(Reading { counters: Counters { consumed, written, retrans }, open })
}

/// The kernel filled `tcpi_bytes_sent` and `tcpi_bytes_retrans` (Linux 4.19 and later).
fn has_bytes_sent(len: libc::socklen_t) -> bool {
    len as usize >= std::mem::offset_of!(libc::tcp_info, tcpi_bytes_retrans) + 8
}

/// Bytes queued for sending: sent once (retransmissions counted out), or not sent yet.
fn written_from_info(info: &libc::tcp_info) -> u64 {
    info.tcpi_bytes_sent.saturating_sub(info.tcpi_bytes_retrans) + u64::from(info.tcpi_notsent_bytes)
}

fn ioctl_int(raw: i32, request: libc::Ioctl) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one `int` through the pointer, which is valid for it.
    let rc = unsafe { libc::ioctl(raw, request, &mut n) };
    (rc == 0).then_some(n.max(0) as u64)
}

/// The receiving side is shut down (POLLRDHUP) without a FIN from the client.
fn read_shut(fd: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
    rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 }))
        .is_ok_and(|_| fds[0].revents().contains(PollFlags::RDHUP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    fn settle() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    /// The two ways of counting written bytes agree, with bytes still queued and unsent (a
    /// client that reads nothing).
    #[test]
    fn written_bytes_from_tcp_info_alone_match_acked_plus_the_send_queue() {
        let (_client, server) = pair();
        server.set_nonblocking(true).unwrap();
        let mut sent = 0u64;
        let chunk = [b'x'; 65536];
        while let Ok(n) = (&server).write(&chunk) {
            sent += n as u64;
        }
        settle();
        let raw = server.as_raw_fd();
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: as in `read`.
        let rc =
            unsafe { libc::getsockopt(raw, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) };
        assert_eq!(rc, 0);
        if !has_bytes_sent(len) {
            eprintln!("skipped: this kernel's TCP_INFO has no tcpi_bytes_sent (before 4.19)");
            return;
        }
        // SAFETY: as in `read`.
        let info = unsafe { info.assume_init() };
        let outq = ioctl_int(raw, libc::TIOCOUTQ).unwrap();
        assert!(outq > 0, "some bytes wait in the send queue");
        assert_eq!(written_from_info(&info), info.tcpi_bytes_acked + outq);
        assert_eq!(written_from_info(&info), sent);
        assert_eq!(Baseline::measure(server.as_fd()).touched(server.as_fd()), Touch::Untouched);
    }

    /// A retransmission the kernel counted but could not send makes the written sum fall: it
    /// must not hide a write by the worker.
    #[test]
    fn a_retransmission_counted_since_the_baseline_is_a_touch_even_when_the_sum_fell() {
        let base = Counters { consumed: 0, written: 100, retrans: 0 };
        let now = |written, retrans| Reading { counters: Counters { consumed: 0, written, retrans }, open: true };
        assert_eq!(compare(base, &now(100, 0)), Touch::Untouched);
        assert_eq!(compare(base, &now(101, 0)), Touch::Touched);
        assert_eq!(compare(base, &now(90, 10)), Touch::Touched, "a write hidden by a failed retransmission");
        assert_eq!(compare(base, &Reading { counters: base, open: false }), Touch::Touched);
    }

    #[test]
    fn a_fresh_socket_with_a_request_waiting_is_untouched() {
        let (mut client, server) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        settle();
        assert_eq!(Baseline::Fresh.touched(server.as_fd()), Touch::Untouched);
    }

    #[test]
    fn reading_one_byte_touches_it() {
        let (mut client, mut server) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        settle();
        server.read_exact(&mut [0u8; 1]).unwrap();
        assert_eq!(Baseline::Fresh.touched(server.as_fd()), Touch::Touched);
    }

    #[test]
    fn writing_or_shutting_down_touches_it() {
        let (_client, mut server) = pair();
        server.write_all(b"x").unwrap();
        settle();
        assert_eq!(Baseline::Fresh.touched(server.as_fd()), Touch::Touched);
        let (_client, server) = pair();
        server.shutdown(Shutdown::Write).unwrap();
        assert_eq!(Baseline::Fresh.touched(server.as_fd()), Touch::Touched);
        let (_client, server) = pair();
        server.shutdown(Shutdown::Read).unwrap();
        assert_eq!(Baseline::Fresh.touched(server.as_fd()), Touch::Touched);
    }

    #[test]
    fn a_client_that_sent_and_closed_leaves_an_unread_socket_untouched() {
        for body in [&b""[..], b"GET / HTTP/1.0\r\n\r\n"] {
            let (mut client, server) = pair();
            client.write_all(body).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            settle();
            assert_eq!(Baseline::Fresh.touched(server.as_fd()), Touch::Untouched, "{body:?}");
        }
    }

    #[test]
    fn a_client_that_sent_and_closed_and_was_read_is_touched() {
        let (mut client, mut server) = pair();
        client.write_all(b"abc").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        settle();
        server.read_exact(&mut [0u8; 3]).unwrap();
        assert_eq!(Baseline::Fresh.touched(server.as_fd()), Touch::Touched);
    }

    #[test]
    fn a_measured_baseline_forgives_what_came_before() {
        let (mut client, mut server) = pair();
        client.write_all(b"PROXY line\nrest").unwrap();
        settle();
        server.read_exact(&mut [0u8; 11]).unwrap(); // an application read a handshake
        server.write_all(b"hi").unwrap();
        settle();
        let base = Baseline::measure(server.as_fd());
        assert_eq!(base.touched(server.as_fd()), Touch::Untouched);
        server.read_exact(&mut [0u8; 1]).unwrap();
        assert_eq!(base.touched(server.as_fd()), Touch::Touched);
    }

    #[test]
    fn what_the_parent_read_itself_is_its_own_baseline() {
        let (mut client, mut server) = pair();
        client.write_all(b"PROXY line\nrest").unwrap();
        settle();
        server.read_exact(&mut [0u8; 11]).unwrap();
        let base = Baseline::read_by_parent(11);
        assert_eq!(base, Baseline::measure(server.as_fd()), "the same as measuring, without a system call");
        assert_eq!(base.touched(server.as_fd()), Touch::Untouched);
        server.read_exact(&mut [0u8; 1]).unwrap();
        assert_eq!(base.touched(server.as_fd()), Touch::Touched);
    }

    #[test]
    fn a_unix_socket_cannot_tell() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(Baseline::Fresh.touched(a.as_fd()), Touch::Unknown);
        assert_eq!(Baseline::measure(a.as_fd()), Baseline::Unknown);
    }
}
