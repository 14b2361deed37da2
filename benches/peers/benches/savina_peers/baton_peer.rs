//! The suite on baton: the same actors on the pool or on a reactor's event loop.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use baton_runtime::{Actor, Addr, Context, Mailbox, Runtime};
use baton_transport::Reactor;
use crossbeam_channel::{unbounded, Sender};

use crate::*;

/// Where the actors run.
#[derive(Clone, Copy)]
pub enum Placement {
    /// The runtime's pool of [`THREADS`] threads.
    Pool,
    /// A reactor thread's event loop (the runtime's pool, one thread, stays idle).
    EventLoop,
}

struct Env {
    rt: Runtime,
    reactor: Option<Reactor>,
}

impl Env {
    fn new(placement: Placement) -> Env {
        match placement {
            Placement::Pool => Env { rt: Runtime::builder().threads(THREADS).build(), reactor: None },
            Placement::EventLoop => Env {
                rt: Runtime::builder().threads(1).build(),
                reactor: Some(Reactor::start().expect("reactor starts")),
            },
        }
    }

    fn spawn<A: Actor>(&self, actor: A) -> Addr<A> {
        match &self.reactor {
            Some(reactor) => self.rt.spawn_on(reactor.event_loop(), actor, Mailbox::Unbounded),
            None => self.rt.try_spawn(actor, Mailbox::Unbounded),
        }
        .expect("spawn")
    }

    /// The bench's `finish`: drops what holds addresses, then stops the reactor and runtime.
    fn finish(self, keep: impl Send + 'static) -> Box<dyn FnOnce()> {
        Box::new(move || {
            drop(keep);
            if let Some(reactor) = &self.reactor {
                reactor.stop();
            }
            self.rt.shutdown(Duration::from_secs(10)).expect("baton runtime shuts down");
        })
    }
}

// ---- PingPong ----------------------------------------------------------------------------

enum PingMsg {
    Start(u64),
    Pong,
}

struct Ping {
    pong: Addr<Pong>,
    left: u64,
    done: Sender<u64>,
    rounds: u64,
}

impl Actor for Ping {
    type Message = PingMsg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: PingMsg) {
        match msg {
            PingMsg::Start(n) => {
                self.left = n;
                self.rounds = 0;
            }
            PingMsg::Pong => {
                self.rounds += 1;
                self.left -= 1;
                if self.left == 0 {
                    let _ = self.done.send(self.rounds);
                    return;
                }
            }
        }
        self.pong.send(ctx.address()).expect("pong closed");
    }
}

struct Pong;

impl Actor for Pong {
    type Message = Addr<Ping>;
    fn handle(&mut self, _ctx: &mut Context<Self>, ping: Addr<Ping>) {
        ping.send(PingMsg::Pong).expect("ping closed");
    }
}

pub fn ping_pong(placement: Placement) -> Bench {
    let env = Env::new(placement);
    let (done, rounds) = unbounded();
    let pong = env.spawn(Pong);
    let ping = env.spawn(Ping { pong, left: 0, done, rounds: 0 });
    let p = ping.clone();
    Bench {
        round: Box::new(move || {
            p.send(PingMsg::Start(PING_PONG_ROUNDS)).expect("ping closed");
            assert_eq!(figure(&rounds, "PingPong/baton"), PING_PONG_ROUNDS);
        }),
        finish: env.finish(ping),
    }
}

// ---- Counting ----------------------------------------------------------------------------

enum CountMsg {
    Inc,
    /// Report the count and start again from zero.
    Take,
}

struct Counter {
    count: u64,
    done: Sender<u64>,
}

impl Actor for Counter {
    type Message = CountMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: CountMsg) {
        match msg {
            CountMsg::Inc => self.count += 1,
            CountMsg::Take => {
                let _ = self.done.send(std::mem::take(&mut self.count));
            }
        }
    }
}

/// Sends the counter `n` increments, then asks for the total.
struct Producer {
    counter: Addr<Counter>,
}

impl Actor for Producer {
    type Message = u64;
    fn handle(&mut self, _ctx: &mut Context<Self>, n: u64) {
        for _ in 0..n {
            self.counter.send(CountMsg::Inc).expect("counter closed");
        }
        self.counter.send(CountMsg::Take).expect("counter closed");
    }
}

pub fn counting(placement: Placement) -> Bench {
    let env = Env::new(placement);
    let (done, totals) = unbounded();
    let counter = env.spawn(Counter { count: 0, done });
    let producer = env.spawn(Producer { counter });
    let p = producer.clone();
    Bench {
        round: Box::new(move || {
            p.send(COUNT_MESSAGES).expect("producer closed");
            assert_eq!(figure(&totals, "Counting/baton"), COUNT_MESSAGES);
        }),
        finish: env.finish(producer),
    }
}

// ---- ThreadRing --------------------------------------------------------------------------

enum RingMsg {
    Link(Addr<RingNode>),
    /// Hops still to go; the node that receives 0 reports its place in the ring.
    Token(u64),
}

struct RingNode {
    me: usize,
    next: Option<Addr<RingNode>>,
    done: Sender<u64>,
}

impl Actor for RingNode {
    type Message = RingMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: RingMsg) {
        match msg {
            RingMsg::Link(next) => self.next = Some(next),
            RingMsg::Token(0) => {
                let _ = self.done.send(self.me as u64);
            }
            RingMsg::Token(n) => self.next.as_ref().expect("linked").send(RingMsg::Token(n - 1)).expect("next closed"),
        }
    }
}

