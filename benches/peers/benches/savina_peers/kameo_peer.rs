//! The suite on kameo: a multi-threaded tokio runtime of [`THREADS`] workers, unbounded
//! mailboxes, messages sent with `tell(..).try_send()`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use kameo::actor::{ActorRef, Spawn};
use kameo::message::{Context, Message};
use kameo::{mailbox, Actor};

use crate::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(THREADS).enable_time().build().expect("tokio runtime")
}

fn spawn<A: Actor<Args = A>>(rt: &tokio::runtime::Runtime, actor: A) -> ActorRef<A> {
    let _in_runtime = rt.enter();
    A::spawn_with_mailbox(actor, mailbox::unbounded())
}

fn tell<A: Message<M>, M: Send + 'static>(to: &ActorRef<A>, msg: M) {
    if to.tell(msg).try_send().is_err() {
        panic!("kameo: the receiver is gone");
    }
}

fn finish(rt: tokio::runtime::Runtime) -> Box<dyn FnOnce()> {
    Box::new(move || rt.shutdown_timeout(Duration::from_secs(10)))
}

/// Every actor here is its own arguments, and handles one message type with no reply.
macro_rules! actor {
    ($actor:ident, $msg:ty, |$s:ident, $m:ident, $ctx:ident| $body:block) => {
        impl Actor for $actor {
            type Args = Self;
            type Error = Infallible;
            async fn on_start(args: Self, _me: ActorRef<Self>) -> Result<Self, Infallible> {
                Ok(args)
            }
        }
        impl Message<$msg> for $actor {
            type Reply = ();
            #[allow(unused_variables)]
            async fn handle(&mut self, $m: $msg, $ctx: &mut Context<Self, ()>) {
                let $s = self;
                $body
            }
        }
    };
}

// ---- PingPong ----------------------------------------------------------------------------

enum PingMsg {
    Start(u64),
    Pong,
}

struct Ping {
    pong: ActorRef<Pong>,
    left: u64,
    done: Sender<u64>,
    rounds: u64,
}

actor!(Ping, PingMsg, |s, msg, ctx| {
    match msg {
        PingMsg::Start(n) => {
            s.left = n;
            s.rounds = 0;
        }
        PingMsg::Pong => {
            s.rounds += 1;
            s.left -= 1;
            if s.left == 0 {
                let _ = s.done.send(s.rounds);
                return;
            }
        }
    }
    tell(&s.pong, ctx.actor_ref().clone());
});

struct Pong;

actor!(Pong, ActorRef<Ping>, |s, ping, ctx| {
    tell(&ping, PingMsg::Pong);
});

pub fn ping_pong() -> Bench {
    let rt = runtime();
    let (done, rounds) = unbounded();
    let pong = spawn(&rt, Pong);
    let ping = spawn(&rt, Ping { pong, left: 0, done, rounds: 0 });
    Bench {
        round: Box::new(move || {
            tell(&ping, PingMsg::Start(PING_PONG_ROUNDS));
            assert_eq!(figure(&rounds, "PingPong/kameo"), PING_PONG_ROUNDS);
        }),
        finish: finish(rt),
    }
}

// ---- Counting ----------------------------------------------------------------------------

enum CountMsg {
    Inc,
    Take,
}

struct Counter {
    count: u64,
    done: Sender<u64>,
}

actor!(Counter, CountMsg, |s, msg, ctx| {
    match msg {
        CountMsg::Inc => s.count += 1,
        CountMsg::Take => {
            let _ = s.done.send(std::mem::take(&mut s.count));
        }
    }
});

struct Producer {
    counter: ActorRef<Counter>,
}

actor!(Producer, u64, |s, n, ctx| {
    for _ in 0..n {
        tell(&s.counter, CountMsg::Inc);
    }
    tell(&s.counter, CountMsg::Take);
});

