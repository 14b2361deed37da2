//! The smallest complete dispatcher: a parent accepts, worker processes echo.
//!
//! ```sh
//! cargo run --example echo            # then: nc 127.0.0.1 7007 (flags: -- --help)
//! ```
//!
//! The same binary plays both parts: started by hand it is the parent; started by the parent
//! it finds its channel in the environment and becomes a worker. baton's log lines go to
//! stderr (`info` and above; `RUST_LOG=baton_handoff=debug` for more).

use baton::prelude::*;
use clap::Parser;

/// The smallest complete dispatcher: a parent accepts, worker processes echo.
#[derive(Parser)]
struct Flags {
    /// The address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7007")]
    listen: std::net::SocketAddr,
    /// How many worker processes.
    #[arg(long, default_value_t = 2, value_parser = baton_examples::at_least_one)]
    workers: usize,
}

/// The worker's application: one actor for all its connections.
#[derive(Default)]
struct Echo {
    conns: std::collections::HashMap<ConnId, Connection>,
}

/// Everything Echo hears. Each event source is given Echo's address and wraps its events
/// with these `From` conversions.
enum Msg {
    Worker(WorkerEvent),
    Conn(ConnEvent),
}
baton::from_variants!(Msg::Worker(WorkerEvent), Msg::Conn(ConnEvent));

impl Actor for Echo {
    type Message = Msg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            // A socket from the parent: make it a connection whose events come to us.
            Msg::Worker(WorkerEvent::Incoming(incoming)) => {
                if let Ok(conn) = incoming.adopt(ctx.address(), ConnOptions::default()) {
                    let _ = conn.write(format!("hello from worker {}\n", std::process::id()).as_bytes());
                    self.conns.insert(conn.id(), conn);
                }
            }
            Msg::Worker(WorkerEvent::Drain { .. }) => self.conns.values().for_each(Connection::close),
            Msg::Conn(ConnEvent::Data(id, bytes)) => {
                let _ = self.conns.get(&id).map(|conn| conn.write(&bytes));
            }
            // The client is done sending. This actor wrote every answer in earlier turns, so
            // closing loses none (close flushes first; see the pool_answers example otherwise).
            Msg::Conn(ConnEvent::ReadClosed(id)) => self.conns.get(&id).into_iter().for_each(Connection::close),
            Msg::Conn(ConnEvent::Closed(id, _)) => drop(self.conns.remove(&id)),
            Msg::Conn(_) => {}
        }
    }
}

fn main() -> std::io::Result<()> {
    let worker_channel = channel_from_env(baton::handoff::PeerCheck::SameUid);
    baton_examples::init_logging("echo");
    let rt = Runtime::new();
    let reactor = Reactor::start()?;
    if let Some(channel) = worker_channel {
        // Worker: serve what the parent hands over until told to drain (or orphaned). Echo never
        // blocks, so it runs on the reactor's thread: no hop between reading and answering.
        let app = rt.spawn_on(reactor.event_loop(), Echo::default(), Mailbox::DEFAULT).expect("runtime is running");
        Worker::serve(channel?, &rt, &reactor, app, WorkerOptions::default())?.wait();
    } else {
        let flags = Flags::parse();
        let parent = Parent::builder().spawn(flags.workers, WorkerCommand::current_exe()?).start(&rt, &reactor)?;
        let listener = parent.listen_tcp(flags.listen, ListenOptions::default())?;
        println!("echo on {}; Ctrl-C to stop", listener.local_addr());
        loop {
            std::thread::park();
        }
    }
    let _ = rt.shutdown(std::time::Duration::from_secs(5));
    reactor.stop();
    Ok(())
}
