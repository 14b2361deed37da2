//! Actors on an `EventLoop`: turns run on the driving thread, wake-ups from other threads call
//! the wake function, batches yield, blocking asks are refused, and closing the loop hands its
//! actors to the pool so that shutdown completes.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use baton_runtime::*;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

const WAIT: Duration = Duration::from_secs(5);

/// Reports the thread each message is handled on.
struct WhereAmI {
    seen: Sender<(u32, ThreadId)>,
}

impl Actor for WhereAmI {
    type Message = u32;
    fn handle(&mut self, _ctx: &mut Context<Self>, n: u32) {
        self.seen.send((n, std::thread::current().id())).unwrap();
    }
}

/// A driver thread: waits for a wake-up (or a short timeout), then runs what is ready, until
/// told to stop; closes the loop on the way out.
struct Driver {
    stop: Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    id: ThreadId,
    wakes: Arc<AtomicUsize>,
}

fn driver(event_loop_wakes: (EventLoop, Receiver<()>, Arc<AtomicUsize>)) -> Driver {
    let (event_loop, wakeups, wakes) = event_loop_wakes;
    let (stop, stopped) = bounded::<()>(1);
    let (id_tx, id_rx) = bounded(1);
    let thread = std::thread::spawn(move || {
        event_loop.bind();
        id_tx.send(std::thread::current().id()).unwrap();
        let mut more = false;
        loop {
            if stopped.try_recv().is_ok() {
                break;
            }
            if !more {
                match wakeups.recv_timeout(Duration::from_millis(50)) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            more = event_loop.run_ready();
        }
        event_loop.close();
    });
    Driver { stop, thread: Some(thread), id: id_rx.recv().unwrap(), wakes }
}

impl Driver {
    fn stop(mut self) {
        let _ = self.stop.send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A loop whose wake function counts and signals a channel.
fn new_loop() -> (EventLoop, Receiver<()>, Arc<AtomicUsize>) {
    let (tx, rx) = unbounded();
    let wakes = Arc::new(AtomicUsize::new(0));
    let counted = wakes.clone();
    let event_loop = EventLoop::new(move || {
        counted.fetch_add(1, SeqCst);
        let _ = tx.send(());
    });
    (event_loop, rx, wakes)
}

#[test]
fn turns_run_on_the_driving_thread_and_wake_it() {
    let rt = Runtime::builder().threads(2).build();
    let parts = new_loop();
    let event_loop = parts.0.clone();
    let driver = driver(parts);
    let (tx, seen) = unbounded();
    let actor = rt.spawn_on(&event_loop, WhereAmI { seen: tx }, Mailbox::DEFAULT).unwrap();
    for n in 0..100 {
        actor.send(n).unwrap();
    }
    for n in 0..100 {
        let (got, thread) = seen.recv_timeout(WAIT).unwrap();
        assert_eq!(got, n, "messages are handled in order");
        assert_eq!(thread, driver.id, "every turn runs on the driving thread");
    }
    assert!(driver.wakes.load(SeqCst) >= 1, "a send from another thread wakes the driver");
    driver.stop();
    rt.shutdown(WAIT).unwrap();
}

/// Forwards every message to an actor on the same loop, which reports it.
struct Forward {
    to: Addr<WhereAmI>,
}

impl Actor for Forward {
    type Message = u32;
    fn handle(&mut self, _ctx: &mut Context<Self>, n: u32) {
        self.to.try_send(n).unwrap();
    }
}

#[test]
fn sends_between_actors_on_the_loop_do_not_wake_it() {
    let rt = Runtime::builder().threads(1).build();
    let parts = new_loop();
    let event_loop = parts.0.clone();
    let driver = driver(parts);
    let (tx, seen) = unbounded();
    let last = rt.spawn_on(&event_loop, WhereAmI { seen: tx }, Mailbox::Unbounded).unwrap();
    let first = rt.spawn_on(&event_loop, Forward { to: last }, Mailbox::Unbounded).unwrap();
    // Let the spawns' own wake-ups settle before counting.
    std::thread::sleep(Duration::from_millis(100));
    let before = driver.wakes.load(SeqCst);
    first.send(7).unwrap();
    let (n, thread) = seen.recv_timeout(WAIT).unwrap();
    assert_eq!((n, thread), (7, driver.id));
    assert_eq!(driver.wakes.load(SeqCst) - before, 1, "only the send from this thread woke the loop");
    driver.stop();
    rt.shutdown(WAIT).unwrap();
}

/// Counts its turns' messages; used to see that a long mailbox is taken in batches.
struct Counter {
    handled: Arc<AtomicUsize>,
}

impl Actor for Counter {
    type Message = ();
    fn handle(&mut self, _ctx: &mut Context<Self>, _: ()) {
        self.handled.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_long_mailbox_is_handled_in_batches_and_run_ready_says_so() {
    let rt = Runtime::builder().threads(1).build();
    let (event_loop, _wakeups, _) = new_loop();
    // This test thread is the driver.
    event_loop.bind();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = rt.spawn_on(&event_loop, Counter { handled: handled.clone() }, Mailbox::Unbounded).unwrap();
    for _ in 0..1000 {
        counter.try_send(()).unwrap();
    }
    assert_eq!(event_loop.runnable(), 1);
    let more = event_loop.run_ready();
    let after_one = handled.load(SeqCst);
    assert!(more, "a turn does not take 1000 messages at once");
    assert!(after_one > 0 && after_one < 1000, "one turn handled {after_one}");
    let mut rounds = 1;
    while event_loop.run_ready() {
        rounds += 1;
        assert!(rounds < 1000, "run_ready never settles");
    }
    assert_eq!(handled.load(SeqCst), 1000);
    assert!(!event_loop.run_ready(), "nothing left to run");
    event_loop.close();
    rt.shutdown(WAIT).unwrap();
}

/// Asked to, tries a blocking ask of another actor itself.
struct Asker {
    other: Option<Addr<Replier>>,
}

/// Answers every ask.
struct Replier;

impl Actor for Replier {
    type Message = ReplyTo<()>;
    fn handle(&mut self, _ctx: &mut Context<Self>, reply: ReplyTo<()>) {
        let _ = reply.send(());
    }
}

enum AskerMsg {
    TryAsk(ReplyTo<Result<(), AskError>>),
}

impl Actor for Asker {
    type Message = AskerMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: AskerMsg) {
        let AskerMsg::TryAsk(reply) = msg;
        let other = self.other.as_ref().unwrap();
        let _ = reply.send(other.ask(|r| r, Duration::from_millis(10)));
    }
}

#[test]
fn the_driving_thread_refuses_blocking_asks() {
    let rt = Runtime::builder().threads(1).build();
    let parts = new_loop();
    let event_loop = parts.0.clone();
    let driver = driver(parts);
    let replier = rt.spawn(Replier);
    assert_eq!(replier.ask(|r| r, WAIT), Ok(()), "asks from an ordinary thread work");
    let asker = rt.spawn_on(&event_loop, Asker { other: Some(replier) }, Mailbox::DEFAULT).unwrap();
    let got = asker.ask(AskerMsg::TryAsk, WAIT).unwrap();
    assert_eq!(got, Err(AskError::OnPoolThread), "a blocking ask would stall the loop");
    driver.stop();
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn closing_the_loop_moves_its_actors_to_the_pool_and_shutdown_completes() {
    let rt = Runtime::builder().threads(1).build();
    let parts = new_loop();
    let event_loop = parts.0.clone();
    let driver = driver(parts);
    let (tx, seen) = unbounded();
    let actor = rt.spawn_on(&event_loop, WhereAmI { seen: tx }, Mailbox::DEFAULT).unwrap();
    actor.send(1).unwrap();
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), (1, driver.id));
    let driver_id = driver.id;
    driver.stop();
    // Nobody drives the loop any more: the actor still runs, on the pool.
    actor.send(2).unwrap();
    let (n, thread) = seen.recv_timeout(WAIT).unwrap();
    assert_eq!(n, 2);
    assert_ne!(thread, driver_id);
    let start = Instant::now();
    rt.shutdown(WAIT).unwrap();
    assert!(start.elapsed() < WAIT);
}

#[test]
fn actors_spawned_after_close_run_on_the_pool() {
    let rt = Runtime::builder().threads(1).build();
    let (event_loop, _wakeups, _) = new_loop();
    event_loop.close();
    let (tx, seen) = unbounded();
    let actor = rt.spawn_on(&event_loop, WhereAmI { seen: tx }, Mailbox::DEFAULT).unwrap();
    actor.send(3).unwrap();
    let (n, thread) = seen.recv_timeout(WAIT).unwrap();
    assert_eq!(n, 3);
    assert_ne!(thread, std::thread::current().id());
    rt.shutdown(WAIT).unwrap();
}

/// Panics on every message.
struct Boom;

impl Actor for Boom {
    type Message = ();
    fn handle(&mut self, _ctx: &mut Context<Self>, _: ()) {
        panic!("boom on the loop");
    }
}

#[test]
fn a_panicking_handler_on_the_loop_stops_its_actor_not_the_driver() {
    let rt = Runtime::builder().threads(1).build();
    let parts = new_loop();
    let event_loop = parts.0.clone();
    let driver = driver(parts);
    let boom = rt.spawn_on(&event_loop, Boom, Mailbox::DEFAULT).unwrap();
    let (down_tx, down) = unbounded();
    /// Monitors the actor it is sent and reports its exit.
    struct Watcher(Sender<ExitReason>);
    impl Actor for Watcher {
        type Message = Addr<Boom>;
        fn handle(&mut self, ctx: &mut Context<Self>, target: Addr<Boom>) {
            ctx.monitor(&target);
        }
        fn down(&mut self, _ctx: &mut Context<Self>, d: Down) {
            self.0.send(d.reason).unwrap();
        }
    }
    let watcher = rt.spawn(Watcher(down_tx));
    watcher.send(boom.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    boom.send(()).unwrap();
    assert!(matches!(down.recv_timeout(WAIT).unwrap(), ExitReason::Panicked(_)));
    // The driver still runs other actors.
    let (tx, seen) = unbounded();
    let after = rt.spawn_on(&event_loop, WhereAmI { seen: tx }, Mailbox::DEFAULT).unwrap();
    after.send(9).unwrap();
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), (9, driver.id));
    driver.stop();
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn actors_of_two_runtimes_on_one_closed_loop_each_go_to_their_own_pool() {
    let first = Runtime::builder().threads(1).build();
    let second = Runtime::builder().threads(1).build();
    let (event_loop, _wakeups, _) = new_loop();
    let (tx1, seen1) = unbounded();
    let (tx2, seen2) = unbounded();
    let a = first.spawn_on(&event_loop, WhereAmI { seen: tx1 }, Mailbox::DEFAULT).unwrap();
    let b = second.spawn_on(&event_loop, WhereAmI { seen: tx2 }, Mailbox::DEFAULT).unwrap();
    event_loop.close();
    a.send(1).unwrap();
    assert_eq!(seen1.recv_timeout(WAIT).unwrap().0, 1);
    first.shutdown(WAIT).unwrap();
    // The first runtime's pool is gone; the second's actor must not have been handed to it.
    b.send(2).unwrap();
    assert_eq!(seen2.recv_timeout(WAIT).expect("the second runtime's actor ran nowhere").0, 2);
    second.shutdown(WAIT).unwrap();
}

/// Reports where it runs; panics on 0.
struct Fragile {
    seen: Sender<(u32, ThreadId)>,
}

impl Actor for Fragile {
    type Message = u32;
    fn handle(&mut self, _ctx: &mut Context<Self>, n: u32) {
        assert_ne!(n, 0, "told to crash");
        self.seen.send((n, std::thread::current().id())).unwrap();
    }
}

#[test]
fn a_supervised_child_on_a_loop_is_restarted_on_the_same_loop() {
    let rt = Runtime::builder().threads(1).build();
    let parts = new_loop();
    let event_loop = parts.0.clone();
    let driver = driver(parts);
    let sup =
        rt.supervisor(Strategy::OneForOne, Intensity { max_restarts: 3, period: Duration::from_secs(5) }).unwrap();
    let (tx, seen) = unbounded();
    let child = sup.start_child(ChildSpec::new(move || Fragile { seen: tx.clone() }).on_loop(&event_loop)).unwrap();
    child.send(1).unwrap();
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), (1, driver.id));
    child.send(0).unwrap();
    // Restarted in place: same address, and still on the driving thread.
    child.send(2).unwrap();
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), (2, driver.id));
    driver.stop();
    rt.shutdown(WAIT).unwrap();
}