pub fn counting() -> Bench {
    let rt = runtime();
    let (done, totals) = unbounded();
    let counter = spawn(&rt, Counter { count: 0, done });
    let producer = spawn(&rt, Producer { counter });
    Bench {
        round: Box::new(move || {
            tell(&producer, COUNT_MESSAGES);
            assert_eq!(figure(&totals, "Counting/kameo"), COUNT_MESSAGES);
        }),
        finish: finish(rt),
    }
}

// ---- ThreadRing --------------------------------------------------------------------------

enum RingMsg {
    Link(ActorRef<RingNode>),
    Token(u64),
}

struct RingNode {
    me: usize,
    next: Option<ActorRef<RingNode>>,
    done: Sender<u64>,
}

actor!(RingNode, RingMsg, |s, msg, ctx| {
    match msg {
        RingMsg::Link(next) => s.next = Some(next),
        RingMsg::Token(0) => {
            let _ = s.done.send(s.me as u64);
        }
        RingMsg::Token(n) => tell(s.next.as_ref().expect("linked"), RingMsg::Token(n - 1)),
    }
});

pub fn thread_ring() -> Bench {
    let rt = runtime();
    let (done, ends) = unbounded();
    let nodes: Vec<ActorRef<RingNode>> =
        (0..RING_SIZE).map(|me| spawn(&rt, RingNode { me, next: None, done: done.clone() })).collect();
    for (i, node) in nodes.iter().enumerate() {
        tell(node, RingMsg::Link(nodes[(i + 1) % RING_SIZE].clone()));
    }
    Bench {
        round: Box::new(move || {
            tell(&nodes[0], RingMsg::Token(RING_HOPS));
            assert_eq!(figure(&ends, "ThreadRing/kameo"), RING_HOPS % RING_SIZE as u64);
        }),
        finish: finish(rt),
    }
}

// ---- Chameneos ---------------------------------------------------------------------------

enum MallMsg {
    Chameneos(Vec<ActorRef<Chameneo>>),
    Run(u64),
    Meet(ActorRef<Chameneo>, Color),
    Faded(u64),
}

enum ChameneoMsg {
    Start,
    Meeting(ActorRef<Chameneo>, Color),
    Change(Color),
    Exit,
}

struct Mall {
    chameneos: Vec<ActorRef<Chameneo>>,
    left: u64,
    waiting: Option<(ActorRef<Chameneo>, Color)>,
    faded: usize,
    total: u64,
    done: Sender<u64>,
}

actor!(Mall, MallMsg, |s, msg, ctx| {
    match msg {
        MallMsg::Chameneos(all) => s.chameneos = all,
        MallMsg::Run(meetings) => {
            s.left = meetings;
            s.faded = 0;
            s.total = 0;
            for c in &s.chameneos {
                tell(c, ChameneoMsg::Start);
            }
        }
        MallMsg::Meet(from, _) if s.left == 0 => tell(&from, ChameneoMsg::Exit),
        MallMsg::Meet(from, color) => match s.waiting.take() {
            None => s.waiting = Some((from, color)),
            Some((other, other_color)) => {
                s.left -= 1;
                tell(&from, ChameneoMsg::Meeting(other, other_color));
            }
        },
        MallMsg::Faded(n) => {
            s.total += n;
            s.faded += 1;
            if s.faded == s.chameneos.len() {
                let _ = s.done.send(s.total);
            }
        }
    }
});

struct Chameneo {
    mall: ActorRef<Mall>,
    initial: Color,
    color: Color,
    meetings: u64,
}

actor!(Chameneo, ChameneoMsg, |s, msg, ctx| {
    match msg {
        ChameneoMsg::Start => {
            s.color = s.initial;
            s.meetings = 0;
        }
        ChameneoMsg::Meeting(partner, color) => {
            s.color = s.color.complement(color);
            s.meetings += 1;
            tell(&partner, ChameneoMsg::Change(s.color));
        }
        ChameneoMsg::Change(color) => {
            s.color = color;
            s.meetings += 1;
        }
        ChameneoMsg::Exit => {
            tell(&s.mall, MallMsg::Faded(s.meetings));
            return;
        }
    }
    tell(&s.mall, MallMsg::Meet(ctx.actor_ref().clone(), s.color));
});

