//! The `chat` example: a reader on the reactor's thread pushes back on its clients when the
//! room's mailbox is full, so no line is lost.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Example, WAIT};

const CLIENTS: usize = 40;
const LINES: usize = 50;

#[test]
fn forty_clients_sending_fifty_lines_each_lose_none_and_see_each_senders_in_order() {
    // A room mailbox of 4: full nearly all the time. Before (a reader that forwards with
    // try_send), 42 % of the lines were dropped at this load with a larger mailbox.
    let example = Example::start("chat", &["--listen", "127.0.0.1:0", "--room-mailbox", "4"]);
    let addr = example.addr;
    let joined = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let joined = joined.clone();
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut r = BufReader::new(s);
                let mut welcome = String::new();
                r.read_line(&mut welcome).unwrap();
                assert!(welcome.starts_with("welcome "), "{welcome:?}");
                // Everyone is in the room before anyone speaks: each must hear every line. (A
                // bounded wait, not a barrier: a client that failed must not hold up the rest.)
                joined.fetch_add(1, SeqCst);
                let deadline = Instant::now() + WAIT;
                while joined.load(SeqCst) < CLIENTS {
                    assert!(Instant::now() < deadline, "client {c}: not everyone joined");
                    std::thread::sleep(Duration::from_millis(2));
                }
                let said: String = (0..LINES).map(|i| format!("client {c} line {i}\n")).collect();
                r.get_mut().write_all(said.as_bytes()).unwrap();
                let mut next = HashMap::<usize, usize>::new();
                for _ in 0..CLIENTS * LINES {
                    let mut line = String::new();
                    let n = r.read_line(&mut line).unwrap_or_else(|e| panic!("client {c}: {e} after {next:?}"));
                    assert!(n > 0, "client {c}: closed early after {next:?}");
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let (from, i): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
                    let expected = next.entry(from).or_default();
                    assert_eq!(i, *expected, "client {c}: client {from}'s lines in order, none missing");
                    *expected += 1;
                }
                assert!(next.values().all(|&n| n == LINES), "client {c}: {next:?}");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
}
