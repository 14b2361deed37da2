//! Savina micro benchmarks for `baton-runtime`.
//!
//! Every criterion group holds two benchmarks doing the same work:
//!
//! * `baton`: actors on one [`Runtime`] with [`THREADS`] pool threads, created once per
//!   benchmark function (outside the measured iterations) and shut down at its end;
//! * `crossbeam_threads`: the same protocol on raw `crossbeam-channel` channels and
//!   `std::thread`s, one thread where the actor version has one actor.
//!
//! An iteration is one complete round of the protocol; its end is signalled back to the
//! bench thread through a crossbeam channel (or an ask). Each group sets
//! `Throughput::Elements` to the messages (or hops, meetings, actors) of one round, so ns per
//! element is the median time divided by that count.
//!
//! Before the criterion groups, `main` prints the heap bytes held per idle actor, measured
//! with the counting global allocator below. See `BENCHMARKS.md` at the workspace root.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use baton_benches::{group, live_bytes, set_counting, timed, wait, CountingAlloc, ROUND_TIMEOUT};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_runtime::{Actor, Addr, Context, Mailbox, ReplyTo, Runtime};
use criterion::{criterion_group, Criterion};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

// ---- counting allocator ------------------------------------------------------------------

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---- shared settings ---------------------------------------------------------------------

/// Pool threads of every runtime here: one per core of the 2-vCPU benchmark machine.
const THREADS: usize = 2;
const SHUTDOWN: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    Runtime::builder().threads(THREADS).build()
}

fn shutdown(rt: Runtime, what: &str) {
    rt.shutdown(SHUTDOWN).unwrap_or_else(|e| panic!("{what}: runtime shutdown: {e}"));
}

/// One channel per baseline thread: the senders, and the receivers the threads take.
type Channels<M> = (Vec<Sender<M>>, Vec<Receiver<M>>);

fn join_all(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        t.join().expect("baseline thread panicked");
    }
}

/// A small xorshift generator, so no `rand` dependency is needed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

// ---- PingPong ----------------------------------------------------------------------------

/// Round trips per iteration.
const PING_PONG_ROUNDS: u64 = 20_000;

enum PingMsg {
    Start(u64, Sender<()>),
    Pong,
}

struct Ping {
    pong: Addr<Pong>,
    left: u64,
    done: Option<Sender<()>>,
}

impl Actor for Ping {
    type Message = PingMsg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: PingMsg) {
        match msg {
            PingMsg::Start(n, done) => {
                self.left = n;
                self.done = Some(done);
                self.pong.send(PongMsg::Ping(ctx.address())).expect("pong closed");
            }
            PingMsg::Pong => {
                self.left -= 1;
                if self.left == 0 {
                    let _ = self.done.take().expect("a round is running").send(());
                } else {
                    self.pong.send(PongMsg::Ping(ctx.address())).expect("pong closed");
                }
            }
        }
    }
}

enum PongMsg {
    /// The first ping of a round tells Pong where to answer; later ones reuse it.
    Ping(Addr<Ping>),
}

struct Pong {
    ping: Option<Addr<Ping>>,
}

impl Actor for Pong {
    type Message = PongMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: PongMsg) {
        let PongMsg::Ping(from) = msg;
        let ping = self.ping.get_or_insert(from);
        ping.send(PingMsg::Pong).expect("ping closed");
    }
}

