//! Actors embedded in a plain (non-async) program: a supervised counter that crashes on bad
//! input, is restarted in place, and keeps serving the same address.
//!
//! Run: `cargo run --release --example supervised_counter`

use std::time::Duration;

use baton_runtime::{Actor, ChildSpec, Context, Intensity, ReplyTo, Restart, Runtime, Strategy};
use clap::Parser;

/// A supervised counter that crashes on a negative input (the panic and its restart are
/// logged), is restarted in place and keeps serving the same address; it prints the totals
/// and exits. No options.
#[derive(Parser)]
struct Flags {}

enum Msg {
    Add(i64),
    Total(ReplyTo<i64>),
}

struct Counter {
    total: i64,
}

impl Actor for Counter {
    type Message = Msg;

    fn started(&mut self, ctx: &mut Context<Self>) {
        println!("counter {} started", ctx.id());
    }

    fn handle(&mut self, _ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            Msg::Add(n) if n < 0 => panic!("negative input {n}"),
            Msg::Add(n) => self.total += n,
            Msg::Total(reply) => {
                let _ = reply.send(self.total);
            }
        }
    }
}

fn main() {
    Flags::parse();
    // The restart is logged by the supervisor (target `baton_runtime`): the logger shows it.
    baton_examples::init_logging("supervised_counter");
    let rt = Runtime::new();
    let intensity = Intensity { max_restarts: 3, period: Duration::from_secs(5) };
    let sup = rt.supervisor(Strategy::OneForOne, intensity).expect("runtime is running");
    let counter = sup
        .start_child(ChildSpec::new(|| Counter { total: 0 }).restart(Restart::Permanent))
        .expect("runtime is running");

    for n in [5, 7, -1, 11] {
        counter.send(Msg::Add(n)).expect("counter accepts messages");
    }
    // The panic on -1 threw away the first instance's state; 11 went to the restarted one.
    match counter.ask(Msg::Total, Duration::from_secs(1)) {
        Ok(total) => println!("total after the restart: {total}"),
        Err(e) => eprintln!("no answer: {e}"),
    }
    if let Err(e) = rt.shutdown(Duration::from_secs(5)) {
        eprintln!("shutdown: {e}");
        std::process::exit(1);
    }
}
