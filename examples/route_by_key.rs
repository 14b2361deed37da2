//! Sticky routing by a key the parent reads first.
//!
//! Each client's first line is its routing key. The parent reads that line (on its own
//! reactor, without blocking anyone), then hands the connection to the worker that sticky
//! placement picks for the key, so the same key always reaches the same worker. The worker
//! receives the line the parent read as prelude bytes, before anything read later, and answers
//! every line with `worker <pid>: <line>`.
//!
//! A client that never sends its line is closed after `--line-timeout-ms` (default 5000); a line
//! longer than 256 bytes is refused (`ERR line too long`). Neither holds up other clients.
//!
//! It serves until its standard input closes (or a signal ends it): started with `< /dev/null`,
//! or in the background of a script whose input is closed, it stops at once.
//!
//! ```sh
//! cargo run --example route_by_key -- [--listen ADDR] [--workers N] [--line-timeout-ms MS]
//! printf 'alice\nhello\n' | nc -N 127.0.0.1 7008
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use baton_handoff::{
    channel_from_env, Dispatch, Parent, PeerCheck, Sticky, Worker, WorkerCommand, WorkerEvent, WorkerOptions,
};
use baton_runtime::{Actor, Addr, Context, Runtime};
use baton_transport::{Accepted, Address, ConnEvent, ConnId, ConnOptions, Connection, ListenOptions, Reactor};

/// Longest routing line accepted.
const MAX_LINE: usize = 256;

// ---- parent: read the key, then hand over ------------------------------------------------------

struct Reading {
    conn: Connection,
    peer: Address,
    local: Address,
    buf: Vec<u8>,
}

/// Reads each connection's first line, then dispatches it by that key.
struct KeyReader {
    reactor: Reactor,
    parent: Parent,
    line_timeout: Duration,
    reading: HashMap<ConnId, Reading>,
    me: Option<Addr<KeyReader>>,
}

enum ReaderMsg {
    Accepted(Accepted),
    Conn(ConnEvent),
}
baton_runtime::from_variants!(ReaderMsg::Accepted(Accepted), ReaderMsg::Conn(ConnEvent));

impl KeyReader {
    fn refuse(&mut self, id: ConnId, why: &str) {
        if let Some(r) = self.reading.remove(&id) {
            let _ = r.conn.write(format!("ERR {why}\n").as_bytes());
            r.conn.close();
        }
    }

    fn got_data(&mut self, id: ConnId, bytes: Vec<u8>) {
        let Some(r) = self.reading.get_mut(&id) else { return };
        r.buf.extend_from_slice(&bytes);
        let Some(end) = r.buf.iter().position(|&b| b == b'\n') else {
            if r.buf.len() > MAX_LINE {
                self.refuse(id, "line too long");
            }
            return;
        };
        if end > MAX_LINE {
            return self.refuse(id, "line too long");
        }
        let r = self.reading.remove(&id).expect("present");
        // Take the socket out of our reactor with whatever we read and have not seen yet: all
        // of it travels to the worker as prelude, so no byte is lost or reordered.
        let detached = match r.conn.detach() {
            Ok(d) => d,
            Err(_) => return, // the client went away meanwhile
        };
        let key = r.buf[..end].strip_suffix(b"\r").unwrap_or(&r.buf[..end]).to_vec();
        let mut prelude = r.buf;
        prelude.extend_from_slice(&detached.unread);
        // We accepted it, read exactly the prelude from it and wrote nothing: the parent needs
        // not ask the kernel (see `Parent::dispatch_read`).
        let read = prelude.len();
        let socket =
            Dispatch { stream: detached.stream, peer: r.peer, local: r.local, tag: 0, key: Some(key), prelude };
        if let Err(e) = self.parent.dispatch_read(socket, read) {
            log::error!("route_by_key: dispatch failed: {e}");
        }
    }
}

impl Actor for KeyReader {
    type Message = ReaderMsg;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
    }
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: ReaderMsg) {
        match msg {
            ReaderMsg::Accepted(a) => {
                let events = self.me.as_ref().expect("started");
                // The read timeout is the deadline for the line: a silent client is closed.
                let options = ConnOptions { read_timeout: Some(self.line_timeout), ..ConnOptions::default() };
                if let Ok(conn) = self.reactor.adopt(a.stream, options, events) {
                    self.reading.insert(conn.id(), Reading { conn, peer: a.peer, local: a.local, buf: Vec::new() });
                }
            }
            ReaderMsg::Conn(ConnEvent::Data(id, bytes)) => self.got_data(id, bytes),
            ReaderMsg::Conn(ConnEvent::ReadClosed(id)) => self.refuse(id, "no routing line"),
            ReaderMsg::Conn(ConnEvent::Closed(id, _)) => {
                self.reading.remove(&id);
            }
            ReaderMsg::Conn(_) => {}
        }
    }
}