fn ping_pong(c: &mut Criterion) {
    let mut g = group(c, "PingPong", PING_PONG_ROUNDS);
    {
        let rt = runtime();
        let pong = rt.spawn(Pong { ping: None });
        let ping = rt.spawn(Ping { pong, left: 0, done: None });
        let (done_tx, done_rx) = bounded(1);
        g.bench_function("baton", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    ping.send(PingMsg::Start(PING_PONG_ROUNDS, done_tx.clone())).expect("ping closed");
                    wait(&done_rx, "PingPong/baton");
                })
            })
        });
        shutdown(rt, "PingPong");
    }
    {
        // Two threads play ping and pong; the bench thread only starts a round and waits.
        let (to_ping, ping_rx) = bounded::<Option<u64>>(1024);
        let (to_pong, pong_rx) = bounded::<bool>(1024);
        let (pong_tx, from_pong) = bounded::<()>(1024);
        let (done_tx, done_rx) = bounded(1);
        let pong = std::thread::spawn(move || {
            while let Ok(true) = pong_rx.recv() {
                pong_tx.send(()).unwrap();
            }
        });
        let ping = std::thread::spawn(move || {
            while let Ok(Some(n)) = ping_rx.recv() {
                for _ in 0..n {
                    to_pong.send(true).unwrap();
                    from_pong.recv().unwrap();
                }
                done_tx.send(()).unwrap();
            }
            to_pong.send(false).unwrap();
        });
        g.bench_function("crossbeam_threads", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    to_ping.send(Some(PING_PONG_ROUNDS)).unwrap();
                    wait(&done_rx, "PingPong/crossbeam_threads");
                })
            })
        });
        to_ping.send(None).unwrap();
        join_all(vec![ping, pong]);
    }
    g.finish();
}

// ---- Counting ----------------------------------------------------------------------------

/// Messages counted per iteration.
const COUNT_MESSAGES: u64 = 100_000;

enum CountMsg {
    Inc,
    /// Replies with the count so far and resets it.
    Take(ReplyTo<u64>),
}

struct CountingActor {
    count: u64,
}

impl Actor for CountingActor {
    type Message = CountMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: CountMsg) {
        match msg {
            CountMsg::Inc => self.count += 1,
            CountMsg::Take(reply) => {
                let _ = reply.send(std::mem::take(&mut self.count));
            }
        }
    }
}

enum RawCountMsg {
    Inc,
    Take(Sender<u64>),
    Stop,
}

fn counting(c: &mut Criterion) {
    let mut g = group(c, "Counting", COUNT_MESSAGES);
    {
        // The bench thread is the producer; the counter has the default bounded mailbox (1024),
        // so the producer waits whenever it gets ahead.
        let rt = runtime();
        let counter = rt.spawn(CountingActor { count: 0 });
        g.bench_function("baton", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for _ in 0..COUNT_MESSAGES {
                        counter.send(CountMsg::Inc).expect("counter closed");
                    }
                    let total = counter.ask(CountMsg::Take, ROUND_TIMEOUT).expect("counter answers");
                    assert_eq!(total, COUNT_MESSAGES);
                })
            })
        });
        shutdown(rt, "Counting");
    }
    {
        let (tx, rx) = bounded::<RawCountMsg>(1024);
        let counter = std::thread::spawn(move || {
            let mut count = 0u64;
            loop {
                match rx.recv().unwrap() {
                    RawCountMsg::Inc => count += 1,
                    RawCountMsg::Take(reply) => {
                        let _ = reply.send(std::mem::take(&mut count));
                    }
                    RawCountMsg::Stop => break,
                }
            }
        });
        g.bench_function("crossbeam_threads", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for _ in 0..COUNT_MESSAGES {
                        tx.send(RawCountMsg::Inc).unwrap();
                    }
                    let (reply, answer) = bounded(1);
                    tx.send(RawCountMsg::Take(reply)).unwrap();
                    let total = answer.recv_timeout(ROUND_TIMEOUT).expect("counter answers");
                    assert_eq!(total, COUNT_MESSAGES);
                })
            })
        });
        tx.send(RawCountMsg::Stop).unwrap();
        join_all(vec![counter]);
    }
    g.finish();
}

// ---- ThreadRing --------------------------------------------------------------------------

const RING_SIZE: usize = 100;
/// Token hops per iteration.
const RING_HOPS: u64 = 10_000;

