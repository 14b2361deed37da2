//! The Savina micro benchmarks on baton and on the actor runtimes its users would otherwise
//! pick, in one criterion run, with the same parameters and the same checks for everyone.
//!
//! Five contenders, each with its own module here:
//!
//! * `baton_pool`: baton actors on a [`baton_runtime::Runtime`] of [`THREADS`] pool threads;
//! * `baton_loop`: the same actors on the event loop of a `baton_transport::Reactor` (one
//!   thread), as a connection's protocol actors are placed;
//! * `actix`: actix actors on one `actix::System` (one thread, which is how actix runs);
//! * `ractor`, `kameo`: on a multi-threaded tokio runtime of [`THREADS`] workers.
//!
//! Every mailbox is unbounded (actix's `do_send`, ractor's only kind, kameo's
//! `mailbox::unbounded`, baton's `Mailbox::Unbounded`). An iteration is one round of the
//! protocol: the bench thread sends the start message(s), the actors report the end of the
//! round through a crossbeam channel with a figure, and the bench thread checks the figure
//! (round trips done, total counted, meetings held) before the next round. Setting up the
//! actors and tearing them down are outside the measured time. Each group reports
//! `Throughput::Elements`, so ns per element is the median time divided by that count.
//!
//! Run it with `cargo bench -p savina-peers`; the figures are in `BENCHMARKS.md`.

use baton_benches::{group, timed, ROUND_TIMEOUT};
use criterion::Criterion;
use crossbeam_channel::Receiver;

mod actix_peer;
mod baton_peer;
mod kameo_peer;
mod ractor_peer;

/// Pool threads of baton and worker threads of tokio: one per core of the 2-vCPU benchmark
/// machine. actix and baton's event loop run on one thread by design.
pub const THREADS: usize = 2;

/// PingPong: round trips per iteration.
pub const PING_PONG_ROUNDS: u64 = 20_000;
/// Counting: messages one producer actor sends the counter per iteration.
pub const COUNT_MESSAGES: u64 = 100_000;
/// ThreadRing: actors in the ring, and token hops per iteration.
pub const RING_SIZE: usize = 100;
pub const RING_HOPS: u64 = 10_000;
/// Chameneos: chameneos meeting through one mall, and meetings per iteration.
pub const CHAMENEOS: usize = 100;
pub const MEETINGS: u64 = 10_000;
/// Big: actors pinging random others, and pings each sends (each answered) per iteration.
pub const BIG_ACTORS: usize = 120;
pub const BIG_PINGS: u64 = 500;
/// Fork-Join (throughput): workers, and messages the bench thread sends each per iteration.
pub const FJ_WORKERS: usize = 60;
pub const FJ_MESSAGES: u64 = 1_000;

/// How a contender's actors for one benchmark are driven: `round` runs one round and checks
/// it, `finish` tears the actors (and their runtime) down.
pub struct Bench {
    pub round: Box<dyn FnMut()>,
    pub finish: Box<dyn FnOnce()>,
}

/// Waits for the next figure a round reports, panicking (instead of hanging) after
/// [`ROUND_TIMEOUT`].
pub fn figure(done: &Receiver<u64>, what: &str) -> u64 {
    done.recv_timeout(ROUND_TIMEOUT).unwrap_or_else(|e| panic!("{what}: round did not finish: {e}"))
}

/// Sums the figures of `n` actors that each report once per round.
pub fn figures(done: &Receiver<u64>, n: usize, what: &str) -> u64 {
    (0..n).map(|_| figure(done, what)).sum()
}

/// A small xorshift generator, so that every contender's Big actors pick the same partners.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A random index below `n` other than `me`.
    pub fn other_than(&mut self, me: usize, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let to = (self.0 % (n as u64 - 1)) as usize;
        if to >= me {
            to + 1
        } else {
            to
        }
    }
}

/// The per-message work of Savina's fjthrput: a little floating-point math.
pub fn fj_compute(x: f64) -> f64 {
    let mut v = x;
    for _ in 0..4 {
        v = (v.sin() * v.sin() + v.cos() * v.cos()).sqrt() + 1.0;
    }
    v
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Color {
    Red,
    Yellow,
    Blue,
}

impl Color {
    pub fn initial(i: usize) -> Color {
        [Color::Red, Color::Yellow, Color::Blue][i % 3]
    }

    pub fn complement(self, other: Color) -> Color {
        match (self, other) {
            (a, b) if a == b => a,
            (Color::Red, Color::Yellow) | (Color::Yellow, Color::Red) => Color::Blue,
            (Color::Red, Color::Blue) | (Color::Blue, Color::Red) => Color::Yellow,
            _ => Color::Red,
        }
    }
}

/// One benchmark's setup for every contender, in the order they run.
type Contenders = [(&'static str, fn() -> Bench); 5];

fn run_group(c: &mut Criterion, name: &str, elements: u64, contenders: Contenders) {
    let mut g = group(c, name, elements);
    for (contender, setup) in contenders {
        let mut bench = setup();
        g.bench_function(contender, |b| b.iter_custom(|iters| timed(iters, &mut bench.round)));
        (bench.finish)();
    }
    g.finish();
}

macro_rules! contenders {
    ($bench:ident) => {
        [
            ("baton_pool", || baton_peer::$bench(baton_peer::Placement::Pool)),
            ("baton_loop", || baton_peer::$bench(baton_peer::Placement::EventLoop)),
            ("actix", actix_peer::$bench),
            ("ractor", ractor_peer::$bench),
            ("kameo", kameo_peer::$bench),
        ]
    };
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    run_group(&mut c, "PingPong", PING_PONG_ROUNDS, contenders!(ping_pong));
    run_group(&mut c, "Counting", COUNT_MESSAGES, contenders!(counting));
    run_group(&mut c, "ThreadRing", RING_HOPS, contenders!(thread_ring));
    run_group(&mut c, "Chameneos", MEETINGS, contenders!(chameneos));
    run_group(&mut c, "Big", BIG_ACTORS as u64 * BIG_PINGS, contenders!(big));
    run_group(&mut c, "ForkJoin", FJ_WORKERS as u64 * FJ_MESSAGES, contenders!(fork_join));
    c.final_summary();
}
