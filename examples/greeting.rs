//! A line protocol whose first line, read in the parent, says which worker serves the client.
//!
//! ```sh
//! cargo run --example greeting        # then: nc 127.0.0.1 7011, and type HELLO alice
//! ```
//!
//! A client opens with `HELLO <name>`; the parent reads that line with a
//! [`Handshake`](baton::handoff::handshake::Handshake) on its reactor thread (no thread, no
//! actor per connection: a silent client costs a registration) and places the connection by
//! the name, so one name's connections share a worker process (`Sticky` placement). The
//! worker receives the greeting as the connection's first bytes, then everything after it,
//! exactly as the client sent it; it answers `welcome <name>, worker <pid>`, then each line
//! as `<name>@<pid>: <line>`; `BYE` ends the session. A first line that is not a greeting gets
//! `ERR expected HELLO <name>` from the parent, and the connection is closed; a client that
//! says nothing is closed after `--greeting-timeout-ms`. The program runs until its standard
//! input closes.
//!
//! Compare `route_by_key`, which reads its key line in an application actor and hands the
//! socket over with `Parent::dispatch`: a handshake is shorter, and the parent counts, bounds
//! and times it out for you (`baton::handoff::handshake`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use baton::handoff::handshake::{HandshakeOptions, Peer, Reject, Route, Step};
use baton::handoff::{PeerCheck, Sticky};
use baton::prelude::*;
use clap::Parser;

/// A line protocol whose greeting, read in the parent, picks the worker.
#[derive(Parser)]
struct Flags {
    /// The address to listen on (port 0 picks a free one; the ready line shows it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7011")]
    listen: SocketAddr,
    /// How many worker processes.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = baton_examples::at_least_one)]
    workers: usize,
    /// How long a client has to send its greeting, in milliseconds.
    #[arg(long = "greeting-timeout-ms", value_name = "MS", default_value_t = 5000)]
    greeting_timeout_ms: u64,
}

/// The longest greeting line, newline included.
const MAX_GREETING: usize = 64;

/// The name in a greeting line (without its newline), if it is one.
fn greeted(line: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(line).ok()?.trim_end_matches('\r').strip_prefix("HELLO ")?.trim();
    (!name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
}

/// The parent's handshake, one per connection: wait for the first line, then route by the
/// name in it or refuse. Runs on the reactor thread, with every byte read so far.
fn greeting() -> impl FnMut(&[u8], Peer<'_>) -> Step + Send + 'static {
    |read: &[u8], _peer: Peer<'_>| match read.iter().position(|&b| b == b'\n') {
        None if read.len() >= MAX_GREETING => {
            Step::Reject(Reject { reason: "greeting too long", answer: b"ERR greeting too long\n".to_vec() })
        }
        None => Step::More,
        // Nothing consumed: the worker reads the greeting too, as the first line.
        Some(end) => match greeted(&read[..end]) {
            Some(name) => Step::Route(Route { key: Some(name.as_bytes().to_vec()), ..Route::default() }),
            None => Step::Reject(Reject { reason: "bad greeting", answer: b"ERR expected HELLO <name>\n".to_vec() }),
        },
    }
}

/// One client, as the worker sees it.
struct Session {
    conn: Connection,
    /// Set by the greeting, the first line.
    name: Option<String>,
    partial: Vec<u8>,
}

/// The worker's application: every session of this worker, on its reactor thread (it never
/// blocks). It writes every answer and closes, so a close never cuts an answer off.
#[derive(Default)]
struct Sessions {
    sessions: HashMap<ConnId, Session>,
}

enum Msg {
    Worker(WorkerEvent),
    Conn(ConnEvent),
}
baton::from_variants!(Msg::Worker(WorkerEvent), Msg::Conn(ConnEvent));

impl Sessions {
    fn line(&mut self, id: ConnId, line: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let pid = std::process::id();
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        match &s.name {
            // The parent checked the greeting; it is the first line here too.
            None => {
                let name = greeted(line).unwrap_or("stranger").to_string();
                let _ = s.conn.write(format!("welcome {name}, worker {pid}\n").as_bytes());
                s.name = Some(name);
            }
            Some(_) if text == "BYE" => {
                let _ = s.conn.write(b"bye\n");
                s.conn.close();
            }
            Some(name) => {
                let _ = s.conn.write(format!("{name}@{pid}: {text}\n").as_bytes());
            }
        }
    }
}

impl Actor for Sessions {
    type Message = Msg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            Msg::Worker(WorkerEvent::Incoming(incoming)) => {
                if let Ok(conn) = incoming.adopt(ctx.address(), ConnOptions::default()) {
                    self.sessions.insert(conn.id(), Session { conn, name: None, partial: Vec::new() });
                }
            }
            Msg::Worker(WorkerEvent::Drain { .. }) => {
                for s in self.sessions.values() {
                    let _ = s.conn.write(b"server going away\n");
                    s.conn.close();
                }
            }
            Msg::Conn(ConnEvent::Data(id, bytes)) => {
                let mut lines = Vec::new();
                if let Some(s) = self.sessions.get_mut(&id) {
                    for &b in &bytes {
                        if b == b'\n' {
                            lines.push(std::mem::take(&mut s.partial));
                        } else if s.partial.len() < 4096 {
                            s.partial.push(b);
                        }
                    }
                }
                for line in lines {
                    self.line(id, &line);
                }
            }
            Msg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some(s) = self.sessions.get(&id) {
                    s.conn.close();
                }
            }
            Msg::Conn(ConnEvent::Closed(id, _)) => {
                self.sessions.remove(&id);
            }
            Msg::Conn(_) => {}
        }
    }
}

fn main() -> std::io::Result<()> {
    let worker_channel = channel_from_env(PeerCheck::SameUid);
    baton_examples::init_logging("greeting");
    let rt = Runtime::new();
    let reactor = Reactor::start()?;
    if let Some(channel) = worker_channel {
        let app = rt.spawn_on(reactor.event_loop(), Sessions::default(), Mailbox::DEFAULT).expect("runtime is running");
        Worker::serve(channel?, &rt, &reactor, app, WorkerOptions::default())?.wait();
    } else {
        let flags = Flags::parse();
        let parent = Parent::builder()
            .spawn(flags.workers, WorkerCommand::current_exe()?)
            .policy(Sticky::default())
            .start(&rt, &reactor)?;
        // A name placed while its own worker is still starting would go to another one.
        if !parent.wait_ready(Duration::from_secs(10)) {
            log::warn!("greeting: workers slow to start; serving anyway");
        }
        let limits = HandshakeOptions {
            max_bytes: MAX_GREETING,
            timeout: Duration::from_millis(flags.greeting_timeout_ms),
            ..HandshakeOptions::default()
        };
        let listener = parent.listen_tcp_with(flags.listen, ListenOptions::default(), greeting, limits)?;
        let baton::transport::Address::Inet(addr) = listener.local_addr() else { unreachable!("a TCP listener") };
        println!("listening on {addr}");
        std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
        let _ = parent.drain(Duration::from_secs(5));
    }
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}