enum RingMsg {
    Link(Addr<RingNode>),
    /// Hops still to go; the node that receives 0 ends the round.
    Token(u64),
}

struct RingNode {
    next: Option<Addr<RingNode>>,
    done: Sender<()>,
}

impl Actor for RingNode {
    type Message = RingMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: RingMsg) {
        match msg {
            RingMsg::Link(next) => self.next = Some(next),
            RingMsg::Token(0) => {
                let _ = self.done.send(());
            }
            RingMsg::Token(n) => {
                self.next.as_ref().expect("linked").send(RingMsg::Token(n - 1)).expect("next closed");
            }
        }
    }
}

fn thread_ring(c: &mut Criterion) {
    let mut g = group(c, "ThreadRing", RING_HOPS);
    {
        let rt = runtime();
        let (done_tx, done_rx) = bounded(1);
        let nodes: Vec<Addr<RingNode>> =
            (0..RING_SIZE).map(|_| rt.spawn(RingNode { next: None, done: done_tx.clone() })).collect();
        for (i, node) in nodes.iter().enumerate() {
            node.send(RingMsg::Link(nodes[(i + 1) % RING_SIZE].clone())).unwrap();
        }
        g.bench_function("baton", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    nodes[0].send(RingMsg::Token(RING_HOPS)).unwrap();
                    wait(&done_rx, "ThreadRing/baton");
                })
            })
        });
        drop(nodes);
        shutdown(rt, "ThreadRing");
    }
    {
        let (done_tx, done_rx) = bounded(1);
        let (txs, rxs): Channels<Option<u64>> = (0..RING_SIZE).map(|_| bounded(1024)).unzip();
        let threads: Vec<JoinHandle<()>> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                let next = txs[(i + 1) % RING_SIZE].clone();
                let done = done_tx.clone();
                std::thread::spawn(move || {
                    while let Ok(Some(n)) = rx.recv() {
                        if n == 0 {
                            let _ = done.send(());
                        } else {
                            next.send(Some(n - 1)).unwrap();
                        }
                    }
                })
            })
            .collect();
        g.bench_function("crossbeam_threads", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    txs[0].send(Some(RING_HOPS)).unwrap();
                    wait(&done_rx, "ThreadRing/crossbeam_threads");
                })
            })
        });
        for tx in &txs {
            tx.send(None).unwrap();
        }
        join_all(threads);
    }
    g.finish();
}

// ---- Fork-Join throughput ----------------------------------------------------------------

const FJ_WORKERS: usize = 60;
/// Messages each worker handles per iteration.
const FJ_MESSAGES: u64 = 1_000;

/// The per-message work of Savina's fjthrput: a little floating-point math.
fn fj_compute(x: f64) -> f64 {
    let mut v = x;
    for _ in 0..4 {
        v = (v.sin() * v.sin() + v.cos() * v.cos()).sqrt() + 1.0;
    }
    v
}

struct FjWorker {
    seen: u64,
    done: Sender<()>,
}

impl Actor for FjWorker {
    type Message = f64;
    fn handle(&mut self, _ctx: &mut Context<Self>, x: f64) {
        black_box(fj_compute(x));
        self.seen += 1;
        if self.seen == FJ_MESSAGES {
            self.seen = 0;
            let _ = self.done.send(());
        }
    }
}

