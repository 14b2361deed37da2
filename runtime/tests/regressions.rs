//! Regression tests, each named after the bug it guards against (found in review).

use std::time::{Duration, Instant};

use baton_runtime::*;
use crossbeam_channel::{unbounded, Sender};

const WAIT: Duration = Duration::from_secs(5);

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Quiet;
impl Actor for Quiet {
    type Message = ();
    fn handle(&mut self, _ctx: &mut Context<Self>, _: ()) {}
}

struct StopOnDown;
impl Actor for StopOnDown {
    type Message = Addr<Quiet>;
    fn handle(&mut self, ctx: &mut Context<Self>, other: Addr<Quiet>) {
        ctx.monitor(&other);
    }
    fn down(&mut self, ctx: &mut Context<Self>, _down: Down) {
        ctx.stop();
    }
}

#[test]
fn stop_requested_inside_down_is_honoured() {
    let rt = Runtime::new();
    let quiet = rt.spawn(Quiet);
    let watcher = rt.spawn(StopOnDown);
    watcher.send(quiet.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    quiet.stop();
    wait_until("the watcher stops after its down()", || watcher.is_stopped());
    rt.shutdown(WAIT).unwrap();
}

#[derive(Debug)]
enum Cmd {
    Panic,
}

struct Child;
impl Actor for Child {
    type Message = Cmd;
    fn handle(&mut self, _ctx: &mut Context<Self>, msg: Cmd) {
        match msg {
            Cmd::Panic => panic!("child crashed"),
        }
    }
}

#[test]
fn escalation_terminates_every_sibling_and_refuses_new_children() {
    let rt = Runtime::new();
    let sup = rt.supervisor(Strategy::OneForOne, Intensity { max_restarts: 0, period: WAIT }).unwrap();
    let a = sup.start_child(ChildSpec::new(|| Child)).unwrap();
    let b = sup.start_child(ChildSpec::new(|| Child)).unwrap();
    let c = sup.start_child(ChildSpec::new(|| Child)).unwrap();
    a.send(Cmd::Panic).unwrap();
    wait_until("all children and the supervisor stop", || {
        a.is_stopped() && b.is_stopped() && c.is_stopped() && sup.addr().is_stopped()
    });
    assert_eq!(rt.live_actors(), 0, "an escalated supervisor left actors behind");
    assert!(matches!(sup.start_child(ChildSpec::new(|| Child)), Err(SpawnError::SupervisorStopped)));
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn a_sibling_restart_does_not_destroy_a_nested_supervisor() {
    let rt = Runtime::new();
    let top = rt.supervisor(Strategy::OneForAll, Intensity { max_restarts: 5, period: WAIT }).unwrap();
    let inner = top.start_supervisor(Strategy::OneForOne, Intensity::default()).unwrap();
    let worker = top.start_child(ChildSpec::new(|| Child)).unwrap();
    worker.send(Cmd::Panic).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!inner.addr().is_stopped(), "the nested supervisor was torn down by a sibling's restart");
    assert!(inner.start_child(ChildSpec::new(|| Child)).is_ok());
    rt.shutdown(WAIT).unwrap();
}

struct SelfSender(Sender<bool>);
impl Actor for SelfSender {
    type Message = u8;
    fn handle(&mut self, ctx: &mut Context<Self>, n: u8) {
        if n == 0 {
            // The mailbox (capacity 1) is full of our own message: waiting would never end.
            let me = ctx.address();
            me.try_send(1).unwrap();
            self.0.send(me.send(2).is_err()).unwrap();
        }
    }
}

#[test]
fn a_dedicated_actor_sending_to_its_own_full_mailbox_does_not_hang() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let a = rt.spawn_dedicated(SelfSender(tx), Mailbox::Bounded(1)).unwrap();
    a.send(0).unwrap();
    assert!(rx.recv_timeout(WAIT).expect("the actor hung sending to itself"));
    rt.shutdown(WAIT).unwrap();
}

struct Tick(Sender<()>);
impl Actor for Tick {
    type Message = ();
    fn handle(&mut self, _ctx: &mut Context<Self>, _: ()) {
        let _ = self.0.send(());
    }
}