pub fn chameneos() -> Bench {
    let rt = runtime();
    let (done, totals) = unbounded();
    let mall = spawn(&rt, Mall { chameneos: Vec::new(), left: 0, waiting: None, faded: 0, total: 0, done });
    let all = (0..CHAMENEOS)
        .map(|i| {
            let color = Color::initial(i);
            spawn(&rt, Chameneo { mall: mall.clone(), initial: color, color, meetings: 0 })
        })
        .collect();
    tell(&mall, MallMsg::Chameneos(all));
    Bench {
        round: Box::new(move || {
            tell(&mall, MallMsg::Run(MEETINGS));
            assert_eq!(figure(&totals, "Chameneos/kameo"), 2 * MEETINGS);
        }),
        finish: finish(rt),
    }
}

// ---- Big ---------------------------------------------------------------------------------

enum BigMsg {
    Neighbours(Arc<Vec<ActorRef<BigActor>>>),
    Start(u64),
    Ping(usize),
    Pong,
}

struct BigActor {
    me: usize,
    all: Option<Arc<Vec<ActorRef<BigActor>>>>,
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
        tell(&all[to], BigMsg::Ping(self.me));
    }
}

actor!(BigActor, BigMsg, |s, msg, ctx| {
    match msg {
        BigMsg::Neighbours(all) => s.all = Some(all),
        BigMsg::Start(n) => {
            s.left = n;
            s.pongs = 0;
            s.ping_someone();
        }
        BigMsg::Ping(from) => tell(&s.all.as_ref().expect("neighbours set")[from], BigMsg::Pong),
        BigMsg::Pong => {
            s.pongs += 1;
            if s.left == 0 {
                let _ = s.done.send(s.pongs);
            } else {
                s.ping_someone();
            }
        }
    }
});

pub fn big() -> Bench {
    let rt = runtime();
    let (done, pongs) = unbounded();
    let actors: Vec<ActorRef<BigActor>> = (0..BIG_ACTORS)
        .map(|me| {
            let rng = XorShift::new(me as u64);
            spawn(&rt, BigActor { me, all: None, left: 0, pongs: 0, rng, done: done.clone() })
        })
        .collect();
    let all = Arc::new(actors);
    for a in all.iter() {
        tell(a, BigMsg::Neighbours(all.clone()));
    }
    Bench {
        round: Box::new(move || {
            for actor in all.iter() {
                tell(actor, BigMsg::Start(BIG_PINGS));
            }
            assert_eq!(figures(&pongs, BIG_ACTORS, "Big/kameo"), BIG_ACTORS as u64 * BIG_PINGS);
        }),
        finish: finish(rt),
    }
}

// ---- Fork-Join ---------------------------------------------------------------------------

struct FjWorker {
    seen: u64,
    done: Sender<u64>,
}

actor!(FjWorker, f64, |s, x, ctx| {
    black_box(fj_compute(x));
    s.seen += 1;
    if s.seen == FJ_MESSAGES {
        let _ = s.done.send(std::mem::take(&mut s.seen));
    }
});

pub fn fork_join() -> Bench {
    let rt = runtime();
    let (done, seen) = unbounded();
    let workers: Vec<ActorRef<FjWorker>> =
        (0..FJ_WORKERS).map(|_| spawn(&rt, FjWorker { seen: 0, done: done.clone() })).collect();
    Bench {
        round: Box::new(move || {
            for _ in 0..FJ_MESSAGES {
                for worker in &workers {
                    tell(worker, 37.2);
                }
            }
            assert_eq!(figures(&seen, FJ_WORKERS, "ForkJoin/kameo"), FJ_WORKERS as u64 * FJ_MESSAGES);
        }),
        finish: finish(rt),
    }
}