fn fork_join_throughput(c: &mut Criterion) {
    let mut g = group(c, "ForkJoinThroughput", FJ_WORKERS as u64 * FJ_MESSAGES);
    {
        let rt = runtime();
        let (done_tx, done_rx) = bounded(FJ_WORKERS);
        let workers: Vec<Addr<FjWorker>> =
            (0..FJ_WORKERS).map(|_| rt.spawn(FjWorker { seen: 0, done: done_tx.clone() })).collect();
        g.bench_function("baton", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for _ in 0..FJ_MESSAGES {
                        for w in &workers {
                            w.send(37.2).expect("worker closed");
                        }
                    }
                    for _ in 0..FJ_WORKERS {
                        wait(&done_rx, "ForkJoinThroughput/baton");
                    }
                })
            })
        });
        drop(workers);
        shutdown(rt, "ForkJoinThroughput");
    }
    {
        let (done_tx, done_rx) = bounded(FJ_WORKERS);
        let mut txs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..FJ_WORKERS {
            let (tx, rx) = bounded::<Option<f64>>(1024);
            let done = done_tx.clone();
            threads.push(std::thread::spawn(move || {
                let mut seen = 0;
                while let Ok(Some(x)) = rx.recv() {
                    black_box(fj_compute(x));
                    seen += 1;
                    if seen == FJ_MESSAGES {
                        seen = 0;
                        let _ = done.send(());
                    }
                }
            }));
            txs.push(tx);
        }
        g.bench_function("crossbeam_threads", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for _ in 0..FJ_MESSAGES {
                        for tx in &txs {
                            tx.send(Some(37.2)).unwrap();
                        }
                    }
                    for _ in 0..FJ_WORKERS {
                        wait(&done_rx, "ForkJoinThroughput/crossbeam_threads");
                    }
                })
            })
        });
        for tx in &txs {
            tx.send(None).unwrap();
        }
        join_all(threads);
    }
    g.finish();
}

// ---- Fork-Join creation ------------------------------------------------------------------

/// Actors (or threads) created per iteration, each handling one message.
const FJ_CREATE: u64 = 1_000;

/// Handles one message, stops, and reports from `stopped`, so the round includes teardown.
struct OneShot {
    done: Sender<()>,
}

impl Actor for OneShot {
    type Message = f64;
    fn handle(&mut self, ctx: &mut Context<Self>, x: f64) {
        black_box(fj_compute(x));
        ctx.stop();
    }
    fn stopped(&mut self, _reason: &baton_runtime::ExitReason) {
        let _ = self.done.send(());
    }
}

fn fork_join_creation(c: &mut Criterion) {
    let mut g = group(c, "ForkJoinCreation", FJ_CREATE);
    {
        let rt = runtime();
        let (done_tx, done_rx) = unbounded();
        g.bench_function("baton", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for _ in 0..FJ_CREATE {
                        let a = rt.try_spawn(OneShot { done: done_tx.clone() }, Mailbox::Bounded(1)).expect("spawn");
                        a.send(37.2).expect("one-shot closed");
                    }
                    for _ in 0..FJ_CREATE {
                        wait(&done_rx, "ForkJoinCreation/baton");
                    }
                })
            })
        });
        shutdown(rt, "ForkJoinCreation");
    }
    {
        let (done_tx, done_rx) = unbounded();
        g.bench_function("crossbeam_threads", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for _ in 0..FJ_CREATE {
                        let (tx, rx) = bounded::<f64>(1);
                        let done = done_tx.clone();
                        // Detached: the thread reports as its last act, like `stopped` above.
                        std::thread::spawn(move || {
                            black_box(fj_compute(rx.recv().unwrap()));
                            let _ = done.send(());
                        });
                        tx.send(37.2).unwrap();
                    }
                    for _ in 0..FJ_CREATE {
                        wait(&done_rx, "ForkJoinCreation/crossbeam_threads");
                    }
                })
            })
        });
    }
    g.finish();
}

// ---- Big ---------------------------------------------------------------------------------

const BIG_ACTORS: usize = 120;
/// Pings each actor sends (each answered by a pong) per iteration.
const BIG_PINGS: u64 = 500;

enum BigMsg {
    Neighbours(Arc<Vec<Addr<BigActor>>>),
    Start(u64),
    Ping(usize),
    Pong,
}

struct BigActor {
    me: usize,
    all: Option<Arc<Vec<Addr<BigActor>>>>,
    left: u64,
    rng: XorShift,
    done: Sender<()>,
}

