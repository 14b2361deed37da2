//! Supervisors: strategies, restart types, intensity and escalation, restart in place.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::*;
use crossbeam_channel::{unbounded, Receiver, Sender};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Cmd {
    Panic,
    Stop,
    Echo(u32),
}

/// Reports (name, instance number, event) so tests can see restarts.
struct Child {
    name: &'static str,
    instance: u32,
    out: Sender<(&'static str, u32, String)>,
}

impl Actor for Child {
    type Message = Cmd;
    fn started(&mut self, _ctx: &mut Context<Self>) {
        self.out.send((self.name, self.instance, "started".into())).unwrap();
    }
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Cmd) {
        match msg {
            Cmd::Panic => panic!("{} crashed", self.name),
            Cmd::Stop => ctx.stop(),
            Cmd::Echo(n) => self.out.send((self.name, self.instance, format!("echo {n}"))).unwrap(),
        }
    }
}

fn spec(name: &'static str, out: &Sender<(&'static str, u32, String)>) -> ChildSpec<Child> {
    let out = out.clone();
    let counter = Arc::new(AtomicU32::new(0));
    ChildSpec::new(move || Child { name, instance: counter.fetch_add(1, Ordering::SeqCst), out: out.clone() })
}

fn expect(rx: &Receiver<(&'static str, u32, String)>, name: &str, instance: u32, event: &str) {
    let got = rx.recv_timeout(WAIT).expect("no event");
    assert_eq!((got.0, got.1, got.2.as_str()), (name, instance, event));
}

/// Collects the next `n` events in any order (restarts of siblings race each other).
fn collect(rx: &Receiver<(&'static str, u32, String)>, n: usize) -> Vec<(&'static str, u32, String)> {
    let mut v: Vec<_> = (0..n).map(|_| rx.recv_timeout(WAIT).expect("no event")).collect();
    v.sort();
    v
}

fn intensity(max_restarts: u32) -> Intensity {
    Intensity { max_restarts, period: Duration::from_secs(10) }
}

#[test]
fn one_for_one_restarts_in_place_keeping_address_and_queued_messages() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let sup = rt.supervisor(Strategy::OneForOne, intensity(5)).unwrap();
    let a = sup.start_child(spec("a", &tx)).unwrap();
    let b = sup.start_child(spec("b", &tx)).unwrap();
    let mut first = collect(&rx, 2);
    first.sort();
    assert_eq!(first, vec![("a", 0, "started".into()), ("b", 0, "started".into())]);
    a.send(Cmd::Panic).unwrap();
    a.send(Cmd::Echo(1)).unwrap(); // queued behind the panic: handled by the new instance
    expect(&rx, "a", 1, "started");
    expect(&rx, "a", 1, "echo 1");
    b.send(Cmd::Echo(2)).unwrap();
    expect(&rx, "b", 0, "echo 2"); // b was not restarted
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn one_for_all_restarts_every_child() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let sup = rt.supervisor(Strategy::OneForAll, intensity(5)).unwrap();
    let a = sup.start_child(spec("a", &tx)).unwrap();
    let _b = sup.start_child(spec("b", &tx)).unwrap();
    let _c = sup.start_child(spec("c", &tx)).unwrap();
    collect(&rx, 3);
    a.send(Cmd::Panic).unwrap();
    let restarted = collect(&rx, 3);
    assert_eq!(restarted, vec![("a", 1, "started".into()), ("b", 1, "started".into()), ("c", 1, "started".into())]);
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn rest_for_one_restarts_the_child_and_those_started_after_it() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let sup = rt.supervisor(Strategy::RestForOne, intensity(5)).unwrap();
    let _a = sup.start_child(spec("a", &tx)).unwrap();
    let b = sup.start_child(spec("b", &tx)).unwrap();
    let _c = sup.start_child(spec("c", &tx)).unwrap();
    collect(&rx, 3);
    b.send(Cmd::Panic).unwrap();
    let restarted = collect(&rx, 2);
    assert_eq!(restarted, vec![("b", 1, "started".into()), ("c", 1, "started".into())]);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "a must not restart");
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn restart_types_decide_who_comes_back() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let sup = rt.supervisor(Strategy::OneForOne, intensity(10)).unwrap();
    let perm = sup.start_child(spec("perm", &tx).restart(Restart::Permanent)).unwrap();
    let trans = sup.start_child(spec("trans", &tx).restart(Restart::Transient)).unwrap();
    let temp = sup.start_child(spec("temp", &tx).restart(Restart::Temporary)).unwrap();
    collect(&rx, 3);

    // Permanent: back even after a normal stop.
    perm.send(Cmd::Stop).unwrap();
    expect(&rx, "perm", 1, "started");
    // Transient: back after a panic, gone after a normal stop.
    trans.send(Cmd::Panic).unwrap();
    expect(&rx, "trans", 1, "started");
    trans.send(Cmd::Stop).unwrap();
    // Temporary: gone after a panic.
    temp.send(Cmd::Panic).unwrap();
    let deadline = Instant::now() + WAIT;
    while !(trans.is_stopped() && temp.is_stopped()) {
        assert!(Instant::now() < deadline, "transient/temporary children were not terminated");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    assert_eq!(sup.children(), vec![perm.id()]);
    rt.shutdown(WAIT).unwrap();
}

struct Watch(Sender<Down>);
impl Actor for Watch {
    type Message = Addr<Supervisor>;
    fn handle(&mut self, ctx: &mut Context<Self>, sup: Addr<Supervisor>) {
        ctx.monitor(&sup);
        self.0.send(Down { id: sup.id(), reason: ExitReason::Normal }).unwrap();
    }
    fn down(&mut self, _ctx: &mut Context<Self>, down: Down) {
        self.0.send(down).unwrap();
    }
}

#[test]
fn exceeding_restart_intensity_escalates() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let (down_tx, downs) = unbounded();
    let sup = rt.supervisor(Strategy::OneForOne, intensity(2)).unwrap();
    let watch = rt.spawn(Watch(down_tx));
    watch.send(sup.addr().clone()).unwrap();
    downs.recv_timeout(WAIT).unwrap(); // monitoring is set up
    let a = sup.start_child(spec("a", &tx)).unwrap();
    expect(&rx, "a", 0, "started");
    a.send(Cmd::Panic).unwrap();
    expect(&rx, "a", 1, "started");
    a.send(Cmd::Panic).unwrap();
    expect(&rx, "a", 2, "started");
    a.send(Cmd::Panic).unwrap(); // third restart within the period: too many
    let down = downs.recv_timeout(WAIT).unwrap();
    assert_eq!(down, Down { id: sup.addr().id(), reason: ExitReason::Escalated });
    let deadline = Instant::now() + WAIT;
    while !a.is_stopped() {
        assert!(Instant::now() < deadline, "children of an escalated supervisor must stop");
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn nested_supervisor_escalation_reaches_the_parent() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let top = rt.supervisor(Strategy::OneForOne, intensity(5)).unwrap();
    let inner = top.start_supervisor(Strategy::OneForOne, intensity(0)).unwrap();
    let c = inner.start_child(spec("c", &tx)).unwrap();
    expect(&rx, "c", 0, "started");
    c.send(Cmd::Panic).unwrap();
    let deadline = Instant::now() + WAIT;
    while !(inner.addr().is_stopped() && c.is_stopped()) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    // The parent removed its temporary supervisor child and is still alive.
    while !top.children().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!top.addr().is_stopped());
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn dedicated_thread_children_are_supervised_like_the_rest() {
    let rt = Runtime::new();
    let (tx, rx) = unbounded();
    let sup = rt.supervisor(Strategy::OneForOne, intensity(5)).unwrap();
    let d = sup.start_child(spec("dedicated", &tx).dedicated(true)).unwrap();
    expect(&rx, "dedicated", 0, "started");
    d.send(Cmd::Panic).unwrap();
    d.send(Cmd::Echo(9)).unwrap();
    expect(&rx, "dedicated", 1, "started");
    expect(&rx, "dedicated", 1, "echo 9");
    rt.shutdown(WAIT).unwrap();
}
