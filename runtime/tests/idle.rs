//! An idle runtime parks its threads: 10,000 idle actors cost no CPU.

use std::time::Duration;

use baton_runtime::*;

fn process_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

struct Idle;
impl Actor for Idle {
    type Message = u8;
    fn handle(&mut self, _ctx: &mut Context<Self>, _: u8) {}
}

#[test]
fn ten_thousand_idle_actors_burn_no_cpu() {
    let rt = Runtime::new();
    let actors: Vec<Addr<Idle>> = (0..10_000).map(|_| rt.try_spawn(Idle, Mailbox::Bounded(1)).unwrap()).collect();
    for a in &actors {
        a.send(1).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200)); // let the start-up work finish
    let before = process_cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = process_cpu_ticks() - before;
    // Clock ticks are 10 ms; allow two for the timer thread's 100 ms check-ins and noise.
    assert!(used <= 2, "idle runtime used {used} clock ticks of CPU in one second");
    rt.shutdown(Duration::from_secs(10)).unwrap();
}