/// Bounces a count with its partner on the same loop until it reaches zero.
struct Bouncer {
    partner: Option<Addr<Bouncer>>,
    hops: Arc<AtomicUsize>,
}

impl Actor for Bouncer {
    type Message = BounceMsg;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: BounceMsg) {
        match msg {
            BounceMsg::Partner(p) => self.partner = Some(p),
            BounceMsg::Left(0) => {}
            BounceMsg::Left(n) => {
                self.hops.fetch_add(1, SeqCst);
                self.partner.as_ref().unwrap().try_send(BounceMsg::Left(n - 1)).unwrap();
            }
        }
    }
}

enum BounceMsg {
    Partner(Addr<Bouncer>),
    Left(u32),
}

/// Two bouncers on a loop driven by the test thread, partnered with each other.
fn bouncers(rt: &Runtime, event_loop: &EventLoop, hops: &Arc<AtomicUsize>) -> Addr<Bouncer> {
    let a = rt.spawn_on(event_loop, Bouncer { partner: None, hops: hops.clone() }, Mailbox::Unbounded).unwrap();
    let b = rt.spawn_on(event_loop, Bouncer { partner: None, hops: hops.clone() }, Mailbox::Unbounded).unwrap();
    a.try_send(BounceMsg::Partner(b.clone())).unwrap();
    b.try_send(BounceMsg::Partner(a.clone())).unwrap();
    while event_loop.run_ready() {}
    a
}