impl BigActor {
    fn ping_someone(&mut self) {
        self.left -= 1;
        let all = self.all.as_ref().expect("neighbours set");
        let mut to = self.rng.below(all.len() - 1);
        if to >= self.me {
            to += 1;
        }
        all[to].send(BigMsg::Ping(self.me)).expect("neighbour closed");
    }
}

impl Actor for BigActor {
    type Message = BigMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: BigMsg) {
        match msg {
            BigMsg::Neighbours(all) => self.all = Some(all),
            BigMsg::Start(n) => {
                self.left = n;
                self.ping_someone();
            }
            BigMsg::Ping(from) => {
                self.all.as_ref().expect("neighbours set")[from].send(BigMsg::Pong).expect("neighbour closed");
            }
            BigMsg::Pong if self.left == 0 => {
                let _ = self.done.send(());
            }
            BigMsg::Pong => self.ping_someone(),
        }
    }
}

enum RawBigMsg {
    Start(u64),
    Ping(usize),
    Pong,
    Stop,
}

fn big(c: &mut Criterion) {
    let mut g = group(c, "Big", BIG_ACTORS as u64 * BIG_PINGS);
    {
        let rt = runtime();
        let (done_tx, done_rx) = bounded(BIG_ACTORS);
        let actors: Vec<Addr<BigActor>> = (0..BIG_ACTORS)
            .map(|me| {
                let actor = BigActor { me, all: None, left: 0, rng: XorShift::new(me as u64), done: done_tx.clone() };
                rt.try_spawn(actor, Mailbox::Unbounded).expect("spawn")
            })
            .collect();
        let all = Arc::new(actors);
        for a in all.iter() {
            a.send(BigMsg::Neighbours(all.clone())).unwrap();
        }
        g.bench_function("baton", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for a in all.iter() {
                        a.send(BigMsg::Start(BIG_PINGS)).unwrap();
                    }
                    for _ in 0..BIG_ACTORS {
                        wait(&done_rx, "Big/baton");
                    }
                })
            })
        });
        drop(all);
        shutdown(rt, "Big");
    }
    {
        let (done_tx, done_rx) = bounded(BIG_ACTORS);
        let (txs, rxs): Channels<RawBigMsg> = (0..BIG_ACTORS).map(|_| unbounded()).unzip();
        let threads: Vec<JoinHandle<()>> = rxs
            .into_iter()
            .enumerate()
            .map(|(me, rx)| {
                let all = txs.clone();
                let done = done_tx.clone();
                std::thread::spawn(move || {
                    let mut rng = XorShift::new(me as u64);
                    let mut left = 0u64;
                    let mut ping_someone = |left: &mut u64| {
                        *left -= 1;
                        let mut to = rng.below(all.len() - 1);
                        if to >= me {
                            to += 1;
                        }
                        all[to].send(RawBigMsg::Ping(me)).unwrap();
                    };
                    loop {
                        match rx.recv().unwrap() {
                            RawBigMsg::Start(n) => {
                                left = n;
                                ping_someone(&mut left);
                            }
                            RawBigMsg::Ping(from) => all[from].send(RawBigMsg::Pong).unwrap(),
                            RawBigMsg::Pong if left == 0 => {
                                let _ = done.send(());
                            }
                            RawBigMsg::Pong => ping_someone(&mut left),
                            RawBigMsg::Stop => break,
                        }
                    }
                })
            })
            .collect();
        g.bench_function("crossbeam_threads", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for tx in &txs {
                        tx.send(RawBigMsg::Start(BIG_PINGS)).unwrap();
                    }
                    for _ in 0..BIG_ACTORS {
                        wait(&done_rx, "Big/crossbeam_threads");
                    }
                })
            })
        });
        for tx in &txs {
            tx.send(RawBigMsg::Stop).unwrap();
        }
        join_all(threads);
    }
    g.finish();
}

// ---- Chameneos ---------------------------------------------------------------------------

