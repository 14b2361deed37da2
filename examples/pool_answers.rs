//! Answering connections from pool actors, and closing each through the actor that writes.
//!
//! ```sh
//! cargo run --example pool_answers            # then: printf '1000\n20000\n' | nc -N 127.0.0.1 7009
//! ```
//!
//! Each line a client sends is a number `n`; the answer is `n <primes up to n>`, counted on a
//! pool thread (CPU work has no place on the reactor's thread). The program runs until its
//! standard input closes.
//!
//! # The rule this example teaches
//!
//! **Close a connection from the actor that writes its answers.** Every event of a connection
//! goes to one owner, in order: `Data`, then `ReadClosed` once the client has shut down its
//! side (`nc -N`, `shutdown(SHUT_WR)`, an HTTP/1.0 client), then `Closed`. `close()` flushes
//! what was written before it, so an owner that writes its own answers may close on
//! `ReadClosed`: every answer was written in an earlier turn.
//!
//! The trap is an owner that hands the work to another actor and closes on `ReadClosed`
//! itself: the other actor's answers come after the close, and are lost (`write` says the
//! connection is closed). A client that half-closes after its last request then sees fewer
//! answers than it asked for. Two ways out, both ending with the writer closing:
//!
//! - make the actor that answers the owner (this example: one pool actor per connection,
//!   adopting the socket in its own `started`, so `Data` and `ReadClosed` reach it in order
//!   and the transport stops reading while its mailbox is full);
//! - or, with one owner and separate answerers, send the answerer a "close when done"
//!   message on `ReadClosed`: it queues behind the work, and the answerer closes after its
//!   last write.
//!
//! In a handoff worker the same actor adopts an [`Incoming`](baton::handoff::Incoming)
//! instead: `incoming.adopt(ctx.address(), options)` in its `started`.

use std::net::SocketAddr;
use std::time::Duration;

use baton::prelude::*;
use baton::transport::{Address, Stream};
use clap::Parser;

/// Answering connections from pool actors; each line `n` gets `n <primes up to n>`.
#[derive(Parser)]
struct Flags {
    /// The address to listen on (port 0 picks a free one; the ready line shows it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7009")]
    listen: SocketAddr,
}

/// Accepts on the reactor's thread and gives each connection a pool actor of its own.
struct Acceptor {
    reactor: Reactor,
}

impl Actor for Acceptor {
    type Message = Accepted;
    fn handle(&mut self, ctx: &mut Context<Self>, accepted: Accepted) {
        let answerer =
            Answerer { reactor: self.reactor.clone(), stream: Some(accepted.stream), conn: None, line: Vec::new() };
        // On the pool; a bounded mailbox, so a client that sends faster than its answers are
        // counted is paused by the transport instead of queueing without end.
        if let Err(e) = ctx.spawn(answerer, Mailbox::DEFAULT) {
            log::warn!("pool_answers: no actor for a connection: {e}");
        }
    }
}

/// One connection's owner, on a pool thread: it reads, answers, and closes.
struct Answerer {
    reactor: Reactor,
    /// The socket until `started` adopts it.
    stream: Option<Stream>,
    conn: Option<Connection>,
    /// The line read so far.
    line: Vec<u8>,
}

impl Answerer {
    fn answer(&self, line: &[u8]) {
        let Some(conn) = &self.conn else { return };
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let answer = match text.parse::<u32>() {
            Ok(n) if n <= 1_000_000 => format!("{n} {}\n", primes_up_to(n)),
            _ => format!("{text} ERR expected a number up to 1000000\n"),
        };
        let _ = conn.write(answer.as_bytes());
    }
}

impl Actor for Answerer {
    type Message = ConnEvent;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Adopted in the owner's own turn: no event can reach it before `conn` is stored.
        let stream = self.stream.take().expect("adopted once");
        match self.reactor.adopt(stream, ConnOptions::default(), ctx.address()) {
            Ok(conn) => self.conn = Some(conn),
            Err(e) => {
                log::warn!("pool_answers: adopt: {e}");
                ctx.stop();
            }
        }
    }

    fn handle(&mut self, ctx: &mut Context<Self>, event: ConnEvent) {
        match event {
            ConnEvent::Data(_, bytes) => {
                for &b in &bytes {
                    if b == b'\n' {
                        let line = std::mem::take(&mut self.line);
                        self.answer(&line);
                    } else if self.line.len() < 64 {
                        self.line.push(b);
                    }
                }
            }
            // Every answer was written in an earlier turn (or just now, for a last line with no
            // newline), by this actor: `close` sends them all before the FIN.
            ConnEvent::ReadClosed(_) => {
                let line = std::mem::take(&mut self.line);
                self.answer(&line);
                if let Some(conn) = &self.conn {
                    conn.close();
                }
            }
            ConnEvent::HighWater(_) => self.conn.iter().for_each(Connection::pause_reading),
            ConnEvent::LowWater(_) => self.conn.iter().for_each(Connection::resume_reading),
            ConnEvent::Closed(..) => ctx.stop(),
        }
    }
}

/// How many primes are at most `n`, by trial division: deliberately CPU work.
fn primes_up_to(n: u32) -> u32 {
    (2..=n).filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0)).count() as u32
}

fn main() -> std::io::Result<()> {
    baton_examples::init_logging("pool_answers");
    let flags = Flags::parse();
    let rt = Runtime::new();
    let reactor = Reactor::start()?;
    let acceptor = rt
        .spawn_on(reactor.event_loop(), Acceptor { reactor: reactor.clone() }, Mailbox::DEFAULT)
        .expect("runtime is running");
    let listener = reactor.listen_tcp(flags.listen, ListenOptions::default(), acceptor)?;
    let Address::Inet(addr) = listener.local_addr() else { unreachable!("a TCP listener") };
    println!("listening on {addr}");
    // Until standard input closes (or the process is killed).
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}
