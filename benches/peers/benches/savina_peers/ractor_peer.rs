//! The suite on ractor: a multi-threaded tokio runtime of [`THREADS`] workers, messages sent
//! with `cast` (ractor's mailboxes are unbounded).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message};

use crate::*;

type Handled = Result<(), ActorProcessingErr>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(THREADS).enable_time().build().expect("tokio runtime")
}

/// Spawns `actor` (its state is its arguments) on `rt`.
fn spawn<A: Actor>(rt: &tokio::runtime::Runtime, actor: A, state: A::Arguments) -> ActorRef<A::Msg> {
    rt.block_on(Actor::spawn(None, actor, state)).expect("ractor spawn").0
}

fn tell<M: Message>(to: &ActorRef<M>, msg: M) {
    if to.cast(msg).is_err() {
        panic!("ractor: the receiver is gone");
    }
}

fn finish(rt: tokio::runtime::Runtime) -> Box<dyn FnOnce()> {
    Box::new(move || rt.shutdown_timeout(Duration::from_secs(10)))
}

/// Every actor here keeps its state in `State`, which its arguments are.
macro_rules! actor {
    ($handler:ident, $msg:ty, $state:ty, |$me:ident, $m:ident, $s:ident| $body:block) => {
        struct $handler;
        impl Actor for $handler {
            type Msg = $msg;
            type State = $state;
            type Arguments = $state;
            async fn pre_start(&self, _me: ActorRef<$msg>, state: $state) -> Result<$state, ActorProcessingErr> {
                Ok(state)
            }
            async fn handle(&self, $me: ActorRef<$msg>, $m: $msg, $s: &mut $state) -> Handled {
                #[allow(unused_variables)]
                let $me = $me;
                $body
                Ok(())
            }
        }
    };
}

// ---- PingPong ----------------------------------------------------------------------------

enum PingMsg {
    Start(u64),
    Pong,
}

struct PingState {
    pong: ActorRef<ActorRef<PingMsg>>,
    left: u64,
    done: Sender<u64>,
    rounds: u64,
}

actor!(Ping, PingMsg, PingState, |me, msg, s| {
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
                return Ok(());
            }
        }
    }
    tell(&s.pong, me);
});

actor!(Pong, ActorRef<PingMsg>, (), |me, ping, _s| {
    tell(&ping, PingMsg::Pong);
});

pub fn ping_pong() -> Bench {
    let rt = runtime();
    let (done, rounds) = unbounded();
    let pong = spawn(&rt, Pong, ());
    let ping = spawn(&rt, Ping, PingState { pong, left: 0, done, rounds: 0 });
    Bench {
        round: Box::new(move || {
            tell(&ping, PingMsg::Start(PING_PONG_ROUNDS));
            assert_eq!(figure(&rounds, "PingPong/ractor"), PING_PONG_ROUNDS);
        }),
        finish: finish(rt),
    }
}

// ---- Counting ----------------------------------------------------------------------------

enum CountMsg {
    Inc,
    Take,
}

struct CounterState {
    count: u64,
    done: Sender<u64>,
}

actor!(Counter, CountMsg, CounterState, |me, msg, s| {
    match msg {
        CountMsg::Inc => s.count += 1,
        CountMsg::Take => {
            let _ = s.done.send(std::mem::take(&mut s.count));
        }
    }
});

actor!(Producer, u64, ActorRef<CountMsg>, |me, n, counter| {
    for _ in 0..n {
        tell(counter, CountMsg::Inc);
    }
    tell(counter, CountMsg::Take);
});

pub fn counting() -> Bench {
    let rt = runtime();
    let (done, totals) = unbounded();
    let counter = spawn(&rt, Counter, CounterState { count: 0, done });
    let producer = spawn(&rt, Producer, counter);
    Bench {
        round: Box::new(move || {
            tell(&producer, COUNT_MESSAGES);
            assert_eq!(figure(&totals, "Counting/ractor"), COUNT_MESSAGES);
        }),
        finish: finish(rt),
    }
}

// ---- ThreadRing --------------------------------------------------------------------------

enum RingMsg {
    Link(ActorRef<RingMsg>),
    Token(u64),
}

struct RingState {
    me: usize,
    next: Option<ActorRef<RingMsg>>,
    done: Sender<u64>,
}