const CHAMENEOS: usize = 100;
/// Meetings the mall arranges per iteration.
const MEETINGS: u64 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Color {
    Red,
    Yellow,
    Blue,
}

impl Color {
    fn initial(i: usize) -> Color {
        [Color::Red, Color::Yellow, Color::Blue][i % 3]
    }

    fn complement(self, other: Color) -> Color {
        match (self, other) {
            (a, b) if a == b => a,
            (Color::Red, Color::Yellow) | (Color::Yellow, Color::Red) => Color::Blue,
            (Color::Red, Color::Blue) | (Color::Blue, Color::Red) => Color::Yellow,
            _ => Color::Red,
        }
    }
}

enum MallMsg {
    Chameneos(Vec<Addr<Chameneo>>),
    Run(u64, Sender<u64>),
    Meet(Addr<Chameneo>, Color),
    /// A chameneo that was turned away reports its meetings.
    Faded(u64),
}

struct Mall {
    chameneos: Vec<Addr<Chameneo>>,
    left: u64,
    waiting: Option<(Addr<Chameneo>, Color)>,
    faded: usize,
    total: u64,
    done: Option<Sender<u64>>,
}

impl Actor for Mall {
    type Message = MallMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: MallMsg) {
        match msg {
            MallMsg::Chameneos(all) => self.chameneos = all,
            MallMsg::Run(meetings, done) => {
                self.left = meetings;
                self.faded = 0;
                self.total = 0;
                self.done = Some(done);
                for c in &self.chameneos {
                    c.send(ChameneoMsg::Start).expect("chameneo closed");
                }
            }
            MallMsg::Meet(from, _) if self.left == 0 => {
                from.send(ChameneoMsg::Exit).expect("chameneo closed");
            }
            MallMsg::Meet(from, color) => match self.waiting.take() {
                None => self.waiting = Some((from, color)),
                Some((other, other_color)) => {
                    self.left -= 1;
                    from.send(ChameneoMsg::Meeting(other, other_color)).expect("chameneo closed");
                }
            },
            MallMsg::Faded(n) => {
                self.total += n;
                self.faded += 1;
                if self.faded == self.chameneos.len() {
                    let _ = self.done.take().expect("a round is running").send(self.total);
                }
            }
        }
    }
}

enum ChameneoMsg {
    Start,
    /// Meet this partner of this color; tell it the new color.
    Meeting(Addr<Chameneo>, Color),
    Change(Color),
    Exit,
}

struct Chameneo {
    mall: Addr<Mall>,
    initial: Color,
    color: Color,
    meetings: u64,
}

impl Actor for Chameneo {
    type Message = ChameneoMsg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: ChameneoMsg) {
        match msg {
            ChameneoMsg::Start => {
                self.color = self.initial;
                self.meetings = 0;
            }
            ChameneoMsg::Meeting(partner, color) => {
                self.color = self.color.complement(color);
                self.meetings += 1;
                partner.send(ChameneoMsg::Change(self.color)).expect("partner closed");
            }
            ChameneoMsg::Change(color) => {
                self.color = color;
                self.meetings += 1;
            }
            ChameneoMsg::Exit => {
                self.mall.send(MallMsg::Faded(self.meetings)).expect("mall closed");
                return;
            }
        }
        self.mall.send(MallMsg::Meet(ctx.address(), self.color)).expect("mall closed");
    }
}

enum RawMallMsg {
    Run(u64, Sender<u64>),
    Meet(Sender<RawChameneoMsg>, Color),
    Faded(u64),
    Stop,
}

enum RawChameneoMsg {
    Start,
    Meeting(Sender<RawChameneoMsg>, Color),
    Change(Color),
    Exit,
    Stop,
}

