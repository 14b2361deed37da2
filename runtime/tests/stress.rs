//! Many actors, many messages: every message handled exactly once, per-sender order kept, and
//! panics never take a pool thread or another actor down.

use std::time::Duration;

use baton_runtime::*;
use crossbeam_channel::{unbounded, Sender};

const WAIT: Duration = Duration::from_secs(60);

/// Checks per-sender order and counts messages; reports at the end.
struct Sink {
    next_from: Vec<u64>,
    total: u64,
    expected: u64,
    done: Sender<u64>,
}

impl Actor for Sink {
    type Message = (usize, u64);
    fn handle(&mut self, _ctx: &mut Context<Self>, (sender, seq): (usize, u64)) {
        assert_eq!(self.next_from[sender], seq, "per-sender order broken");
        self.next_from[sender] += 1;
        self.total += 1;
        if self.total == self.expected {
            self.done.send(self.total).unwrap();
        }
    }
}

/// Forwards a burst of numbered messages to its sinks when told to start.
struct Source {
    me: usize,
    sinks: Vec<Addr<Sink>>,
    per_sink: u64,
}

impl Actor for Source {
    type Message = ();
    fn handle(&mut self, _ctx: &mut Context<Self>, _: ()) {
        for seq in 0..self.per_sink {
            for s in &self.sinks {
                s.try_send((self.me, seq)).expect("unbounded sink");
            }
        }
    }
}

#[test]
fn thousands_of_actors_millions_of_messages_exactly_once_in_order() {
    let rt = Runtime::new();
    let (sources, sinks, per_sink) = (1_000usize, 20usize, 100u64);
    let (done_tx, done) = unbounded();
    let sink_addrs: Vec<Addr<Sink>> = (0..sinks)
        .map(|_| {
            let sink = Sink {
                next_from: vec![0; sources],
                total: 0,
                expected: sources as u64 * per_sink,
                done: done_tx.clone(),
            };
            rt.try_spawn(sink, Mailbox::Unbounded).unwrap()
        })
        .collect();
    let source_addrs: Vec<Addr<Source>> =
        (0..sources).map(|me| rt.spawn(Source { me, sinks: sink_addrs.clone(), per_sink })).collect();
    for s in &source_addrs {
        s.send(()).unwrap();
    }
    // 1,000 sources x 20 sinks x 100 = 2,000,000 messages.
    let mut total = 0;
    for _ in 0..sinks {
        total += done.recv_timeout(WAIT).expect("a sink did not get all its messages");
    }
    assert_eq!(total, 2_000_000);
    rt.shutdown(WAIT).unwrap();
}

/// Blocking senders from outside the runtime against a small bounded mailbox: backpressure
/// without loss.
#[test]
fn bounded_mailbox_under_many_blocking_senders_loses_nothing() {
    let rt = Runtime::new();
    let senders = 8usize;
    let per = 50_000u64;
    let (done_tx, done) = unbounded();
    let sink = rt
        .try_spawn(
            Sink { next_from: vec![0; senders], total: 0, expected: senders as u64 * per, done: done_tx },
            Mailbox::Bounded(16),
        )
        .unwrap();
    let threads: Vec<_> = (0..senders)
        .map(|me| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for seq in 0..per {
                    sink.send((me, seq)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(done.recv_timeout(WAIT).unwrap(), senders as u64 * per);
    rt.shutdown(WAIT).unwrap();
}

struct Fragile {
    ok: Sender<u32>,
}

impl Actor for Fragile {
    type Message = u32;
    fn handle(&mut self, _ctx: &mut Context<Self>, n: u32) {
        if n % 7 == 0 {
            panic!("fragile {n}");
        }
        self.ok.send(n).unwrap();
    }
}

#[test]
fn panics_never_take_a_pool_thread_or_another_actor_down() {
    let rt = Runtime::builder().threads(2).build();
    let (ok_tx, ok) = unbounded();
    // Many actors that each panic once, among many that never do.
    let actors: Vec<Addr<Fragile>> = (0..500).map(|_| rt.spawn(Fragile { ok: ok_tx.clone() })).collect();
    for (i, a) in actors.iter().enumerate() {
        a.send(i as u32 * 7 + if i % 2 == 0 { 0 } else { 1 }).unwrap();
    }
    let survivors = actors.len() / 2;
    for _ in 0..survivors {
        ok.recv_timeout(WAIT).unwrap();
    }
    // Both pool threads still run: the survivors keep answering.
    for (i, a) in actors.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        a.send(i as u32 * 7 + 2).unwrap();
    }
    for _ in 0..survivors {
        ok.recv_timeout(WAIT).unwrap();
    }
    // The panicking actors may still be queued behind the survivors' turns: wait for them.
    let deadline = std::time::Instant::now() + WAIT;
    let crashed = loop {
        let crashed = actors.iter().filter(|a| a.is_stopped()).count();
        if crashed >= actors.len() / 2 || std::time::Instant::now() >= deadline {
            break crashed;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(crashed, actors.len() / 2);
    rt.shutdown(WAIT).unwrap();
}