actor!(RingNode, RingMsg, RingState, |me, msg, s| {
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
    let nodes: Vec<ActorRef<RingMsg>> =
        (0..RING_SIZE).map(|me| spawn(&rt, RingNode, RingState { me, next: None, done: done.clone() })).collect();
    for (i, node) in nodes.iter().enumerate() {
        tell(node, RingMsg::Link(nodes[(i + 1) % RING_SIZE].clone()));
    }
    Bench {
        round: Box::new(move || {
            tell(&nodes[0], RingMsg::Token(RING_HOPS));
            assert_eq!(figure(&ends, "ThreadRing/ractor"), RING_HOPS % RING_SIZE as u64);
        }),
        finish: finish(rt),
    }
}

// ---- Chameneos ---------------------------------------------------------------------------

enum MallMsg {
    Chameneos(Vec<ActorRef<ChameneoMsg>>),
    Run(u64),
    Meet(ActorRef<ChameneoMsg>, Color),
    Faded(u64),
}

enum ChameneoMsg {
    Start,
    Meeting(ActorRef<ChameneoMsg>, Color),
    Change(Color),
    Exit,
}

struct MallState {
    chameneos: Vec<ActorRef<ChameneoMsg>>,
    left: u64,
    waiting: Option<(ActorRef<ChameneoMsg>, Color)>,
    faded: usize,
    total: u64,
    done: Sender<u64>,
}

actor!(Mall, MallMsg, MallState, |me, msg, s| {
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

struct ChameneoState {
    mall: ActorRef<MallMsg>,
    initial: Color,
    color: Color,
    meetings: u64,
}

actor!(Chameneo, ChameneoMsg, ChameneoState, |me, msg, s| {
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
            return Ok(());
        }
    }
    tell(&s.mall, MallMsg::Meet(me, s.color));
});

pub fn chameneos() -> Bench {
    let rt = runtime();
    let (done, totals) = unbounded();
    let state = MallState { chameneos: Vec::new(), left: 0, waiting: None, faded: 0, total: 0, done };
    let mall = spawn(&rt, Mall, state);
    let all = (0..CHAMENEOS)
        .map(|i| {
            let color = Color::initial(i);
            spawn(&rt, Chameneo, ChameneoState { mall: mall.clone(), initial: color, color, meetings: 0 })
        })
        .collect();
    tell(&mall, MallMsg::Chameneos(all));
    Bench {
        round: Box::new(move || {
            tell(&mall, MallMsg::Run(MEETINGS));
            assert_eq!(figure(&totals, "Chameneos/ractor"), 2 * MEETINGS);
        }),
        finish: finish(rt),
    }
}

// ---- Big ---------------------------------------------------------------------------------

enum BigMsg {
    Neighbours(Arc<Vec<ActorRef<BigMsg>>>),
    Start(u64),
    Ping(usize),
    Pong,
}

struct BigState {
    me: usize,
    all: Option<Arc<Vec<ActorRef<BigMsg>>>>,
    left: u64,
    pongs: u64,
    rng: XorShift,
    done: Sender<u64>,
}

impl BigState {
    fn ping_someone(&mut self) {
        self.left -= 1;
        let all = self.all.as_ref().expect("neighbours set");
        let to = self.rng.other_than(self.me, all.len());
        tell(&all[to], BigMsg::Ping(self.me));
    }
}

actor!(BigActor, BigMsg, BigState, |me, msg, s| {
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
    let actors: Vec<ActorRef<BigMsg>> = (0..BIG_ACTORS)
        .map(|me| {
            let state =
                BigState { me, all: None, left: 0, pongs: 0, rng: XorShift::new(me as u64), done: done.clone() };
            spawn(&rt, BigActor, state)
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
            assert_eq!(figures(&pongs, BIG_ACTORS, "Big/ractor"), BIG_ACTORS as u64 * BIG_PINGS);
        }),
        finish: finish(rt),
    }
}

// ---- Fork-Join ---------------------------------------------------------------------------

struct FjState {
    seen: u64,
    done: Sender<u64>,
}

actor!(FjWorker, f64, FjState, |me, x, s| {
    black_box(fj_compute(x));
    s.seen += 1;
    if s.seen == FJ_MESSAGES {
        let _ = s.done.send(std::mem::take(&mut s.seen));
    }
});

pub fn fork_join() -> Bench {
    let rt = runtime();
    let (done, seen) = unbounded();
    let workers: Vec<ActorRef<f64>> =
        (0..FJ_WORKERS).map(|_| spawn(&rt, FjWorker, FjState { seen: 0, done: done.clone() })).collect();
    Bench {
        round: Box::new(move || {
            for _ in 0..FJ_MESSAGES {
                for worker in &workers {
                    tell(worker, 37.2);
                }
            }
            assert_eq!(figures(&seen, FJ_WORKERS, "ForkJoin/ractor"), FJ_WORKERS as u64 * FJ_MESSAGES);
        }),
        finish: finish(rt),
    }
}