fn chameneos(c: &mut Criterion) {
    let mut g = group(c, "Chameneos", MEETINGS);
    {
        let rt = runtime();
        let mall = rt
            .try_spawn(
                Mall { chameneos: Vec::new(), left: 0, waiting: None, faded: 0, total: 0, done: None },
                Mailbox::Unbounded,
            )
            .expect("spawn");
        let all: Vec<Addr<Chameneo>> = (0..CHAMENEOS)
            .map(|i| {
                let ch =
                    Chameneo { mall: mall.clone(), initial: Color::initial(i), color: Color::initial(i), meetings: 0 };
                rt.try_spawn(ch, Mailbox::Unbounded).expect("spawn")
            })
            .collect();
        mall.send(MallMsg::Chameneos(all)).unwrap();
        let (done_tx, done_rx) = bounded(1);
        g.bench_function("baton", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    mall.send(MallMsg::Run(MEETINGS, done_tx.clone())).unwrap();
                    let total = done_rx.recv_timeout(ROUND_TIMEOUT).expect("Chameneos/baton: round did not finish");
                    assert_eq!(total, 2 * MEETINGS);
                })
            })
        });
        drop(mall);
        shutdown(rt, "Chameneos");
    }
    {
        let (mall_tx, mall_rx) = unbounded::<RawMallMsg>();
        let mut chameneo_txs = Vec::new();
        let mut threads = Vec::new();
        for i in 0..CHAMENEOS {
            let (tx, rx) = unbounded::<RawChameneoMsg>();
            let me = tx.clone();
            let mall = mall_tx.clone();
            threads.push(std::thread::spawn(move || {
                let initial = Color::initial(i);
                let mut color = initial;
                let mut meetings = 0u64;
                loop {
                    match rx.recv().unwrap() {
                        RawChameneoMsg::Start => {
                            color = initial;
                            meetings = 0;
                        }
                        RawChameneoMsg::Meeting(partner, other) => {
                            color = color.complement(other);
                            meetings += 1;
                            partner.send(RawChameneoMsg::Change(color)).unwrap();
                        }
                        RawChameneoMsg::Change(c) => {
                            color = c;
                            meetings += 1;
                        }
                        RawChameneoMsg::Exit => {
                            mall.send(RawMallMsg::Faded(meetings)).unwrap();
                            continue;
                        }
                        RawChameneoMsg::Stop => break,
                    }
                    mall.send(RawMallMsg::Meet(me.clone(), color)).unwrap();
                }
            }));
            chameneo_txs.push(tx);
        }
        let all = chameneo_txs.clone();
        threads.push(std::thread::spawn(move || {
            let mut left = 0u64;
            let mut waiting: Option<(Sender<RawChameneoMsg>, Color)> = None;
            let mut faded = 0usize;
            let mut total = 0u64;
            let mut done: Option<Sender<u64>> = None;
            loop {
                match mall_rx.recv().unwrap() {
                    RawMallMsg::Run(meetings, d) => {
                        left = meetings;
                        faded = 0;
                        total = 0;
                        done = Some(d);
                        for c in &all {
                            c.send(RawChameneoMsg::Start).unwrap();
                        }
                    }
                    RawMallMsg::Meet(from, _) if left == 0 => from.send(RawChameneoMsg::Exit).unwrap(),
                    RawMallMsg::Meet(from, color) => match waiting.take() {
                        None => waiting = Some((from, color)),
                        Some((other, other_color)) => {
                            left -= 1;
                            from.send(RawChameneoMsg::Meeting(other, other_color)).unwrap();
                        }
                    },
                    RawMallMsg::Faded(n) => {
                        total += n;
                        faded += 1;
                        if faded == all.len() {
                            let _ = done.take().expect("a round is running").send(total);
                        }
                    }
                    RawMallMsg::Stop => break,
                }
            }
        }));
        let (done_tx, done_rx) = bounded(1);
        g.bench_function("crossbeam_threads", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    mall_tx.send(RawMallMsg::Run(MEETINGS, done_tx.clone())).unwrap();
                    let total =
                        done_rx.recv_timeout(ROUND_TIMEOUT).expect("Chameneos/crossbeam_threads: round did not finish");
                    assert_eq!(total, 2 * MEETINGS);
                })
            })
        });
        for tx in &chameneo_txs {
            tx.send(RawChameneoMsg::Stop).unwrap();
        }
        mall_tx.send(RawMallMsg::Stop).unwrap();
        join_all(threads);
    }
    g.finish();
}