#[test]
fn a_panicking_timer_callback_does_not_stop_other_timers() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let t = rt.spawn(Tick(tx));
    rt.send_interval(t.recipient(), Duration::from_millis(5), || panic!("bad timer"));
    std::thread::sleep(Duration::from_millis(30));
    rt.send_after(t.recipient(), Duration::from_millis(5), ());
    rx.recv_timeout(WAIT).expect("the timer thread died with the panicking timer");
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn a_panicking_room_waiter_does_not_kill_the_pool() {
    let rt = Runtime::builder().threads(1).build();
    let (tx, rx) = unbounded();
    let t = rt.try_spawn(Tick(tx), Mailbox::Bounded(1)).unwrap();
    // Fill the mailbox from outside before the actor can run, then register a bad waiter.
    let mut registered = false;
    for _ in 0..1000 {
        if let Err(TrySendError::Full(())) = t.try_send_notify((), || panic!("bad waiter")) {
            registered = true;
            break;
        }
    }
    assert!(registered, "never saw the mailbox full");
    let other_tx = unbounded();
    let other = rt.spawn(Tick(other_tx.0));
    other.send(()).unwrap();
    other_tx.1.recv_timeout(WAIT).expect("the only pool thread died");
    rx.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// Holds its thread in the handler until released, so its mailbox stays full while it lives.
struct Held(crossbeam_channel::Receiver<()>);
impl Actor for Held {
    type Message = u32;
    fn handle(&mut self, _ctx: &mut Context<Self>, _: u32) {
        let _ = self.0.recv_timeout(WAIT);
    }
}

type SendResults = (Result<(), SendError<u32>>, Result<(), SendTimeoutError<u32>>);

/// Sends to a full mailbox with `send` and `send_timeout`, and reports what each said.
struct FullProber {
    target: Addr<Held>,
    report: Sender<SendResults>,
}
impl Actor for FullProber {
    type Message = ();
    fn handle(&mut self, _ctx: &mut Context<Self>, _: ()) {
        let sent = self.target.send(3);
        let timed = self.target.send_timeout(4, Duration::from_millis(200));
        let _ = self.report.send((sent, timed));
    }
}

/// A live actor with a full mailbox (capacity 1): its handler holds message 1, message 2 waits.
fn held_full(rt: &Runtime) -> (Addr<Held>, Sender<()>) {
    let (release, held_rx) = crossbeam_channel::bounded(1);
    let held = rt.spawn_dedicated(Held(held_rx), Mailbox::Bounded(1)).unwrap();
    held.send(1).unwrap();
    wait_until("the handler takes message 1", || held.mailbox_len() == 0);
    held.try_send(2).unwrap();
    (held, release)
}

fn assert_full_not_closed(results: SendResults, held: &Addr<Held>) {
    assert_eq!(results.0, Err(SendError::Full(3)), "send said: {:?}", results.0);
    assert_eq!(results.1, Err(SendTimeoutError::Full(4)), "send_timeout said: {:?}", results.1);
    assert!(!held.is_stopped());
}

#[test]
fn send_from_a_pool_thread_to_a_live_full_mailbox_says_full_not_closed() {
    let rt = Runtime::new();
    let (held, release) = held_full(&rt);
    let (tx, rx) = unbounded();
    let prober = rt.spawn(FullProber { target: held.clone(), report: tx });
    prober.send(()).unwrap();
    assert_full_not_closed(rx.recv_timeout(WAIT).unwrap(), &held);
    drop(release); // every later recv in Held returns at once
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn send_from_an_event_loop_to_a_live_full_mailbox_says_full_not_closed() {
    let rt = Runtime::new();
    let (held, release) = held_full(&rt);
    let (wake_tx, wake_rx) = unbounded::<()>();
    let event_loop = EventLoop::new(move || {
        let _ = wake_tx.send(());
    });
    let (tx, rx) = unbounded();
    let prober = rt.spawn_on(&event_loop, FullProber { target: held.clone(), report: tx }, Mailbox::DEFAULT).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let driver = {
        let (event_loop, done) = (event_loop.clone(), done.clone());
        std::thread::spawn(move || {
            event_loop.bind();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = wake_rx.recv_timeout(Duration::from_millis(10));
                event_loop.run_ready();
            }
            event_loop.close();
        })
    };
    prober.send(()).unwrap();
    let results = rx.recv_timeout(WAIT).unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    driver.join().unwrap();
    assert_full_not_closed(results, &held);
    drop(release); // every later recv in Held returns at once
    rt.shutdown(WAIT).unwrap();
}

/// Panics on `true`; reports each `stopped` call with its instance number and reason.
struct Fragile {
    instance: u32,
    stops: Sender<(u32, ExitReason)>,
}
impl Actor for Fragile {
    type Message = bool;
    fn handle(&mut self, _ctx: &mut Context<Self>, panic: bool) {
        assert!(!panic, "fragile broke");
    }
    fn stopped(&mut self, reason: &ExitReason) {
        let _ = self.stops.send((self.instance, reason.clone()));
    }
}

/// Monitors whatever it is sent, and forwards each `Down`.
struct Watcher(Sender<Down>);
impl Actor for Watcher {
    type Message = Addr<Fragile>;
    fn handle(&mut self, ctx: &mut Context<Self>, other: Addr<Fragile>) {
        ctx.monitor(&other);
    }
    fn down(&mut self, _ctx: &mut Context<Self>, down: Down) {
        let _ = self.0.send(down);
    }
}

fn panicked() -> ExitReason {
    ExitReason::Panicked("fragile broke".into())
}

#[test]
fn stopped_runs_with_panicked_when_an_unsupervised_handler_panics_and_monitors_hear() {
    let rt = Runtime::new();
    let (stops_tx, stops) = unbounded();
    let (downs_tx, downs) = unbounded();
    let fragile = rt.spawn(Fragile { instance: 0, stops: stops_tx });
    let watcher = rt.spawn(Watcher(downs_tx));
    watcher.send(fragile.clone()).unwrap();
    wait_until("the watcher monitors", || watcher.mailbox_len() == 0);
    fragile.send(true).unwrap();
    assert_eq!(stops.recv_timeout(WAIT).expect("stopped was not called"), (0, panicked()));
    let down = downs.recv_timeout(WAIT).expect("the monitor heard nothing");
    assert_eq!(down, Down { id: fragile.id(), reason: panicked() });
    assert!(fragile.is_stopped());
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn stopped_runs_with_panicked_when_a_supervised_handler_panics_and_the_supervisor_restarts() {
    let rt = Runtime::new();
    let (stops_tx, stops) = unbounded();
    let (downs_tx, downs) = unbounded();
    let sup = rt.supervisor(Strategy::OneForOne, Intensity { max_restarts: 1, period: WAIT }).unwrap();
    let instances = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let fragile = sup
        .start_child(ChildSpec::new(move || Fragile {
            instance: instances.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            stops: stops_tx.clone(),
        }))
        .unwrap();
    let watcher = rt.spawn(Watcher(downs_tx));
    watcher.send(fragile.clone()).unwrap();
    wait_until("the watcher monitors", || watcher.mailbox_len() == 0);

    // First panic: stopped on instance 0, the supervisor restarts (instance 1 handles the next
    // message), and the monitor hears nothing, since the actor has not stopped for good.
    fragile.send(true).unwrap();
    assert_eq!(stops.recv_timeout(WAIT).expect("stopped was not called"), (0, panicked()));
    fragile.send(false).unwrap();
    wait_until("the restarted instance handles a message", || fragile.mailbox_len() == 0);
    assert!(!fragile.is_stopped(), "the supervisor did not restart it");
    assert!(downs.try_recv().is_err());

    // Second panic exceeds the intensity: stopped on instance 1, then the supervisor gives up
    // and the monitor hears why.
    fragile.send(true).unwrap();
    assert_eq!(stops.recv_timeout(WAIT).expect("stopped was not called"), (1, panicked()));
    let down = downs.recv_timeout(WAIT).expect("the monitor heard nothing");
    assert_eq!(down.id, fragile.id());
    assert!(down.reason.is_abnormal(), "{:?}", down.reason);
    rt.shutdown(WAIT).unwrap();
}
