//! Socket options that rustix does not wrap, set through libc. Each is one `setsockopt` on a
//! descriptor the caller lends us; nothing here owns or closes anything.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// Sets `TCP_DEFER_ACCEPT` on a TCP listening socket: the kernel completes each handshake but
/// reports the connection to `accept` only once the client's first bytes have arrived, or
/// without them once `timeout` has passed. For protocols where the client speaks first, such
/// as HTTP: the acceptor is woken only for connections with a request to read, so the socket's
/// first read always finds it, and a client that connects and says nothing costs the process
/// nothing until the timeout. See [`ListenOptions::defer_accept`](crate::ListenOptions::defer_accept).
///
/// The kernel counts the timeout in SYN-ACK retransmissions, so it rounds `timeout` up to the
/// end of one (1 s stays 1 s, 2 s becomes 3 s, 5 s becomes 7 s), and a silent client is
/// accepted when it acknowledges that retransmission. Zero turns the option off; a huge value
/// (`Duration::MAX`) becomes the kernel's longest, about eight hours.
///
/// # Errors
///
/// The system error: `EBADF`, `ENOTSOCK`, or `EOPNOTSUPP` / `ENOPROTOOPT` when `fd` is not a
/// TCP socket.
pub fn set_defer_accept(fd: impl AsFd, timeout: Duration) -> io::Result<()> {
    let seconds = timeout.as_secs().saturating_add(u64::from(timeout.subsec_nanos() > 0));
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a c_int that outlives the call and its size is passed with it; the
    // descriptor is borrowed from `fd`, so it is open for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