pub fn thread_ring(placement: Placement) -> Bench {
    let env = Env::new(placement);
    let (done, ends) = unbounded();
    let nodes: Vec<Addr<RingNode>> =
        (0..RING_SIZE).map(|me| env.spawn(RingNode { me, next: None, done: done.clone() })).collect();
    for (i, node) in nodes.iter().enumerate() {
        node.send(RingMsg::Link(nodes[(i + 1) % RING_SIZE].clone())).expect("node closed");
    }
    let first = nodes[0].clone();
    Bench {
        round: Box::new(move || {
            first.send(RingMsg::Token(RING_HOPS)).expect("node closed");
            assert_eq!(figure(&ends, "ThreadRing/baton"), RING_HOPS % RING_SIZE as u64);
        }),
        finish: env.finish(nodes),
    }
}

// ---- Chameneos ---------------------------------------------------------------------------

enum MallMsg {
    Chameneos(Vec<Addr<Chameneo>>),
    Run(u64),
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
    done: Sender<u64>,
}

impl Actor for Mall {
    type Message = MallMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: MallMsg) {
        match msg {
            MallMsg::Chameneos(all) => self.chameneos = all,
            MallMsg::Run(meetings) => {
                self.left = meetings;
                self.faded = 0;
                self.total = 0;
                for c in &self.chameneos {
                    c.send(ChameneoMsg::Start).expect("chameneo closed");
                }
            }
            MallMsg::Meet(from, _) if self.left == 0 => from.send(ChameneoMsg::Exit).expect("chameneo closed"),
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
                    let _ = self.done.send(self.total);
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

pub fn chameneos(placement: Placement) -> Bench {
    let env = Env::new(placement);
    let (done, totals) = unbounded();
    let mall = env.spawn(Mall { chameneos: Vec::new(), left: 0, waiting: None, faded: 0, total: 0, done });
    let all: Vec<Addr<Chameneo>> = (0..CHAMENEOS)
        .map(|i| {
            let color = Color::initial(i);
            env.spawn(Chameneo { mall: mall.clone(), initial: color, color, meetings: 0 })
        })
        .collect();
    mall.send(MallMsg::Chameneos(all)).expect("mall closed");
    let m = mall.clone();
    Bench {
        round: Box::new(move || {
            m.send(MallMsg::Run(MEETINGS)).expect("mall closed");
            assert_eq!(figure(&totals, "Chameneos/baton"), 2 * MEETINGS);
        }),
        finish: env.finish(mall),
    }
}

// ---- Big ---------------------------------------------------------------------------------

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
    pongs: u64,
    rng: XorShift,
    done: Sender<u64>,
}

impl BigActor {
    fn ping_someone(&mut self) {
        self.left -= 1;
        let all = self.all.as_ref().expect("neighbours set");
        let to = self.rng.other_than(self.me, all.len());
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
                self.pongs = 0;
                self.ping_someone();
            }
            BigMsg::Ping(from) => {
                self.all.as_ref().expect("neighbours set")[from].send(BigMsg::Pong).expect("neighbour closed")
            }
            BigMsg::Pong => {
                self.pongs += 1;
                if self.left == 0 {
                    let _ = self.done.send(self.pongs);
                } else {
                    self.ping_someone();
                }
            }
        }
    }
}

pub fn big(placement: Placement) -> Bench {
    let env = Env::new(placement);
    let (done, pongs) = unbounded();
    let actors: Vec<Addr<BigActor>> = (0..BIG_ACTORS)
        .map(|me| {
            let rng = XorShift::new(me as u64);
            env.spawn(BigActor { me, all: None, left: 0, pongs: 0, rng, done: done.clone() })
        })
        .collect();
    let all = Arc::new(actors);
    for a in all.iter() {
        a.send(BigMsg::Neighbours(all.clone())).expect("actor closed");
    }
    let a = all.clone();
    Bench {
        round: Box::new(move || {
            for actor in a.iter() {
                actor.send(BigMsg::Start(BIG_PINGS)).expect("actor closed");
            }
            assert_eq!(figures(&pongs, BIG_ACTORS, "Big/baton"), BIG_ACTORS as u64 * BIG_PINGS);
        }),
        finish: env.finish(all),
    }
}

// ---- Fork-Join ---------------------------------------------------------------------------

struct FjWorker {
    seen: u64,
    done: Sender<u64>,
}

impl Actor for FjWorker {
    type Message = f64;
    fn handle(&mut self, _ctx: &mut Context<Self>, x: f64) {
        black_box(fj_compute(x));
        self.seen += 1;
        if self.seen == FJ_MESSAGES {
            let _ = self.done.send(std::mem::take(&mut self.seen));
        }
    }
}

pub fn fork_join(placement: Placement) -> Bench {
    let env = Env::new(placement);
    let (done, seen) = unbounded();
    let workers: Vec<Addr<FjWorker>> =
        (0..FJ_WORKERS).map(|_| env.spawn(FjWorker { seen: 0, done: done.clone() })).collect();
    let w = workers.clone();
    Bench {
        round: Box::new(move || {
            for _ in 0..FJ_MESSAGES {
                for worker in &w {
                    worker.send(37.2).expect("worker closed");
                }
            }
            assert_eq!(figures(&seen, FJ_WORKERS, "ForkJoin/baton"), FJ_WORKERS as u64 * FJ_MESSAGES);
        }),
        finish: env.finish(workers),
    }
}
