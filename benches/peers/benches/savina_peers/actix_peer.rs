//! The suite on actix: one `System` on a thread of its own, messages sent with `do_send`
//! (unbounded), the bench thread sending from outside as it does to every contender.

use std::hint::black_box;
use std::sync::Arc;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, System};
use crossbeam_channel::{bounded, unbounded, Sender};

use crate::*;

/// Starts a `System` on a new thread, builds the actors there with `setup`, and returns what it
/// built with the `finish` that stops the system and joins the thread.
fn on_system<T: Send + 'static>(setup: impl FnOnce() -> T + Send + 'static) -> (T, Box<dyn FnOnce()>) {
    let (tx, rx) = bounded(1);
    let thread = std::thread::spawn(move || {
        let system = System::new();
        system.block_on(async move {
            let _ = tx.send((setup(), System::current()));
        });
        system.run().expect("actix system runs");
    });
    let (built, system) = rx.recv().expect("actix setup");
    (
        built,
        Box::new(move || {
            system.stop();
            thread.join().expect("actix thread");
        }),
    )
}

macro_rules! message {
    ($($t:ty),*) => {
        $(impl Message for $t {
            type Result = ();
        })*
    };
}

// ---- PingPong ----------------------------------------------------------------------------

enum PingMsg {
    Start(u64),
    Pong,
}

struct PingTo(Addr<Ping>);

message!(PingMsg, PingTo);

struct Ping {
    pong: Addr<Pong>,
    left: u64,
    done: Sender<u64>,
    rounds: u64,
}

impl Actor for Ping {
    type Context = Context<Self>;
}

impl Handler<PingMsg> for Ping {
    type Result = ();
    fn handle(&mut self, msg: PingMsg, ctx: &mut Context<Self>) {
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
        self.pong.do_send(PingTo(ctx.address()));
    }
}

struct Pong;

impl Actor for Pong {
    type Context = Context<Self>;
}

impl Handler<PingTo> for Pong {
    type Result = ();
    fn handle(&mut self, PingTo(ping): PingTo, _ctx: &mut Context<Self>) {
        ping.do_send(PingMsg::Pong);
    }
}

pub fn ping_pong() -> Bench {
    let (done, rounds) = unbounded();
    let (ping, finish) = on_system(move || {
        let pong = Pong.start();
        Ping { pong, left: 0, done, rounds: 0 }.start()
    });
    Bench {
        round: Box::new(move || {
            ping.do_send(PingMsg::Start(PING_PONG_ROUNDS));
            assert_eq!(figure(&rounds, "PingPong/actix"), PING_PONG_ROUNDS);
        }),
        finish,
    }
}

// ---- Counting ----------------------------------------------------------------------------

enum CountMsg {
    Inc,
    Take,
}

struct Produce(u64);

message!(CountMsg, Produce);

