//! Metrics reach the `metrics` facade, labelled by actor type.

use std::time::Duration;

use baton_runtime::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;

struct Flaky;
impl Actor for Flaky {
    type Message = u32;
    fn handle(&mut self, _ctx: &mut Context<Self>, n: u32) {
        if n == 13 {
            panic!("unlucky");
        }
    }
}

#[test]
fn runtime_metrics_are_recorded_per_actor_type() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("installing the debugging recorder");

    let rt = Runtime::new();
    let sup =
        rt.supervisor(Strategy::OneForOne, Intensity { max_restarts: 10, period: Duration::from_secs(10) }).unwrap();
    let a = sup.start_child(ChildSpec::new(|| Flaky)).unwrap();
    let b = sup.start_child(ChildSpec::new(|| Flaky)).unwrap();
    // One message per turn (the pause lets each turn end), so every actor has more than the 16
    // turns and wake-ups within which one is timed.
    for n in 0..20 {
        a.send(n).unwrap();
        b.send(100 + n).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    rt.shutdown(Duration::from_secs(5)).unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str| {
        snapshot
            .iter()
            .filter(|(k, _, _, _)| k.kind() == kind && k.key().name() == name)
            .filter(|(k, _, _, _)| k.key().labels().any(|l| l.key() == "actor" && l.value() == "Flaky"))
            .map(|(_, _, _, v)| v)
            .next()
            .unwrap_or_else(|| panic!("metric {name} for Flaky missing"))
    };
    let counter = |name: &str| match find(MetricKind::Counter, name) {
        DebugValue::Counter(n) => n.to_owned(),
        other => panic!("{name} is {other:?}"),
    };
    assert_eq!(counter("baton_messages_sent_total"), 40);
    assert_eq!(counter("baton_messages_handled_total"), 40);
    assert_eq!(counter("baton_actor_panics_total"), 1);
    assert_eq!(counter("baton_actor_restarts_total"), 1);
    assert!(matches!(find(MetricKind::Histogram, "baton_handler_seconds"), DebugValue::Histogram(v) if !v.is_empty()));
    assert!(
        matches!(find(MetricKind::Histogram, "baton_mailbox_wait_seconds"), DebugValue::Histogram(v) if !v.is_empty())
    );
    assert!(matches!(find(MetricKind::Gauge, "baton_mailbox_depth"), DebugValue::Gauge(_)));
    // Labels carry types, never instance ids.
    for (k, _, _, _) in &snapshot {
        for l in k.key().labels() {
            assert!(!l.value().contains("actor#"), "instance label on {}", k.key().name());
        }
    }
    assert!(snapshot.iter().any(|(k, _, _, _)| k.key().name() == "baton_pool_parks_total"));
}
