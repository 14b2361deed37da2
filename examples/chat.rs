//! Back-pressure from a handler on the reactor's thread: a chat room that loses no line.
//!
//! ```sh
//! cargo run --example chat            # then, in two terminals: nc 127.0.0.1 7010
//! ```
//!
//! Every line a client sends goes to every client. The program runs until its standard input
//! closes.
//!
//! # The rule this example teaches
//!
//! A handler on an event loop (the reactor's thread) may never wait, so `send` to a full
//! mailbox fails at once with `SendError::Full` there, as `try_send` does everywhere. A reader
//! that forwards with `try_send` and carries on **drops** what did not fit: with 40 clients
//! sending 50 lines each to a room like this one, 42 % of the lines were lost. The reader
//! must push back on its source instead:
//!
//! 1. forward with [`Addr::try_send_notify`]; on `Full` it keeps the message and a callback;
//! 2. stop reading that connection ([`Connection::pause_reading`]): the client's TCP window
//!    fills and it slows down, which is what back-pressure means;
//! 3. when the room has made space, the callback runs (on the room's thread: it only posts a
//!    message), and the reader sends what it kept, in order, then resumes reading.
//!
//! The `Gate` below does this for every connection; the `Room` runs on the pool with a small
//! mailbox (`--room-mailbox`), so it is full often.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use baton::prelude::*;
use baton::runtime::TrySendError;
use baton::transport::Address;
use clap::Parser;

/// A chat room: every line a client sends goes to every client, none dropped.
#[derive(Parser)]
struct Flags {
    /// The address to listen on (port 0 picks a free one; the ready line shows it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7010")]
    listen: SocketAddr,
    /// The room's mailbox bound (small, so that back-pressure shows).
    #[arg(long = "room-mailbox", value_name = "N", default_value_t = 16, value_parser = baton_examples::at_least_one)]
    room_mailbox: usize,
}

/// What the room hears: a member joins (with the handle to write to it), says a line, leaves.
enum RoomMsg {
    Join(Connection),
    Line(Vec<u8>),
    Leave(ConnId),
}

/// The room, on the pool: it writes every line to every member, and closes a member's
/// connection when it leaves (the actor that writes closes: no line is cut off by a close).
#[derive(Default)]
struct Room {
    members: HashMap<ConnId, Connection>,
}

impl Actor for Room {
    type Message = RoomMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: RoomMsg) {
        match msg {
            RoomMsg::Join(conn) => {
                let _ = conn.write(format!("welcome {}\n", conn.id()).as_bytes());
                self.members.insert(conn.id(), conn);
            }
            RoomMsg::Line(line) => {
                for conn in self.members.values() {
                    // A member that reads far too slowly (four times the high-water mark
                    // buffered) misses lines rather than holding up the room or its memory.
                    let _ = conn.write(&line);
                }
            }
            RoomMsg::Leave(id) => {
                if let Some(conn) = self.members.remove(&id) {
                    conn.close();
                }
            }
        }
    }
}

/// What the gate hears: connections, their events, and "the room has space for this one".
enum GateMsg {
    Accepted(Accepted),
    Conn(ConnEvent),
    RoomHasSpace(ConnId),
}
baton::from_variants!(GateMsg::Accepted(Accepted), GateMsg::Conn(ConnEvent));

/// One member as the gate sees it.
struct Member {
    /// `None` once the connection has closed (what it said may still be waiting to go).
    conn: Option<Connection>,
    /// The line read so far.
    partial: Vec<u8>,
    /// Messages for the room that did not fit yet, in order.
    waiting: VecDeque<RoomMsg>,
    /// A callback is registered with the room: it will post `RoomHasSpace`.
    notified: bool,
    paused: bool,
}

/// The connections' owner, on the reactor's thread: splits lines and forwards them to the
/// room without ever dropping one.
struct Gate {
    reactor: Reactor,
    room: Addr<Room>,
    members: HashMap<ConnId, Member>,
}

impl Gate {
    /// Sends `id`'s waiting messages to the room while it has space; pauses the connection
    /// when it has not, and resumes it once everything went.
    fn forward(&mut self, ctx: &Context<Self>, id: ConnId) {
        let Some(m) = self.members.get_mut(&id) else { return };
        if m.notified {
            return; // the room will say when it has space; order is kept by waiting until then
        }
        while let Some(msg) = m.waiting.pop_front() {
            let me = ctx.address();
            match self.room.try_send_notify(msg, move || {
                // On the room's thread: post and return. The gate's mailbox is unbounded, so
                // this never fails while the gate runs (see `main` for why that is bounded).
                let _ = me.try_send(GateMsg::RoomHasSpace(id));
            }) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    m.waiting.push_front(msg);
                    m.notified = true;
                    if let (Some(conn), false) = (&m.conn, m.paused) {
                        conn.pause_reading();
                        m.paused = true;
                    }
                    return;
                }
                Err(TrySendError::Closed(_)) => m.waiting.clear(),
            }
        }
        match &m.conn {
            Some(conn) if m.paused => {
                conn.resume_reading();
                m.paused = false;
            }
            Some(_) => {}
            None => {
                self.members.remove(&id);
            }
        }
    }
}

impl Actor for Gate {
    type Message = GateMsg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: GateMsg) {
        match msg {
            GateMsg::Accepted(a) => {
                let Ok(conn) = self.reactor.adopt(a.stream, ConnOptions::default(), ctx.address()) else { return };
                let id = conn.id();
                let waiting = VecDeque::from([RoomMsg::Join(conn.clone())]);
                self.members.insert(
                    id,
                    Member { conn: Some(conn), partial: Vec::new(), waiting, notified: false, paused: false },
                );
                self.forward(ctx, id);
            }
            GateMsg::Conn(ConnEvent::Data(id, bytes)) => {
                let Some(m) = self.members.get_mut(&id) else { return };
                for &b in &bytes {
                    m.partial.push(b);
                    if b == b'\n' {
                        m.waiting.push_back(RoomMsg::Line(std::mem::take(&mut m.partial)));
                    } else if m.partial.len() > 4096 {
                        m.partial.clear(); // an endless line: dropped, not buffered without end
                    }
                }
                self.forward(ctx, id);
            }
            // The client is done talking; it leaves once its lines are out, and the room, which
            // writes to it, closes it.
            GateMsg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.waiting.push_back(RoomMsg::Leave(id));
                }
                self.forward(ctx, id);
            }
            GateMsg::Conn(ConnEvent::Closed(id, _)) => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.conn = None;
                    m.waiting.push_back(RoomMsg::Leave(id));
                }
                self.forward(ctx, id);
            }
            GateMsg::Conn(_) => {}
            GateMsg::RoomHasSpace(id) => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.notified = false;
                }
                self.forward(ctx, id);
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    baton_examples::init_logging("chat");
    let flags = Flags::parse();
    let rt = Runtime::new();
    let reactor = Reactor::start()?;
    let room = rt.try_spawn(Room::default(), Mailbox::Bounded(flags.room_mailbox)).expect("runtime is running");
    // Unbounded, so a callback's `RoomHasSpace` always gets in; bounded in practice, because a
    // connection whose lines wait is not read: the gate holds at most a read or two per member.
    let gate = Gate { reactor: reactor.clone(), room, members: HashMap::new() };
    let gate = rt.spawn_on(reactor.event_loop(), gate, Mailbox::Unbounded).expect("runtime is running");
    let listener = reactor.listen_tcp(flags.listen, ListenOptions::default(), gate)?;
    let Address::Inet(addr) = listener.local_addr() else { unreachable!("a TCP listener") };
    println!("listening on {addr}");
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}