// ---- worker: answer each line ---------------------------------------------------------------

struct LineEcho {
    conns: HashMap<ConnId, (Connection, Vec<u8>)>,
}

enum WorkerMsg {
    Worker(WorkerEvent),
    Conn(ConnEvent),
}
baton_runtime::from_variants!(WorkerMsg::Worker(WorkerEvent), WorkerMsg::Conn(ConnEvent));

impl Actor for LineEcho {
    type Message = WorkerMsg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Worker(WorkerEvent::Incoming(incoming)) => {
                // The prelude (the key line the parent read) arrives as the first Data.
                if let Ok(conn) = incoming.adopt(ctx.address(), ConnOptions::default()) {
                    self.conns.insert(conn.id(), (conn, Vec::new()));
                }
            }
            WorkerMsg::Worker(WorkerEvent::Drain { .. }) => self.conns.values().for_each(|(c, _)| c.close()),
            WorkerMsg::Conn(ConnEvent::Data(id, bytes)) => {
                let Some((conn, buf)) = self.conns.get_mut(&id) else { return };
                buf.extend_from_slice(&bytes);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let mut reply = format!("worker {}: ", std::process::id()).into_bytes();
                    reply.extend_from_slice(&line);
                    let _ = conn.write(&reply);
                }
            }
            WorkerMsg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some((conn, _)) = self.conns.get(&id) {
                    conn.close();
                }
            }
            WorkerMsg::Conn(ConnEvent::Closed(id, _)) => {
                self.conns.remove(&id);
            }
            WorkerMsg::Conn(_) => {}
        }
    }
}

// ---- main ---------------------------------------------------------------------------------------

/// A parent that reads a key line and routes by it; workers that echo lines.
#[derive(clap::Parser)]
#[command(name = "route_by_key")]
struct Flags {
    /// The address to listen on (port 0 picks a free one; the ready line shows it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7008")]
    listen: SocketAddr,
    /// How many worker processes.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = baton_examples::at_least_one)]
    workers: usize,
    /// How long a client has to send its key line, in milliseconds.
    #[arg(long = "line-timeout-ms", value_name = "MS", default_value_t = 5000)]
    line_timeout_ms: u64,
}

fn main() -> ExitCode {
    let worker_channel = channel_from_env(PeerCheck::SameUid);
    baton_examples::init_logging("route_by_key");
    if let Some(channel) = worker_channel {
        return match serve_worker(channel) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "route_by_key worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let flags = <Flags as clap::Parser>::parse();
    let (listen, workers, line_timeout) = (flags.listen, flags.workers, Duration::from_millis(flags.line_timeout_ms));
    match serve_parent(listen, workers, line_timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "route_by_key: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_parent(listen: SocketAddr, workers: usize, line_timeout: Duration) -> std::io::Result<()> {
    let rt = Runtime::new();
    let reactor = Reactor::start()?;
    let parent = Parent::builder()
        .spawn(workers, WorkerCommand::current_exe()?)
        .policy(Sticky::default())
        .start(&rt, &reactor)?;
    // Ready before serving: a key placed while its own worker is still starting would go to
    // another one (sticky placement only chooses among workers that can take a socket).
    if !parent.wait_ready(Duration::from_secs(10)) {
        let _ = writeln!(std::io::stderr(), "route_by_key: workers slow to start; serving anyway");
    }
    let reader =
        rt.spawn(KeyReader { reactor: reactor.clone(), parent, line_timeout, reading: HashMap::new(), me: None });
    let listener = reactor.listen_tcp(listen, ListenOptions::default(), &reader)?;
    let Address::Inet(addr) = listener.local_addr() else { unreachable!("a TCP listener") };
    let mut out = std::io::stdout();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    // Until stdin closes (or the process is killed): convenient under a test or a supervisor.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}

fn serve_worker(channel: std::io::Result<baton_handoff::Channel>) -> std::io::Result<()> {
    let rt = Runtime::new();
    let reactor = Reactor::start()?;
    let app = rt.spawn(LineEcho { conns: HashMap::new() });
    Worker::serve(channel?, &rt, &reactor, app, WorkerOptions::default())?.wait();
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}