#[test]
fn hand_offs_between_actors_on_the_loop_run_in_one_call() {
    let rt = Runtime::builder().threads(1).build();
    let (event_loop, _wakeups, _) = new_loop();
    event_loop.bind();
    let hops = Arc::new(AtomicUsize::new(0));
    let a = bouncers(&rt, &event_loop, &hops);
    a.try_send(BounceMsg::Left(100)).unwrap();
    assert!(!event_loop.run_ready(), "nothing is left after one call");
    assert_eq!(hops.load(SeqCst), 100, "all hundred hand-offs ran in that call, with no wait between them");
    event_loop.close();
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn one_call_runs_a_bounded_number_of_turns() {
    let rt = Runtime::builder().threads(1).build();
    let (event_loop, _wakeups, _) = new_loop();
    event_loop.bind();
    let hops = Arc::new(AtomicUsize::new(0));
    let a = bouncers(&rt, &event_loop, &hops);
    let endless = 10 * EventLoop::TURNS_PER_PASS as u32;
    a.try_send(BounceMsg::Left(endless)).unwrap();
    assert!(event_loop.run_ready(), "a long chain hands the thread back to its driver");
    assert_eq!(hops.load(SeqCst), EventLoop::TURNS_PER_PASS, "one turn per hop, up to the bound");
    let mut calls = 1;
    while event_loop.run_ready() {
        calls += 1;
        assert!(calls < 100, "run_ready never settles");
    }
    assert_eq!(hops.load(SeqCst), endless as usize);
    event_loop.close();
    rt.shutdown(WAIT).unwrap();
}