// ---- memory per idle actor ---------------------------------------------------------------

const IDLE_ACTORS: usize = 10_000;

static STARTED: AtomicUsize = AtomicUsize::new(0);

/// An actor with no state that never gets a message; `started` counts it as settled.
struct Idle;

impl Actor for Idle {
    type Message = u64;
    fn handle(&mut self, _ctx: &mut Context<Self>, _msg: u64) {}
    fn started(&mut self, _ctx: &mut Context<Self>) {
        STARTED.fetch_add(1, Relaxed);
    }
}

/// Prints the heap bytes held per idle actor with a `Mailbox::Bounded(1)`.
///
/// Counting covers everything the bench thread and the runtime's threads allocate between
/// `COUNTING` going on and off: the runtime is built after it goes on and dropped before it
/// goes off, so the residue after shutdown is what the runtime leaked.
fn memory_per_idle_actor() {
    set_counting(true);
    let start = live_bytes();
    // The same number of bare crossbeam bounded(1) channels, for scale.
    let mut channels: Vec<(Sender<u64>, Receiver<u64>)> = Vec::with_capacity(IDLE_ACTORS);
    let mut addrs: Vec<Addr<Idle>> = Vec::with_capacity(IDLE_ACTORS);

    let before = live_bytes();
    for _ in 0..IDLE_ACTORS {
        channels.push(bounded(1));
    }
    let per_channel = (live_bytes() - before) as f64 / IDLE_ACTORS as f64;
    channels.clear();

    let rt = runtime();
    // One actor first, so the per-type metrics entry and the pool's first queue block are
    // not charged to the 10,000.
    let warm = rt.try_spawn(Idle, Mailbox::Bounded(1)).expect("spawn");
    let deadline = Instant::now() + ROUND_TIMEOUT;
    while STARTED.load(Relaxed) < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = live_bytes();
    for _ in 0..IDLE_ACTORS {
        addrs.push(rt.try_spawn(Idle, Mailbox::Bounded(1)).expect("spawn"));
    }
    while STARTED.load(Relaxed) < IDLE_ACTORS + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the pool finish the last turns and park.
    std::thread::sleep(Duration::from_millis(100));
    let started = STARTED.load(Relaxed);
    let total = live_bytes() - before;
    let per_actor = total as f64 / IDLE_ACTORS as f64;
    let live_reported = rt.live_actors();

    drop(addrs);
    drop(warm);
    let shutdown_result = rt.shutdown(SHUTDOWN);
    drop(rt);
    drop(channels);
    let residue = live_bytes() - start;
    set_counting(false);

    println!("== Memory per idle actor (Mailbox::Bounded(1), {IDLE_ACTORS} actors, {THREADS} pool threads) ==");
    println!("actors started: {started} of {} ; live_actors(): {live_reported}", IDLE_ACTORS + 1);
    println!("heap growth: {total} bytes in all");
    println!("bytes per idle actor, total:                  {per_actor:.1}");
    println!("(a mailbox allocates no buffer before its first message, so that is all of it)");
    println!("(for scale: one bare crossbeam bounded(1) channel, with its buffer: {per_channel:.1} bytes)");
    println!("shutdown: {shutdown_result:?}; heap left after runtime shutdown and drop: {residue} bytes");
    println!();
}

criterion_group!(savina, ping_pong, counting, thread_ring, fork_join_throughput, fork_join_creation, big, chameneos);

fn main() {
    memory_per_idle_actor();
    savina();
    Criterion::default().configure_from_args().final_summary();
}