struct Counter {
    count: u64,
    done: Sender<u64>,
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<CountMsg> for Counter {
    type Result = ();
    fn handle(&mut self, msg: CountMsg, _ctx: &mut Context<Self>) {
        match msg {
            CountMsg::Inc => self.count += 1,
            CountMsg::Take => {
                let _ = self.done.send(std::mem::take(&mut self.count));
            }
        }
    }
}

struct Producer {
    counter: Addr<Counter>,
}

impl Actor for Producer {
    type Context = Context<Self>;
}

impl Handler<Produce> for Producer {
    type Result = ();
    fn handle(&mut self, Produce(n): Produce, _ctx: &mut Context<Self>) {
        for _ in 0..n {
            self.counter.do_send(CountMsg::Inc);
        }
        self.counter.do_send(CountMsg::Take);
    }
}

pub fn counting() -> Bench {
    let (done, totals) = unbounded();
    let (producer, finish) = on_system(move || {
        let counter = Counter { count: 0, done }.start();
        Producer { counter }.start()
    });
    Bench {
        round: Box::new(move || {
            producer.do_send(Produce(COUNT_MESSAGES));
            assert_eq!(figure(&totals, "Counting/actix"), COUNT_MESSAGES);
        }),
        finish,
    }
}

// ---- ThreadRing --------------------------------------------------------------------------

enum RingMsg {
    Link(Addr<RingNode>),
    Token(u64),
}

message!(RingMsg);

struct RingNode {
    me: usize,
    next: Option<Addr<RingNode>>,
    done: Sender<u64>,
}

impl Actor for RingNode {
    type Context = Context<Self>;
}

impl Handler<RingMsg> for RingNode {
    type Result = ();
    fn handle(&mut self, msg: RingMsg, _ctx: &mut Context<Self>) {
        match msg {
            RingMsg::Link(next) => self.next = Some(next),
            RingMsg::Token(0) => {
                let _ = self.done.send(self.me as u64);
            }
            RingMsg::Token(n) => self.next.as_ref().expect("linked").do_send(RingMsg::Token(n - 1)),
        }
    }
}

pub fn thread_ring() -> Bench {
    let (done, ends) = unbounded();
    let (nodes, finish) = on_system(move || {
        let nodes: Vec<Addr<RingNode>> =
            (0..RING_SIZE).map(|me| RingNode { me, next: None, done: done.clone() }.start()).collect();
        for (i, node) in nodes.iter().enumerate() {
            node.do_send(RingMsg::Link(nodes[(i + 1) % RING_SIZE].clone()));
        }
        nodes
    });
    Bench {
        round: Box::new(move || {
            nodes[0].do_send(RingMsg::Token(RING_HOPS));
            assert_eq!(figure(&ends, "ThreadRing/actix"), RING_HOPS % RING_SIZE as u64);
        }),
        finish,
    }
}

// ---- Chameneos ---------------------------------------------------------------------------

enum MallMsg {
    Chameneos(Vec<Addr<Chameneo>>),
    Run(u64),
    Meet(Addr<Chameneo>, Color),
    Faded(u64),
}

enum ChameneoMsg {
    Start,
    Meeting(Addr<Chameneo>, Color),
    Change(Color),
    Exit,
}

message!(MallMsg, ChameneoMsg);

struct Mall {
    chameneos: Vec<Addr<Chameneo>>,
    left: u64,
    waiting: Option<(Addr<Chameneo>, Color)>,
    faded: usize,
    total: u64,
    done: Sender<u64>,
}

impl Actor for Mall {
    type Context = Context<Self>;
}

impl Handler<MallMsg> for Mall {
    type Result = ();
    fn handle(&mut self, msg: MallMsg, _ctx: &mut Context<Self>) {
        match msg {
            MallMsg::Chameneos(all) => self.chameneos = all,
            MallMsg::Run(meetings) => {
                self.left = meetings;
                self.faded = 0;
                self.total = 0;
                for c in &self.chameneos {
                    c.do_send(ChameneoMsg::Start);
                }
            }
            MallMsg::Meet(from, _) if self.left == 0 => from.do_send(ChameneoMsg::Exit),
            MallMsg::Meet(from, color) => match self.waiting.take() {
                None => self.waiting = Some((from, color)),
                Some((other, other_color)) => {
                    self.left -= 1;
                    from.do_send(ChameneoMsg::Meeting(other, other_color));
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

struct Chameneo {
    mall: Addr<Mall>,
    initial: Color,
    color: Color,
    meetings: u64,
}

impl Actor for Chameneo {
    type Context = Context<Self>;
}

impl Handler<ChameneoMsg> for Chameneo {
    type Result = ();
    fn handle(&mut self, msg: ChameneoMsg, ctx: &mut Context<Self>) {
        match msg {
            ChameneoMsg::Start => {
                self.color = self.initial;
                self.meetings = 0;
            }
            ChameneoMsg::Meeting(partner, color) => {
                self.color = self.color.complement(color);
                self.meetings += 1;
                partner.do_send(ChameneoMsg::Change(self.color));
            }
            ChameneoMsg::Change(color) => {
                self.color = color;
                self.meetings += 1;
            }
            ChameneoMsg::Exit => {
                self.mall.do_send(MallMsg::Faded(self.meetings));
                return;
            }
        }
        self.mall.do_send(MallMsg::Meet(ctx.address(), self.color));
    }
}

pub fn chameneos() -> Bench {
    let (done, totals) = unbounded();
    let (mall, finish) = on_system(move || {
        let mall = Mall { chameneos: Vec::new(), left: 0, waiting: None, faded: 0, total: 0, done }.start();
        let all = (0..CHAMENEOS)
            .map(|i| {
                let color = Color::initial(i);
                Chameneo { mall: mall.clone(), initial: color, color, meetings: 0 }.start()
            })
            .collect();
        mall.do_send(MallMsg::Chameneos(all));
        mall
    });
    Bench {
        round: Box::new(move || {
            mall.do_send(MallMsg::Run(MEETINGS));
            assert_eq!(figure(&totals, "Chameneos/actix"), 2 * MEETINGS);
        }),
        finish,
    }
}

// ---- Big ---------------------------------------------------------------------------------

enum BigMsg {
    Neighbours(Arc<Vec<Addr<BigActor>>>),
    Start(u64),
    Ping(usize),
    Pong,
}

message!(BigMsg);

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
        all[to].do_send(BigMsg::Ping(self.me));
    }
}

impl Actor for BigActor {
    type Context = Context<Self>;
}

impl Handler<BigMsg> for BigActor {
    type Result = ();
    fn handle(&mut self, msg: BigMsg, _ctx: &mut Context<Self>) {
        match msg {
            BigMsg::Neighbours(all) => self.all = Some(all),
            BigMsg::Start(n) => {
                self.left = n;
                self.pongs = 0;
                self.ping_someone();
            }
            BigMsg::Ping(from) => self.all.as_ref().expect("neighbours set")[from].do_send(BigMsg::Pong),
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

pub fn big() -> Bench {
    let (done, pongs) = unbounded();
    let (all, finish) = on_system(move || {
        let actors: Vec<Addr<BigActor>> = (0..BIG_ACTORS)
            .map(|me| {
                let rng = XorShift::new(me as u64);
                BigActor { me, all: None, left: 0, pongs: 0, rng, done: done.clone() }.start()
            })
            .collect();
        let all = Arc::new(actors);
        for a in all.iter() {
            a.do_send(BigMsg::Neighbours(all.clone()));
        }
        all
    });
    Bench {
        round: Box::new(move || {
            for actor in all.iter() {
                actor.do_send(BigMsg::Start(BIG_PINGS));
            }
            assert_eq!(figures(&pongs, BIG_ACTORS, "Big/actix"), BIG_ACTORS as u64 * BIG_PINGS);
        }),
        finish,
    }
}

// ---- Fork-Join ---------------------------------------------------------------------------

struct Work(f64);

message!(Work);

struct FjWorker {
    seen: u64,
    done: Sender<u64>,
}

impl Actor for FjWorker {
    type Context = Context<Self>;
}

impl Handler<Work> for FjWorker {
    type Result = ();
    fn handle(&mut self, Work(x): Work, _ctx: &mut Context<Self>) {
        black_box(fj_compute(x));
        self.seen += 1;
        if self.seen == FJ_MESSAGES {
            let _ = self.done.send(std::mem::take(&mut self.seen));
        }
    }
}

pub fn fork_join() -> Bench {
    let (done, seen) = unbounded();
    let (workers, finish) = on_system(move || {
        (0..FJ_WORKERS).map(|_| FjWorker { seen: 0, done: done.clone() }.start()).collect::<Vec<Addr<FjWorker>>>()
    });
    Bench {
        round: Box::new(move || {
            for _ in 0..FJ_MESSAGES {
                for worker in &workers {
                    worker.do_send(Work(37.2));
                }
            }
            assert_eq!(figures(&seen, FJ_WORKERS, "ForkJoin/actix"), FJ_WORKERS as u64 * FJ_MESSAGES);
        }),
        finish,
    }
}
