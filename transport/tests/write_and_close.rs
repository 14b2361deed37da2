//! `Connection::write_and_close`: the last answer and the end of stream leave together. What
//! must hold: the peer reads every byte and then its end of file, whether the socket took the
//! bytes at once or only part of them (the rest goes when it drains, held back for the FIN as
//! bytes buffered at a `close` or `shutdown_write` are); on TCP, the bytes and the FIN travel
//! in one segment where `write` then `close` sends two; on a Unix socket it works the same;
//! and on a connection already closing it refuses, as `write` does.

use std::io::{IoSlice, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use baton_runtime::{Actor, Context, Mailbox, Runtime};
use baton_transport::*;
use crossbeam_channel::{unbounded, Sender};

mod common;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Ending {
    /// `write_and_close`.
    Together,
    /// `write_vectored_and_close`, the bytes in three pieces.
    TogetherInPieces,
    /// `write`, then `close`: the usual two steps.
    WriteThenClose,
    /// `write`, then `shutdown_write` (the connection stays open for reading).
    WriteThenShutdown,
}

enum Msg {
    /// Adopt the socket and answer `bytes` at once, ending the connection as told; the result
    /// of a second `write_and_close` goes to `second`.
    Serve(Stream, Vec<u8>, Ending, Sender<Result<(), WriteError>>),
    Event(ConnEvent),
}
baton_runtime::from_variants!(Msg::Event(ConnEvent));

/// Serves each socket it is given on the reactor's event loop (the way a server speaks first).
struct Server {
    reactor: Reactor,
    conns: Vec<Connection>,
}

impl Actor for Server {
    type Message = Msg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            Msg::Serve(stream, bytes, ending, second) => {
                let conn = self.reactor.adopt(stream, ConnOptions::default(), ctx.address()).expect("adopting");
                match ending {
                    Ending::Together => conn.write_and_close(&bytes).expect("writing"),
                    Ending::TogetherInPieces => {
                        let (a, rest) = bytes.split_at(bytes.len() / 3);
                        let (b, c) = rest.split_at(rest.len() / 2);
                        let pieces = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
                        conn.write_vectored_and_close(&pieces).expect("writing");
                    }
                    Ending::WriteThenClose => {
                        conn.write(&bytes).expect("writing");
                        conn.close();
                    }
                    Ending::WriteThenShutdown => {
                        conn.write(&bytes).expect("writing");
                        conn.shutdown_write();
                    }
                }
                let _ = second.send(conn.write_and_close(b"more"));
                self.conns.push(conn);
            }
            Msg::Event(ConnEvent::Closed(id, _)) => self.conns.retain(|c| c.id() != id),
            Msg::Event(_) => {}
        }
    }
}

struct Fixture {
    rt: Runtime,
    reactor: Reactor,
    server: baton_runtime::Addr<Server>,
}

fn fixture() -> Fixture {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let server = Server { reactor: reactor.clone(), conns: Vec::new() };
    let server = rt.spawn_on(reactor.event_loop(), server, Mailbox::Unbounded).unwrap();
    Fixture { rt, reactor, server }
}

impl Fixture {
    /// Serves `bytes` on the server side of a new TCP connection; returns the client, after
    /// checking that a second `write_and_close` was refused.
    fn serve_tcp(&self, bytes: &[u8], ending: Ending) -> TcpStream {
        let (client, server_side) = tcp_pair();
        self.serve(Stream::Tcp(server_side), bytes, ending);
        client
    }

    fn serve(&self, stream: Stream, bytes: &[u8], ending: Ending) {
        let (tx, second) = unbounded();
        self.server.try_send(Msg::Serve(stream, bytes.to_vec(), ending, tx)).ok().unwrap();
        let second = second.recv_timeout(WAIT).expect("served");
        assert!(matches!(second, Err(WriteError::Closed)), "a write after the close must be refused");
    }

    fn stop(self) {
        self.reactor.stop();
        self.rt.shutdown(Duration::from_secs(5)).unwrap();
    }
}

/// A connected pair over loopback: (the client, the server side).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (server_side, _) = listener.accept().unwrap();
    (client, server_side)
}

fn read_to_end(mut s: impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("reading to the end of stream");
    got
}

/// Segments this socket has received (the kernel's `tcpi_segs_in`).
fn segments_in(s: &TcpStream) -> u32 {
    common::tcp_option::<libc::tcp_info>(s, libc::TCP_INFO).tcpi_segs_in
}

#[test]
fn answer_and_end_of_stream_arrive_in_one_segment() {
    let f = fixture();
    // The client sends nothing, so every segment it receives after the handshake's SYN-ACK is
    // the server's answer or its FIN, and no acknowledgement of ours can ride on either.
    let together = f.serve_tcp(b"hello", Ending::Together);
    assert_eq!(read_to_end(&together), b"hello");
    let apart = f.serve_tcp(b"hello", Ending::WriteThenClose);
    assert_eq!(read_to_end(&apart), b"hello");
    let pieces = f.serve_tcp(b"hello, world", Ending::TogetherInPieces);
    assert_eq!(read_to_end(&pieces), b"hello, world");
    let (together, apart, pieces) = (segments_in(&together), segments_in(&apart), segments_in(&pieces));
    assert_eq!(together + 1, apart, "write_and_close: {together} segments in; write then close: {apart}");
    assert_eq!(pieces, together, "write_vectored_and_close: {pieces} segments in");
    f.stop();
}

#[test]
fn bytes_the_socket_takes_in_parts_all_arrive_before_the_end_however_it_comes() {
    // Far more than the (shrunk) socket buffer takes at once: the rest waits in the
    // connection's buffer (the default limit on what it buffers is 1 MiB). Once a close or
    // half-close is asked for, that tail is flushed with MSG_MORE, and the shutdown that
    // follows must still push it.
    let f = fixture();
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for ending in [Ending::Together, Ending::TogetherInPieces, Ending::WriteThenClose, Ending::WriteThenShutdown] {
        let (client, server_side) = tcp_pair();
        rustix::net::sockopt::set_socket_send_buffer_size(&server_side, 16 * 1024).unwrap();
        f.serve(Stream::Tcp(server_side), &big, ending);
        let got = read_to_end(&client);
        assert_eq!(got.len(), big.len(), "{ending:?}");
        assert!(got == big, "{ending:?}: the bytes arrived altered or out of order");
    }
    f.stop();
}

#[test]
fn works_on_unix_sockets() {
    let f = fixture();
    let (client, server_side) = UnixStream::pair().unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    f.serve(Stream::Unix(server_side), b"over unix", Ending::Together);
    assert_eq!(read_to_end(&client), b"over unix");
    f.stop();
}
