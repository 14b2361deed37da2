//! The `greeting` example: the parent reads the first line with a handshake and places the
//! connection by the name in it; the worker reads the same line first, then the rest.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Example, WAIT};

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    BufReader::new(s)
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

/// The worker's pid in `welcome NAME, worker PID`.
fn welcomed(r: &mut BufReader<TcpStream>, name: &str) -> String {
    let l = line(r);
    let pid = l.strip_prefix(&format!("welcome {name}, worker ")).unwrap_or_else(|| panic!("{l:?}"));
    pid.trim().to_string()
}

#[test]
fn a_name_keeps_its_worker_the_worker_reads_the_greeting_first_and_bad_greetings_are_refused() {
    let example = Example::start("greeting", &["--listen", "127.0.0.1:0", "--greeting-timeout-ms", "300"]);
    let addr = example.addr;
    // Connected first, silent: must not hold anyone up, and is closed at the deadline.
    let mut silent = connect(addr);

    // The greeting in pieces, and a line right behind it in the same write.
    let mut alice = connect(addr);
    alice.get_mut().write_all(b"HEL").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    alice.get_mut().write_all(b"LO alice\nfirst\n").unwrap();
    let pid = welcomed(&mut alice, "alice");
    assert_eq!(line(&mut alice), format!("alice@{pid}: first\n"));
    for _ in 0..5 {
        let mut again = connect(addr);
        again.get_mut().write_all(b"HELLO alice\n").unwrap();
        assert_eq!(welcomed(&mut again, "alice"), pid, "same name, same worker");
    }
    let pids: HashSet<String> = (0..20)
        .map(|i| {
            let mut c = connect(addr);
            c.get_mut().write_all(format!("HELLO user{i}\n").as_bytes()).unwrap();
            welcomed(&mut c, &format!("user{i}"))
        })
        .collect();
    assert_eq!(pids.len(), 2, "names spread over both workers");

    alice.get_mut().write_all(b"BYE\n").unwrap();
    let mut rest = String::new();
    alice.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n", "BYE answered, then the worker closes");

    for bad in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"HELLO\n", &[b'x'; 100]] {
        let mut c = connect(addr);
        c.get_mut().write_all(bad).unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("ERR "), "{:?} got {answer:?}", String::from_utf8_lossy(bad));
    }

    let started = Instant::now();
    let mut nothing = Vec::new();
    let _ = silent.read_to_end(&mut nothing);
    assert!(
        nothing.is_empty() && started.elapsed() < Duration::from_secs(5),
        "the silent client is closed at the deadline"
    );
}
